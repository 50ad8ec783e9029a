"""Task types: what differs between single-label classification, multi-label tagging and
regression, behind one object per type (`task.type: multiclass | multilabel | regression`).

This module is the light half (no torch): the names, metric keys and monitored metrics each type
declares, read by the config checks before any heavy import. The torch half (loss, metrics,
post-processing of logits, decision thresholds) is `src/tasks/objectives.py`, built with
`build_task`. Adding a type: a class there, a `TaskSpec` here, a config in conf/task/.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from src.errors import ConfigError


@dataclass(frozen=True)
class TaskSpec:
    """What the rest of ftlab needs to know of a task type without building it."""

    name: str
    metrics: tuple[str, ...]  # logged as val/<m> and test/<m>, beside val/loss and test/loss
    best: str  # the val metric whose best value is also logged as val/<best>_best (max)
    monitor: str  # a sensible `monitor` for this type, and its `mode`
    mode: str
    labels: str  # how the labels are read, for messages

    def keys(self, split: str) -> tuple[str, ...]:
        """The run contract's metric keys of `split` (val, test): loss first."""
        return (f"{split}/loss", *(f"{split}/{m}" for m in self.metrics))

    @property
    def monitored(self) -> tuple[str, ...]:
        """The metrics `monitor=` may name."""
        return tuple(sorted(self.keys("val")))


SPECS: dict[str, TaskSpec] = {
    "multiclass": TaskSpec(
        "multiclass",
        ("acc", "precision", "recall", "f1"),
        best="acc",
        monitor="val/acc",
        mode="max",
        labels="one class per example",
    ),
    "multilabel": TaskSpec(
        "multilabel",
        ("f1_macro", "f1_micro", "map"),
        best="f1_macro",
        monitor="val/f1_macro",
        mode="max",
        labels="a set of labels per example (`8,20`, a JSON list, or data.label_columns of 0/1)",
    ),
    "regression": TaskSpec(
        "regression",
        ("rmse", "mae", "r2", "pearson", "spearman"),
        best="pearson",
        monitor="val/pearson",
        mode="max",
        labels="a number per example (or per data.label_columns)",
    ),
}


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    if cfg is None:
        return default
    value = cfg.get(key, default) if isinstance(cfg, Mapping) or hasattr(cfg, "get") else default
    return default if value is None else value


def task_type(cfg: Any) -> str:
    """`task.type` of a run config (DictConfig or plain dict); multiclass when unset."""
    name = str(_get(_get(cfg, "task"), "type", "multiclass"))
    if name not in SPECS:
        raise ConfigError(f"task.type={name!r} is invalid; valid: {', '.join(SPECS)}")
    return name


def spec_of(cfg: Any) -> TaskSpec:
    return SPECS[task_type(cfg)]


def metric_keys(cfg: Any, split: str) -> tuple[str, ...]:
    return spec_of(cfg).keys(split)


def build_task(
    config: Any,
    label_names: Sequence[str],
    label_smoothing: float = 0.0,
    class_weights: Sequence[float] | None = None,
    pos_weight: Sequence[float] | None = None,
    target_stats: Mapping[str, Sequence[float]] | None = None,
) -> Any:
    """The task object (an nn.Module: loss, metrics, post-processing) of a run config.

    The weights and statistics come from the training data (train.py); a module rebuilt from a
    checkpoint gets its stored buffers (thresholds, target mean / std) from the state dict."""
    from src.tasks import objectives

    name = task_type(config)
    task = _get(config, "task")
    loss = _get(config, "loss")
    if name == "multiclass":
        return objectives.Multiclass(label_names, label_smoothing, class_weights)
    if name == "multilabel":
        return objectives.Multilabel(
            label_names, pos_weight=pos_weight, thresholds=_get(task, "thresholds", "per_label")
        )
    return objectives.Regression(
        label_names,
        huber_delta=_get(loss, "huber_delta"),
        standardize=bool(_get(task, "standardize", False)),
        target_stats=target_stats,
    )


def check_task_config(cfg: Any) -> None:
    """task.type, its own settings, and loss settings that belong to another type."""
    name = task_type(cfg)
    task, loss = _get(cfg, "task", {}), _get(cfg, "loss", {})
    if name != "multiclass":
        if float(_get(loss, "label_smoothing", 0.0)) != 0.0:
            raise ConfigError(f"loss.label_smoothing is for task.type=multiclass, not {name}")
        if _get(loss, "class_weights") is not None:
            hint = "; use loss.pos_weight=balanced" if name == "multilabel" else ""
            raise ConfigError(f"loss.class_weights is for task.type=multiclass, not {name}{hint}")
    if name != "multilabel":
        if _get(task, "thresholds") is not None:
            raise ConfigError(
                f"task.thresholds is for task.type=multilabel (decision thresholds on "
                f"sigmoid outputs); this task is {name}"
            )
        if _get(loss, "pos_weight") is not None:
            raise ConfigError(f"loss.pos_weight is for task.type=multilabel, not {name}")
    else:
        check_thresholds(_get(task, "thresholds", "per_label"))
        weight = _get(loss, "pos_weight")
        if weight is not None and weight != "balanced":
            raise ConfigError(f"loss.pos_weight={weight!r} is invalid; valid: null, balanced")
    if name != "regression":
        for key, where in (("huber_delta", loss), ("standardize", task)):
            if _get(where, key) not in (None, False):
                section = "loss" if where is loss else "task"
                raise ConfigError(f"{section}.{key} is for task.type=regression, not {name}")
    else:
        delta = _get(loss, "huber_delta")
        if delta is not None and (isinstance(delta, bool) or not float(delta) > 0):
            raise ConfigError(
                f"loss.huber_delta={delta!r} is invalid: must be a float > 0 (or null: MSE)"
            )
    data = _get(cfg, "data", {})
    data_type = _get(data, "task_type")
    if data_type is not None and data_type != name:
        raise ConfigError(
            f"data.task_type={data_type} but task.type={name}: the data is read for the task "
            f"type (set data.task_type=${{task.type}})"
        )
    if name != "multiclass" and data_type is None and "_target_" in data:
        if str(data["_target_"]).endswith(("TextDataModule", "ImageCsvDataModule")):
            raise ConfigError(
                f"task.type={name} needs data.task_type=${{task.type}} so the labels are read "
                "as its type does (task=text_csv and task=image_csv have it)"
            )
        raise ConfigError(
            f"task.type={name} needs labels read as {name} labels: task=text_csv for text, "
            "task=image_csv for images (an image folder holds one class per image)"
        )


def check_thresholds(value: Any) -> None:
    if value in ("per_label", "global"):
        return
    try:
        ok = not isinstance(value, bool) and 0.0 < float(value) < 1.0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(
            f"task.thresholds={value!r} is invalid; valid: per_label (tuned on val, one per "
            "label), global (tuned on val, one for all), or a fixed float in (0, 1)"
        )
