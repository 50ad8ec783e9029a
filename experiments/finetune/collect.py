"""Print the results table of the fine-tuning experiments from their run dirs.

    python experiments/finetune/collect.py [logs]

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


def main(logs: Path) -> None:
    print(
        "| experiment | val acc (best epoch) | test acc | best epoch | trainable params "
        "| s / epoch (min / median) |"
    )
    print("|---|---|---|---|---|---|")
    for name in EXPERIMENTS:
        runs = sorted((logs / f"ft_{name}" / "runs").glob("*/metrics.json"))
        if runs:
            print(row(name, runs[-1].parent))
        else:
            print(f"| {name} | not run | | | | |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "logs"))
