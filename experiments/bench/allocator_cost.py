"""What `allocator=keep` (src/allocator.py) costs: make bench's start-up and memory runs with
`allocator=keep` (what `auto` picks on a CPU) and `allocator=system`, alternating which goes
first, each a fresh `python -m src.train`.

    .venv/bin/python -m experiments.bench.allocator_cost [REPS] [MEMORY_REPS] [OUT]   # from the
                                      # project root; writes OUT (default: allocator_cost.json)

Per setting: launch to the end of the first training step (warm tokenization cache; REPS), and
peak RSS of the main process / peak PSS of the process tree (loader workers included) with the
whole run's wall time, for SST-2 100 steps and hymenoptera 2 epochs (MEMORY_REPS each).
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from src.bench.__main__ import _first_step_after, _subprocess_run, startup_args
from src.bench.runs import log

OUT = Path(__file__).with_name("allocator_cost.json")
MODES = ("keep", "system")
GIB = 1024**3


def main(reps: int, memory_reps: int, out: Path = OUT) -> None:
    import os

    results: dict[str, dict[str, list]] = {m: {} for m in MODES}
    with tempfile.TemporaryDirectory(prefix="ftlab-allocator-") as tmp:
        work = Path(tmp)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        env["FTLAB_CACHE_DIR"] = str(work / "cache")
        # fill the tokenization cache first: every timed start-up finds it warm
        _subprocess_run(startup_args(work / "fill", "trainer.max_steps=1"), env, work / "fill.log")
        for rep in range(max(reps, memory_reps)):
            for mode in MODES if rep % 2 == 0 else MODES[::-1]:
                r = results[mode]
                if rep < reps:
                    run = work / f"startup_{mode}_{rep}"
                    launched, _, _ = _subprocess_run(
                        startup_args(run, "trainer.max_steps=1", f"allocator={mode}"),
                        env,
                        work / "startup.log",
                    )
                    r.setdefault("first_step_s", []).append(_first_step_after(launched, run))
                if rep < memory_reps:
                    cases = {
                        "sst2_100_steps": startup_args(
                            work / f"sst2_{mode}_{rep}", "trainer.max_steps=100"
                        ),
                        "hymenoptera_2_epochs": [
                            "task=hymenoptera",
                            "model=mobilenet_v2",
                            "trainer.max_epochs=2",
                            f"hydra.run.dir={work / f'hym_{mode}_{rep}'}",
                        ],
                    }
                    for case, args in cases.items():
                        started = time.time()
                        _, main_peak, tree_peak = _subprocess_run(
                            [*args, f"allocator={mode}"], env, work / f"{case}.log"
                        )
                        r.setdefault(f"{case}_main_gib", []).append(main_peak / GIB)
                        r.setdefault(f"{case}_tree_gib", []).append(tree_peak / GIB)
                        r.setdefault(f"{case}_wall_s", []).append(time.time() - started)
                log(f"rep {rep + 1}: {mode} done")
    for mode, r in results.items():
        for key, values in r.items():
            print(
                f"allocator={mode:6s} {key:32s} median {statistics.median(values):7.2f} "
                f"({min(values):.2f}-{max(values):.2f}) of {len(values)}"
            )
    out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main(
        int(sys.argv[1]) if len(sys.argv) > 1 else 3,
        int(sys.argv[2]) if len(sys.argv) > 2 else 2,
        Path(sys.argv[3]) if len(sys.argv) > 3 else OUT,
    )
