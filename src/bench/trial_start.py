"""`python -m src.bench.trial_start`: how long a sweep trial takes from its launch to its first
training step, warm (forked from the sweep's preloaded forkserver) vs cold (a new interpreter).

For MiniLM on an SST-2 slice and mobilenet_v2 on hymenoptera, each repetition runs one short
sweep per start mode (cold and warm alternating, so drift in machine load hits both) of
`--trials` trials that stop after 3 training steps; the sweeper records each trial's `startup_s`
(launch to first training step, src/sweep/trial_outcome.py). Reported: the median over every
trial of a mode, and warm / cold. The first warm trial of a sweep also waits for the
forkserver's imports (they overlap the study's set-up); it is in the medians like the others.

Writes `<out>/results.json` and `<out>/REPORT.md` (default experiments/sweeps/trial_start/).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CASES: dict[str, list[str]] = {
    "MiniLM, SST-2 slice": [
        "hparams_search=sentiment",
        "data.limit_train=400",
        "data.val_fraction=0.25",
    ],
    "mobilenet_v2, hymenoptera": ["hparams_search=hymenoptera"],
}
SHORT = [  # every trial: 3 training steps, 2 validation batches, no pruning, no test
    "trainer.max_epochs=1",
    "trainer.max_steps=3",
    "trainer.limit_val_batches=2",
    "test=false",
    "hydra/sweeper/pruner=none",
    "callbacks.progress_bar=null",
]


def sweep_startups(case: list[str], mode: str, trials: int, work: Path) -> dict[str, Any]:
    """One sweep of `trials` short trials; their startup_s and the sweep's wall time."""
    import optuna

    name = f"{mode}_{abs(hash((tuple(case), mode, time.time()))) % 10**8}"
    sweep_dir = work / name
    cmd = [
        sys.executable,
        "-m",
        "src.train",
        "-m",
        *case,
        *SHORT,
        f"hydra.sweeper.n_trials={trials}",
        f"hydra.sweeper.trial_start={mode}",
        f"hydra.sweeper.study_name={name}",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    started = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.time() - started
    if proc.returncode != 0:
        raise RuntimeError(f"sweep failed ({mode}): {(proc.stdout + proc.stderr)[-2000:]}")
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{sweep_dir / 'optuna.db'}")
    startups = [t.user_attrs.get("startup_s") for t in study.get_trials()]
    if any(s is None for s in startups):
        raise RuntimeError(f"a trial recorded no startup_s ({mode}): {startups}")
    return {"startup_s": startups, "sweep_wall_s": round(wall, 1)}


def run(reps: int, trials: int) -> dict[str, Any]:
    results: dict[str, Any] = {"reps": reps, "trials_per_sweep": trials, "cases": {}}
    with tempfile.TemporaryDirectory(prefix="ftlab-trial-start-") as tmp:
        for name, case in CASES.items():
            per_mode: dict[str, list[float]] = {"cold": [], "warm": []}
            walls: dict[str, list[float]] = {"cold": [], "warm": []}
            for rep in range(reps):
                for mode in ("cold", "warm") if rep % 2 == 0 else ("warm", "cold"):
                    print(f"{name}: {mode} sweep, rep {rep + 1}/{reps}", flush=True)
                    r = sweep_startups(case, mode, trials, Path(tmp))
                    per_mode[mode] += r["startup_s"]
                    walls[mode].append(r["sweep_wall_s"])
            cold, warm = (statistics.median(per_mode[m]) for m in ("cold", "warm"))
            results["cases"][name] = {
                "overrides": case,
                "startup_s": per_mode,
                "sweep_wall_s": walls,
                "median_cold_s": round(cold, 2),
                "median_warm_s": round(warm, 2),
                "mean_cold_s": round(statistics.mean(per_mode["cold"]), 2),
                "mean_warm_s": round(statistics.mean(per_mode["warm"]), 2),
                "ratio_warm_over_cold": round(warm / cold, 3),
            }
    return results


def markdown(r: dict[str, Any]) -> str:
    lines = [
        "# Trial start-up: warm vs cold",
        "",
        f"`python -m src.bench.trial_start` on {r['date']}, commit `{r['commit']}`, "
        f"{os.cpu_count()} cores. {r['reps']} repetitions x {r['trials_per_sweep']} trials per "
        "start mode and case (modes alternating); seconds from a trial's launch to its first "
        "training step, median over all its trials (range in brackets). Goal: warm <= 0.1 x cold.",
        "",
        "| case | cold (s) | warm (s) | warm / cold | mean cold / warm (s) |",
        "|---|---|---|---|---|",
    ]
    for name, c in r["cases"].items():
        rng = {
            m: f"{min(c['startup_s'][m]):.1f}-{max(c['startup_s'][m]):.1f}" for m in c["startup_s"]
        }
        lines.append(
            f"| {name} | {c['median_cold_s']:.1f} [{rng['cold']}] | {c['median_warm_s']:.1f} "
            f"[{rng['warm']}] | **{c['ratio_warm_over_cold']:.3f}** | "
            f"{c['mean_cold_s']:.1f} / {c['mean_warm_s']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    from src.bench.record import write_record

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--trials", type=int, default=3, help="trials per sweep")
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "sweeps" / "trial_start")
    args = parser.parse_args()
    results = run(args.reps, args.trials)
    write_record(args.out, results, markdown)


if __name__ == "__main__":
    main()
