"""Task types through the CLI on a tiny BERT: a multi-label and a regression run with their
metrics, checkpointed task state, TensorBoard figures, eval, predict and HF export round-trips, and
bad labels reported before the model loads."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from src.tasks import metric_keys
from tests.conftest import FILLER, NEGATIVE, POSITIVE, QUIET, read_metrics, run_cli


def config(**task: object) -> dict:
    return {"task": {"name": "t", **task}, "loss": {}}


SENTENCES = ["the film was good", "a bad plot", "the story was awful and dull", "very fun movie"]


def image_tags(run_dir: Path) -> dict[str, int]:
    """Image tags in the run's TensorBoard event files -> how many images each holds."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    return {tag: len(events.Images(tag)) for tag in events.Tags()["images"]}


def export_hf(ckpt: str, tmp_path: Path) -> Path:
    out = tmp_path / "hf"
    proc = run_cli(
        "src.export",
        f"ckpt_path={ckpt}",
        "format=hf",
        f"out={out}",
        f"hydra.run.dir={tmp_path / 'export_run'}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def hf_and_ftlab(out: Path, ckpt: str, texts: list[str], pairs: list[str] | None = None):
    """The exported model loaded by transformers, a padded batch of `texts` (and `pairs`) from
    its tokenizer, and ftlab's post-processed outputs of the checkpoint on that batch."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from src.saved_run import load_run

    hf = AutoModelForSequenceClassification.from_pretrained(out).eval()
    batch = AutoTokenizer.from_pretrained(out)(texts, pairs, padding=True, return_tensors="pt")
    model = load_run(ckpt)
    with torch.inference_mode():
        ours = model.module.task.postprocess(model.module(dict(batch)))
    return hf, batch, ours


def hf_pipeline(out: Path):
    from transformers import pipeline

    return pipeline("text-classification", model=str(out), top_k=None, device="cpu")


def _words(rng: random.Random, pos: bool, neg: bool) -> str:
    words = rng.sample(FILLER, 3)
    if pos:
        words.append(rng.choice(POSITIVE))
    if neg:
        words.append(rng.choice(NEGATIVE))
    rng.shuffle(words)
    return " ".join(words)


@pytest.fixture(scope="module")
def tiny_multilabel(tmp_path_factory) -> Path:
    """text<TAB>label: label 0 when a positive word is there, 1 for a negative one, both or none."""
    root = tmp_path_factory.mktemp("multilabel")
    rng = random.Random(0)
    for split, n in (("train", 160), ("test", 40)):
        rows = ["text\tlabel"]
        for i in range(n):
            pos, neg = i % 4 in (0, 2), i % 4 in (1, 2)
            labels = ",".join(str(k) for k, on in ((0, pos), (1, neg)) if on)
            rows.append(f"{_words(rng, pos, neg)}\t{labels or '[]'}")
        (root / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def tiny_pairs(tmp_path_factory) -> Path:
    """STS-style: headerless, tab-separated .csv, CRLF, stray quotes, extra columns on some rows;
    the score counts the positive words of the pair."""
    root = tmp_path_factory.mktemp("pairs")
    rng = random.Random(1)
    for split, n in (("train", 160), ("test", 40)):
        lines = []
        for i in range(n):
            a, b = _words(rng, i % 2 == 0, i % 2 == 1), _words(rng, i % 3 == 0, i % 3 != 0)
            score = 2.5 * (i % 2 == 0) + 2.5 * (i % 3 == 0)
            extra = "\tsrc-a\tsrc-b" if i % 10 == 0 else ""
            quote = '"' if i % 7 == 0 else ""
            lines.append(f"main\tfile\t2012\t{i:04d}\t{score:.3f}\t{quote}{a}\t{b}{extra}")
        (root / f"sts-{split}.csv").write_bytes(("\r\n".join(lines) + "\r\n").encode())
    return root


def _tiny(tiny_bert: Path) -> list[str]:
    return [
        "task=text_csv",
        f"model.pretrained={tiny_bert}",
        "data.batch_size=8",
        "data.max_length=64",
        "data.val_fraction=0.25",
        "trainer.precision=32-true",
        "trainer.max_epochs=2",
        "optimizer.lr=1e-3",
        *QUIET,
    ]


def test_multilabel_run_writes_its_metrics_and_checkpoints_thresholds(
    tiny_bert: Path, tiny_multilabel: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    proc = run_cli(
        "src.train",
        *_tiny(tiny_bert),
        "task.type=multilabel",
        "task.thresholds=per_label",
        "loss.pos_weight=balanced",
        "monitor=val/f1_macro",
        f"data.train_file={tiny_multilabel / 'train.tsv'}",
        f"data.test_file={tiny_multilabel / 'test.tsv'}",
        "data.label_names=[pos,neg]",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={run_dir}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = read_metrics(run_dir)
    for key in metric_keys(config(type="multilabel"), "val") + metric_keys(
        config(type="multilabel"), "test"
    ):
        assert isinstance(metrics[key], float), key
    assert "val/acc" not in metrics and metrics["monitor"] == "val/f1_macro"
    assert set(metrics["thresholds"]["per_label"]) == {"pos", "neg"}
    assert set(metrics["test/f1_per_label"]) == {"pos", "neg"}
    ckpt = torch.load(metrics["best_ckpt_path"], map_location="cpu", weights_only=True)
    stored = ckpt["state_dict"]["task.thresholds"].tolist()
    assert stored == pytest.approx(list(metrics["thresholds"]["per_label"].values()), abs=1e-4)
    report = json.loads((run_dir / "data_report.json").read_text())
    assert report["task_type"] == "multilabel"
    assert report["splits"]["test"]["class_counts"] == {"pos": 20, "neg": 20}
    assert report["splits"]["test"]["no_label"] == 10
    # src.eval rebuilds the task from the checkpoint: same thresholds, same test metrics
    out = tmp_path / "eval"
    proc = run_cli("src.eval", f"ckpt_path={metrics['best_ckpt_path']}", f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = read_metrics(out)
    assert again["test/f1_macro"] == pytest.approx(metrics["test/f1_macro"], abs=1e-6)
    # src.predict writes the label set (at the stored thresholds) and every probability
    pred = tmp_path / "pred.csv"
    proc = run_cli(
        "src.predict",
        f"ckpt_path={metrics['best_ckpt_path']}",
        f"input={tiny_multilabel / 'test.tsv'}",
        f"out={pred}",
        f"hydra.run.dir={tmp_path / 'pred_run'}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    import pandas as pd

    frame = pd.read_csv(pred, keep_default_na=False)
    assert list(frame.columns) == ["text", "label", "predicted", "prob_pos", "prob_neg"]
    cut = metrics["thresholds"]["per_label"]
    for _, row in frame.iterrows():
        chosen = [n for n in ("pos", "neg") if row[f"prob_{n}"] >= cut[n] - 1e-6]
        assert row["predicted"] == ",".join(chosen)
    # the HF export: problem_type multi_label_classification, so the model's sigmoid outputs
    # and pipeline()'s scores (sigmoid per label, not a softmax) are ftlab's probabilities
    out = export_hf(metrics["best_ckpt_path"], tmp_path)
    hf, batch, ours = hf_and_ftlab(out, metrics["best_ckpt_path"], SENTENCES)
    assert hf.config.problem_type == "multi_label_classification"
    with torch.inference_mode():
        exported = torch.sigmoid(hf(**batch).logits)
    torch.testing.assert_close(exported, ours["probs"], atol=1e-5, rtol=0)
    for scores, ref in zip(hf_pipeline(out)(SENTENCES), ours["probs"], strict=True):
        by_label = {s["label"]: s["score"] for s in scores}
        assert by_label == pytest.approx({"pos": float(ref[0]), "neg": float(ref[1])}, abs=1e-5)
    assert json.loads((out / "export.json").read_text())["task_type"] == "multilabel"


def test_regression_run_reads_a_headerless_sts_file(
    tiny_bert: Path, tiny_pairs: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    proc = run_cli(
        "src.train",
        *_tiny(tiny_bert),
        "task.type=regression",
        "task.standardize=true",
        "monitor=val/pearson",
        f"data.train_file={tiny_pairs / 'sts-train.csv'}",
        f"data.test_file={tiny_pairs / 'sts-test.csv'}",
        "data.delimiter=tab",
        "data.quoting=none",
        "data.header=false",
        "data.column_names=[genre,file,year,id,score,sentence1,sentence2]",
        "data.text_column=sentence1",
        "data.text_pair_column=sentence2",
        "data.label_column=score",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={run_dir}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = read_metrics(run_dir)
    for key in metric_keys(config(type="regression"), "test"):
        assert isinstance(metrics[key], float), key
    report = json.loads((run_dir / "data_report.json").read_text())
    assert report["splits"]["train"]["n_examples"] + report["splits"]["val"]["n_examples"] == 160
    assert report["splits"]["test"]["n_examples"] == 40  # the extra columns and quotes are read
    ckpt = torch.load(metrics["best_ckpt_path"], map_location="cpu", weights_only=True)
    mean = report["splits"]["train"]["target_stats"]["mean"][0]
    assert ckpt["state_dict"]["task.target_mean"].item() == pytest.approx(mean)
    # TensorBoard: predictions against targets at each validation and at the test
    assert image_tags(run_dir) == {"val/pred_vs_target": 2, "test/pred_vs_target": 1}
    # the HF export scores on the targets' scale (mean / std folded into the head): the model
    # and pipeline() (no activation for problem_type=regression) give ftlab's predictions
    out = export_hf(metrics["best_ckpt_path"], tmp_path)
    hf, batch, ours = hf_and_ftlab(out, metrics["best_ckpt_path"], SENTENCES, SENTENCES[::-1])
    assert hf.config.problem_type == "regression"
    with torch.inference_mode():
        exported = hf(**batch).logits
    torch.testing.assert_close(exported, ours["preds"], atol=1e-4, rtol=0)
    pairs = [{"text": a, "text_pair": b} for a, b in zip(SENTENCES, SENTENCES[::-1], strict=True)]
    scores = [row[0] for row in hf_pipeline(out)(pairs)]
    assert [r["label"] for r in scores] == ["score"] * len(SENTENCES)
    assert [r["score"] for r in scores] == pytest.approx(ours["preds"][:, 0].tolist(), abs=1e-4)
    assert json.loads((out / "export.json").read_text())["task_type"] == "regression"


def test_bad_labels_are_reported_before_the_model_loads(
    tiny_bert: Path, tiny_multilabel: Path, tiny_pairs: Path, tmp_path: Path
) -> None:
    proc = run_cli(
        "src.train",
        *_tiny(tiny_bert),
        "task.type=multilabel",
        f"data.train_file={tiny_multilabel / 'train.tsv'}",
        f"data.test_file={tiny_multilabel / 'test.tsv'}",
        "data.label_names=[pos]",  # id 1 is out of range
        "monitor=val/f1_macro",
        f"hydra.run.dir={tmp_path / 'a'}",
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "label 1 at row 2 of" in proc.stderr and "not one of the 1 labels" in proc.stderr
    proc = run_cli(
        "src.train",
        *_tiny(tiny_bert),
        "task.type=regression",
        f"data.train_file={tiny_pairs / 'sts-train.csv'}",
        "data.delimiter=tab",
        "data.quoting=none",
        "data.header=false",
        "data.text_column=5",
        "data.label_column=1",  # the file-name column, not the score
        "monitor=val/pearson",
        f"hydra.run.dir={tmp_path / 'b'}",
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "target 'file' at row 1 of" in proc.stderr and "is not a number" in proc.stderr
    proc = run_cli(
        "src.train",
        *_tiny(tiny_bert),
        f"data.train_file={tiny_multilabel / 'train.tsv'}",
        "task.thresholds=0.3",
        f"hydra.run.dir={tmp_path / 'c'}",
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "task.thresholds is for task.type=multilabel" in proc.stderr
    proc = run_cli(
        "src.train",
        *_tiny(tiny_bert),
        "task.type=regression",
        f"data.train_file={tiny_multilabel / 'train.tsv'}",
        f"hydra.run.dir={tmp_path / 'd'}",
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "monitor='val/acc'; valid for task.type=regression" in proc.stderr


def test_multilabel_cross_validation_folds_keep_the_label_balance(
    tiny_bert: Path, tiny_multilabel: Path, tmp_path: Path
) -> None:
    """cv.folds with task.type=multilabel: folds by iterative stratification, so each fold
    validates on half of each label's 80 positives; the aggregate has the multi-label keys."""
    run_dir = tmp_path / "cv"
    proc = run_cli(
        "src.train",
        *_tiny(tiny_bert),
        "task.type=multilabel",
        "monitor=val/f1_macro",
        "cv.folds=2",
        "trainer.max_epochs=1",
        f"data.train_file={tiny_multilabel / 'train.tsv'}",
        f"data.test_file={tiny_multilabel / 'test.tsv'}",
        "data.label_names=[pos,neg]",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={run_dir}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    val_rows = []
    for k in range(2):
        report = json.loads((run_dir / f"fold_{k}" / "data_report.json").read_text())
        assert report["splits"]["val"]["class_counts"] == {"pos": 40, "neg": 40}
        val_rows.append(report["splits"]["val"]["n_examples"])
    assert val_rows == [80, 80]
    metrics = read_metrics(run_dir)
    assert metrics["cv_folds"] == 2 and isinstance(metrics["test/f1_macro"], float)
