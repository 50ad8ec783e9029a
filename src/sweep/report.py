"""A study's report: optimization_results.yaml, trials.csv, best.yaml and Optuna's plots (PNG).

Written by the sweeper after every trial (plots throttled) and at the end; rebuilt for any study
with `python -m src.sweep_report STORAGE STUDY [OUT_DIR]`. Every file is written to a temporary
name and renamed, so a reader (or a second sweep command writing the same report) never sees half.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from src.atomic import atomic_path, write_text_atomic
from src.sweep.best import OVERLAY_NAME, overlay_command, train_command, write_overlay
from src.sweep.study import retry_of
from src.sweep.trial_env import EPOCHS_PLANNED_ATTR, EPOCHS_TRAINED_ATTR

log = logging.getLogger(__name__)

PLOTS: dict[str, str] = {
    "optimization_history": "plot_optimization_history",
    "param_importances": "plot_param_importances",
    "parallel_coordinate": "plot_parallel_coordinate",
    "intermediate_values": "plot_intermediate_values",
    "timeline": "plot_timeline",
}


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One flat row per trial: number, state, value, params, duration, epochs reported, run dir."""
    trials = study.get_trials(deepcopy=False)
    param_names = sorted({k for t in trials for k in t.params})
    replaced = {n: t.number for t in trials for n in retry_of(t)}
    rows = []
    for t in sorted(trials, key=lambda t: t.number):
        duration = t.duration.total_seconds() if t.duration is not None else None
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value,
                **{f"params.{k}": t.params.get(k) for k in param_names},
                "duration_s": round(duration, 1) if duration is not None else None,
                "trial_start": t.user_attrs.get("trial_start"),
                "startup_s": t.user_attrs.get("startup_s"),
                "reported_steps": len(t.intermediate_values),
                "epochs_trained": epochs_of(t)[0],
                "last_step": t.last_step,
                "retry_of": (retry_of(t) or [None])[0],
                "retried_as": replaced.get(t.number),
                "seeded_from": t.user_attrs.get("seeded_from"),
                "enqueued": bool(t.user_attrs.get("enqueued")),
                "run_dir": t.user_attrs.get("run_dir"),
                "host": t.user_attrs.get("host"),
                "error": t.user_attrs.get("error"),
            }
        )
    return rows


def summary(study: optuna.Study, storage_label: str, n_trials: int | None = None) -> dict[str, Any]:
    """What optimization_results.yaml holds."""
    trials = study.get_trials(deepcopy=False)
    counts = {s.name.lower(): sum(1 for t in trials if t.state == s) for s in TrialState}
    completed = [t for t in trials if t.state == TrialState.COMPLETE]
    best: dict[str, Any] | None = None
    if completed:
        best = best_trial_info(study.best_trial)
    seeded = [t for t in trials if t.user_attrs.get("seeded_from")]
    own = [t for t in trials if not t.user_attrs.get("seeded_from")]
    durations = [t.duration.total_seconds() for t in own if t.duration is not None]
    return {
        "study_name": study.study_name,
        "storage": storage_label,
        "direction": study.direction.name.lower(),
        "monitor": study.user_attrs.get("monitor"),
        "n_trials": n_trials if n_trials is not None else study.user_attrs.get("n_trials"),
        "best_value": best["value"] if best else None,
        "best_params": best["params"] if best else None,
        "best_trial": best,
        "counts": counts,
        # Finished trials copied from an earlier study (hydra.sweeper.seed_from), in counts too.
        "seeded_trials": len(seeded),
        # Epochs actually trained, and what pruning saved: the epochs pruned trials were set to
        # train but did not (see epochs_of).
        **epoch_counts(own),
        "trial_time_total_s": round(sum(durations), 1),
        # Median seconds from a trial's launch to its first training step (warm vs cold start).
        "startup_s_median": _median([t.user_attrs.get("startup_s") for t in own]),
        # hydra.sweeper.refit=true: the best configuration trained on all the data, and tested.
        "refit": study.user_attrs.get("refit"),
    }


def epochs_of(trial: FrozenTrial) -> tuple[float, float | None]:
    """(epochs trained, epochs it was set to train) of one trial. The trial reporter records both
    (EPOCHS_TRAINED_ATTR, EPOCHS_PLANNED_ATTR); a trial without them (cross-validation trials
    report folds, older studies) counts one epoch per report and plans none."""
    trained = trial.user_attrs.get(EPOCHS_TRAINED_ATTR)
    if trained is None:
        trained = len(trial.intermediate_values)
    planned = trial.user_attrs.get(EPOCHS_PLANNED_ATTR)
    return float(trained), (float(planned) if planned is not None else None)


def epoch_counts(trials: list[FrozenTrial]) -> dict[str, float]:
    """trial_epochs_total (trained), trial_epochs_saved (pruned trials' planned minus trained) and
    trial_validations_total (reports: pruning steps) over `trials`."""
    trained = saved = 0.0
    for t in trials:
        done, planned = epochs_of(t)
        trained += done
        if t.state == TrialState.PRUNED and planned is not None:
            saved += max(0.0, planned - done)
    return {
        "trial_epochs_total": round(trained, 2),
        "trial_epochs_saved": round(saved, 2),
        "trial_validations_total": sum(len(t.intermediate_values) for t in trials),
    }


def best_trial_info(trial: FrozenTrial) -> dict[str, Any]:
    """The best trial: its run dir, best checkpoint and metrics (from its metrics.json, when the
    run dir is on this machine), the overrides it ran with and the command that reruns it."""
    run_dir = trial.user_attrs.get("run_dir")
    metrics = _read_metrics(Path(run_dir) / "metrics.json") if run_dir else None
    info: dict[str, Any] = {
        "number": trial.number,
        "value": trial.value,
        "params": dict(trial.params),
        "run_dir": run_dir,
        "checkpoint": None,
        "metrics": None,
    }
    if trial.user_attrs.get("seeded_from"):
        info["seeded_from"] = trial.user_attrs["seeded_from"]
    if metrics is not None:
        folds = metrics.get("folds")
        # A cross-validation trial (cv.folds=K) has one best checkpoint per fold.
        info["checkpoint"] = (
            [f.get("best_ckpt_path") for f in folds]
            if isinstance(folds, list)
            else metrics.get("best_ckpt_path")
        )
        info["metrics"] = {
            k: v for k, v in metrics.items() if isinstance(v, (int, float)) or v is None
        }
    overrides = trial.user_attrs.get("overrides")
    if overrides is not None:
        info["overrides"] = list(overrides)
        info["command"] = train_command(overrides)
    return info


def write_best_overlay(study: optuna.Study, info: dict[str, Any], out_dir: Path) -> bool:
    """`<out_dir>/best.yaml` from the best trial's overrides; False when there is none to write."""
    best = info.get("best_trial")
    path = out_dir / OVERLAY_NAME
    if not best or best.get("overrides") is None:
        path.unlink(missing_ok=True)
        return False
    header = [
        f"Best trial of study {study.study_name!r}: trial {best['number']}, "
        f"{info.get('monitor') or 'value'} = {best['value']} ({best.get('run_dir')})",
        "Its overrides as a config over conf/train.yaml. Reproduce it (a new run dir) with:",
        f"  {overlay_command(out_dir)}",
        "Add overrides as usual, e.g. data.limit_train=null to train on all the data.",
    ]
    refit = info.get("refit") or {}
    overrides = best["overrides"]
    if refit.get("state") == "COMPLETE" and refit.get("trial") == best["number"]:
        overrides = refit["overrides"]
        header[0] = (
            f"Refit of the best trial of study {study.study_name!r} (trial {best['number']}) on "
            f"all the training data: {refit.get('run_dir')}"
        )
        header[-1] = "Add overrides as usual."
    groups = study.user_attrs.get("config_groups") or []
    return write_overlay(path, overrides, groups, header)


def write_report(
    study: optuna.Study,
    out_dir: Path,
    storage_label: str = "",
    n_trials: int | None = None,
    plots: bool = True,
) -> dict[str, Any]:
    """Write the report into `out_dir`; returns the summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    info = summary(study, storage_label, n_trials)
    if write_best_overlay(study, info, out_dir):
        info["best_trial"]["overlay"] = str(out_dir / OVERLAY_NAME)
        info["best_trial"]["overlay_command"] = overlay_command(out_dir)
    write_text_atomic(
        out_dir / "optimization_results.yaml", yaml.safe_dump(_plain(info), sort_keys=False)
    )
    rows = trial_rows(study)
    buf = io.StringIO()
    fields = (
        list(rows[0]) if rows else ["number", "state", "value", "duration_s", "run_dir", "error"]
    )
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out_dir / "trials.csv", buf.getvalue())
    if plots:
        write_plots(study, out_dir / "plots")
    return info


def write_plots(study: optuna.Study, out_dir: Path) -> list[Path]:
    """Optuna's matplotlib plots as PNG; a plot the study cannot support yet is skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    for name, func_name in PLOTS.items():
        if name in ("param_importances", "parallel_coordinate") and len(complete) < 2:
            continue  # importances and coordinates need at least two finished trials
        plot: Callable[..., Any] = getattr(ovm, func_name)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = plot(study)
            fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
            fig.set_size_inches(9, 5.5)
            fig.tight_layout()
            with atomic_path(out_dir / f"{name}.png") as tmp:
                fig.savefig(tmp, dpi=90, format="png")
            written.append(out_dir / f"{name}.png")
        except Exception as e:  # e.g. importances with a single distinct value
            log.info("plot %s skipped: %s", name, e)
        finally:
            plt.close("all")
    return written


def _median(values: list[Any]) -> float | None:
    import statistics

    numbers = [float(v) for v in values if isinstance(v, (int, float))]
    return round(statistics.median(numbers), 2) if numbers else None


def _read_metrics(path: Path) -> dict[str, Any] | None:
    import json

    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _plain(value: Any) -> Any:
    """YAML-safe: numpy scalars and NaN/inf become plain floats / strings."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    return value
