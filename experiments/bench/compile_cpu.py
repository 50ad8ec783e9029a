"""Does `compile=true` pay on this CPU? A MiniLM training step (the packaged all-MiniLM-L6-v2 with a
new 2-class head, batch 32, bf16 autocast, AdamW) on 40 batches of random tokens whose lengths are
drawn from 8-59 (SST-2's range), eager vs `torch.compile(dynamic=True)`, in separate processes.

    .venv/bin/python -m experiments.bench.compile_cpu eager       # from the project root
    .venv/bin/python -m experiments.bench.compile_cpu compiled

Prints the first three steps (compiling happens there) and the median of steps 6-40.
Session 14, alone on the 2-core AMD EPYC. First pair (a throwaway copy of this script): eager
1.55 / 0.86 / 0.41 s then 506 ms; compiled 68.4 / 50.0 / 0.31 s (118 s of compiling, inductor's
on-disk cache cold) then 477 ms. Then this script, compiled then eager, a few minutes later:
compiled 15.0 / 13.3 / 0.30 s (28 s: the cache warm) then 429 ms; eager 0.87 / 0.53 / 0.31 s
then 430 ms (and 428 ms in a run just before). So no measurable gain a step here: the 6% of the
first pair was the machine's drift between two minutes, not compiling.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch
from transformers import AutoModelForSequenceClassification

from src.assets import packaged_hf_model

STEPS = 40


def main(mode: str) -> None:
    torch.manual_seed(0)
    path = packaged_hf_model("sentence-transformers/all-MiniLM-L6-v2")
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5)
    g = torch.Generator().manual_seed(1)
    lengths = [int(x) for x in torch.randint(8, 60, (STEPS,), generator=g)]
    run = torch.compile(model, dynamic=True) if mode == "compiled" else model
    times = []
    for length in lengths:
        ids = torch.randint(1000, 20000, (32, length))
        labels = torch.randint(0, 2, (32,))
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = run(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    first = [round(t, 2) for t in times[:3]]
    print(f"{mode}: first steps {first} s, median of steps 6-{STEPS}: "
          f"{1000 * statistics.median(times[5:]):.0f} ms")  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "eager")
