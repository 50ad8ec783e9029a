"""Shared fixtures: tiny models and data built in the test, and the real data dir."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
POSITIVE = ["good", "great", "fine", "lovely", "superb", "fun", "warm", "bright"]
NEGATIVE = ["bad", "awful", "dull", "boring", "poor", "weak", "cold", "grim"]
FILLER = ["the", "film", "was", "a", "plot", "story", "and", "very", "really", "movie"]


def real_data_dir() -> Path:
    """paths.data_dir as ftlab resolves it (FTLAB_DATA_DIR, else ../shared/data)."""
    return Path(os.environ.get("FTLAB_DATA_DIR", ROOT.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real data sets. Missing data is a failure, not a skip: CI must run these tests."""
    path = real_data_dir()
    missing = [
        p
        for p in ("sst2/train.tsv", "sst2/dev.tsv", "hymenoptera/train")
        if not (path / p).exists()
    ]
    if missing:
        pytest.fail(f"real data missing under {path}: {missing}; set FTLAB_DATA_DIR")
    return path


def _sentence(rng: random.Random, label: int) -> str:
    words = rng.sample(FILLER, 4) + [rng.choice(POSITIVE if label else NEGATIVE)]
    rng.shuffle(words)
    return " ".join(words)


@pytest.fixture(scope="session")
def tiny_text_data(tmp_path_factory) -> Path:
    """train.csv / test.csv: sentences whose label is set by one sentiment word."""
    root = tmp_path_factory.mktemp("text")
    rng = random.Random(0)
    for split, n in (("train", 160), ("test", 40)):
        rows = ["text,label"] + [f"{_sentence(rng, i % 2)},{i % 2}" for i in range(n)]
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A 2-layer BERT (hidden 32, random weights) and its WordPiece tokenizer, saved as a model dir."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    root = tmp_path_factory.mktemp("tiny_bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *POSITIVE, *NEGATIVE, *FILLER]
    BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(root)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    import torch

    torch.manual_seed(0)
    BertModel(config).save_pretrained(root)
    return root


@pytest.fixture(scope="session")
def tiny_images(tmp_path_factory) -> Path:
    """An ImageFolder: red vs blue noisy squares, train/ only (val is carved), one GIF."""
    root = tmp_path_factory.mktemp("images")
    rng = random.Random(0)
    for cls, color in (("blue", (20, 40, 220)), ("red", (220, 30, 20))):
        folder = root / "train" / cls
        folder.mkdir(parents=True)
        for i in range(20):
            jitter = tuple(max(0, min(255, c + rng.randint(-30, 30))) for c in color)
            img = Image.new("RGB", (40, 40), jitter)
            if i == 0:
                img.convert("P").save(folder / "palette.gif")
            else:
                img.save(folder / f"{i}.jpg")
    return root


def run_cli(
    module: str, *overrides: str, env: dict | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    """Run `python -m <module> overrides...` from the project root, offline."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", module, *overrides],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


QUIET = ["callbacks.progress_bar=null", "trainer.enable_model_summary=false"]


def tiny_text_overrides(tiny_bert: Path, data: Path) -> list[str]:
    """The keyword task on the tiny BERT: model, data and precision overrides every tiny text
    run shares (fp32, so results are exact across runs)."""
    return [
        "task=text_csv",
        f"model.pretrained={tiny_bert}",
        f"data.train_file={data / 'train.csv'}",
        f"data.test_file={data / 'test.csv'}",
        "data.val_fraction=0.25",
        "data.batch_size=8",
        "data.max_length=64",  # the tiny BERT's position limit
        "trainer.precision=32-true",
    ]
