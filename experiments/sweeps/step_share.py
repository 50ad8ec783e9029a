"""Where a sweep's wall time went: the share spent from each trial's first training step to its
end (training and validation steps, plus the few seconds a trial takes to write its results),
against trial start-up (launch to first step) and the sweeper's own time between trials.

    python experiments/sweeps/step_share.py experiments/sweeps/sst2_4000_r4_median

Reads the sweep's `trials.csv` (duration_s, startup_s) and `<sweep>.wall` (the command's wall
time, written by run_sst2_4000.sh; its first line is the sweep's).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path


def share(sweep: Path) -> dict[str, float]:
    rows = [r for r in csv.DictReader((sweep / "trials.csv").open()) if r["duration_s"]]
    wall = float(Path(f"{sweep}.wall").read_text().splitlines()[0].split(":")[1])
    durations = sum(float(r["duration_s"]) for r in rows)
    startup = sum(float(r["startup_s"] or 0) for r in rows)
    steps = durations - startup
    return {
        "trials": len(rows),
        "wall_s": wall,
        "trial_time_s": round(durations, 1),
        "startup_s": round(startup, 1),
        "steps_s": round(steps, 1),
        "steps_share_of_wall": round(steps / wall, 3),
        "startup_share_of_wall": round(startup / wall, 3),
        "outside_trials_share_of_wall": round((wall - durations) / wall, 3),
    }


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(Path(arg).name, json.dumps(share(Path(arg))))
