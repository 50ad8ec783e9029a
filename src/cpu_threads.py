"""torch's CPU threads given up while other processes want the same cores, and taken back when
they are free (`callbacks.cpu_threads`).

A CPU run uses one torch thread per core it may use. When a second run (or any other busy
process) shares those cores, every thread of both runs is ready to run on half a core: OpenMP's
barriers then wait for threads that are not running, and each run keeps well under half its
solo rate (0.47 each on the 2-core reference machine at ftlab's short OpenMP spin, 0.04 at
libgomp's default). One thread each runs both at 0.70 of the solo rate
(experiments/bench/contention/).

Every `every_n_seconds` of training this callback reads, from /proc, how many of the run's own
threads were waiting for a core on average (their scheduler run-queue time) and how many of its
cores sat idle. Threads waiting: fewer torch threads, by that many. Cores idle: more again, up to
the count the run started with. A run alone keeps all its threads; two runs settle at their share
each within a few seconds, and the one left takes the machine back when the other ends.

Only on Linux (it reads /proc) and only where the run's model is on the CPU; elsewhere it does
nothing. The count the run started with is restored when the fit, test or predict ends.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from src.errors import ConfigError

log = logging.getLogger(__name__)

WAITING = 0.5  # of the run's threads waiting for a core, on average: give threads up
IDLE = 0.75  # of the run's cores idle, on average: take a thread back
TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100  # /proc/stat's unit


@dataclass(frozen=True)
class Load:
    """What /proc says at one moment: wall time, the run's threads' total run-queue wait, and its
    cores' total idle time."""

    at: float  # seconds, monotonic
    waited: float  # seconds, summed over the process's threads
    idle: float  # seconds, summed over the cores the process may run on


def _waited(task_dir: Path) -> float:
    """Seconds the process's threads have spent ready to run but not running (schedstat's second
    field, nanoseconds), summed over its threads."""
    total = 0
    for task in task_dir.iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue  # a thread that ended between the listing and the read
    return total / 1e9


def _idle(cores: set[int], stat: Path) -> float:
    """Seconds the given cores have been idle (idle + iowait in /proc/stat) since boot."""
    ticks = 0
    for line in stat.read_text().splitlines():
        name, _, rest = line.partition(" ")
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cores:
            fields = rest.split()
            ticks += int(fields[3]) + int(fields[4])
    return ticks / TICKS


def read_load(proc: Path = Path("/proc")) -> Load:
    cores = os.sched_getaffinity(0)
    return Load(time.monotonic(), _waited(proc / "self" / "task"), _idle(cores, proc / "stat"))


def next_threads(current: int, most: int, waiting: float, idle: float) -> int:
    """The torch thread count for the next interval, given the average number of the run's threads
    that waited for a core (`waiting`) and of its cores that sat idle (`idle`) in the last one."""
    if waiting >= WAITING:
        return max(1, current - max(1, round(waiting)))
    if idle >= IDLE and current < most:
        return min(most, current + max(1, round(idle)))
    return current


class LoadAwareThreads(Callback):
    """Fewer torch threads while the run's threads wait for cores, more when cores are idle (the
    module docstring); in every loop (fit, validate, test, predict)."""

    def __init__(self, every_n_seconds: float = 1.0) -> None:
        if not every_n_seconds > 0:  # also checked with the config (src/checks.py)
            raise ConfigError(
                f"callbacks.cpu_threads.every_n_seconds={every_n_seconds!r} is invalid: must be "
                "a float > 0"
            )
        self.every_n_seconds = every_n_seconds
        self._most = 0
        self._last: Load | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        measurable = Path("/proc/self/task").is_dir() and hasattr(os, "sched_getaffinity")
        if trainer.strategy.root_device.type != "cpu" or not measurable:
            return
        self._most = torch.get_num_threads()
        self._last = read_load()

    def _adjust(self) -> None:
        last = self._last
        if last is None or time.monotonic() - last.at < self.every_n_seconds:
            return
        now = read_load()
        seconds = now.at - last.at
        waiting = max(0.0, now.waited - last.waited) / seconds
        idle = max(0.0, now.idle - last.idle) / seconds
        current = torch.get_num_threads()
        threads = next_threads(current, self._most, waiting, idle)
        log.debug("cpu_threads: %d threads, %.2f waiting, %.2f idle", current, waiting, idle)
        if threads != current:
            torch.set_num_threads(threads)
            log.info(
                "cpu_threads: %d torch threads instead of %d (%.1f of this run's threads waited "
                "for a core, %.1f of its cores idle, over %.1f s)",
                threads,
                current,
                waiting,
                idle,
                seconds,
            )
        self._last = now

    def on_train_batch_end(self, *args: object) -> None:
        self._adjust()

    def on_validation_batch_end(self, *args: object) -> None:
        self._adjust()

    def on_test_batch_end(self, *args: object) -> None:
        self._adjust()

    def on_predict_batch_end(self, *args: object) -> None:
        self._adjust()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._last is not None and torch.get_num_threads() != self._most:
            torch.set_num_threads(self._most)
        self._last = None
