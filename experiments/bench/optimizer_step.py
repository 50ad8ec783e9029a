"""Where a MiniLM training step goes on this CPU: forward, backward, and the optimizer step with
torch's default multi-tensor (foreach) AdamW vs the fused kernel. This measurement is what made
fused AdamW ftlab's default (conf/optimizer/adamw.yaml).

    .venv/bin/python -m experiments.bench.optimizer_step    # from the project root; writes optimizer_step.json here

The same network, data slice and batches as `make bench`'s text case (2,058 SST-2 sentences,
batch 32, length-grouped, bf16 autocast where ftlab uses it); 40 steps per variant, the first 5
are warm-up; `opt+clip` is grad-norm clipping plus optimizer.step plus the LR schedule's step.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import DataCollatorWithPadding, get_linear_schedule_with_warmup
from transformers.trainer_pt_utils import LengthGroupedSampler

from src.bench.plain import _autocast
from src.bench.runs import setup_baseline
from src.data.text_rows import column_values

STEPS, WARMUP, REPS = 40, 5, 3


def run(network, dm, fused: bool, precision: str) -> dict[str, float]:
    ds = dm.splits["train"]
    loader = torch.utils.data.DataLoader(
        ds.remove_columns("length"),
        batch_size=32,
        sampler=LengthGroupedSampler(
            32, lengths=column_values(ds, "length"), generator=torch.Generator().manual_seed(42)
        ),
        collate_fn=DataCollatorWithPadding(dm.tokenizer),
    )
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4, weight_decay=0.01, fused=fused)
    scheduler = get_linear_schedule_with_warmup(optimizer, 4, STEPS)
    network.train()
    times = {"forward": 0.0, "backward": 0.0, "opt+clip": 0.0}
    samples = 0
    for i, batch in enumerate(loader):
        if i == STEPS:
            break
        t0 = time.perf_counter()
        with _autocast(precision):
            logits = network(batch)
        loss = torch.nn.functional.cross_entropy(logits.float(), batch["labels"])
        t1 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(network.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        t3 = time.perf_counter()
        if i >= WARMUP:
            times["forward"] += t1 - t0
            times["backward"] += t2 - t1
            times["opt+clip"] += t3 - t2
            samples += len(batch["labels"])
    timed = STEPS - WARMUP
    out = {f"{k}_ms_per_step": 1000 * v / timed for k, v in times.items()}
    out["samples_per_s"] = samples / sum(times.values())
    return out


def main() -> None:
    overrides = ["task=sentiment", "model=bert", "data.limit_train=2100", "optimizer.lr=1e-4"]
    results: dict[str, list[dict[str, float]]] = {"foreach": [], "fused": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(REPS):
            for name in results:  # alternating, a fresh network each time
                _, dm, network, precision = setup_baseline(overrides, Path(tmp))
                results[name].append(run(network, dm, name == "fused", precision))
                print(name, results[name][-1], flush=True)
    summary = {
        name: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        for name, runs in results.items()
    }
    out = {
        "precision": precision,
        "steps_timed": STEPS - WARMUP,
        "median": summary,
        "runs": results,
    }
    path = Path(__file__).with_name("optimizer_step.json")
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
