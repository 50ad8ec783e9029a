"""`make bench`'s overhead section: ftlab and the plain loop in turns, each on a clock of its own."""

from __future__ import annotations

import time

import lightning as L
import pytest
import torch

from src.bench.overhead import InterleavedPlainLoop, interleaved_run
from src.bench.timing import StepLog
from tests.conftest import QUIET, tiny_text_overrides

SLEEP = 0.1  # each loop's step, in seconds


class SleepyModule(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        time.sleep(SLEEP)
        return (self.weight * batch["labels"].float()).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class SleepyPlainLoop:
    def __init__(self) -> None:
        self.steps = StepLog()

    def step(self) -> None:
        if not self.steps.epoch_starts:
            self.steps.epoch_start()
        time.sleep(SLEEP)
        self.steps.step_end(4)


def test_each_loop_is_timed_without_the_other_loops_steps(tmp_path) -> None:
    plain = SleepyPlainLoop()
    turns = InterleavedPlainLoop(plain)
    batches = torch.utils.data.DataLoader([{"labels": 1}] * 24, batch_size=4)
    trainer = L.Trainer(
        max_steps=6,
        callbacks=[turns],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(SleepyModule(), train_dataloaders=batches)

    for log in (turns.ftlab, plain.steps):
        assert len(log.step_ends) == 6
        gaps = [log.step_ends[i] - log.step_ends[i - 1] for i in range(1, 6)]
        # a step's own 0.1 s; with the other loop's step counted in, every gap would be >= 0.2 s
        assert all(SLEEP <= gap < 1.9 * SLEEP for gap in gaps), gaps


def test_a_real_run_and_the_plain_loop_take_the_same_steps(tmp_path, tiny_bert, tiny_text_data):
    overrides = [
        *tiny_text_overrides(tiny_bert, tiny_text_data),
        *QUIET,
        "data.batch_size=32",  # 120 training rows: 4 steps an epoch
        "trainer.max_steps=12",
        "trainer.max_epochs=100",
        "test=false",
    ]
    ftlab, plain, precision = interleaved_run("text", overrides, 12, tmp_path)
    assert precision == "32-true"
    assert len(ftlab.step_ends) == len(plain.step_ends) == 12
    # the same data: the same batch sizes epoch by epoch, and both loops start new epochs
    assert ftlab.batch_sizes == plain.batch_sizes
    assert ftlab.step_epochs == plain.step_epochs
    assert max(ftlab.step_epochs) >= 1
    timed = ftlab.timed(1) & plain.timed(1)
    assert ftlab.throughput(1, timed) > 0 and plain.throughput(1, timed) > 0
    with pytest.raises(ValueError, match="steps timed"):
        ftlab.throughput(12)
