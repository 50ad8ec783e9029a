"""What a pruned / unpruned pair of sweeps paid per trial-epoch, and how much of the difference
in wall time is the machine rather than pruning.

    python experiments/sweeps/pair_costs.py experiments/sweeps/sst2_4000_s15_sh \
        experiments/sweeps/sst2_4000_s15_no_pruning

Reads both sweeps' `trials.csv`. Prints, for each: trial time per trial-epoch and its trials'
batch sizes; for the configurations that trained the same epochs in both (the same work), the
pruned sweep's duration over the unpruned one's; and a least-squares line through all trials,
duration = a + b x epochs (a: what a trial pays besides its epochs).
"""

from __future__ import annotations

import csv
import statistics
import sys
from collections import Counter
from pathlib import Path

PARAMS_PREFIX = "params."


def trials(sweep: Path) -> list[dict[str, str]]:
    return [r for r in csv.DictReader((sweep / "trials.csv").open()) if r["duration_s"]]


def config(row: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in row.items() if k.startswith(PARAMS_PREFIX)))


def main(pruned_dir: str, unpruned_dir: str) -> None:
    pruned, unpruned = trials(Path(pruned_dir)), trials(Path(unpruned_dir))
    for name, rows in (("pruned", pruned), ("unpruned", unpruned)):
        seconds = sum(float(r["duration_s"]) for r in rows)
        epochs = sum(float(r["epochs_trained"]) for r in rows)
        batches = Counter(r.get("params.data.batch_size") for r in rows)
        print(f"{name}: {seconds / epochs:.1f} s per trial-epoch; batch sizes {dict(batches)}")
    by_config = {(config(r), r["epochs_trained"]): float(r["duration_s"]) for r in unpruned}
    ratios = [
        float(r["duration_s"]) / by_config[key]
        for r in pruned
        if (key := (config(r), r["epochs_trained"])) in by_config
    ]
    if ratios:
        print(
            f"same work in both ({len(ratios)} trials): pruned / unpruned duration "
            f"{min(ratios):.2f}-{max(ratios):.2f}, median {statistics.median(ratios):.2f}"
        )
    rows = pruned + unpruned
    slope, intercept = statistics.linear_regression(
        [float(r["epochs_trained"]) for r in rows], [float(r["duration_s"]) for r in rows]
    )
    print(f"duration = {intercept:.1f} s + {slope:.1f} s x epochs ({len(rows)} trials)")


if __name__ == "__main__":
    main(*sys.argv[1:3])
