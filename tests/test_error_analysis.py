"""Error analysis (per_class.csv, errors.csv, test/ece) of every test, and src.eval on new
labelled data without the training data: a tiny run trained once for the module."""

from __future__ import annotations

import csv
import json
import random
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import precision_recall_fscore_support

from tests.conftest import QUIET, _sentence, read_metrics, run_cli, tiny_text_overrides

LABELS = ["neg", "pos"]


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("error_analysis")


@pytest.fixture(scope="module")
def text_run(tiny_bert, tiny_text_data, workdir) -> Path:
    """One epoch on a private copy of the tiny data, which is then deleted."""
    data = Path(shutil.copytree(tiny_text_data, workdir / "train_data"))
    run_dir = workdir / "run"
    proc = run_cli(
        "src.train",
        *tiny_text_overrides(tiny_bert, data),
        "data.label_names=[neg,pos]",
        "trainer.max_epochs=1",
        f"paths.cache_dir={workdir / 'cache'}",
        f"hydra.run.dir={run_dir}",
        *QUIET,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    shutil.rmtree(data)  # src.eval on new data must not need it
    return run_dir


@pytest.fixture(scope="module")
def ckpt(text_run) -> Path:
    return Path(read_metrics(text_run)["best_ckpt_path"])


@pytest.fixture(scope="module")
def new_csv(workdir) -> Path:
    """Labelled data the run never saw, in another folder, labels by name, distinct texts."""
    rng = random.Random(7)
    rows: dict[str, str] = {}
    while len(rows) < 30:
        label = len(rows) % 3 == 0
        rows.setdefault(_sentence(rng, label), LABELS[label])
    path = workdir / "elsewhere" / "new.csv"
    path.parent.mkdir()
    path.write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in rows.items()))
    return path


def check_error_files(run_dir: Path, truth: list[str], probs: dict[str, list[float]]) -> None:
    """errors.csv holds exactly the misclassified examples, most confident first; per_class.csv
    equals sklearn's report of the same predictions. `probs`: text -> the model's probabilities
    (from src.predict, an independent path)."""
    texts = list(probs)
    predicted = [LABELS[int(np.argmax(probs[t]))] for t in texts]
    errors = read_csv(run_dir / "errors.csv")
    assert list(errors[0]) == ["text", "true", "predicted", "confidence", "prob_neg", "prob_pos"]
    confidence = [float(r["confidence"]) for r in errors]
    assert confidence == sorted(confidence, reverse=True)
    wrong = Counter((t, y, p) for t, y, p in zip(texts, truth, predicted, strict=True) if y != p)
    assert Counter((r["text"], r["true"], r["predicted"]) for r in errors) == wrong
    for r in errors:
        expected = probs[r["text"]]
        assert [float(r["prob_neg"]), float(r["prob_pos"])] == pytest.approx(expected, abs=1e-4)
        assert float(r["confidence"]) == pytest.approx(max(expected), abs=1e-4)

    report = {r["class"]: r for r in read_csv(run_dir / "per_class.csv")}
    assert list(report) == [*LABELS, "macro avg", "weighted avg"]
    for average in (None, "macro", "weighted"):
        p, r, f, s = precision_recall_fscore_support(
            truth, predicted, labels=LABELS, average=average, zero_division=0
        )
        rows = LABELS if average is None else [f"{average} avg"]
        for i, name in enumerate(rows):
            got = report[name]
            want = [np.atleast_1d(v)[i] for v in (p, r, f)]
            assert [float(got[k]) for k in ("precision", "recall", "f1")] == pytest.approx(want)
            if average is None:
                assert int(got["support"]) == s[i]
    assert json.loads((run_dir / "per_class.json").read_text())["pos"]["support"] == truth.count(
        "pos"
    )


def predicted_probs(ckpt: Path, csv_path: Path, out: Path) -> dict[str, list[float]]:
    proc = run_cli("src.predict", f"ckpt_path={ckpt}", f"input={csv_path}", f"out={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {r["text"]: [float(r["prob_neg"]), float(r["prob_pos"])] for r in read_csv(out)}


def test_training_run_writes_the_error_analysis(text_run) -> None:
    metrics = read_metrics(text_run)
    assert 0.0 <= metrics["test/ece"] <= 1.0
    assert (text_run / "per_class.csv").is_file()
    errors = read_csv(text_run / "errors.csv")
    assert len(errors) == round((1 - metrics["test/acc"]) * 40)  # test.csv: 40 rows
    assert all(r["text"] and r["true"] != r["predicted"] for r in errors)


def test_eval_on_new_labelled_file_without_training_data(ckpt, new_csv, workdir) -> None:
    out = workdir / "eval_new"
    proc = run_cli(
        "src.eval", f"ckpt_path={ckpt}", f"data.test_file={new_csv}", f"hydra.run.dir={out}"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = read_metrics(out)
    assert 0.0 <= metrics["test/ece"] <= 1.0
    assert metrics["data.test_file"] == str(new_csv.resolve())
    truth_rows = read_csv(new_csv)
    truth = [r["label"] for r in truth_rows]
    probs = predicted_probs(ckpt, new_csv, workdir / "pred_new.csv")
    check_error_files(out, truth, probs)
    errors = read_csv(out / "errors.csv")
    assert metrics["test/acc"] == pytest.approx(1 - len(errors) / len(truth_rows))


def test_eval_rejects_a_label_the_checkpoint_does_not_know(ckpt, new_csv, workdir) -> None:
    bad = new_csv.with_name("bad.csv")
    lines = new_csv.read_text().splitlines()
    lines[3] = lines[3].rsplit(",", 1)[0] + ",maybe"
    bad.write_text("\n".join(lines) + "\n")
    proc = run_cli(
        "src.eval", f"ckpt_path={ckpt}", f"data.test_file={bad}", f"hydra.run.dir={workdir / 'bad'}"
    )
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: label 'maybe' at row 3 of {bad} (column 'label') is not one of the 2 classes "
        "of the checkpoint: ['neg', 'pos']"
    ], proc.stderr[-2000:]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.test_file={missing}", "data.test_file='{missing}': no such file"),
        (
            "data.root={workdir}",
            "data.root is not read by task=text_csv (TextDataModule); give data.test_file",
        ),
    ],
)
def test_eval_bad_new_data_is_one_line(ckpt, workdir, override, message) -> None:
    fill = {"missing": workdir / "nope.csv", "workdir": workdir}
    proc = run_cli(
        "src.eval",
        f"ckpt_path={ckpt}",
        override.format(**fill),
        f"hydra.run.dir={workdir / 'bad_new'}",
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"error: {message.format(**fill)}"


# --------------------------------------------------------------------------- task analyses


def test_multiclass_analysis_matches_sklearn_and_a_hand_computed_ece() -> None:
    from src.tasks.objectives import Multiclass

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 3, generator=g) * 2
    targets = torch.randint(0, 3, (200,), generator=g)
    analysis = Multiclass(["a", "b", "c"]).analyse(logits, targets)
    probs = logits.softmax(-1)
    conf, preds = probs.max(-1)
    # ECE: |accuracy - mean confidence| per equal-width bin, weighted by the bin's share
    bins = torch.clamp((conf * 15).ceil().long() - 1, 0, 14)
    ece = sum(
        (bins == b).float().mean()
        * ((preds == targets)[bins == b].float().mean() - conf[bins == b].mean()).abs()
        for b in range(15)
        if (bins == b).any()
    )
    assert analysis.metrics["ece"] == pytest.approx(float(ece), abs=1e-5)
    p, r, f, s = precision_recall_fscore_support(targets, preds, labels=[0, 1, 2], zero_division=0)
    table = analysis.per_class
    assert table.loc[["a", "b", "c"], "f1"].tolist() == pytest.approx(f.tolist())
    assert table.loc[["a", "b", "c"], "precision"].tolist() == pytest.approx(p.tolist())
    assert table.loc[["a", "b", "c"], "support"].tolist() == s.tolist()
    assert table.loc["weighted avg", "recall"] == pytest.approx(
        precision_recall_fscore_support(targets, preds, average="weighted")[1]
    )
    errors = analysis.errors
    assert sorted(errors.index) == (preds != targets).nonzero().flatten().tolist()
    assert errors["confidence"].is_monotonic_decreasing


def test_multilabel_analysis_reports_each_label_at_its_threshold() -> None:
    from src.tasks.objectives import Multilabel

    g = torch.Generator().manual_seed(1)
    logits = torch.randn(100, 4, generator=g)
    targets = (torch.rand(100, 4, generator=g) > 0.6).float()
    task = Multilabel(["w", "x", "y", "z"], thresholds=0.4)
    analysis = task.analyse(logits, targets)
    preds = torch.sigmoid(logits) >= 0.4
    p, r, f, s = precision_recall_fscore_support(targets.int(), preds.int(), zero_division=0)
    assert analysis.per_class.loc[["w", "x", "y", "z"], "f1"].tolist() == pytest.approx(f.tolist())
    assert analysis.per_class.loc["micro avg", "precision"] == pytest.approx(
        precision_recall_fscore_support(targets.int(), preds.int(), average="micro")[0]
    )
    wrong = (preds != targets.bool()).any(-1).nonzero().flatten().tolist()
    assert sorted(analysis.errors.index) == wrong
    assert 0.0 <= analysis.metrics["ece"] <= 1.0


def test_regression_analysis_summarises_residuals() -> None:
    from src.tasks.objectives import Regression

    preds = torch.tensor([[1.0], [2.0], [4.0]])
    targets = torch.tensor([1.5, 2.0, 1.0])
    analysis = Regression(["score"]).analyse(preds, targets)
    assert analysis.metrics == {}
    row = analysis.per_class.loc["score"]
    assert row["mae"] == pytest.approx((0.5 + 0 + 3) / 3)
    assert row["bias"] == pytest.approx((-0.5 + 0 + 3) / 3)
    assert analysis.errors["abs_error"].tolist() == [3.0, 0.5, 0.0]


# --------------------------------------------------------------------------- image folders


def test_eval_on_a_new_image_folder_names_the_misclassified_files(tiny_images, workdir) -> None:
    run_dir = workdir / "image_run"
    proc = run_cli(
        "src.train",
        "task=image_folder",
        "model=resnet18",
        "model.weights=null",
        "model.image_size=32",
        f"data.root={tiny_images}",
        "data.num_workers=0",
        "data.batch_size=8",
        "trainer.max_epochs=1",
        "trainer.precision=32-true",
        f"hydra.run.dir={run_dir}",
        *QUIET,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = read_metrics(run_dir)["best_ckpt_path"]
    new = workdir / "new_images"  # DIR/<class>/<image>, no train/ folder
    for cls in ("blue", "red"):
        shutil.copytree(tiny_images / "train" / cls, new / cls)
    out = workdir / "eval_images"
    proc = run_cli("src.eval", f"ckpt_path={ckpt}", f"data.root={new}", f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = read_metrics(out)
    errors = read_csv(out / "errors.csv")
    assert len(errors) == round((1 - metrics["test/acc"]) * 40)
    for r in errors:
        path = Path(r["image"])
        assert path.parent.parent == new and path.parent.name == r["true"] != r["predicted"]
    (new / "green").mkdir()
    proc = run_cli("src.eval", f"ckpt_path={ckpt}", f"data.root={new}", f"hydra.run.dir={out}_2")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: data.root='{new}': class folder 'green' is not one of the 2 classes of the "
        "checkpoint: ['blue', 'red']"
    )
