"""ftlab's thread policy before and after `callbacks.cpu_threads` (src/cpu_threads.py): make
bench's contention run alone and two at once, for
- `short spin, fixed` (the default before session 17): `GOMP_SPINCOUNT=3000`, a fixed thread count;
- `default` (since): libgomp's own spin, threads given up while the run's threads wait for cores;
alternating which goes first.

    .venv/bin/python -m experiments.bench.cpu_threads [REPS]   # from the project root;
                                                               # writes cpu_threads.json

Per policy and repetition: the solo training samples/s, then the two rates of a pair started
together (src/bench/contention.py).
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from pathlib import Path

from src.bench.contention import launch, rate
from src.bench.runs import log

OUT = Path(__file__).with_name("cpu_threads.json")
POLICIES = {
    "short spin, fixed": ({"GOMP_SPINCOUNT": "3000"}, ["callbacks.cpu_threads=null"]),
    "default": ({}, []),
}


def main(reps: int) -> None:
    results: dict[str, dict[str, list[float]]] = {p: {"solo": [], "pair": []} for p in POLICIES}
    with tempfile.TemporaryDirectory(prefix="ftlab-threads-") as tmp:
        work = Path(tmp)
        for rep in range(reps):
            for name in POLICIES if rep % 2 == 0 else list(POLICIES)[::-1]:
                env, args = POLICIES[name]
                results[name]["solo"].append(rate(*launch(work, "solo", env, args)))
                runs = [launch(work, f"pair{i}", env, args) for i in range(2)]
                results[name]["pair"].extend(rate(*r) for r in runs)
                log(f"rep {rep + 1} {name}: {results[name]}")
    for name, r in results.items():
        solo, pair = statistics.median(r["solo"]), statistics.median(r["pair"])
        print(
            f"{name:18s} alone {solo:6.1f} ({min(r['solo']):.1f}-{max(r['solo']):.1f}) "
            f"each of two {pair:6.1f} ({min(r['pair']):.1f}-{max(r['pair']):.1f}) "
            f"each / alone {pair / solo:.2f}"
        )
    OUT.write_text(
        json.dumps(
            {"policies": {k: [v[0], v[1]] for k, v in POLICIES.items()}, "samples_per_s": results},
            indent=1,
        )
        + "\n"
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
