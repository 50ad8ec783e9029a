"""What installing without bytecode cost every run (the Makefile installed with `pip --no-compile`
until session 10): with PYTHONDONTWRITEBYTECODE set, as on this machine and on CI, Python then
compiles torch, torchvision, Lightning and transformers from source at every start.

    .venv/bin/python -m experiments.bench.bytecode      # from the project root; writes bytecode.json

Two settings, alternating, REPS repetitions each: the venv's bytecode as installed, and no
bytecode (PYTHONPYCACHEPREFIX pointing at an empty folder, PYTHONDONTWRITEBYTECODE=1: Python looks
for .pyc files there, finds none and writes none, as after a --no-compile install). Timed: `import
lightning`, and the README's main job up to its first training step (`python -m src.train
task=sentiment trainer.max_steps=1 test=false`, tokenization cache warm). Medians and ranges, s.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from src.bench.__main__ import ROOT, _first_step_after, _subprocess_run, startup_args

REPS = 5
OUT = Path(__file__).with_name("bytecode.json")


def import_seconds(env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import lightning"], env=env, cwd=ROOT, check=True)
    return time.perf_counter() - started


def first_step_seconds(env: dict[str, str], work: Path, tag: str) -> float:
    run = work / tag
    launched, _, _ = _subprocess_run(
        startup_args(run, "trainer.max_steps=1"), env, work / f"{tag}.log"
    )
    return _first_step_after(launched, run)


def summary(values: list[float]) -> dict[str, float | list[float]]:
    return {
        "median": round(statistics.median(values), 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
        "values": [round(v, 2) for v in values],
    }


def main() -> None:
    base = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    with tempfile.TemporaryDirectory(prefix="ftlab-bytecode-") as tmp:
        work = Path(tmp)
        empty = work / "no_pyc"
        empty.mkdir()
        settings = {
            "bytecode": base,
            "no_bytecode": {
                **base,
                "PYTHONPYCACHEPREFIX": str(empty),
                "PYTHONDONTWRITEBYTECODE": "1",
            },
        }
        first_step_seconds(base, work, "prime")  # the tokenization cache, once
        times: dict[str, dict[str, list[float]]] = {
            name: {"import_lightning_s": [], "first_step_s": []} for name in settings
        }
        for rep in range(REPS):
            for name, env in settings.items():
                times[name]["import_lightning_s"].append(import_seconds(env))
                times[name]["first_step_s"].append(first_step_seconds(env, work, f"{name}{rep}"))
                print(
                    f"rep {rep + 1}/{REPS} {name}: import lightning "
                    f"{times[name]['import_lightning_s'][-1]:.2f} s, first step "
                    f"{times[name]['first_step_s'][-1]:.2f} s",
                    flush=True,
                )
        assert not any(empty.iterdir()), "bytecode was written to the empty prefix"
    result = {
        "reps": REPS,
        "cpus": os.cpu_count(),
        **{name: {k: summary(v) for k, v in t.items()} for name, t in times.items()},
    }
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
