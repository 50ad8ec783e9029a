"""Print the results table of the fine-tuning experiments from their run dirs.

    python experiments/finetune/collect.py [logs]           one run per experiment (seed 42)
    python experiments/finetune/collect.py --seeds [logs]   mean ± std over the seeds that
                                                              run_seeds.sh ran

For each `logs/ft_<experiment>/runs/<latest>`: best val accuracy, test accuracy (of the best
checkpoint), trainable parameters (first -> last epoch, from the `params/trainable` scalar) and
seconds per epoch (training + validation, from TensorBoard's wall times: train start, then each
epoch's `val/acc`), the fastest and the median epoch: on a shared CPU the fastest is the least
disturbed by other jobs.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

EXPERIMENTS = [
    "sst2_1k_feature_extraction",
    "sst2_1k_full",
    "sst2_1k_gradual",
    "sst2_1k_lora",
    "hymenoptera_feature_extraction",
    "hymenoptera_partial",
    "hymenoptera_full",
    "hymenoptera_lora",
]

# run_seeds.sh's order: the table of seeds has a phases row for each data set.
SEEDED_EXPERIMENTS = [
    "sst2_1k_feature_extraction",
    "sst2_1k_full",
    "sst2_1k_gradual",
    "sst2_1k_lora",
    "sst2_1k_phases",
    "hymenoptera_feature_extraction",
    "hymenoptera_partial",
    "hymenoptera_full",
    "hymenoptera_lora",
    "hymenoptera_phases",
]


def events(run: Path) -> dict[str, list]:
    out: dict[str, list] = {}
    for file in sorted((run / "tensorboard").glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(file), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend(acc.Scalars(tag))
    return out


def row(name: str, run: Path) -> str:
    metrics = json.loads((run / "metrics.json").read_text())
    ev = events(run)
    trainable = [int(e.value) for e in sorted(ev["params/trainable"], key=lambda e: e.wall_time)]
    start = min(e.wall_time for e in ev["params/trainable"])
    ends = [start] + sorted(e.wall_time for e in ev["val/acc"])
    epochs = sorted(b - a for a, b in zip(ends, ends[1:], strict=False))
    params = (
        f"{trainable[0]:,}"
        if trainable[0] == trainable[-1]
        else f"{trainable[0]:,} → {trainable[-1]:,}"
    )
    return (
        f"| {name} | {metrics['val/acc']:.4f} | {metrics['test/acc']:.4f} | {metrics['best_epoch']} "
        f"| {params} | {epochs[0]:.0f} / {statistics.median(epochs):.0f} |"
    )


def print_table(header: list[str], rows: list[str]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    print("\n".join(rows))


def not_run(name: str, columns: int) -> str:
    return f"| {name} | not run |" + " |" * (columns - 2)


def main(logs: Path) -> None:
    header = ["experiment", "val acc (best epoch)", "test acc", "best epoch", "trainable params",
              "s / epoch (min / median)"]  # fmt: skip
    rows = []
    for name in EXPERIMENTS:
        runs = sorted((logs / f"ft_{name}" / "runs").glob("*/metrics.json"))
        rows.append(row(name, runs[-1].parent) if runs else not_run(name, len(header)))
    print_table(header, rows)


def mean_std(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def seeded_row(name: str, logs: Path, columns: int) -> str:
    """One row over every `logs/ft_<name>_seed<N>` run: mean ± std (sample std) of val and test
    accuracy, the per-seed test accuracies, best epochs and the median wall time of a run."""
    runs = {}
    for dir_ in sorted(logs.glob(f"ft_{name}_seed*")):
        found = sorted((dir_ / "runs").glob("*/metrics.json"))
        if found:
            runs[dir_.name.rsplit("_seed", 1)[1]] = json.loads(found[-1].read_text())
    if not runs:
        return not_run(name, columns)
    seeds = sorted(runs, key=int)
    val = [runs[s]["val/acc"] for s in seeds]
    test = [runs[s]["test/acc"] for s in seeds]
    per_seed = ", ".join(f"{t:.3f}" for t in test)
    best = ", ".join(str(runs[s]["best_epoch"]) for s in seeds)
    wall = statistics.median(runs[s]["wall_time_s"] for s in seeds)
    return (
        f"| {name} | {len(seeds)} | {mean_std(val)} | **{mean_std(test)}** | {per_seed} "
        f"| {best} | {wall:.0f} |"
    )


def main_seeds(logs: Path) -> None:
    header = ["experiment", "seeds", "val acc (best epoch)", "test acc", "test acc per seed",
              "best epoch per seed", "s / run (median)"]  # fmt: skip
    print_table(header, [seeded_row(name, logs, len(header)) for name in SEEDED_EXPERIMENTS])


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--seeds"]:
        main_seeds(Path(args[1] if len(args) > 1 else "logs"))
    else:
        main(Path(args[0] if args else "logs"))
