"""Two training loops of any kind taking turns, a step each, in two threads of one process or
in two processes.

make bench compares ftlab with transformers' Trainer. Timed one after the other, the same pair
gave ratios from 0.88 to 1.02 as the machine's speed drifted between runs. In turns, both
loops see the same machine: loop 0 does a step, then loop 1, then loop 0, ... Only one loop
runs at a time (the other blocks on a semaphore, holding neither the GIL nor a core), and each
loop reads a clock that stops while it waits (`Turns.clock(i)` for its StepLog), so its time
is its own. Hooks: `LightningTurn` (a Lightning callback) and `hf_turn` (a transformers
TrainerCallback); src/bench/overhead.py does the same with a plain loop stepped from a
Lightning callback, which needs no second thread.

In threads, the loops share the process: its allocator and torch's global random generator (in
strict turns the draws interleave the same way every time, but a loop's dropout masks are not
those of the same seed run alone). In processes (`Turns(ctx=...)`), each loop has its own:
src/bench/hf.py runs HF Trainer so, in a process with glibc's allocator and libgomp's spin, as
users run it, beside ftlab's, which sets its own (src/allocator.py, src/__init__.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from src.bench.timing import StepLog


class Turns:
    """Turn-taking of `n` loops: `begin(i)` before loop i's first step (every loop waits there
    until all are ready, then loop 0 goes first), `step_done(i)` after each of its steps (the
    next loop goes, i waits for its turn), `finish(i)` when it has no more steps or failed (the
    others go on without it; a loop still waiting to begin gets BrokenBarrierError).

    Loops in threads of one process by default; with `ctx` a multiprocessing context (spawn),
    loops in processes of their own: pass the Turns to each process when it starts. `order` then
    holds up to `capacity` steps."""

    def __init__(self, n: int = 2, ctx: Any = None, capacity: int = 100_000) -> None:
        self.n = n
        sync = threading if ctx is None else ctx
        self._go = [sync.Semaphore(0) for _ in range(n)]
        self._ready = sync.Barrier(n)
        self._finished: Any = [False] * n if ctx is None else ctx.Array("b", n, lock=False)
        self._order: Any = [] if ctx is None else ctx.Array("b", capacity, lock=False)
        self._steps: Any = None if ctx is None else ctx.Value("i", 0, lock=False)
        self._waited = [0.0] * n  # seconds each loop spent waiting for its turn (this process's)

    @property
    def order(self) -> list[int]:
        """The loop of each step done, in the order they were done."""
        if self._steps is None:
            return self._order
        return list(self._order[: self._steps.value])

    def clock(self, i: int) -> Callable[[], float]:
        """Loop i's clock: perf_counter less the time it waited."""
        return lambda: time.perf_counter() - self._waited[i]

    def begin(self, i: int) -> None:
        self._wait(i, self._ready.wait)
        if i != 0:
            self._wait(i, self._go[i].acquire)

    def step_done(self, i: int) -> None:
        if self._steps is None:
            self._order.append(i)
        elif self._steps.value < len(self._order):  # only the loop whose turn it is writes
            self._order[self._steps.value] = i
            self._steps.value += 1
        following = self._following(i)
        if following is None:
            return  # every other loop has finished: go on alone
        self._go[following].release()
        self._wait(i, self._go[i].acquire)

    def finish(self, i: int) -> None:
        if self._finished[i]:
            return
        self._finished[i] = True
        self._ready.abort()  # a loop that has not begun yet will not wait for this one
        following = self._following(i)
        if following is not None:
            self._go[following].release()

    def _following(self, i: int) -> int | None:
        for k in range(1, self.n):
            j = (i + k) % self.n
            if not self._finished[j]:
                return j
        return None

    def _wait(self, i: int, block: Callable[[], Any]) -> None:
        started = time.perf_counter()
        try:
            block()
        finally:
            self._waited[i] += time.perf_counter() - started


class LightningTurn(Callback):
    """Loop `index` of `turns`: a Lightning run's training steps, timed in `self.steps`."""

    def __init__(self, turns: Turns, index: int) -> None:
        self.turns, self.index = turns, index
        self.steps = StepLog(clock=turns.clock(index))
        self._begun = False

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._begun:
            self._begun = True
            self.turns.begin(self.index)
        self.steps.epoch_start()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx
    ) -> None:
        ids = batch.get("input_ids") if isinstance(batch, Mapping) else None
        self.steps.step_end(len(batch["labels"]), None if ids is None else ids.numel())
        self.turns.step_done(self.index)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.turns.finish(self.index)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exc) -> None:
        self.turns.finish(self.index)


def hf_turn(turns: Turns, index: int) -> Any:
    """Loop `index` of `turns`: a transformers Trainer (its steps are timed by `hf_trainer`'s own
    callback, on a StepLog whose clock must be `turns.clock(index)`)."""
    from transformers import TrainerCallback

    class HFTurn(TrainerCallback):
        begun = False

        def on_epoch_begin(self, args, state, control, **kwargs):
            if not self.begun:
                self.begun = True
                turns.begin(index)

        def on_step_end(self, args, state, control, **kwargs):
            turns.step_done(index)

        def on_train_end(self, args, state, control, **kwargs):
            turns.finish(index)

    return HFTurn()
