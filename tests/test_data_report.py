"""The data preparation report (data_report.json) and loss.class_weights, on small files with
planted empties, duplicates, leakage and a long text, so every count is known exactly."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from src.checks import check_class_weights
from src.data.image import ImageDataModule
from src.data.report import resolve_class_weights
from src.data.text import TextDataModule
from src.errors import ConfigError, DataError
from src.models.networks import ImagePreprocessing, build_processor
from tests.conftest import FILLER, NEGATIVE, POSITIVE, QUIET, run_cli

MAX_LENGTH = 16
LONG = " ".join(FILLER * 4)  # 40 words: 42 tokens with [CLS] / [SEP], cut to MAX_LENGTH


def sentences(n: int, start: int = 0) -> list[tuple[str, int]]:
    """n distinct 3-word sentences (5 tokens each); the label picks the sentiment word."""
    pairs = list(itertools.permutations(FILLER, 2))[start : start + n]
    return [
        (f"{a} {b} {(POSITIVE if k % 2 else NEGATIVE)[k % 8]}", k % 2)
        for k, (a, b) in enumerate(pairs, start)
    ]


def write_csv(path: Path, rows: list[tuple[str, int] | str]) -> Path:
    """rows: (text, label) pairs, or a raw csv line for the planted bad rows."""
    lines = [r if isinstance(r, str) else f"{r[0]},{r[1]}" for r in rows]
    path.write_text("text,label\n" + "\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    """train: 20 distinct sentences + 2 more copies of s0 (one with extra spaces), s1 with the
    other label, a 40-word text, and 3 planted empties ("", whitespace, a missing field);
    val: 3 new + s2 (leak) + 1 whitespace-only; test: 3 new + s3, s4 (leaks)."""
    root = tmp_path_factory.mktemp("planted")
    s = sentences(20)
    train: list = [*s[:5], '"",1', *s[5:10], "   ,0", *s[10:15], ",1", *s[15:]]
    train += [s[0], (f"  {s[0][0]} ", s[0][1]), (s[1][0], 1 - s[1][1]), (LONG, 0)]
    write_csv(root / "train.csv", train)
    write_csv(root / "val.csv", [*sentences(3, 20), s[2], "  ,1"])
    write_csv(root / "test.csv", [*sentences(3, 23), s[3], s[4]])
    return root


# 20 distinct: 10 per class; s0 (label 0) twice more, s1 flipped to 0, the long text 0.
EXPECTED_SPLITS = {
    "train": {"n_examples": 24, "class_counts": {"0": 14, "1": 10}},
    "val": {"n_examples": 4, "class_counts": {"0": 3, "1": 1}},
    "test": {"n_examples": 5, "class_counts": {"0": 2, "1": 3}},
}
EXPECTED_DUPLICATES = {
    "within_train": 3,
    "within_train_conflicting": 1,
    "train_val": 1,
    "train_test": 2,
}


def check_planted_report(report: dict) -> None:
    assert report["splits"] == EXPECTED_SPLITS
    assert report["test_is_val"] is False
    assert {s: d["count"] for s, d in report["dropped"].items()} == {
        "train": 3,
        "val": 1,
        "test": 0,
    }
    assert report["dropped"]["train"]["rows"] == [5, 11, 17]
    assert report["duplicates"] == EXPECTED_DUPLICATES
    lengths = report["token_lengths"]
    assert lengths["max_length"] == MAX_LENGTH
    train = lengths["splits"]["train"]
    assert (train["p50"], train["max"], train["truncated"]) == (5.0, 42, 1)
    assert lengths["splits"]["val"] == {
        "p50": 5.0,
        "p90": 5.0,
        "p95": 5.0,
        "p99": 5.0,
        "max": 5,
        "truncated": 0,
    }
    assert report["imbalance"] == {
        "ratio": 1.4,
        "most_common": "0",
        "least_common": "1",
        "threshold": 3.0,
        "warning": False,
    }


@pytest.fixture(scope="module")
def tokenizer(tiny_bert):
    return build_processor(OmegaConf.create({"family": "hf", "pretrained": str(tiny_bert)}))


def planted_dm(tokenizer, planted: Path, cache: Path, **kw) -> TextDataModule:
    return TextDataModule(
        tokenizer,
        train_file=str(planted / "train.csv"),
        val_file=str(planted / "val.csv"),
        test_file=str(planted / "test.csv"),
        max_length=MAX_LENGTH,
        cache_dir=str(cache),
        **kw,
    )


def test_text_report_counts_and_cache_hit(tokenizer, planted, tmp_path, monkeypatch) -> None:
    dm = planted_dm(tokenizer, planted, tmp_path / "cache")
    dm.setup()
    check_planted_report(dm.data_report)
    # Empties are gone, not tokenized as "": every kept example has tokens beyond [CLS] [SEP].
    assert min(dm.splits["train"]["length"]) == 5
    # The ids are those of one truncating pass (the untruncated first pass changes nothing).
    texts = [t.strip() for t, _ in sentences(20)] + [sentences(20)[0][0]] * 2
    texts += [sentences(20)[1][0], LONG]
    expected = tokenizer(texts, truncation=True, max_length=MAX_LENGTH)["input_ids"]
    assert sorted(dm.splits["train"]["input_ids"]) == sorted(expected)
    assert "n_tokens" not in dm.splits["train"].column_names
    assert max(dm.splits["train"]["length"]) == MAX_LENGTH

    # A cache hit gives the same report without tokenizing again.
    monkeypatch.setattr(
        TextDataModule, "_tokenize", lambda self, ds, *a, **k: pytest.fail("tokenized")
    )
    again = planted_dm(tokenizer, planted, tmp_path / "cache")
    again.setup()
    assert again.data_report == dm.data_report


def test_missing_text_in_jsonl_and_text_pairs(tokenizer, tmp_path) -> None:
    """A JSON null is dropped as missing; pairs are duplicates only when both texts match."""
    rows = [
        {"a": "good film", "b": "the plot", "label": 1},
        {"a": "good film", "b": "the plot ", "label": 1},  # duplicate after strip
        {"a": "good film", "b": "the story", "label": 1},  # same first text: not a duplicate
        {"a": "bad film", "b": None, "label": 0},  # missing second text: dropped
        {"a": "dull film", "b": "the plot", "label": 0},
        {"a": "grim film", "b": "the plot", "label": 0},
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    test = tmp_path / "test.jsonl"
    test.write_text(json.dumps(rows[2]) + "\n" + json.dumps({**rows[4], "b": "a movie"}) + "\n")
    dm = TextDataModule(
        tokenizer,
        train_file=str(path),
        val_file=str(path),
        test_file=str(test),
        text_column="a",
        text_pair_column="b",
        cache_dir=str(tmp_path / "cache"),
    )
    dm.setup()
    report = dm.data_report
    assert report["dropped"]["train"]["count"] == 1
    assert report["dropped"]["train"]["rows"] == [3]
    assert report["splits"]["train"]["n_examples"] == 5
    assert report["duplicates"]["within_train"] == 1
    assert report["duplicates"]["train_test"] == 1  # rows[2] only; (dull film, a movie) is new


def test_split_of_empty_texts_only_fails(tokenizer, tmp_path) -> None:
    path = write_csv(tmp_path / "t.csv", ['"",0', "  ,1", ",0"])
    dm = TextDataModule(tokenizer, train_file=str(path), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DataError, match="the train split has no example with text: all 3 rows"):
        dm.setup()


def test_cli_writes_report_json_and_tensorboard_text(tiny_bert, planted, tmp_path) -> None:
    run_dir = tmp_path / "run"
    proc = run_cli("src.train", *planted_args(tiny_bert, planted, run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_planted_report(json.loads((run_dir / "data_report.json").read_text()))
    log = (run_dir / "train.log").read_text()
    assert "dropped 3 train example(s) (empty, whitespace-only or missing text): 5, 11, 17" in log
    assert "1 val example(s) also occur in train" in log
    events = list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert any(b"data/report" in e.read_bytes() for e in events)


def planted_args(tiny_bert: Path, data: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        "task=text_csv",
        f"model.pretrained={tiny_bert}",
        f"data.train_file={data / 'train.csv'}",
        f"data.val_file={data / 'val.csv'}",
        f"data.test_file={data / 'test.csv'}",
        f"data.max_length={MAX_LENGTH}",
        "data.batch_size=8",
        "trainer.max_epochs=1",
        "trainer.precision=32-true",
        f"paths.cache_dir={run_dir.parent / 'cache'}",
        f"hydra.run.dir={run_dir}",
        *QUIET,
        *extra,
    ]


def test_imbalance_warns_and_balanced_weights_reach_the_classifier(tiny_bert, tmp_path) -> None:
    """16 positive vs 4 negative: ratio 4 >= 3 warns; balanced = 20 / (2 * count)."""
    data = tmp_path / "imbalanced"
    data.mkdir()
    rows = [r for r in sentences(40) if r[1] == 1][:16] + [r for r in sentences(8) if r[1] == 0]
    write_csv(data / "train.csv", rows)
    write_csv(data / "val.csv", sentences(4, 40))
    write_csv(data / "test.csv", sentences(4, 44))
    run_dir = tmp_path / "run"
    proc = run_cli(
        "src.train", *planted_args(tiny_bert, data, run_dir, "loss.class_weights=balanced")
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((run_dir / "data_report.json").read_text())
    assert report["splits"]["train"]["class_counts"] == {"0": 4, "1": 16}
    assert report["imbalance"]["ratio"] == 4.0 and report["imbalance"]["warning"] is True
    assert "consider loss.class_weights=balanced" in (run_dir / "train.log").read_text()
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["hyper_parameters"]["class_weights"] == [2.5, 0.625]


def test_class_weights_of_the_wrong_length_fail_in_one_line(tiny_bert, planted, tmp_path) -> None:
    proc = run_cli(
        "src.train", *planted_args(tiny_bert, planted, tmp_path / "run", "loss.class_weights=[1.0]")
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert "loss.class_weights=[1.0] has 1 values; the data has 2 classes" in line


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("balance", "loss.class_weights='balance' is invalid"),
        ([1.0, -2.0], "-2.0 is not > 0"),
        ([1.0, 0], "0 is not > 0"),
        (["a", 1.0], "'a' is not > 0"),
        (3, "loss.class_weights=3 is invalid"),
    ],
)
def test_bad_class_weights_are_config_errors(value, needle) -> None:
    with pytest.raises(ConfigError, match=needle):
        check_class_weights(OmegaConf.create({"w": value}).w)


def test_class_weights_resolution() -> None:
    counts = {"neg": 30, "pos": 10}
    assert resolve_class_weights(None, counts) is None
    assert resolve_class_weights("balanced", counts) == [40 / 60, 40 / 20]
    assert resolve_class_weights(OmegaConf.create([1, 3]), counts) == [1.0, 3.0]
    with pytest.raises(ConfigError, match=r"class\(es\) \['pos'\] have no training examples"):
        resolve_class_weights("balanced", {"neg": 3, "pos": 0})


PRE = ImagePreprocessing(resize_size=36, crop_size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def image_folder(root: Path) -> Path:
    """train/{blue,red}: 5 images each, red/2.jpg cut in half, blue/copy.png = blue/0.png;
    val/{blue,red}: 2 each, val/red/0.png = train/red/0.png (leakage)."""
    for split, n in (("train", 5), ("val", 2)):
        for cls, color in (("blue", (20, 40, 220)), ("red", (220, 30, 20))):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                shade = tuple(c + 7 * i + (3 if split == "val" else 0) for c in color)
                Image.new("RGB", (24, 24), shade).save(folder / f"{i}.png")
    jpg = root / "train" / "red" / "2.jpg"
    Image.new("RGB", (24, 24), (200, 0, 0)).save(jpg)
    jpg.write_bytes(jpg.read_bytes()[:100])
    (root / "train" / "blue" / "copy.png").write_bytes((root / "train/blue/0.png").read_bytes())
    (root / "val" / "red" / "0.png").write_bytes((root / "train/red/0.png").read_bytes())
    return root


def test_image_report_drops_unreadable_and_finds_duplicates(tmp_path) -> None:
    root = image_folder(tmp_path / "images")
    dm = ImageDataModule(PRE, root=str(root), num_workers=0, batch_size=4)
    dm.setup()
    report = dm.data_report
    assert report["splits"]["train"] == {"n_examples": 11, "class_counts": {"blue": 6, "red": 5}}
    assert report["splits"]["val"] == {"n_examples": 4, "class_counts": {"blue": 2, "red": 2}}
    assert report["test_is_val"] is True
    assert report["dropped"]["train"]["count"] == 1
    (line,) = report["dropped"]["train"]["paths"]
    assert line.startswith(f"{root / 'train' / 'red' / '2.jpg'}: ")
    assert report["dropped"]["val"]["count"] == 0
    assert report["duplicates"] == {
        "within_train": 1,
        "within_train_conflicting": 0,
        "train_val": 1,
        "train_test": 1,
    }
    assert "token_lengths" not in report
    assert len(dm.splits["train"]) == 11
    batch = next(iter(dm.train_dataloader()))  # the dropped image is never loaded
    assert batch["pixel_values"].shape == (4, 3, 32, 32)


def test_class_without_readable_image_fails(tmp_path) -> None:
    root = image_folder(tmp_path / "images")
    for i in range(5):
        (root / "train" / "red" / f"{i}.png").unlink()
    dm = ImageDataModule(PRE, root=str(root), num_workers=0)
    with pytest.raises(DataError, match=r"cannot read image .*red/2.jpg: .*no readable image left"):
        dm.setup()
