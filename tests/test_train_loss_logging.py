"""Where the training loss goes, now that the module hands it to Lightning only on logging steps
(`self.log` every step cost ~0.7 ms): the loggers still get every logging step's own loss,
metrics.json the last step's, and the progress lines the loss of the step they report."""

from __future__ import annotations

import logging
import re
from functools import partial

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger
from torch.utils.data import DataLoader

from src.models.classifier import Classifier
from src.progress import ProgressLines
from tests.test_finetune import LABELS, TokenData, bert


class MemoryLogger(Logger):
    """Keeps what Lightning writes: {metric: {step: value}}."""

    def __init__(self) -> None:
        super().__init__()
        self.written: dict[str, dict[int, float]] = {}

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        for key, value in metrics.items():
            self.written.setdefault(key, {})[step] = float(value)


class StepLosses(Callback):
    """Every training step's loss as the step returned it, in step order."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def test_loggers_metrics_and_progress_lines_get_the_right_steps_loss(tiny_bert, tmp_path, caplog):
    module = Classifier(
        network=bert(tiny_bert),
        label_names=LABELS,
        optimizer=partial(torch.optim.AdamW, lr=1e-2),
        config={"monitor": "val/acc", "mode": "max"},
    )
    steps, memory = StepLosses(), MemoryLogger()
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        max_epochs=2,
        accelerator="cpu",
        logger=memory,
        log_every_n_steps=4,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[steps, ProgressLines(every_n_seconds=None, every_n_steps=5)],
    )
    L.seed_everything(0, verbose=False)
    with caplog.at_level(logging.INFO, logger="src.progress"):
        trainer.fit(module, train_dataloaders=DataLoader(TokenData(n=44), batch_size=4))

    assert len(steps.losses) == 22  # 11 steps an epoch, 2 epochs
    # the loggers: steps 3, 7, 11, 15, 19 (0-based; every 4th), each with that step's own loss
    written = memory.written["train/loss"]
    assert sorted(written) == [3, 7, 11, 15, 19]
    for step, value in written.items():
        assert abs(value - steps.losses[step]) < 1e-6, (step, value, steps.losses[step])
    # metrics.json's train/loss: the last step's (21), not the last logging step's (19)
    assert module.last_train_loss is not None
    assert abs(module.last_train_loss - steps.losses[21]) < 1e-6
    assert abs(module.last_train_loss - written[19]) > 1e-6

    # progress lines: every 5th batch of an epoch and the end of each epoch, with that step's loss
    lines = [r.getMessage() for r in caplog.records if r.name == "src.progress"]
    shown = {}
    for line in lines:
        match = re.search(r"step (\d+)/22 .*train/loss (\d+\.\d+)", line)
        assert match, line
        shown[int(match[1])] = float(match[2])
    assert sorted(shown) == [5, 10, 11, 16, 21, 22]
    for step, value in shown.items():
        assert abs(value - steps.losses[step - 1]) < 1e-4, (step, value, steps.losses[step - 1])
