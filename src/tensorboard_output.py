"""What a finished run adds to TensorBoard: its hparams with the final metrics (the HParams tab)
and the test confusion matrix; a cross-validation's summary table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from omegaconf import DictConfig, OmegaConf


def log_final_results(
    loggers: list[Logger],
    cfg: DictConfig,
    metrics: dict[str, Any],
    confusion: Any,
    labels: list[str],
) -> None:
    """hparams + final metrics (the HParams tab), and the test confusion matrix as an image."""
    numeric = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and "/" in k}
    hparams = flat_hparams(cfg)
    for lg in loggers:
        if isinstance(lg, TensorBoardLogger):
            lg.log_hyperparams(hparams, metrics={f"hp/{k}": v for k, v in numeric.items()})
            if confusion is not None:
                lg.experiment.add_figure(
                    "test/confusion_matrix", confusion_figure(confusion, labels)
                )
            lg.finalize("success")


def flat_hparams(cfg: DictConfig) -> dict[str, Any]:
    """The config keys worth comparing across runs, flattened to `a.b.c: value`."""
    keep = (
        "task",
        "model",
        "data",
        "optimizer",
        "scheduler",
        "finetune",
        "trainer",
        "loss",
        "seed",
    )
    container = OmegaConf.to_container(cfg, resolve=True)
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                if not str(k).startswith("_"):
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            flat[prefix] = value if isinstance(value, (int, float, str, bool)) else str(value)

    for key in keep:
        if key in container:
            walk(key, container[key])
    return flat


def confusion_figure(confusion: torch.Tensor, labels: list[str]) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(labels)
    fig, ax = plt.subplots(figsize=(2 + 0.6 * n, 2 + 0.6 * n))
    ax.imshow(confusion.numpy(), cmap="Blues")
    ax.set_xticks(range(n), labels, rotation=45, ha="right")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, int(confusion[i, j]), ha="center", va="center")
    fig.tight_layout()
    return fig


def log_cv_summary(run_dir: Path, aggregate: dict[str, Any]) -> None:
    """The CV summary as a markdown table in TensorBoard's text tab (`<run dir>/tensorboard`)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency; never fail a finished CV over its summary
        return
    rows = ["| metric | mean | std |", "|---|---|---|"]
    for key, value in aggregate.items():
        if "/" in key and not key.endswith("_std") and value is not None:
            std = aggregate.get(f"{key}_std")
            rows.append(f"| {key} | {value:.4f} | {'' if std is None else f'{std:.4f}'} |")
    folds, monitor = aggregate["folds"], str(aggregate["monitor"])
    # the monitored metric on the test split (val/pearson -> test/pearson), for every task type
    test_key = "test/" + monitor.split("/", 1)[1] if monitor.startswith("val/") else "test/acc"
    rows += ["", f"| fold | {monitor} | {test_key} |", "|---|---|---|"]
    for m in folds:
        val, test = m.get(monitor), m.get(test_key)
        rows.append(f"| {m['fold']} | {_fmt(val)} | {_fmt(test)} |")
    with SummaryWriter(str(run_dir / "tensorboard")) as writer:
        writer.add_text("cv/summary", "\n".join(rows))


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "-"
