"""The pieces of a run that are not the training loop: callbacks, loggers, results on disk."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

# The names of the run contract: metrics.json always has these keys.
VAL_KEYS = ("val/loss", "val/acc", "val/precision", "val/recall", "val/f1")
TEST_KEYS = ("test/loss", "test/acc", "test/precision", "test/recall", "test/f1")


def instantiate_callbacks(cfg: DictConfig | None) -> list[Callback]:
    """Each non-null entry with a `_target_` becomes a callback."""
    if not cfg:
        return []
    return [instantiate(c) for c in cfg.values() if c is not None and "_target_" in c]


def instantiate_loggers(cfg: DictConfig | None) -> list[Logger]:
    if not cfg:
        return []
    return [instantiate(c) for c in cfg.values() if c is not None and "_target_" in c]


def cpu_has_fast_bf16() -> bool:
    """AMX or AVX512-BF16: bf16 matmuls run natively (about 1.7x fp32 for MiniLM here)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(precision: Any, accelerator: str) -> Any:
    """`auto`: bf16-mixed where the hardware does bf16 fast, else full fp32."""
    if precision != "auto":
        return precision
    use_gpu = accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available()
    if use_gpu:
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_has_fast_bf16() else "32-true"


class BestValMetrics(Callback):
    """Keeps every val/* metric of the epoch that scored best on `monitor` (as checkpointing)."""

    def __init__(self, monitor: str, mode: str) -> None:
        self.monitor, self.mode = monitor, mode
        self.best: dict[str, float] = {}

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        current = metrics.get(self.monitor)
        if current is None:
            return
        previous = self.best.get(self.monitor)
        better = previous is None or (
            current > previous if self.mode == "max" else current < previous
        )
        if better:
            self.best = {**metrics, "epoch": trainer.current_epoch, "step": trainer.global_step}

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = state_dict.get("best", {})


def checkpoint_callback(trainer: L.Trainer) -> ModelCheckpoint | None:
    return next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write-then-rename, so a killed run never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


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


def print_summary(metrics: dict[str, Any]) -> None:
    shown = [k for k in (*VAL_KEYS, *TEST_KEYS) if metrics.get(k) is not None]
    line = "  ".join(f"{k}={metrics[k]:.4f}" for k in shown)
    print(f"ftlab: {line}", file=sys.stderr, flush=True)
