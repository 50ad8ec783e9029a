"""The callbacks every run has beyond the config's own: the best epoch's val metrics, a check that
the loss stays finite; and the config's `callbacks` / `logger` sections instantiated."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig

from src.errors import FtlabError


def instantiate_callbacks(cfg: DictConfig | None) -> list[Callback]:
    """Each non-null entry with a `_target_` becomes a callback."""
    if not cfg:
        return []
    return [instantiate(c) for c in cfg.values() if c is not None and "_target_" in c]


def instantiate_loggers(cfg: DictConfig | None) -> list[Logger]:
    if not cfg:
        return []
    return [instantiate(c) for c in cfg.values() if c is not None and "_target_" in c]


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
    """The checkpoint callback that keeps the best by a monitor (not the ones writing last.ckpt)."""
    return next(
        (c for c in trainer.callbacks if isinstance(c, ModelCheckpoint) and c.monitor), None
    )


class NonFiniteLossError(FtlabError):
    """The loss went NaN/inf: the run diverged."""


class FiniteLossCheck(Callback):
    """Fail the run when the training loss stops being finite.

    Looks at the loss every `every_n_steps` steps only (each look is a device->host sync), and at
    every validation at `val/loss`, which Lightning has already synced.
    """

    def __init__(self, every_n_steps: int = 25) -> None:
        self.every_n_steps = every_n_steps

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if trainer.global_step % self.every_n_steps:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None and not math.isfinite(float(loss)):
            raise NonFiniteLossError(
                f"train/loss is {float(loss)} at epoch {trainer.current_epoch} step {trainer.global_step}: the run diverged (try a lower optimizer.lr)"
            )

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get("val/loss")
        if not trainer.sanity_checking and value is not None and not math.isfinite(float(value)):
            raise NonFiniteLossError(
                f"val/loss is {float(value)} after epoch {trainer.current_epoch}: the run diverged (try a lower optimizer.lr)"
            )
