"""Step timing shared by every contestant of `make bench`: the same clock, the same definition.

A step's time runs from the end of the previous step to the end of this one, so it covers
fetching the batch, forward, backward, the optimizer, and whatever the loop does per step
(logging, callbacks). Throughput skips the first `warmup` steps (allocator, worker start-up).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback


class StepLog:
    """End-of-step timestamps and batch sizes, plus the epoch starts, read from `clock`
    (`time.perf_counter`; two loops run in turns each keep a clock that stops while the other
    runs: src/bench/overhead.py)."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.epoch_starts: list[float] = []
        self.step_ends: list[float] = []
        self.step_epochs: list[int] = []
        self.batch_sizes: list[int] = []
        self.tokens: list[int] = []  # text loops: each step's tokens, padding included

    def epoch_start(self) -> None:
        self.epoch_starts.append(self.clock())

    def step_end(self, batch_size: int, tokens: int | None = None) -> None:
        self.step_ends.append(self.clock())
        self.step_epochs.append(len(self.epoch_starts) - 1)
        self.batch_sizes.append(int(batch_size))
        if tokens is not None:
            self.tokens.append(int(tokens))

    def timed(self, warmup: int) -> set[int]:
        """The steps that count: after the first `warmup` ones, and only those whose previous
        step ended in the same epoch: the gap across an epoch boundary holds the validation of
        the Lightning run (which the plain loop does not do) and the loader's restart, neither
        of which is training throughput."""
        return {
            i
            for i in range(warmup + 1, len(self.step_ends))
            if self.step_epochs[i] == self.step_epochs[i - 1]
        }

    def throughput(self, warmup: int, steps: set[int] | None = None) -> float:
        """Samples per second over `steps` (default: the `timed(warmup)` ones)."""
        steps = self.timed(warmup) if steps is None else steps
        if not steps:
            raise ValueError(f"only {len(self.step_ends)} steps timed; need more than {warmup + 1}")
        seconds = sum(self.step_ends[i] - self.step_ends[i - 1] for i in steps)
        return sum(self.batch_sizes[i] for i in steps) / seconds

    def timed_steps(self, warmup: int) -> int:
        return len(self.timed(warmup))

    def seconds_per_1k_tokens(self, warmup: int) -> float:
        """Seconds per 1,000 tokens (padding included) over the `timed(warmup)` steps."""
        if len(self.tokens) != len(self.step_ends):
            raise ValueError(f"tokens of {len(self.tokens)} of {len(self.step_ends)} steps")
        steps = self.timed(warmup)
        seconds = sum(self.step_ends[i] - self.step_ends[i - 1] for i in steps)
        return 1000 * seconds / sum(self.tokens[i] for i in steps)

    def epoch_times(self) -> list[float]:
        """Each epoch's training time: its start to its last step's end (validation excluded)."""
        out = []
        for epoch, start in enumerate(self.epoch_starts):
            ends = [t for t, e in zip(self.step_ends, self.step_epochs, strict=True) if e == epoch]
            if ends:
                out.append(ends[-1] - start)
        return out

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if k != "clock"}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StepLog:
        log = cls()
        for key, value in data.items():
            setattr(log, key, value)
        return log


class StepTimer(Callback):
    """The StepLog of a Lightning run, written as JSON to `out` when training ends.

    Add it to any run: `+callbacks.step_timer._target_=src.bench.timing.StepTimer
    +callbacks.step_timer.out=steps.json`.
    """

    def __init__(self, out: str) -> None:
        self.out = Path(out)
        self.steps = StepLog()
        self.first_step_wall: float | None = None  # time.time() at the end of the first step

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.steps.epoch_start()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx
    ) -> None:
        self.steps.step_end(len(batch["labels"]))
        if self.first_step_wall is None:
            self.first_step_wall = time.time()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(
            json.dumps({**self.steps.as_dict(), "first_step_wall": self.first_step_wall})
        )
