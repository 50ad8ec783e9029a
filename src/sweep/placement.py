"""Where a sweep's trials run: how many workers, and the GPUs each worker pins its trials to."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from src.errors import ConfigError


def gpu_assignment(
    visible: Sequence[str], n_workers: int, per_worker: int | None
) -> list[list[str]]:
    """The GPUs each worker pins its trials to (`CUDA_VISIBLE_DEVICES`); empty lists without GPUs."""
    if not visible:
        return [[] for _ in range(n_workers)]
    per = per_worker or max(1, len(visible) // n_workers)
    # More workers than GPUs: they share round-robin rather than refuse to start.
    return [[visible[(i * per + j) % len(visible)] for j in range(per)] for i in range(n_workers)]


def visible_gpus() -> list[str]:
    """The GPUs this sweep may use: `CUDA_VISIBLE_DEVICES` when set, else every GPU the NVIDIA
    driver lists (read from /proc, so the sweeper need not import torch)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    listed = Path("/proc/driver/nvidia/gpus")
    return [str(i) for i in range(len(list(listed.glob("*"))))] if listed.is_dir() else []


def resolve_workers(n_workers: Any, visible: Sequence[str], per_worker: int | None) -> int:
    """`hydra.sweeper.n_workers`: an int, or `auto` = one worker per `devices_per_worker` visible
    GPUs (one per GPU by default), one on a machine without GPUs."""
    if n_workers in (None, "auto"):
        return max(1, len(visible) // int(per_worker or 1)) if visible else 1
    try:
        return int(n_workers)
    except (TypeError, ValueError):
        raise ConfigError(
            f"hydra.sweeper.n_workers={n_workers!r} is invalid: an int >= 1 or auto"
        ) from None
