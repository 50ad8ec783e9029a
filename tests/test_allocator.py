"""`allocator` (src/allocator.py): freed memory kept for the next step on CPU runs."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

import pytest

from src.allocator import check_allocator, resolve_allocator
from src.errors import ConfigError

# A process that allocates, writes and frees a 64 MiB tensor 12 times (as each step allocates and
# frees a large gradient) and prints the minor page faults of each allocation.
FAULTS = """
import json, resource, sys, torch
from src.allocator import apply_allocator
applied = apply_allocator(sys.argv[1])
faults = []
for i in range(12):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(16 * 1024 * 1024)  # 64 MiB, written
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    del x
print(json.dumps({"applied": applied, "faults": faults}))
"""


def page_faults(choice: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", FAULTS, choice], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_serves_a_freed_large_block_again_without_page_faults() -> None:
    system, keep = page_faults("system"), page_faults("keep")
    assert not system["applied"] and keep["applied"]
    # glibc's default: every allocation of 64 MiB is a fresh mmap, 16,384 pages faulted in
    assert min(system["faults"]) > 10_000, system
    # kept: after the heap has grown to hold it (the first allocations), a freed block is
    # served again, already faulted in. The median of the last 6: one allocation that the
    # machine disturbs (another process's memory pressure) does not decide the test, while
    # `keep` doing nothing (16,384 faults every time) still fails it.
    assert statistics.median(keep["faults"][-6:]) < 500, (keep, system)


# A process that frees a written 256 MiB tensor (kept with `keep`) and then forks a child, as
# a DataLoader starting its workers does; prints its resident memory before and after the fork.
FORK = """
import json, os, sys, torch
from src.allocator import apply_allocator
apply_allocator(sys.argv[1])
def resident():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
x = torch.ones(64 * 1024 * 1024)
y = torch.ones(1024)  # above x in the heap: x is not simply the heap's top
del x
held = resident()
child = os.fork()
if child == 0:
    os._exit(0)
os.waitpid(child, 0)
print(json.dumps({"held": held, "after_fork": resident()}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_gives_free_memory_back_before_a_fork() -> None:
    out = subprocess.run(
        [sys.executable, "-c", FORK, "keep"], capture_output=True, text=True, check=True
    )
    rss = json.loads(out.stdout.strip().splitlines()[-1])
    # the freed 256 MiB stayed in the process until the fork, then went back to the OS: no
    # child inherits it, and the parent does not copy it when it reuses the memory
    assert rss["held"] - rss["after_fork"] > 200 * 1024**2, rss


def test_auto_keeps_on_the_cpu_and_leaves_gpu_runs_alone() -> None:
    assert resolve_allocator("auto", on_gpu=False) == "keep"
    assert resolve_allocator(None, on_gpu=False) == "keep"
    assert resolve_allocator("auto", on_gpu=True) == "system"
    assert resolve_allocator("keep", on_gpu=True) == "keep"
    assert resolve_allocator("SYSTEM", on_gpu=False) == "system"


def test_a_bad_value_names_the_valid_ones() -> None:
    with pytest.raises(
        ConfigError, match=r"allocator='jemalloc' is not one of: auto, keep, system"
    ):
        check_allocator("jemalloc")
