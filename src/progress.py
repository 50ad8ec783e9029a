"""Training progress: Rich's bar on a terminal, plain periodic lines in a file, CI or batch log.

`callbacks.progress_bar` (conf/callbacks/default.yaml) builds one with `progress_bar`:
`kind=auto` picks by whether stdout and stderr are terminals, `rich` / `lines` force one,
`callbacks.progress_bar=null` shows no progress at all.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar

from src.console import is_interactive
from src.errors import ConfigError

log = logging.getLogger(__name__)

KINDS = ("auto", "rich", "lines")


def progress_bar(
    kind: str = "auto",
    every_n_seconds: float | None = 30.0,
    every_n_steps: int | None = None,
    leave: bool = True,
) -> ProgressBar:
    """The progress callback for this console: `auto` = Rich on a terminal, lines elsewhere."""
    if kind not in KINDS:
        raise ConfigError(f"callbacks.progress_bar.kind={kind!r}; valid: {', '.join(KINDS)}")
    if kind == "auto":
        kind = "rich" if is_interactive() else "lines"
    if kind == "rich":
        return RichProgressBar(leave=leave)
    return ProgressLines(every_n_seconds=every_n_seconds, every_n_steps=every_n_steps)


class ProgressLines(ProgressBar):
    """Logs one plain line every `every_n_seconds` seconds and/or every `every_n_steps` batches:

        train epoch 1/3  step 1200/6315 (19%)  train/loss 0.3121  68.2 samples/s  elapsed 0:02:56  ETA 0:12:29

    and one line at the end of each epoch and validation (with the val/* metrics). Validation,
    test and predict loops get the same periodic lines (batch counts). The lines go to the
    `src.progress` logger: Hydra's console and the run's log file.

    A line's `train/loss` is the loss of the step just done, read from the step's output when
    the line is written (the module logs it to Lightning only on logging steps).
    """

    def __init__(self, every_n_seconds: float | None = 30.0, every_n_steps: int | None = None):
        super().__init__()
        if every_n_seconds is not None and not every_n_seconds > 0:
            raise ConfigError(
                f"callbacks.progress_bar.every_n_seconds={every_n_seconds!r}: must be > 0 or null"
            )
        if every_n_steps is not None and not (isinstance(every_n_steps, int) and every_n_steps > 0):
            raise ConfigError(
                f"callbacks.progress_bar.every_n_steps={every_n_steps!r}: must be an int > 0 or null"
            )
        if every_n_seconds is None and every_n_steps is None:
            raise ConfigError(
                "callbacks.progress_bar: every_n_seconds and every_n_steps are both null; set one "
                "(or callbacks.progress_bar=null for no progress)"
            )
        self.every_n_seconds, self.every_n_steps = every_n_seconds, every_n_steps
        self._enabled = True
        now = time.monotonic()
        # training: start time, last line's time and sample count, samples, steps at the start
        self._start = self._last = now
        self._samples = self._last_samples = 0
        self._start_step = 0
        self._total: float = math.inf
        self._step_output: Any = None  # the last training step's output: its loss
        # the current validation / test / predict loop
        self._eval_stage, self._eval_start, self._eval_last, self._eval_samples = "", now, now, 0

    # ProgressBar's interface
    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def _due(self, batches_done: int, last: float) -> bool:
        if not self.is_enabled:
            return False
        if self.every_n_steps and batches_done % self.every_n_steps == 0:
            return True
        return self.every_n_seconds is not None and time.monotonic() - last >= self.every_n_seconds

    # ---------------------------------------------------------------------------------- training
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = self._last = time.monotonic()
        self._samples = self._last_samples = 0
        self._start_step = trainer.global_step
        total = trainer.estimated_stepping_batches
        self._total = float(total) if isinstance(total, (int, float)) and total > 0 else math.inf

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._samples += _batch_size(batch)
        self._step_output = outputs
        if self._due(batch_idx + 1, self._last):
            self._train_line(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.is_enabled:
            self._train_line(trainer, pl_module, end_of_epoch=True)

    def _train_line(
        self, trainer: L.Trainer, pl_module: L.LightningModule, end_of_epoch: bool = False
    ) -> None:
        now = time.monotonic()
        step, total = trainer.global_step, self._total
        parts = [_epoch(trainer) + (" done" if end_of_epoch else "")]
        if math.isfinite(total):
            parts.append(f"step {step}/{int(total)} ({100 * step / total:.0f}%)")
        else:
            parts.append(f"step {step}")
        metrics = dict(self.get_metrics(trainer, pl_module))
        loss = _step_loss(self._step_output, trainer.accumulate_grad_batches)
        if loss is not None:
            metrics["train/loss"] = loss
        parts += _metrics(metrics, exclude=("v_num",))
        if now > self._last and self._samples > self._last_samples:  # since the last line
            parts.append(
                f"{(self._samples - self._last_samples) / (now - self._last):.1f} samples/s"
            )
        elapsed = now - self._start
        parts.append(f"elapsed {_hms(elapsed)}")
        done = step - self._start_step
        if done > 0 and math.isfinite(total) and total > step:
            parts.append(f"ETA {_hms(elapsed / done * (total - step))}")
        self._last, self._last_samples = now, self._samples
        log.info("train %s", "  ".join(parts))

    # ------------------------------------------------------------------- validation/test/predict
    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._begin_eval("val", trainer)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._begin_eval("test", trainer)

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._begin_eval("predict", trainer)

    def _begin_eval(self, stage: str, trainer: L.Trainer) -> None:
        self._eval_stage = stage
        self._eval_start = self._eval_last = time.monotonic()
        self._eval_samples = 0

    def _eval_batch(self, batch: Any, batch_idx: int, total: float) -> None:
        self._eval_samples += _batch_size(batch)
        done = batch_idx + 1
        if not self._due(done, self._eval_last):
            return
        now = self._eval_last = time.monotonic()
        elapsed = now - self._eval_start
        parts = [f"batch {done}/{int(total)}" if math.isfinite(total) else f"batch {done}"]
        if elapsed > 0 and self._eval_samples:
            parts.append(f"{self._eval_samples / elapsed:.1f} samples/s")
        parts.append(f"elapsed {_hms(elapsed)}")
        if math.isfinite(total) and total > done:
            parts.append(f"ETA {_hms(elapsed / done * (total - done))}")
        log.info("%s %s", self._eval_stage, "  ".join(parts))

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not trainer.sanity_checking:
            self._eval_batch(batch, batch_idx, _nth(trainer.num_val_batches, dataloader_idx))

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._eval_batch(batch, batch_idx, _nth(trainer.num_test_batches, dataloader_idx))

    def on_predict_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._eval_batch(batch, batch_idx, _nth(trainer.num_predict_batches, dataloader_idx))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self.is_enabled:
            return
        metrics = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        line = "  ".join(_metrics(metrics))
        log.info("val %s  %s", _epoch(trainer), line or "(no val metrics)")


def _nth(totals: Any, i: int) -> float:
    """Batch count `i` of Lightning's per-dataloader list (inf when unknown)."""
    try:
        return float(totals[i])
    except (IndexError, TypeError, ValueError):
        return math.inf


def _epoch(trainer: L.Trainer) -> str:
    max_epochs = trainer.max_epochs
    if max_epochs is not None and max_epochs > 0:
        return f"epoch {trainer.current_epoch + 1}/{max_epochs}"
    return f"epoch {trainer.current_epoch + 1}"


def _metrics(metrics: dict[str, Any], exclude: tuple[str, ...] = ()) -> list[str]:
    out = []
    for key in sorted(metrics):
        if key in exclude:
            continue
        value = metrics[key]
        try:
            out.append(f"{key} {float(value):.4f}")
        except (TypeError, ValueError):
            out.append(f"{key} {value}")
    return out


def _step_loss(output: Any, accumulate_grad_batches: int) -> float | None:
    """The training step's loss from its output as Lightning hands it to callbacks: a tensor or
    a dict with "loss", divided by the gradient accumulation (undone here)."""
    loss = output.get("loss") if isinstance(output, Mapping) else output
    if loss is None or not hasattr(loss, "item"):
        return None
    return float(loss.item()) * accumulate_grad_batches


def _batch_size(batch: Any) -> int:
    """The leading dimension of the batch's first tensor (dict, list/tuple or tensor batches)."""
    if hasattr(batch, "shape") and len(batch.shape) > 0:
        return int(batch.shape[0])
    if isinstance(batch, Mapping):  # dicts and transformers' BatchEncoding
        values: Any = batch.values()
    elif isinstance(batch, (list, tuple)):
        values = batch
    else:
        return 0
    for value in values:
        size = _batch_size(value)
        if size:
            return size
    return 0


def _hms(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
