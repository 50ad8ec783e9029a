"""Decoded images kept in memory between epochs: `data.cache_images`.

Without it every epoch decodes every JPEG again, and resizes and centre-crops every val / test
image the same way again. With it each image is decoded once, at setup, and the deterministic
head of its split's transform (the eval resize + centre crop; nothing for the default train
transform, whose first step is a random crop of the full image) runs once; each epoch then runs
only the rest (random crop, flip, jitter, to float, normalise). The batches are exactly those of
an uncached run: the same pixels, the same random draws (tests/test_image_cache.py). Only the
splits a fit reads more than once are cached (the data module decides: src/data/image.py).

`data.cache_images`:
- `auto` (the default): up to a quarter of the memory available at setup, shared among the
  training processes on the node (`trainer.devices`);
- `false`: off;
- a number: a budget in GiB.

Images past the budget are decoded each epoch as before; the log says how many were cached. The
cache is one uint8 buffer, so DataLoader workers share it (fork: the same pages; spawn: torch's
shared memory), whatever their number.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset
from torchvision.transforms import v2

from src.errors import ConfigError

log = logging.getLogger(__name__)

AUTO = "auto"
AUTO_SHARE = 0.25  # of the memory available at setup
GIB = 1024**3
# Transforms whose output depends only on their input (no random draw) and stays a plain uint8
# image: what may run once and be stored.
DETERMINISTIC = (v2.Resize, v2.CenterCrop)


def cache_budget(value: Any, processes_per_node: int = 1) -> int:
    """`data.cache_images` as a budget in bytes (0: off)."""
    if value is False or value is None:
        return 0
    if value == AUTO:
        return int(available_memory() * AUTO_SHARE) // max(1, processes_per_node)
    if not isinstance(value, bool) and isinstance(value, (int, float)) and value >= 0:
        return int(value * GIB)
    raise ConfigError(
        f"data.cache_images={value!r} is invalid: must be {AUTO} (a quarter of the memory "
        "available), false, or a budget in GiB (a number >= 0)"
    )


def available_memory() -> int:
    """Bytes this process could still allocate: the kernel's MemAvailable, capped by a cgroup
    memory limit (a SLURM job's, a container's) where one is set."""
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except OSError:
        pass
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            available = GIB  # unknown: assume little
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        if limit.isdigit():
            available = min(available, max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return available


def split_transform(transform: v2.Compose) -> tuple[list[Any], v2.Compose]:
    """(the leading deterministic transforms, a Compose of the rest): rest(head(x)) is
    transform(x)."""
    steps = list(transform.transforms)
    n = 0
    while n < len(steps) and type(steps[n]) in DETERMINISTIC:
        n += 1
    return steps[:n], v2.Compose(steps[n:])


class CachedImages(Dataset):
    """`base`'s (image, label) pairs (an ImageFolder or ImageRows, or a Subset of one), with the
    cached images' decode and deterministic transform head done once. Items not cached (over the
    budget) come from `base` itself."""

    def __init__(self, base: Dataset, budget: int, loader: Callable[[str], Any]) -> None:
        self.base = base
        if isinstance(base, Subset):
            inner, indices = base.dataset, list(base.indices)
        else:
            inner, indices = base, list(range(len(base)))
        self._inner, self._indices = inner, indices
        head, self._rest = split_transform(inner.transform)
        self._head = v2.Compose(head) if head else None
        self._offsets: dict[int, tuple[int, int, tuple[int, ...]]] = {}  # item: offset, size, shape
        self._objects: dict[int, Any] = {}  # items the head leaves as PIL images
        self._buffer = torch.empty(0, dtype=torch.uint8)
        self.nbytes = self._fill(budget, loader)

    def __len__(self) -> int:
        return len(self._indices)

    @property
    def cached(self) -> int:
        return len(self._offsets) + len(self._objects)

    def _prepared(self, loader: Callable[[str], Any], i: int) -> Any:
        image = loader(self._inner.samples[self._indices[i]][0])
        return self._head(image) if self._head is not None else image

    def _fill(self, budget: int, loader: Callable[[str], Any]) -> int:
        """Decode (and run the head on) items in order until the budget is spent, in a thread per
        usable core; pack the tensors into one buffer."""
        from src.data.workers import usable_cores

        tensors: dict[int, torch.Tensor] = {}
        used = 0
        batch = max(1, usable_cores())
        with ThreadPoolExecutor(batch) as pool:
            for start in range(0, len(self), batch):
                items = range(start, min(len(self), start + batch))
                images = pool.map(lambda i: self._prepared(loader, i), items)
                for i, image in zip(items, images, strict=True):
                    size = _nbytes(image)
                    if used + size > budget:
                        return self._pack(tensors, used)
                    used += size
                    if isinstance(image, torch.Tensor):
                        tensors[i] = image
                    else:
                        self._objects[i] = image
        return self._pack(tensors, used)

    def _pack(self, tensors: dict[int, torch.Tensor], used: int) -> int:
        total = sum(t.numel() for t in tensors.values())
        buffer = torch.empty(total, dtype=torch.uint8)
        offset = 0
        for i, t in tensors.items():
            buffer[offset : offset + t.numel()] = t.reshape(-1)
            self._offsets[i] = (offset, t.numel(), tuple(t.shape))
            offset += t.numel()
        self._buffer = buffer
        return used

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        if i in self._offsets:
            offset, n, shape = self._offsets[i]
            # a copy: a transform that works in place must not change the stored image
            image = self._buffer[offset : offset + n].view(shape).clone()
        elif i in self._objects:
            image = self._objects[i].copy()
        else:
            return self.base[i]
        return self._rest(image), _label(self._inner, self._indices[i])


def _nbytes(image: Any) -> int:
    if isinstance(image, torch.Tensor):
        if image.dtype != torch.uint8:
            raise TypeError(f"cached images are uint8; got {image.dtype}")
        return image.numel()
    width, height = image.size  # a PIL image (PNG, GIF, ...): RGB
    return width * height * 3


def _label(ds: Any, j: int) -> Any:
    label = getattr(ds, "label", None)
    if callable(label):
        return label(j)
    target = ds.samples[j][1]
    transform = getattr(ds, "target_transform", None)
    return transform(target) if transform is not None else target


def cache_splits(
    splits: dict[str, Dataset], budget: int, loader: Callable[[str], Any]
) -> dict[str, Dataset]:
    """`splits` with their images cached within `budget` bytes, in the order given (eval splits
    first: once resized and cropped their items are small); one object for a split that is
    another (test = val). Logs what it cached."""
    start = time.perf_counter()
    cached: dict[int, CachedImages] = {}
    out: dict[str, Dataset] = {}
    left = budget
    for split, ds in splits.items():
        if id(ds) not in cached:
            cached[id(ds)] = CachedImages(ds, left, loader)
            left -= cached[id(ds)].nbytes
        out[split] = cached[id(ds)]
    log.info(
        "data.cache_images: %s images in memory, %.0f of %.0f MiB, decoded in %.1f s",
        ", ".join(f"{s} {out[s].cached}/{len(out[s])}" for s in splits),
        (budget - left) / 2**20,
        budget / 2**20,
        time.perf_counter() - start,
    )
    return out
