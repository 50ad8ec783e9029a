"""How much of ftlab's lead over HF Trainer is `allocator=auto` (src/allocator.py)?

make bench's `hf` pair (ftlab and HF Trainer at its best in turns, each in a process of its own:
src/bench/hf.py), with ftlab's run at `allocator=keep` (what `auto` picks on a CPU) and at
`allocator=system` (the C library's defaults, as HF's process has them). The setting holds for
the rest of a process once made, so every pair runs in a fresh `python` of its own; the two
settings alternate which goes first, REPS pairs each, seed 42 + repetition for both.

    .venv/bin/python -m experiments.bench.allocator_hf [REPS]   # from the project root;
                                                             # writes allocator_hf.json

Prints, per pair: the epoch times, ftlab / HF, and the split of that ratio into the tokens of an
epoch (padding included) x the seconds per 1,000 tokens.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

OUT = Path(__file__).with_name("allocator_hf.json")
MODES = ("keep", "system")


def one_pair(mode: str, rep: int) -> dict:
    """In this process: one pair, ftlab at `allocator=mode`."""
    import logging

    import src.bench.hf as hf

    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="ftlab-allocator-") as tmp:
        pair = hf.in_turns(
            [*hf.OVERRIDES, f"seed={42 + rep}", f"allocator={mode}"],
            Path(tmp),
            f"allocator_{mode}",
            ftlab_first=rep % 2 == 0,
        )
    out = {"mode": mode, "rep": rep, "ftlab_first": rep % 2 == 0}
    for name, steps in (("ftlab", pair.ftlab_steps), ("hf_best", pair.hf_steps)):
        out[name] = {
            "epoch_s": steps.epoch_times()[0],
            "tokens": sum(steps.tokens),
            "s_per_1k_tokens": steps.seconds_per_1k_tokens(hf.TOKEN_WARMUP),
        }
    out["ftlab"]["dev_acc"] = pair.ftlab_metrics["test/acc"]
    out["hf_best"]["dev_acc"] = pair.hf_acc
    f, h = out["ftlab"], out["hf_best"]
    out["ratio_epoch"] = f["epoch_s"] / h["epoch_s"]
    out["ratio_tokens"] = f["tokens"] / h["tokens"]
    out["ratio_s_per_1k_tokens"] = f["s_per_1k_tokens"] / h["s_per_1k_tokens"]
    return out


def main(reps: int) -> None:
    results = []
    for rep in range(reps):
        for mode in MODES if rep % 2 == 0 else MODES[::-1]:
            done = subprocess.run(
                [sys.executable, "-m", "experiments.bench.allocator_hf", "one", mode, str(rep)],
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                sys.exit(f"the {mode} pair failed:\n{done.stderr[-3000:]}")
            r = json.loads(done.stdout.strip().splitlines()[-1])
            results.append(r)
            print(
                f"rep {rep} allocator={mode:6s} ftlab {r['ftlab']['epoch_s']:.2f} s, "
                f"HF {r['hf_best']['epoch_s']:.2f} s: {r['ratio_epoch']:.3f} = tokens "
                f"{r['ratio_tokens']:.3f} x per token {r['ratio_s_per_1k_tokens']:.3f}; dev "
                f"{r['ftlab']['dev_acc']:.4f} vs {r['hf_best']['dev_acc']:.4f}",
                flush=True,
            )
    for mode in MODES:
        for key in ("ratio_epoch", "ratio_tokens", "ratio_s_per_1k_tokens"):
            values = [r[key] for r in results if r["mode"] == mode]
            print(
                f"allocator={mode} {key}: median {statistics.median(values):.3f} "
                f"({min(values):.3f}-{max(values):.3f})"
            )
    OUT.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    if sys.argv[1:2] == ["one"]:
        print(json.dumps(one_pair(sys.argv[2], int(sys.argv[3]))))
    else:
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
