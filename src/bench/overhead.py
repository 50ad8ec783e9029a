"""`make bench`'s overhead section: ftlab's Lightning loop vs a minimal PyTorch loop, step for step.

Both loops train in one process, in turns: after every ftlab step (a real `src.pipeline.train`
run with its default callbacks) a callback makes one step of the plain loop on its own copy of the
network and its own loader. Each loop's StepLog reads a clock that stands still while the other
loop runs, so a step's time is that loop's own work: fetching its batch, forward, backward, the
optimizer, and for ftlab whatever Lightning and the callbacks do around it. Running them in turns
puts both under the same machine load at every moment: on this VM the speed of one loop moved by
up to 30% between two runs a minute apart (session 11), more than the framework's overhead that
the section is there to measure.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from src.bench.plain import PlainLoop
from src.bench.runs import ftlab_run, log, setup_baseline, stats
from src.bench.timing import StepLog

CASES: dict[str, tuple[list[str], int, int]] = {
    # (overrides, steps, warm-up steps)
    # 60 steps of 32 sentences (a 2,058-sentence slice), the first 5 are warm-up
    "text": (
        ["task=sentiment", "model=bert", "data.limit_train=2100", "optimizer.lr=1e-4"],
        60,
        5,
    ),
    # 24 steps over three epochs of hymenoptera (8 batches of 32, the last 21 images): 19 timed,
    # the first 2 are warm-up and the steps across an epoch boundary (ftlab validates there, on
    # one batch: validation is never timed) are not. 16 steps (12 timed) were tried to save
    # 1.5 min: the repetitions spread to 0.885-1.166 (the loader workers of each loop decode
    # during the other's turn; more steps average that out). Both decode every image every
    # epoch: the image cache is off, since the plain loop has none (its own effect:
    # experiments/bench/image_cache.py).
    "image": (
        [
            "task=hymenoptera",
            "model=mobilenet_v2",
            "optimizer.lr=1e-3",
            "trainer.limit_val_batches=1",
            "data.cache_images=false",
        ],
        24,
        2,
    ),
}


class InterleavedPlainLoop(Callback):
    """One step of `plain` after each of the ftlab run's training steps, each loop timed on a
    clock of its own: `self.ftlab` and `plain.steps` are the two StepLogs."""

    def __init__(self, plain: PlainLoop) -> None:
        self.plain = plain
        self.plain_seconds = 0.0  # time spent in the plain loop so far
        self._plain_started = 0.0
        self.ftlab = StepLog(clock=lambda: time.perf_counter() - self.plain_seconds)
        plain.steps.clock = lambda: self.plain_seconds + time.perf_counter() - self._plain_started

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.ftlab.epoch_start()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx
    ) -> None:
        self.ftlab.step_end(len(batch["labels"]))
        self._plain_started = time.perf_counter()
        self.plain.step()
        self.plain_seconds += time.perf_counter() - self._plain_started


def plain_loader(case: str, cfg: Any, dm: Any) -> torch.utils.data.DataLoader:
    """The loader of the plain loop: the same data as the ftlab run of `case` (text: the run's own
    length grouping and dynamic padding; image: the same transforms and workers)."""
    from transformers import DataCollatorWithPadding
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from src.data.length_grouping import NoisySortedBatchSampler, length_grouping
    from src.data.text_rows import column_values

    if case == "text":
        ds = dm.splits["train"]
        lengths = column_values(ds, "length")
        g = torch.Generator().manual_seed(cfg.seed)
        # the same length grouping as the ftlab run (data.group_by_length)
        sampler = (
            NoisySortedBatchSampler(cfg.data.batch_size, lengths, g)
            if length_grouping(cfg.data.group_by_length) == "sorted"
            else LengthGroupedSampler(cfg.data.batch_size, lengths=lengths, generator=g)
        )
        return torch.utils.data.DataLoader(
            ds.remove_columns("length"),
            batch_size=cfg.data.batch_size,
            sampler=sampler,
            collate_fn=DataCollatorWithPadding(dm.tokenizer),
        )
    # data.num_workers as the run resolved it (auto: src/data/workers.py)
    workers = int(dm.num_workers)
    return torch.utils.data.DataLoader(
        dm.splits["train"],
        batch_size=cfg.data.batch_size,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
    )


def interleaved_run(case: str, overrides: list[str], steps: int, work: Path):
    """ftlab's and the plain loop's StepLogs of one run of `case`, and the precision."""
    from hydra.utils import instantiate

    cfg, dm, network, precision = setup_baseline(overrides, work)
    plain = PlainLoop(
        network,
        plain_loader(case, cfg, dm),
        instantiate(cfg.optimizer),  # the same optimizer settings (fused AdamW)
        max_steps=steps,
        precision=precision,
    )
    turns = InterleavedPlainLoop(plain)
    ftlab_run(overrides, work, f"overhead_{case}", callbacks=[turns])
    return turns.ftlab, plain.steps, precision


def bench_overhead(work: Path, reps: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, (overrides, steps, warmup) in CASES.items():
        run_overrides = [
            *overrides,
            f"trainer.max_steps={steps}",
            "trainer.max_epochs=100",  # max_steps decides
            "test=false",
        ]
        ftlab_sps, plain_sps, ratios = [], [], []
        for rep in range(reps):
            log(f"overhead/{name} rep {rep + 1}/{reps}: ftlab and the plain loop in turns")
            ftlab, plain, precision = interleaved_run(name, run_overrides, steps, work)
            # the same steps of both: timed in each (no warm-up, no epoch boundary of either)
            timed = ftlab.timed(warmup) & plain.timed(warmup)
            ftlab_sps.append(ftlab.throughput(warmup, timed))
            plain_sps.append(plain.throughput(warmup, timed))
            ratios.append(ftlab_sps[-1] / plain_sps[-1])
            log(f"  ftlab {ftlab_sps[-1]:.1f}/s  plain {plain_sps[-1]:.1f}/s")
        out[name] = {
            "overrides": run_overrides,
            "timed_steps": len(timed),
            "precision": precision,
            "ftlab_samples_per_s": stats(ftlab_sps),
            "plain_samples_per_s": stats(plain_sps),
            "ratio_ftlab_over_plain": stats(ratios),
        }
    return out
