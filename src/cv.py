"""k-fold cross-validation: `python -m src.train cv.folds=K ...`.

Trains K models, fold k validating on the k-th of K stratified, seeded folds of the training data
and training on the rest; every fold tests on the same held-out test split. Each fold is an
ordinary run in `<run dir>/fold_<k>` (its own checkpoints, TensorBoard and metrics.json). The run
dir's metrics.json has the per-fold metrics, and every val/test metric as the mean over folds
(under the usual key, so sweeps and reports read it like any run) with its std beside it
(`<key>_std`). `monitor_value` is the mean, so a sweep with `cv.folds=K` optimizes the CV mean.

Resume (`resume=true` or `ckpt_path=last` with the same `hydra.run.dir`): finished folds are kept,
the interrupted fold continues from its last.ckpt, the rest start fresh.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

from src.errors import ConfigError, require_int
from src.pipeline import train

log = logging.getLogger(__name__)

FOLD_KEYS = ("best_epoch", "best_ckpt_path", "epochs", "global_step", "wall_time_s")


def cv_folds(cfg: DictConfig) -> int | None:
    """K when the run is a cross-validation (`cv.folds=K`), else None; bad values fail early."""
    folds = (cfg.get("cv") or {}).get("folds")
    if folds in (None, 0, 1):
        return None
    return require_int(folds, "cv.folds", 2, " (or null: no CV)")


def fold_config(cfg: DictConfig, folds: int, fold: int, resume: bool) -> DictConfig:
    """The config of one fold: its data split, its own run dir, and where it resumes from."""
    fold_dir = Path(cfg.paths.output_dir) / f"fold_{fold}"
    fcfg = copy.deepcopy(cfg)
    with open_dict(fcfg):
        fcfg.data.folds = folds
        fcfg.data.fold = fold
        fcfg.paths.output_dir = str(fold_dir)
        fcfg.cv.folds = None  # a fold is a single run
        last = fold_dir / "checkpoints" / "last.ckpt"
        fcfg.ckpt_path = str(last) if resume and last.is_file() else None
        fcfg.resume = False
    return fcfg


def cross_validate(cfg: DictConfig) -> dict[str, Any]:
    """Run every fold (skipping finished ones when resuming); write the aggregate metrics.json."""
    from src.results import print_summary, write_metrics
    from src.sweep.trial import ENV_TRIAL_ID, die_with_sweeper, report_cv_fold
    from src.tasks import metric_keys
    from src.tensorboard_output import log_cv_summary

    folds = cv_folds(cfg)
    assert folds is not None
    if cfg.get("ckpt_path") not in (None, "", "last"):
        raise ConfigError(
            f"ckpt_path={cfg.ckpt_path!r} with cv.folds={folds}: a cross-validation resumes as a "
            "whole; use resume=true (or ckpt_path=last) with the same hydra.run.dir"
        )
    resume = bool(cfg.get("resume")) or cfg.get("ckpt_path") == "last"
    if os.environ.get(ENV_TRIAL_ID):
        die_with_sweeper()  # the folds skip the sweep callbacks, which would do this
    started = time.time()
    run_dir = Path(cfg.paths.output_dir)
    per_fold: list[dict[str, Any]] = []
    pruned = False
    for k in range(folds):
        done = run_dir / f"fold_{k}" / "metrics.json"
        if resume and done.is_file():
            log.info("cv: fold %d/%d already finished (%s); keeping it", k + 1, folds, done)
            metrics = json.loads(done.read_text())
        else:
            log.info("cv: fold %d/%d", k + 1, folds)
            metrics = train(fold_config(cfg, folds, k, resume), report_to_sweep=False)
        per_fold.append({"fold": k, **metrics})
        running = _mean([m.get("monitor_value") for m in per_fold])
        if report_cv_fold(cfg, folds_done=k + 1, folds=folds, value=running):
            log.info("cv: pruned by the sweep after fold %d (running mean %s)", k + 1, running)
            pruned = True
            break

    keys = metric_keys(cfg, "val") + metric_keys(cfg, "test")
    aggregate = aggregate_folds(per_fold, cfg.monitor, keys)
    aggregate.update(
        {
            "cv_folds": folds,
            "cv_completed_folds": len(per_fold),
            "cv_pruned": pruned,
            "wall_time_s": round(time.time() - started, 1),
            "folds": [
                {k: v for k, v in m.items() if k == "fold" or "/" in k or k in FOLD_KEYS}
                for m in per_fold
            ],
        }
    )
    write_metrics(run_dir, aggregate)
    print_summary(aggregate, keys)
    log_cv_summary(run_dir, aggregate)
    return aggregate


def aggregate_folds(
    per_fold: list[dict[str, Any]], monitor: str, keys: tuple[str, ...] | None = None
) -> dict[str, Any]:
    """Mean (under the metric's own key) and std (`<key>_std`, sample std) of every val/test metric
    (`keys`: the task type's, src/tasks; multiclass when not given)."""
    from src.results import TEST_KEYS, VAL_KEYS

    out: dict[str, Any] = {}
    for key in (*(keys or VAL_KEYS + TEST_KEYS), "train/loss"):
        values = [m.get(key) for m in per_fold]
        out[key] = _mean(values)
        out[f"{key}_std"] = _std(values)
    out["monitor"] = monitor
    out["monitor_value"] = out.get(monitor)
    return out


def _finite(values: list[Any]) -> list[float]:
    return [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]


def _mean(values: list[Any]) -> float | None:
    xs = _finite(values)
    return sum(xs) / len(xs) if xs and len(xs) == len(values) else None


def _std(values: list[Any]) -> float | None:
    xs = _finite(values)
    if len(xs) != len(values) or len(xs) < 2:
        return None
    mean = sum(xs) / len(xs)
    return math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))
