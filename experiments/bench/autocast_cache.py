"""Does the plain loop's autocast weight cache explain ftlab's text gap in make bench's overhead
section? Lightning's AMP plugin uses torch.autocast(cache_enabled=False); src/bench/plain.py leaves
the cache on. The text overhead case, plain loop with the cache on vs off, alternating.

    .venv/bin/python -m experiments.bench.autocast_cache [REPS]    # from the project root

Session 13, 3 reps each, alone: cache on 0.971 (0.966-0.977), off 0.973 (0.970-0.975).
"""

import contextlib
import statistics
import sys
import tempfile
from pathlib import Path

import torch

import src.bench.overhead as overhead
import src.bench.plain as plain

REPS = int(sys.argv[1]) if len(sys.argv) > 1 else 3


def autocast(cache):
    def make(precision):
        if precision.startswith("bf16"):
            return torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=cache)
        return contextlib.nullcontext()

    return make


overrides, steps, warmup = overhead.CASES["text"]
run = [*overrides, f"trainer.max_steps={steps}", "trainer.max_epochs=100", "test=false"]
res = {True: [], False: []}
with tempfile.TemporaryDirectory() as tmp:
    for _ in range(REPS):
        for cache in (True, False):
            plain._autocast = autocast(cache)
            f, p, _ = overhead.interleaved_run("text", run, steps, Path(tmp))
            t = f.timed(warmup) & p.timed(warmup)
            r = f.throughput(warmup, t) / p.throughput(warmup, t)
            res[cache].append(r)
            print(f"cache={cache}: ftlab/plain {r:.3f}", file=sys.stderr, flush=True)
for c, v in res.items():
    print(f"plain autocast cache={c}: median {statistics.median(v):.3f} {[round(x, 3) for x in v]}")
