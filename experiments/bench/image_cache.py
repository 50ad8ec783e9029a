"""What `data.cache_images` (src/data/image_cache.py) saves on this machine: hymenoptera with
mobilenet_v2 (make bench's image case: full fine-tuning, batch 32, 2 loader workers), EPOCHS
epochs and no test pass, cache on (auto) vs off, alternating which goes first; REPS of each.

    .venv/bin/python -m experiments.bench.image_cache [REPS] [EPOCHS]   # from the project root;
                                                                       # writes image_cache.json
    .venv/bin/python -m experiments.bench.image_cache memory [REPS]     # image_cache_memory.json

Per run: the whole `src.pipeline.train` call (start-up and the cache's fill included), each
epoch (its training steps and its validation, from one epoch start to the next), and the val
accuracy (the same batches either way, so it should not move). `memory`: what the cache costs,
`python -m src.train` with make bench's memory case (2 epochs), peak RSS of the main process and
peak PSS of the process tree (workers included, shared pages once; src/bench/__main__.py).
First, the data work alone: an
epoch of the train and the val loader in this process (no workers, one torch thread, as one
loader worker runs), ms per image, cached vs not, and the time to fill the cache.
"""

from __future__ import annotations

import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L

from src.bench.runs import compose, log

ARGS = [a for a in sys.argv[1:] if a != "memory"]
REPS = int(ARGS[0]) if ARGS else 3
EPOCHS = int(ARGS[1]) if len(ARGS) > 1 else 3
OVERRIDES = ["task=hymenoptera", "model=mobilenet_v2", f"trainer.max_epochs={EPOCHS}", "test=false"]
OUT = Path(__file__).with_name("image_cache.json")


class EpochClock(L.Callback):
    def __init__(self) -> None:
        self.marks: list[float] = []

    def on_train_epoch_start(self, trainer, module) -> None:
        self.marks.append(time.perf_counter())

    def on_fit_end(self, trainer, module) -> None:
        self.marks.append(time.perf_counter())


def run(cache: str, work: Path) -> dict:
    from src.pipeline import train

    clock = EpochClock()
    out = work / f"{cache}_{time.monotonic_ns()}"
    cfg = compose([*OVERRIDES, f"data.cache_images={cache}"], out)
    start = time.perf_counter()
    metrics = train(cfg, extra_callbacks=[clock])
    total = time.perf_counter() - start
    epochs = [b - a for a, b in itertools.pairwise(clock.marks)]
    return {"total_s": total, "epoch_s": epochs, "val_acc": metrics.get("val/acc")}


def data_work(work: Path) -> dict:
    """ms per image of one train and one val epoch, loader in this process, 1 torch thread."""
    import torch

    from src.pipeline import build_datamodule

    out: dict = {}
    threads = torch.get_num_threads()
    for cache in ("false", "auto", "false", "auto"):
        cfg = compose([*OVERRIDES, f"data.cache_images={cache}", "data.num_workers=0"], work)
        dm = build_datamodule(cfg, "fit")
        start = time.perf_counter()
        dm._dataset("train")  # fills the cache (both splits) when on
        fill = time.perf_counter() - start
        torch.set_num_threads(1)
        try:
            row = {"fill_s": fill}
            for split, loader in (("train", dm.train_dataloader()), ("val", dm.val_dataloader())):
                start = time.perf_counter()
                n = sum(len(b["labels"]) for b in loader)
                row[f"{split}_ms_per_image"] = (time.perf_counter() - start) * 1000 / n
        finally:
            torch.set_num_threads(threads)
        out.setdefault(cache, []).append(row)
        log(f"data work, cache_images={cache}: {row}")
    return out


def main() -> None:
    runs: dict[str, list[dict]] = {"auto": [], "false": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = data_work(Path(tmp) / "data")
        for rep in range(REPS):
            for cache in ("auto", "false") if rep % 2 == 0 else ("false", "auto"):
                r = run(cache, Path(tmp))
                runs[cache].append(r)
                log(f"cache_images={cache}: {r['total_s']:.1f} s, epochs "
                    f"{[round(e, 1) for e in r['epoch_s']]}, val/acc {r['val_acc']}")  # fmt: skip

    def med(cache: str, key) -> float:
        return statistics.median(key(r) for r in runs[cache])

    later = lambda r: sum(r["epoch_s"][1:])  # noqa: E731  (epochs 2..N: every image decoded before)
    summary = {
        "total_s": {c: med(c, lambda r: r["total_s"]) for c in runs},
        "first_epoch_s": {c: med(c, lambda r: r["epoch_s"][0]) for c in runs},
        "later_epochs_s": {c: med(c, later) for c in runs},
    }
    summary["ratio_on_off"] = {k: v["auto"] / v["false"] for k, v in summary.items()}
    summary["data_work"] = {
        c: {k: statistics.median(r[k] for r in rows) for k in rows[0]} for c, rows in work.items()
    }
    result = {"reps": REPS, "epochs": EPOCHS, "summary": summary, "runs": runs, "data": work}
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


def memory(reps: int) -> None:
    import os

    from src.bench.__main__ import _subprocess_run

    rows: dict[str, list[dict]] = {"auto": [], "false": []}
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(reps):
            for cache in ("auto", "false") if rep % 2 == 0 else ("false", "auto"):
                run = Path(tmp) / f"{cache}_{rep}"
                args = ["task=hymenoptera", "model=mobilenet_v2", "trainer.max_epochs=2"]
                args += [f"data.cache_images={cache}", f"hydra.run.dir={run}"]
                _, main_peak, tree_peak = _subprocess_run(args, env, Path(tmp) / f"{run.name}.log")
                rows[cache].append({"main_rss": main_peak, "tree_pss": tree_peak})
                log(f"memory, cache_images={cache}: main RSS {main_peak / 2**30:.2f} GiB, "
                    f"tree PSS {tree_peak / 2**30:.2f} GiB")  # fmt: skip
    summary = {
        c: {k: statistics.median(r[k] for r in v) / 2**30 for k in v[0]} for c, v in rows.items()
    }
    out = OUT.with_name("image_cache_memory.json")
    out.write_text(json.dumps({"reps": reps, "median_gib": summary, "runs": rows}, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "memory":
        memory(int(sys.argv[2]) if len(sys.argv) > 2 else 2)
    else:
        main()
