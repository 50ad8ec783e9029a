"""A user's own messy data through the real CLI: what ftlab reports and does with it.

(The mistakes that must stop a run are in tests/test_bad_input.py; these are the runs that go on,
and must do the right thing: no phantom class, an honest test split, warnings that say what to do,
and an earlier run that is only replaced on purpose.)
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from tests.conftest import NEGATIVE, POSITIVE, QUIET, run_cli

FAST = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", *QUIET]


def base(tiny_bert: Path, train_file: Path, run_dir: Path, cache: Path) -> list[str]:
    return [
        "task=text_csv",
        f"model.pretrained={tiny_bert}",
        f"data.train_file={train_file}",
        "data.batch_size=8",
        "data.max_length=64",
        "trainer.precision=32-true",
        f"paths.cache_dir={cache}",
        f"hydra.run.dir={run_dir}",
        *FAST,
    ]


@pytest.fixture(scope="module")
def reviews(tmp_path_factory) -> Path:
    """A pandas-style export: unnamed index column, star labels 1/2, HTML line breaks."""
    root = tmp_path_factory.mktemp("reviews")
    rng = random.Random(0)
    lines = [",review,stars"]
    for i in range(200):
        word = rng.choice(POSITIVE if i % 2 else NEGATIVE)
        lines.append(f'{i},"the film was {word}<br /><br />a {word} story &amp; more",{1 + i % 2}')
    (root / "reviews.csv").write_text("\n".join(lines) + "\n")
    return root / "reviews.csv"


def console(proc) -> str:
    """What the user sees: Hydra's log handler writes to stdout, errors go to stderr."""
    return proc.stdout + proc.stderr


def columns(*names: str) -> list[str]:
    text, label = names
    return [f"data.text_column={text}", f"data.label_column={label}"]


def test_integer_labels_that_are_not_0_to_k_minus_1_are_mapped_not_a_phantom_class(
    tiny_bert, reviews, tmp_path
) -> None:
    run = tmp_path / "run"
    proc = run_cli(
        "src.train", *base(tiny_bert, reviews, run, tmp_path / "c"), *columns("review", "stars")
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (
        "integer labels [1, 2] are not 0..1: mapped to class ids in sorted order (1->0, 2->1)"
        in console(proc)
    )
    report = json.loads((run / "data_report.json").read_text())
    assert list(report["splits"]["train"]["class_counts"]) == ["1", "2"]  # two classes, not three
    ckpt = torch.load(next((run / "checkpoints").glob("epoch*.ckpt")), weights_only=True)
    assert ckpt["hyper_parameters"]["label_names"] == ["1", "2"]


def test_without_a_test_file_a_stratified_test_split_is_held_out(
    tiny_bert, reviews, tmp_path
) -> None:
    run = tmp_path / "run"
    proc = run_cli(
        "src.train",
        *base(tiny_bert, reviews, run, tmp_path / "c"),
        *columns("review", "stars"),
        "data.test_fraction=0.1",
        "data.val_fraction=0.25",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((run / "data_report.json").read_text())
    splits = report["splits"]
    assert report["test_is_val"] is False
    assert splits["test"]["class_counts"] == {"1": 10, "2": 10}  # 10% of each class
    assert splits["val"]["n_examples"] == 45 and splits["train"]["n_examples"] == 135
    assert "only 45 examples" in console(proc) and "+-15 points" in console(
        proc
    )  # tiny val: warned
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test/acc"] is not None


def test_null_test_fraction_reports_val_as_test_with_a_warning(
    tiny_bert, reviews, tmp_path
) -> None:
    run = tmp_path / "run"
    proc = run_cli(
        "src.train",
        *base(tiny_bert, reviews, run, tmp_path / "c"),
        *columns("review", "stars"),
        "data.test_fraction=null",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run / "data_report.json").read_text())["test_is_val"] is True
    assert "is reported as test (optimistic)" in console(proc)


def test_html_and_truncation_are_reported_with_the_fix(tiny_bert, reviews, tmp_path) -> None:
    run = tmp_path / "run"
    proc = run_cli(
        "src.train",
        *base(tiny_bert, reviews, run, tmp_path / "c"),
        *columns("review", "stars"),
        "data.max_length=8",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "200 of 200 training texts hold HTML tags or entities (e.g. '<br />')" in console(proc)
    assert "data.strip_html=true removes them" in console(proc)
    truncation = next(line for line in console(proc).splitlines() if "truncates" in line)
    assert "WARNING" in truncation and "would keep 95% whole" in truncation

    stripped = tmp_path / "stripped"
    proc = run_cli(
        "src.train",
        *base(tiny_bert, reviews, stripped, tmp_path / "c"),
        *columns("review", "stars"),
        "data.strip_html=true",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "HTML tags" not in console(proc)
    report = json.loads((stripped / "data_report.json").read_text())
    assert report["html"]["stripped"] is True
    before = json.loads((run / "data_report.json").read_text())["token_lengths"]["splits"]
    after = report["token_lengths"]["splits"]
    assert after["train"]["max"] < before["train"]["max"]  # the tags no longer cost tokens


def test_a_finished_run_is_replaced_only_with_overwrite_and_continued_with_resume(
    tiny_bert, reviews, tmp_path
) -> None:
    run = tmp_path / "run"
    args = [*base(tiny_bert, reviews, run, tmp_path / "c"), *columns("review", "stars")]
    assert run_cli("src.train", *args).returncode == 0
    first = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and ".hydra" not in p.parts}

    refused = run_cli("src.train", *args, "seed=7")
    assert refused.returncode == 2 and "already holds a run" in refused.stderr
    assert {p: p.read_bytes() for p in first} == first  # not one byte of the old run changed
    assert (run / ".hydra" / "overrides.yaml").read_text().count("seed=7") == 0

    resumed = run_cli("src.train", *args, "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not list((run / "checkpoints").glob("last-v*.ckpt"))

    replaced = run_cli("src.train", *args, "overwrite=true", "seed=7")
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    assert "overwrite=true: removed the earlier run's" in console(replaced)
    # one process wrote every event file (the names end in <host>.<pid>.<n>): runs not mixed
    events = list((run / "tensorboard").rglob("events.out.tfevents*"))
    assert events and len({e.name.split(".")[-2] for e in events}) == 1
    assert not list((run / "checkpoints").glob("last-v*.ckpt"))
