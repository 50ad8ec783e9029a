"""k-fold cross-validation: the folds themselves, a CV run through the CLI, its resume and ensemble."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from src.cv import aggregate_folds
from src.data.splits import fold_split, stratified_folds
from tests.conftest import QUIET, read_metrics, run_cli, tiny_text_overrides

# --------------------------------------------------------------------------- folds (unit)


def test_stratified_folds_partition_the_data_and_keep_the_class_balance() -> None:
    targets = [0] * 70 + [1] * 20 + [2] * 10
    folds = stratified_folds(targets, 5, seed=3)
    flat = [i for f in folds for i in f]
    assert sorted(flat) == list(range(100))  # every example in exactly one fold
    assert {len(f) for f in folds} == {20}
    for f in folds:
        assert Counter(targets[i] for i in f) == {0: 14, 1: 4, 2: 2}


def test_fold_sizes_differ_by_at_most_one_and_seeds_change_the_folds() -> None:
    targets = [0] * 13 + [1] * 8
    folds = stratified_folds(targets, 4, seed=0)
    sizes = [len(f) for f in folds]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == 21
    assert stratified_folds(targets, 4, seed=0) == folds
    assert stratified_folds(targets, 4, seed=1) != folds


def test_fold_split_validates_on_one_fold_and_trains_on_the_rest() -> None:
    targets = [i % 2 for i in range(30)]
    vals = []
    for k in range(3):
        train, val = fold_split(targets, 3, k, seed=7)
        assert not set(train) & set(val) and len(train) + len(val) == 30
        vals.append(set(val))
    assert set().union(*vals) == set(range(30))


def test_aggregate_is_the_mean_with_the_sample_std_beside_it() -> None:
    runs = [{"val/acc": 0.8, "monitor_value": 0.8}, {"val/acc": 0.9}, {"val/acc": 1.0}]
    out = aggregate_folds(runs, "val/acc")
    assert out["val/acc"] == pytest.approx(0.9)
    assert out["val/acc_std"] == pytest.approx(0.1)
    assert out["monitor_value"] == pytest.approx(0.9)
    assert out["test/acc"] is None and out["test/acc_std"] is None  # no fold tested


# --------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def cv_run(tiny_bert, tiny_text_data, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("cv") / "run"
    proc = run_cli(
        "src.train",
        *tiny_text_overrides(tiny_bert, tiny_text_data),
        "cv.folds=3",
        "trainer.max_epochs=4",
        "optimizer.lr=3e-3",
        f"hydra.run.dir={run_dir}",
        *QUIET,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


def test_cv_run_trains_every_fold_and_reports_mean_and_std(cv_run: Path) -> None:
    metrics = read_metrics(cv_run)
    assert metrics["cv_folds"] == 3 and len(metrics["folds"]) == 3
    for k, fold in enumerate(metrics["folds"]):
        assert fold["fold"] == k
        own = read_metrics(cv_run / f"fold_{k}")
        assert fold["val/acc"] == own["val/acc"]
        assert Path(fold["best_ckpt_path"]).is_file()
        assert (cv_run / f"fold_{k}" / "tensorboard").is_dir()
    for key in ("val/acc", "val/loss", "test/acc", "test/f1"):
        values = [f[key] for f in metrics["folds"]]
        assert metrics[key] == pytest.approx(sum(values) / 3)
        assert metrics[f"{key}_std"] is not None
    assert metrics["monitor"] == "val/acc"
    assert metrics["monitor_value"] == metrics["val/acc"]
    # The tiny task is learnable: every fold well above chance on the shared test split.
    assert metrics["test/acc"] > 0.75, metrics


def test_each_fold_validates_on_its_own_fold_of_train(cv_run: Path) -> None:
    """The fold's val set is a third of the 160 training sentences; train + val = all of them."""
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    fold_ckpt = read_metrics(cv_run)["folds"][0]["best_ckpt_path"]
    cfg = OmegaConf.create(torch.load(fold_ckpt, weights_only=True)["hyper_parameters"]["config"])
    val_sets = []
    for k in range(3):
        cfg.data.fold = k
        from src.models.networks import build_processor

        dm = instantiate(cfg.data, processor=build_processor(cfg.model), _recursive_=False)
        dm.setup("fit")
        assert len(dm.splits["train"]) + len(dm.splits["val"]) == 160
        assert len(dm.splits["test"]) == 40
        val_sets.append(len(dm.splits["val"]))
    assert sorted(val_sets) == [53, 53, 54]


def test_cv_resume_keeps_finished_folds_and_redoes_the_missing_one(cv_run: Path, tmp_path) -> None:
    import shutil

    run_dir = Path(shutil.copytree(cv_run, tmp_path / "run"))
    before = {k: (run_dir / f"fold_{k}" / "metrics.json").stat().st_mtime_ns for k in range(3)}
    (run_dir / "fold_2" / "metrics.json").unlink()
    shutil.rmtree(run_dir / "fold_2" / "checkpoints")
    proc = run_cli(
        "src.train",
        *_overrides_of(cv_run),
        "resume=true",
        f"hydra.run.dir={run_dir}",
        *QUIET,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for k in (0, 1):  # untouched: not retrained
        assert (run_dir / f"fold_{k}" / "metrics.json").stat().st_mtime_ns == before[k]
    redone = read_metrics(run_dir / "fold_2")
    assert redone["val/acc"] == read_metrics(cv_run / "fold_2")["val/acc"]  # same seed, fp32
    assert len(read_metrics(run_dir)["folds"]) == 3


def test_ensemble_of_a_cv_run_uses_every_fold(cv_run: Path, tmp_path) -> None:
    out = tmp_path / "ensemble"
    proc = run_cli("src.ensemble", f"run_dirs=[{cv_run}]", f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_members"] == 3
    assert metrics["ensemble/test/acc"] >= min(metrics[f"member{i}/test/acc"] for i in range(3))


@pytest.mark.parametrize("value", ["-2", "two", "2.5"])
def test_bad_fold_counts_fail_early_with_one_line(value: str, tiny_bert, tiny_text_data) -> None:
    proc = run_cli(
        "src.train", *tiny_text_overrides(tiny_bert, tiny_text_data), f"cv.folds={value}"
    )
    assert proc.returncode != 0
    assert "cv.folds" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]


def test_resume_and_an_explicit_checkpoint_disagree(tiny_bert, tiny_text_data, tmp_path) -> None:
    proc = run_cli(
        "src.train",
        *tiny_text_overrides(tiny_bert, tiny_text_data),
        "resume=true",
        "ckpt_path=some/other.ckpt",
        f"hydra.run.dir={tmp_path}",
    )
    assert proc.returncode != 0
    assert "resume=true and ckpt_path" in proc.stderr and "Traceback" not in proc.stderr


def _overrides_of(run_dir: Path) -> list[str]:
    """The overrides the CV run was started with (Hydra saves them in .hydra/overrides.yaml)."""
    import yaml

    overrides = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
    return [o for o in overrides if not o.startswith("hydra.")]


def test_cv_summary_names_the_monitored_metric_on_test_for_every_task_type(tmp_path: Path) -> None:
    """The TensorBoard CV table pairs `monitor` with its test twin (val/pearson -> test/pearson),
    not test/acc, which a regression or multi-label run does not have."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from src.tensorboard_output import log_cv_summary

    folds = [
        {"fold": k, "val/pearson": 0.8 + k / 100, "test/pearson": 0.7 + k / 100} for k in (0, 1)
    ]
    aggregate = {
        "monitor": "val/pearson",
        "folds": folds,
        "test/pearson": 0.705,
        "test/pearson_std": 0.007,
    }
    log_cv_summary(tmp_path, aggregate)
    ea = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"tensors": 0})
    ea.Reload()
    (tag,) = [t for t in ea.Tags()["tensors"] if t.startswith("cv/summary")]
    text = ea.Tensors(tag)[-1].tensor_proto.string_val[0].decode()
    assert "| fold | val/pearson | test/pearson |" in text
    assert "| 1 | 0.8100 | 0.7100 |" in text and "test/acc" not in text
