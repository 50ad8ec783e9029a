"""One LightningModule for every modality and task type: a network with layer groups, and the
task object (src/tasks) for the loss, the metrics and what a prediction is."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch.optim import Optimizer
from torchmetrics import MaxMetric, MeanMetric

from src.models.networks import Network
from src.optim import discriminative_param_groups, scheduler_config
from src.tasks import build_task
from src.tasks.objectives import Task, classification_metrics

__all__ = ["Classifier", "classification_metrics"]


class Classifier(L.LightningModule):
    """Fine-tuning of `network` for `task` (multiclass cross-entropy when none is given: the
    config's task.type decides); logs `train/loss`, `val/*`, `test/*`."""

    def __init__(
        self,
        network: Network,
        label_names: Sequence[str],
        optimizer: Callable[..., Optimizer],
        scheduler: dict[str, Any] | None = None,
        lr_decay: float = 1.0,
        label_smoothing: float = 0.0,
        class_weights: Sequence[float] | None = None,
        config: dict[str, Any] | None = None,
        task: Task | None = None,
    ) -> None:
        super().__init__()
        # `config` is the whole resolved run config: eval/predict rebuild the run from it.
        self.save_hyperparameters(ignore=["network", "optimizer", "task"], logger=False)
        self.network = network
        self.optimizer_factory = optimizer
        if task is None:
            task = build_task(config, label_names, label_smoothing, class_weights)
        self.task = task
        self.val_metrics = task.metrics("val/")
        self.test_metrics = task.metrics("test/")
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.val_best = MaxMetric()  # of val/<task.spec.best>, logged as val/<best>_best
        self.test_confusion = task.confusion_metric()
        self._last_train_loss: torch.Tensor | None = None  # of the last training step

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.network(batch)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.task.loss(logits, labels)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._loss(self(batch), batch["labels"])
        self._last_train_loss = loss.detach()  # no device->host sync: read at the end only
        # `self.log` costs ~0.7 ms a step (Lightning's result collection; more than anything
        # else ftlab adds to a step, experiments/bench/step_overhead.py), so the loss goes to
        # Lightning only on the steps whose values the loggers write (every
        # trainer.log_every_n_steps, as Lightning's own LearningRateMonitor checks): the same
        # TensorBoard curve as logging every step. Progress lines read the step's output.
        if self.trainer._logger_connector.should_update_logs:
            self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    @property
    def last_train_loss(self) -> float | None:
        """The loss of the last training step this module ran (metrics.json's `train/loss`)."""
        loss = self._last_train_loss
        return None if loss is None else float(loss)

    def _eval_step(
        self, batch: dict[str, torch.Tensor], metrics, mean_loss
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's logits and predictions; its loss and metrics added to the epoch's."""
        logits = self(batch)
        labels = batch["labels"]
        mean_loss.update(self._loss(logits, labels), weight=len(labels))
        return logits, self.task.update(metrics, logits, labels)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics, self.val_loss)

    def on_validation_epoch_end(self) -> None:
        # multi-label: the decision thresholds are tuned on these outputs (and checkpointed)
        values = self.task.compute(self.val_metrics, "val/", tune=True)
        values["val/loss"] = self.val_loss.compute()
        best = f"val/{self.task.spec.best}"
        self.val_best.update(values[best])
        values[f"{best}_best"] = self.val_best.compute()
        self.log_dict(values, prog_bar=False, sync_dist=False)
        self._log_figures(self.val_metrics, "val/")
        self.val_metrics.reset()
        self.val_loss.reset()

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits, preds = self._eval_step(batch, self.test_metrics, self.test_loss)
        if self.test_confusion is not None:
            self.test_confusion.update(preds, batch["labels"])
        return logits  # what callbacks see of the batch: the error analysis (src/analysis.py)

    def on_test_epoch_end(self) -> None:
        values = self.task.compute(self.test_metrics, "test/")
        values["test/loss"] = self.test_loss.compute()
        self.log_dict(values)
        self._log_figures(self.test_metrics, "test/")
        self.test_metrics.reset()
        self.test_loss.reset()
        if self.test_confusion is not None:
            self.confusion_matrix = self.test_confusion.compute().cpu()
            self.test_confusion.reset()

    def _log_figures(self, metrics: Any, prefix: str) -> None:
        """The task's figures of this epoch (regression: predictions vs targets) as TensorBoard
        images. Called after the task computed `metrics` (cached: no second sync across ranks)."""
        writers = [lg.experiment for lg in self.loggers if isinstance(lg, TensorBoardLogger)]
        if not writers or self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        import matplotlib.pyplot as plt

        for tag, figure in self.task.figures(metrics, prefix).items():
            for writer in writers:
                writer.add_figure(tag, figure, global_step=self.global_step, close=False)
            plt.close(figure)

    def _grad_scaler(self) -> Any:
        return getattr(self.trainer.precision_plugin, "scaler", None)

    def configure_gradient_clipping(
        self,
        optimizer: Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip as Lightning does, also for a fused optimizer under bf16-mixed: Lightning's AMP
        plugin refuses to clip for any fused optimizer, which is only needed with a GradScaler
        (fp16); bf16 gradients are unscaled, so clipping them before the step is exact."""
        if gradient_clip_val and optimizer.defaults.get("fused") and self._grad_scaler() is None:
            params = [p for group in optimizer.param_groups for p in group["params"]]
            if gradient_clip_algorithm == "value":
                torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
            else:
                torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self) -> dict[str, Any]:
        factory = self.optimizer_factory
        lr = factory.keywords["lr"]
        weight_decay = factory.keywords.get("weight_decay", 0.0)
        groups = discriminative_param_groups(self.network, lr, self.hparams.lr_decay, weight_decay)
        if factory.keywords.get("fused") and self._grad_scaler() is not None:
            # fp16 loss scaling: gradients must be unscaled before clipping, which a fused
            # optimizer (it unscales inside its step) does not allow; use the foreach kernels.
            factory = functools.partial(factory.func, **{**factory.keywords, "fused": False})
        optimizer = factory(groups)
        sched = self.hparams.scheduler or {"name": "constant", "warmup": 0}
        total = int(self.trainer.estimated_stepping_batches)
        run = self.hparams.config or {}  # plateau's default metric and direction
        return {
            "optimizer": optimizer,
            "lr_scheduler": scheduler_config(
                dict(sched), optimizer, total, run.get("monitor"), run.get("mode")
            ),
        }
