"""How many DataLoader worker processes decode images: `data.num_workers`, a number or `auto`.

`auto` takes the CPU cores this process may run on (its affinity: a SLURM task's, a container's
or `taskset`'s share, not the whole machine's; a sweep trial's share when a sweep runs several
at once), splits them among the training processes on the
node (`trainer.devices`: one per GPU under DDP), and leaves one core of each share to the
training loop: 2 workers on this 2-core VM (the default that measured best here, experiments/
bench/README.md, session 9), 8 at most (a GPU box: enough to keep a mobilenet_v2 step fed;
more mostly costs memory).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from src.errors import ConfigError

AUTO = "auto"
MAX_AUTO_WORKERS = 8
# Set by the sweeper for each trial when several run at once on one machine: that trial's share of
# the cores (src/sweep/runner.py), so that N trials do not each take the whole machine's.
ENV_CPU_SHARE = "FTLAB_CPU_SHARE"


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity, and its sweep trial's share)."""
    if hasattr(os, "sched_getaffinity"):
        cores = max(1, len(os.sched_getaffinity(0)))
    else:
        cores = max(1, os.cpu_count() or 1)
    share = os.environ.get(ENV_CPU_SHARE, "")
    return min(cores, int(share)) if share.isdigit() and int(share) > 0 else cores


def loader_workers(value: Any, processes_per_node: int = 1, cores: int | None = None) -> int:
    """`value` as a worker count: an int >= 0 as given; `auto` from the cores (module doc)."""
    if value == AUTO:
        share = (usable_cores() if cores is None else cores) // max(1, processes_per_node)
        return max(0, min(MAX_AUTO_WORKERS, max(min(2, share), share - 1)))
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"data.num_workers={value!r} is invalid: must be {AUTO} or an int >= 0")
    return value


def training_processes_per_node(trainer: Mapping[str, Any] | None) -> int:
    """How many training processes `trainer` (the config's section) runs on each node: its
    `devices` (a count or a list of devices; `auto` on GPUs: every visible GPU)."""
    devices = (trainer or {}).get("devices", 1)
    if isinstance(devices, int) and not isinstance(devices, bool) and devices > 0:
        return devices
    if isinstance(devices, Sequence) and not isinstance(devices, str):
        return max(1, len(devices))
    if str(devices) in ("auto", "-1") and str((trainer or {}).get("accelerator", "auto")) in (
        "auto",
        "gpu",
        "cuda",
    ):
        import torch

        return max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 1
    return 1
