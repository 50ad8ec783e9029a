"""How the process's C allocator treats the memory a training step frees (config key `allocator`).

A CPU training step allocates and frees the same large buffers every step: activations, and
weight gradients, which `zero_grad(set_to_none=True)` frees. glibc's malloc serves every block
over its mmap threshold (128 KiB at first, raised as blocks are freed, to 32 MiB at most) with a
fresh `mmap`, and gives it back to the OS with `munmap` when freed. So every step page-faults all of it in again:
~15,000 faults a MiniLM step here (its 47 MB word-embedding gradient alone is 11,500 pages).
`keep` makes glibc serve every block from its heap and keep freed memory for the next step
(`mallopt(M_MMAP_MAX, 0)`, `M_TRIM_THRESHOLD` 1 GiB): no faults after the first steps, in
exchange for holding the run's peak memory until the process ends. It is what PyTorch's CPU
performance guide gets from jemalloc or tcmalloc, without installing one
(experiments/bench/README.md, session 16).

- `auto` (default): `keep` when the run trains on the CPU, else `system`. On a GPU the large
  buffers are on the device, where torch's caching allocator already keeps them.
- `keep`: as above, on the CPU or not.
- `system`: the C library's own behaviour, untouched.

The setting is process-wide, and DataLoader workers forked later inherit it. Made once per
process, by `src.pipeline.train`; anything else than glibc (musl, macOS) is left as it is.

Before every fork (DataLoader workers, warm sweep trials) a `keep` process gives its free memory
back (`malloc_trim`). Otherwise each child inherits the kept pages, and when the parent reuses
them it copies them (copy-on-write) while the children still hold the old ones: with
hymenoptera's image cache that was +1 GiB in the main process and +1.25 GiB over the process
tree (experiments/bench/README.md, session 17). The parent faults those pages in once more after
the fork, and is fault-free again from its next step.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

from src.errors import ConfigError

log = logging.getLogger(__name__)

CHOICES = ("auto", "keep", "system")
M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_MAX = -4
TRIM_THRESHOLD = 1 << 30  # free heap kept for reuse before any is given back to the OS

_applied: str | None = None


def check_allocator(value: object) -> str:
    """`allocator` as one of CHOICES, or a ConfigError naming the valid ones."""
    choice = "auto" if value is None else str(value).lower()
    if choice not in CHOICES:
        raise ConfigError(f"allocator={value!r} is not one of: {', '.join(CHOICES)}")
    return choice


def resolve_allocator(value: object, on_gpu: bool) -> str:
    """`keep` or `system` for a run (`auto`: keep unless it trains on a GPU)."""
    choice = check_allocator(value)
    if choice == "auto":
        return "system" if on_gpu else "keep"
    return choice


def allocator_in_use() -> str:
    """`keep` once this process has applied it, else `system`."""
    return _applied or "system"


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    # only glibc has both mallopt and gnu_get_libc_version (musl has neither mallopt parameter)
    if not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
        return None
    return libc


def apply_allocator(choice: str) -> bool:
    """Make the process's allocator `keep` freed memory (or leave it: `system`). True when the
    allocator now keeps it. Once `keep` is applied it stays for the process (the sweep's warm
    trials and make bench run many trainings in one)."""
    global _applied
    if choice == "system" and _applied == "keep":
        log.warning(
            "allocator=system: an earlier run in this process set allocator=keep, which stays"
        )
    if choice == "system" or _applied == "keep":
        return _applied == "keep"
    libc = _glibc()
    if libc is None:
        log.info("allocator=keep: not glibc, the C allocator is left as it is")
        return False
    if libc.mallopt(M_MMAP_MAX, 0) != 1 or libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1:
        log.warning("allocator=keep: glibc refused mallopt; the C allocator is left as it is")
        return False
    _applied = "keep"
    # free memory goes back before a fork, so that no child inherits it (module docstring)
    os.register_at_fork(before=lambda: libc.malloc_trim(0))
    return True
