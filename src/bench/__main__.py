"""`make bench` (= `python -m src.bench`): ftlab's speed and memory, measured against baselines.

Every comparison is a ratio of runs made in this one invocation, contestants alternating within
each repetition (so drift in machine load hits both), reported as the median over repetitions
with the spread (min-max). Writes experiments/bench/REPORT.md and results.json.

Sections:
  overhead  ftlab's Lightning loop vs a minimal PyTorch loop, in turns in one run: samples/s, same
            model/data/batch/precision/threads (MiniLM on an SST-2 slice; mobilenet_v2 on
            hymenoptera; src/bench/overhead.py)
  hf        text pipeline vs transformers' Trainer at its best (dynamic padding +
            group_by_length), in turns in one process; optionally padded to 128 (run_glue):
            epoch time and dev accuracy (src/bench/hf.py)
  cache     feature extraction with the frozen-feature cache vs recomputing: epoch 2+ time
  startup   time to the first training step (cold and warm tokenization cache), warm data prep
  memory    peak RSS of a default SST-2 and a default hymenoptera run
  inference a fine-tuned MiniLM served by the checkpoint, the HF pipeline, ONNX Runtime fp32 and
            int8: batch-32 samples/s, batch-1 latency, dev accuracy (src/bench/inference.py)
  contention a default run's samples/s alone vs two at once (src/bench/contention.py)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from src.bench.hf import bench_hf
from src.bench.overhead import bench_overhead
from src.bench.report import markdown
from src.bench.runs import ROOT, compose, ftlab_run, log, stats

OUT_DIR = ROOT / "experiments" / "bench"
SECTIONS = ("overhead", "hf", "cache", "startup", "memory", "inference", "contention")


# ------------------------------------------------------------------------------------ sections


def bench_cache(work: Path, reps: int) -> dict[str, Any]:
    overrides = [
        "task=hymenoptera",
        "model=mobilenet_v2",
        "finetune=feature_extraction",
        "data.augment=false",
        "optimizer.lr=1e-3",
        "trainer.max_epochs=3",
    ]
    later_epochs: dict[str, list[float]] = {"cached": [], "recomputed": []}
    totals: dict[str, list[float]] = {"cached": [], "recomputed": []}
    metrics_by: dict[str, dict[str, Any]] = {}
    ratios = []
    for rep in range(reps):
        for key, flag in (("recomputed", "false"), ("cached", "auto")):
            log(f"cache rep {rep + 1}/{reps}: {key}")
            started = time.perf_counter()
            steplog, metrics = ftlab_run(
                [*overrides, f"finetune.feature_cache={flag}"], work, f"cache_{key}"
            )
            totals[key].append(time.perf_counter() - started)
            later_epochs[key].append(statistics.median(steplog.epoch_times()[1:]))
            metrics_by[key] = metrics
        ratios.append(later_epochs["cached"][-1] / later_epochs["recomputed"][-1])
        log(
            f"  epoch 2+: cached {later_epochs['cached'][-1]:.3f}s, recomputed "
            f"{later_epochs['recomputed'][-1]:.3f}s"
        )
    same = {
        k: (metrics_by["cached"].get(k), metrics_by["recomputed"].get(k))
        for k in ("val/acc", "val/loss", "test/acc", "test/loss")
    }
    return {
        "overrides": overrides,
        "epoch2plus_s": {k: stats(v) for k, v in later_epochs.items()},
        "run_total_s": {k: stats(v) for k, v in totals.items()},
        "ratio_epoch2plus_cached_over_recomputed": stats(ratios),
        "metrics_cached_vs_recomputed": same,
    }


def _subprocess_run(args: list[str], env: dict[str, str], log_file: Path) -> tuple[float, int, int]:
    """Run `python -m src.train args`: (launch wall time, peak RSS of the main process, peak PSS
    of the whole process tree), sampled every 50 ms, in bytes. PSS (proportional set size)
    splits pages shared between the main process and its forked DataLoader workers, so the
    tree's sum counts them once; RSS would count them in every worker."""
    import psutil

    launched = time.time()
    with log_file.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "src.train", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    main_peak = tree_peak = 0
    ps = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            main_peak = max(main_peak, ps.memory_info().rss)
            procs = [ps, *ps.children(recursive=True)]
            tree_peak = max(tree_peak, sum(p.memory_full_info().pss for p in procs))
        except psutil.Error:
            pass
        time.sleep(0.05)
    if proc.returncode != 0:
        tail = log_file.read_text()[-3000:]
        raise RuntimeError(f"src.train {' '.join(args)} failed ({proc.returncode}):\n{tail}")
    return launched, main_peak, tree_peak


def startup_args(run_dir: Path, *extra: str) -> list[str]:
    """The README's main job (`task=sentiment model=bert`, no test pass) in `run_dir`, with the
    step timer that records its first training step."""
    return [
        "task=sentiment",
        "model=bert",
        "test=false",
        f"hydra.run.dir={run_dir}",
        "+callbacks.step_timer._target_=src.bench.timing.StepTimer",
        f"+callbacks.step_timer.out={run_dir / 'steps.json'}",
        *extra,
    ]


def _first_step_after(launched: float, run_dir: Path) -> float:
    steps = json.loads((run_dir / "steps.json").read_text())
    return steps["first_step_wall"] - launched


def bench_startup_and_memory(work: Path, reps: int, sections: set[str]) -> dict[str, Any]:
    from src.pipeline import build_datamodule

    cache = work / "cold_cache"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env["FTLAB_CACHE_DIR"] = str(cache)

    out: dict[str, Any] = {}
    log("startup: cold tokenization cache (full SST-2 train set)")
    run = work / "startup_cold"
    launched, cold_main, cold_tree = _subprocess_run(
        startup_args(run, "trainer.max_steps=1"), env, work / "cold.log"
    )
    cold = _first_step_after(launched, run)
    warm = []
    for rep in range(reps):
        log(f"startup: warm cache rep {rep + 1}/{reps}")
        run = work / f"startup_warm{rep}"
        launched, _, _ = _subprocess_run(
            startup_args(run, "trainer.max_steps=1"), env, work / "warm.log"
        )
        warm.append(_first_step_after(launched, run))
    prep = []
    for _ in range(reps):
        cfg = compose(["task=sentiment", "model=bert"], work / "prep", cache_dir=cache)
        dm = build_datamodule(cfg, None)  # set up below, timed
        started = time.perf_counter()
        dm.setup("fit")
        prep.append(time.perf_counter() - started)
    out["startup"] = {
        "command": "python -m src.train task=sentiment trainer.max_steps=1 test=false",
        "first_step_s_cold_cache": cold,
        "first_step_s_warm_cache": stats(warm),
        "data_setup_s_warm_cache": stats(prep),
    }
    if "memory" in sections:
        mem: dict[str, Any] = {"sst2_cold_start_1_step": {"main": cold_main, "tree": cold_tree}}
        log("memory: SST-2, 100 steps")
        run = work / "mem_sst2"
        _, main_peak, tree_peak = _subprocess_run(
            startup_args(run, "trainer.max_steps=100"), env, work / "mem_sst2.log"
        )
        mem["sst2_100_steps"] = {"main": main_peak, "tree": tree_peak}
        log("memory: hymenoptera, 2 epochs")
        run = work / "mem_hym"
        _, main_peak, tree_peak = _subprocess_run(
            [
                "task=hymenoptera",
                "model=mobilenet_v2",
                "trainer.max_epochs=2",  # 1 epoch misses the tree's peak (3.51 vs 3.89 GiB)
                f"hydra.run.dir={run}",
            ],
            env,
            work / "mem_hym.log",
        )
        mem["hymenoptera_2_epochs"] = {"main": main_peak, "tree": tree_peak}
        out["memory_bytes"] = mem
    return out


# ------------------------------------------------------------------------------------ report


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=ROOT,
                capture_output=True,
                text=True,
            ).stdout.strip()
        )
    except OSError:
        commit, dirty = "unknown", False
    import lightning
    import transformers

    from src.pipeline import cpu_has_fast_bf16

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "fast_bf16_cpu": cpu_has_fast_bf16(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "transformers": transformers.__version__,
        "commit": commit + ("+dirty" if dirty else ""),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--reps-padded",
        type=int,
        default=0,
        help="repetitions of the slow HF run_glue baseline (pads to 128; 2.3 min each here)",
    )
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import logging

    logging.disable(logging.WARNING)  # the runs' own info logs would bury the progress lines
    sections = set(args.sections)
    started = time.time()
    results: dict[str, Any] = {"machine": machine(), "reps": args.reps}
    args.out.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        """After every section: a crash or a kill later keeps what is measured."""
        results["bench_wall_s"] = round(time.time() - started, 1)
        (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        (args.out / "REPORT.md").write_text(
            markdown(results)
            + f"\nThe whole benchmark took {results['bench_wall_s'] / 60:.1f} min.\n"
        )

    with tempfile.TemporaryDirectory(prefix="ftlab-bench-") as tmp:
        work = Path(tmp)
        if "overhead" in sections:
            results["overhead"] = bench_overhead(work, args.reps)
            save()
        if "hf" in sections:
            results["hf"] = bench_hf(work, args.reps, min(args.reps_padded, args.reps))
            save()
        if "cache" in sections:
            results["cache"] = bench_cache(work, args.reps)
            save()
        if sections & {"startup", "memory"}:
            results.update(bench_startup_and_memory(work, args.reps, sections))
            save()
        if "inference" in sections:
            from src.bench.inference import bench_inference

            results["inference"] = bench_inference(work, args.reps)
            save()
        if "contention" in sections:
            from src.bench.contention import bench_contention

            results["contention"] = bench_contention(work, args.reps)
            save()
    log(f"wrote {args.out / 'REPORT.md'} ({results['bench_wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
