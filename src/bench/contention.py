"""`python -m src.bench --sections contention`: a default run sharing the machine with another.

The README's main job (`model=bert task=sentiment`, on a slice, a fixed number of steps) as a
subprocess, its training samples/s timed by src.bench.timing.StepTimer: alone, then two of them at
once. Goal: each of the two keeps ≥ 0.4 of the solo rate (half the machine each, less a little);
a collapse far below that means the runs' threads fight (OpenMP spin-waiting, oversubscription).
Solo and pair repetitions alternate; a fixed thread count (no `callbacks.cpu_threads`), the baseline,
runs in the first repetition only.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from src.bench.runs import log, stats
from src.bench.timing import StepLog

RUN = [
    "model=bert",
    "task=sentiment",
    "data.limit_train=4000",
    "trainer.max_steps=40",
    "trainer.limit_val_batches=0",
    "callbacks.early_stopping=null",
    "callbacks.model_checkpoint=null",
    "callbacks.last_checkpoint=null",
    "test=false",
]
WARMUP = 5


def launch(
    work: Path, tag: str, extra_env: dict[str, str], args: Sequence[str] = ()
) -> tuple[subprocess.Popen, Path]:
    out = work / f"{tag}_{time.monotonic_ns()}"
    argv = [
        sys.executable,
        "-m",
        "src.train",
        *RUN,
        *args,
        f"hydra.run.dir={out}",
        "+callbacks.step_timer._target_=src.bench.timing.StepTimer",
        f"+callbacks.step_timer.out={out / 'steps.json'}",
    ]
    env = {**os.environ, **extra_env}
    log_file = (work / f"{out.name}.log").open("w")
    proc = subprocess.Popen(argv, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    return proc, out


def rate(proc: subprocess.Popen, out: Path) -> float:
    if proc.wait() != 0:
        raise RuntimeError(f"contention run failed (rc {proc.returncode}); see {out}.log")
    return StepLog.from_dict(json.loads((out / "steps.json").read_text())).throughput(WARMUP)


# name: (environment, config overrides)
VARIANTS: dict[str, tuple[dict[str, str], list[str]]] = {
    "ftlab's default (callbacks.cpu_threads, src/cpu_threads.py)": ({}, []),
    "a fixed thread count (callbacks.cpu_threads=null)": ({}, ["callbacks.cpu_threads=null"]),
}
# Measured once beside these (contention/results_wait_policies.json): OMP_WAIT_POLICY=PASSIVE
# and OMP_NUM_THREADS=1 never collapse, but cost 30% alone. GOMP_SPINCOUNT=3000 with a fixed
# count, the default before session 17: experiments/bench/cpu_threads.py.


def bench_contention(
    work: Path,
    reps: int,
    variants: dict[str, tuple[dict[str, str], list[str]]] | None = None,
    baseline_reps: int = 1,
) -> dict[str, Any]:
    """Every repetition runs the first variant (ftlab's default, the goal's); the others, the
    baselines that say why it is the default, run in the first `baseline_reps` repetitions."""
    variants = VARIANTS if variants is None else variants
    solo: dict[str, list[float]] = {k: [] for k in variants}
    pair: dict[str, list[float]] = {k: [] for k in variants}
    for rep in range(reps):
        for i, (name, (env, args)) in enumerate(variants.items()):
            if i > 0 and rep >= baseline_reps:
                continue
            log(f"contention rep {rep + 1}/{reps} ({name}): alone")
            solo[name].append(rate(*launch(work, "solo", env, args)))
            log(f"contention rep {rep + 1}/{reps} ({name}): two at once")
            runs = [launch(work, f"pair{i}", env, args) for i in range(2)]
            rates = [rate(*r) for r in runs]
            pair[name].extend(rates)
            log(f"  alone {solo[name][-1]:.1f}/s, together {rates[0]:.1f} + {rates[1]:.1f}/s")
    return {
        "run": RUN,
        "variants": {k: {"env": dict(e), "overrides": list(a)} for k, (e, a) in variants.items()},
        "solo_samples_per_s": {k: stats(v) for k, v in solo.items()},
        "pair_samples_per_s": {k: stats(v) for k, v in pair.items()},
        "ratio_pair_over_solo": {
            k: statistics.median(pair[k]) / statistics.median(solo[k]) for k in variants
        },
    }


def markdown(r: dict[str, Any], fmt: Callable) -> list[str]:
    lines = [
        "## Two runs sharing the machine",
        "",
        f"`python -m src.train {' '.join(r['run'])}` (training samples/s after {WARMUP} "
        "steps) alone, and two of them started together. Goal: each of the two ≥ 0.4 of "
        "the solo rate.",
        "",
        "| threads | repetitions | alone samples/s | each of two samples/s | each / alone |",
        "|---|---|---|---|---|",
    ]
    for k in r["solo_samples_per_s"]:
        lines.append(
            f"| {k} | {len(r['solo_samples_per_s'][k]['runs'])} "
            f"| {fmt(r['solo_samples_per_s'][k], 1)} | {fmt(r['pair_samples_per_s'][k], 1)} "
            f"| **{r['ratio_pair_over_solo'][k]:.2f}** |"
        )
    lines.append("")
    return lines
