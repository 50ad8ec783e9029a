"""Training batches of similar lengths, for dynamic padding: the samplers `data.group_by_length`
chooses.

- `megabatch` (= `true`): transformers' `LengthGroupedSampler`, as HF Trainer's
  `group_by_length`: the epoch is shuffled, cut into megabatches of up to 50 batches, each sorted
  by length. A batch pads to the longest of its neighbours within one megabatch.
- `sorted`: the whole epoch sorted by a noisy length (as AllenNLP's `BucketBatchSampler` with
  `padding_noise`, here 0.02), ties in a random order, cut into batches, and the batches
  shuffled. Batches hold examples of nearly the same length, yet which examples share a batch
  changes every epoch: token lengths are integers, so most of the randomness comes from the
  shuffled ties. Padded / real tokens on SST-2 (batch 32, word counts): 1.161 with megabatches
  vs 1.039 on 2,058 sentences, 1.048 vs 1.002 on all 67k (AllenNLP's default noise of 0.1
  gives 1.097 and 1.071: worse than megabatches on the full set); from
  `experiments/bench/length_grouping/padding.py`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

from src.errors import ConfigError

CHOICES = {True: "megabatch", "megabatch": "megabatch", "sorted": "sorted", False: None}


def length_grouping(value: object) -> str | None:
    """`data.group_by_length` as 'megabatch', 'sorted' or None (plain shuffling)."""
    key = value.lower() if isinstance(value, str) else value
    if isinstance(key, str) and key in ("true", "false"):
        key = key == "true"
    if key not in CHOICES:
        raise ConfigError(
            f"data.group_by_length={value!r} is not one of: true (= megabatch), megabatch, "
            "sorted, false"
        )
    return CHOICES[key]


class NoisySortedBatchSampler(Sampler[int]):
    """Indices for batches of `batch_size` examples of nearly equal length, the batches in a
    random order: the longest first, so an out-of-memory error comes at the first step, and a
    short remainder batch last.

    Each length is multiplied by a factor drawn from [1 - noise, 1 + noise] before sorting, and
    ties fall in a random order; both come from `generator`, which the epoch-seeded loader
    reseeds every epoch."""

    def __init__(
        self,
        batch_size: int,
        lengths: Sequence[int],
        generator: torch.Generator | None = None,
        noise: float = 0.02,
    ) -> None:
        self.batch_size, self.generator, self.noise = int(batch_size), generator, float(noise)
        self.lengths = torch.as_tensor(list(lengths), dtype=torch.float64)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        n = len(self.lengths)
        shuffle = torch.randperm(n, generator=self.generator)
        factor = (
            1 + (torch.rand(n, generator=self.generator, dtype=torch.float64) * 2 - 1) * self.noise
        )
        noisy = (self.lengths * factor)[shuffle]
        order = shuffle[
            torch.argsort(noisy, stable=True)
        ]  # stable over a random order: ties shuffled
        # The DataLoader re-cuts this flat order every batch_size indices, so only the last batch
        # may be short: it takes the shortest examples and comes last.
        short = n % self.batch_size
        batches = list(torch.split(order[short:], self.batch_size))
        perm = torch.randperm(len(batches), generator=self.generator).tolist()
        batches = [batches[i] for i in perm]
        if batches:
            longest = max(range(len(batches)), key=lambda i: float(self.lengths[batches[i]].max()))
            batches[0], batches[longest] = batches[longest], batches[0]
        return iter(torch.cat([*batches, order[:short]]).tolist())
