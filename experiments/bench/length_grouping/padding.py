"""Padded / real tokens per epoch, HF's megabatches vs `group_by_length=sorted`, on SST-2 train.

    python experiments/bench/length_grouping/padding.py [data_dir]

Lengths are word counts + 2 ([CLS], [SEP]): an approximation of the token counts, enough to
compare the two samplers (batch 32, one epoch each, generator seed 1; the slice is a seeded
random 2,058 sentences, the bench's slice size).
"""

from __future__ import annotations

import csv
import random
import sys
from pathlib import Path

import torch
from transformers.trainer_pt_utils import LengthGroupedSampler

from src.data.length_grouping import NoisySortedBatchSampler

BATCH = 32


def padded_over_real(order: list[int], lengths: list[int]) -> float:
    batches = [order[i : i + BATCH] for i in range(0, len(order), BATCH)]
    return sum(len(b) * max(lengths[i] for i in b) for b in batches) / sum(lengths)


def main(data_dir: Path) -> None:
    with (data_dir / "sst2" / "train.tsv").open() as f:
        rows = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        full = [len(r["sentence"].split()) + 2 for r in rows]
    random.seed(0)
    for name, lengths in (("2,058 sentences", random.sample(full, 2058)), ("all", full)):
        mega = LengthGroupedSampler(
            BATCH, lengths=lengths, generator=torch.Generator().manual_seed(1)
        )
        print(f"{name}: megabatch {padded_over_real(list(mega), lengths):.3f}", end="")
        for noise in (0.0, 0.02, 0.05, 0.1):
            g = torch.Generator().manual_seed(1)
            order = list(NoisySortedBatchSampler(BATCH, lengths, g, noise=noise))
            print(f", sorted noise {noise}: {padded_over_real(order, lengths):.3f}", end="")
        print()


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data"))
