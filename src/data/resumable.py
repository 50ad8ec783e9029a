"""A training DataLoader that a mid-epoch checkpoint can resume exactly.

Lightning saves and restores the `state_dict()` of a train DataLoader that has one. A plain
DataLoader has none, so a run resumed mid-epoch would start its epoch's data over, and its
seeded generator from epoch 0's order. Here the shuffle order of epoch e depends only on
(seed, e) — Lightning calls `sampler.set_epoch(e)` at every epoch start, as for a
DistributedSampler — and the loader records how many batches of the epoch it has handed out, so
a resumed run skips exactly those (by index, without loading them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, RandomSampler, Sampler


class EpochSeededSampler(Sampler[int]):
    """Wraps a sampler drawing from `generator`: reseeds it from (seed, epoch) before each epoch."""

    def __init__(self, sampler: Sampler[int], generator: torch.Generator, seed: int) -> None:
        self.sampler, self.generator, self.seed = sampler, generator, int(seed)
        self.epoch = 0
        self.start = 0  # indices of this epoch to skip (set when resuming mid-epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.sampler)  # the full epoch: Lightning counts the done batches itself

    def epoch_seed(self) -> int:
        return self.seed * 1_000_003 + self.epoch

    def __iter__(self) -> Iterator[int]:
        self.generator.manual_seed(self.epoch_seed())
        indices = list(self.sampler)
        start, self.start = self.start, 0
        return iter(indices[start:])


class ResumableDataLoader(DataLoader):
    """A DataLoader over an `EpochSeededSampler` with Lightning's `state_dict` interface."""

    _batches_done = 0
    _epoch_seen = 0
    _resume: dict[str, int] | None = None

    def __iter__(self) -> Iterator[Any]:
        # A generator: this body runs at the first batch, after Lightning's `set_epoch` and
        # `load_state_dict` (both come after it calls `iter()` on the loader).
        sampler = self.sampler
        seeded = isinstance(sampler, EpochSeededSampler)
        self._epoch_seen = sampler.epoch if seeded else 0
        self._batches_done = 0
        if seeded:
            # Worker seeds are drawn from the loader's generator: make them depend on the epoch only.
            sampler.generator.manual_seed(sampler.epoch_seed())
        if seeded and self._resume is not None:
            # Skip the batches the interrupted run already trained on in this same epoch.
            if self._resume["epoch"] == sampler.epoch:
                self._batches_done = self._resume["batches_done"]
                sampler.start = self._batches_done * int(self.batch_size or 1)
            self._resume = None
        for batch in super().__iter__():
            self._batches_done += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._epoch_seen, "batches_done": self._batches_done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = {"epoch": int(state["epoch"]), "batches_done": int(state["batches_done"])}


def resumable_train_loader(
    dataset: Any,
    batch_size: int,
    seed: int,
    make_sampler: Callable[[torch.Generator], Sampler[int]] | None = None,
    **kwargs: Any,
) -> ResumableDataLoader:
    """A shuffled training loader (random, or `make_sampler(generator=...)`) that resumes mid-epoch."""
    generator = torch.Generator().manual_seed(int(seed))
    inner = (
        make_sampler(generator=generator)
        if make_sampler
        else RandomSampler(dataset, generator=generator)
    )
    sampler = EpochSeededSampler(inner, generator, seed)
    return ResumableDataLoader(
        dataset, batch_size=batch_size, sampler=sampler, generator=generator, **kwargs
    )
