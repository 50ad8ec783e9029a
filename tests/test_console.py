"""What a run prints (src/console.py, src/progress.py), through the real CLI with output captured
(not a terminal, as in a file, CI or a batch job): each line once, no tips / hints / library
noise, and progress as plain periodic lines."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli, tiny_text_overrides

HYDRA_LINE = re.compile(r"^\[[^\]]+\]\[(?P<logger>[^\]]+)\]\[(?P<level>[A-Z]+)\] - (?P<msg>.*)$")
# train epoch 1/1  step 4/15 (27%)  train/loss 0.6939  65.3 samples/s  elapsed 0:00:01  ETA 0:00:01
PROGRESS_LINE = re.compile(
    r"train epoch 1/1  step (?P<step>\d+)/15 \(\d+%\)  train/loss \d+\.\d+  "
    r"(?P<speed>\d+\.\d) samples/s  elapsed \d+:\d\d:\d\d  ETA \d+:\d\d:\d\d"
)


@pytest.fixture(scope="module")
def fake_srun(tmp_path_factory) -> Path:
    """A folder with an `srun` executable: what makes Lightning print its SLURM hint."""
    folder = tmp_path_factory.mktemp("bin")
    srun = folder / "srun"
    srun.write_text("#!/bin/sh\nexit 1\n")
    srun.chmod(0o755)
    return folder


@pytest.fixture(scope="module")
def train_run(tmp_path_factory, tiny_bert, tiny_text_data, fake_srun):
    """One default run (progress_bar left at kind=auto) of 15 steps, output captured."""
    run_dir = tmp_path_factory.mktemp("console_run")
    result = run_cli(
        "src.train",
        *tiny_text_overrides(tiny_bert, tiny_text_data),
        "callbacks.progress_bar.every_n_steps=4",
        f"hydra.run.dir={run_dir}",
        env={"PATH": f"{fake_srun}{os.pathsep}{os.environ.get('PATH', '')}"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result, run_dir


def lightning_messages(output: str) -> list[str]:
    """Lightning's log lines as printed: by Hydra's handler (`[time][lightning...][INFO] - m`)
    or by Lightning's own (`INFO: m`)."""
    messages = []
    for line in output.splitlines():
        match = HYDRA_LINE.match(line)
        if match and match["logger"].startswith(("lightning", "pytorch_lightning")):
            messages.append(match["msg"])
        elif line.startswith("INFO: "):
            messages.append(line.removeprefix("INFO: "))
    return messages


def test_lightning_lines_are_printed_once_and_logged_to_the_file(train_run):
    result, run_dir = train_run
    messages = lightning_messages(result.stdout + result.stderr)
    assert any("GPU available" in m for m in messages), messages
    twice = [m for m, n in Counter(messages).items() if n > 1]
    assert not twice, f"printed more than once: {twice}"
    log_file = (run_dir / "train.log").read_text()
    assert "GPU available" in log_file
    assert "Seed set to 42" in log_file


def test_no_tips_hints_or_library_deprecations(train_run):
    result, _ = train_run
    output = result.stdout + result.stderr
    for noise in ("litlogger", "litmodels", "💡", "srun", "is deprecated", "FutureWarning"):
        assert noise not in output, f"{noise!r} in the output:\n{output[-3000:]}"


def test_redirected_run_prints_periodic_progress_lines(train_run):
    result, run_dir = train_run
    output = result.stdout + result.stderr
    lines = [m for m in PROGRESS_LINE.finditer(output)]
    # every 4 batches of 15: steps 4, 8, 12, each with the loss, samples/s and an ETA
    assert [int(m["step"]) for m in lines] == [4, 8, 12], output[-3000:]
    assert all(float(m["speed"]) > 0 for m in lines)
    assert re.search(r"train epoch 1/1 done  step 15/15 \(100%\)  train/loss ", output)
    assert re.search(r"val epoch 1/1  val/acc \d\.\d{4}", output)
    assert not re.search(r"(Epoch \d+/\d+|Validation|Testing) +━", output)  # no Rich bars
    assert "%|" not in output  # nor tqdm bars (tokenizing, caching, loading weights)
    assert "train epoch 1/1  step 8/15" in (run_dir / "train.log").read_text()


def test_progress_bar_null_prints_no_progress(tmp_path, tiny_bert, tiny_text_data):
    result = run_cli(
        "src.train",
        *tiny_text_overrides(tiny_bert, tiny_text_data),
        "callbacks.progress_bar=null",
        "trainer.enable_model_summary=false",
        "trainer.max_steps=3",
        "test=false",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "src.progress" not in output, output
    assert not re.search(r"(Epoch \d+/\d+|Validation|Testing) +━|it/s", output), output


def test_onnx_export_prints_no_exporter_info_lines(train_run, tmp_path):
    _, run_dir = train_run
    result = run_cli(
        "src.export",
        f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
        "format=onnx",
        f"out={tmp_path / 'onnx'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "onnx export ->" in output
    assert not re.search(r"\]\[(onnxscript|onnx_ir)[^\]]*\]\[INFO\]", output), output[-3000:]
    assert "will not be used, since it shares" not in output
    assert len(output.splitlines()) < 20, output


def test_libraries_imported_after_setup_log_once_through_the_root(tmp_path):
    """Packages imported after `setup_console` (ftlab imports Lightning lazily), also after an
    availability check that only looks their spec up, still log through the root handlers only.
    And `datasets` logs a reader's error at ERROR, then raises it; ftlab reports the raise as its
    own one-line error, so the library's line is dropped (the raise still happens)."""
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\ngood film,1\nbad, film, x, y,0\n")
    script = f"""
import importlib.util, logging, sys
logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="root: %(message)s")
from src.console import setup_console
setup_console()
assert importlib.util.find_spec("lightning") is not None
import lightning
logging.getLogger("lightning.pytorch.utilities.rank_zero").info("lightning line")
logging.getLogger("lightning.pytorch.utilities.rank_zero").info("💡 Tip: try a product")
from datasets import load_dataset
try:
    load_dataset("csv", data_files={{"data": {str(bad)!r}}}, split="data", cache_dir={str(tmp_path / "cache")!r})
except Exception as e:
    print("raised", type(e).__name__)
"""
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"},
    )
    output = result.stdout + result.stderr
    assert "raised" in output, output
    assert output.count("lightning line") == 1 and "root: lightning line" in output, output
    assert "Tip" not in output, output
    assert "Failed to read file" not in output, output


def test_progress_bar_factory_picks_by_terminal(monkeypatch):
    from lightning.pytorch.callbacks import RichProgressBar

    from src.errors import ConfigError
    from src.progress import ProgressLines, progress_bar

    monkeypatch.setattr("src.progress.is_interactive", lambda: False)
    assert isinstance(progress_bar(), ProgressLines)
    monkeypatch.setattr("src.progress.is_interactive", lambda: True)
    assert isinstance(progress_bar(), RichProgressBar)
    assert isinstance(progress_bar(kind="lines"), ProgressLines)
    with pytest.raises(ConfigError, match="valid: auto, rich, lines"):
        progress_bar(kind="tqdm")
    with pytest.raises(ConfigError, match="every_n_seconds"):
        progress_bar(kind="lines", every_n_seconds=0)
