"""data.group_by_length: the noisy whole-epoch sort against HF's megabatches, and its checks."""

from __future__ import annotations

import pytest
import torch
from transformers.trainer_pt_utils import LengthGroupedSampler

from src.data.length_grouping import NoisySortedBatchSampler, length_grouping
from src.data.resumable import resumable_train_loader
from src.errors import ConfigError

BATCH = 8


@pytest.fixture(scope="module")
def lengths() -> list[int]:
    g = torch.Generator().manual_seed(0)
    # a long-tailed spread of sentence lengths, as in SST-2 (many short phrases, few long ones)
    return (torch.empty(203).exponential_(0.08, generator=g).long() + 3).tolist()


def batches(order: list[int]) -> list[list[int]]:
    return [order[i : i + BATCH] for i in range(0, len(order), BATCH)]


def padded_tokens(order: list[int], lengths: list[int]) -> int:
    return sum(len(b) * max(lengths[i] for i in b) for b in batches(order))


def epoch(lengths: list[int], seed: int) -> list[int]:
    return list(NoisySortedBatchSampler(BATCH, lengths, torch.Generator().manual_seed(seed)))


def test_every_example_once_long_batch_first_short_batch_last(lengths) -> None:
    order = epoch(lengths, 1)
    assert sorted(order) == list(range(len(lengths)))
    cut = batches(order)
    assert [len(b) for b in cut] == [BATCH] * (len(lengths) // BATCH) + [len(lengths) % BATCH]
    assert max(lengths[i] for i in cut[0]) == max(lengths)
    # the short remainder holds the shortest examples
    assert max(lengths[i] for i in cut[-1]) <= sorted(lengths)[len(lengths) % BATCH + BATCH]


def test_less_padding_than_megabatches(lengths) -> None:
    real = sum(lengths)
    sorted_ = padded_tokens(epoch(lengths, 1), lengths) / real
    mega = [
        padded_tokens(list(LengthGroupedSampler(BATCH, lengths=lengths, generator=g)), lengths)
        / real
        for g in [torch.Generator().manual_seed(s) for s in range(5)]
    ]
    assert sorted_ < min(mega)
    assert sorted_ < 1.15  # near the minimum (1.0: no padding at all)


def test_batches_change_between_epochs_and_repeat_for_a_seed(lengths) -> None:
    first, again, other = epoch(lengths, 1), epoch(lengths, 1), epoch(lengths, 2)
    assert first == again
    pairs = lambda order: {frozenset(b[:2]) for b in batches(order)}  # noqa: E731
    assert first != other
    # which examples share a batch changes, not only the batch order
    assert len(pairs(first) & pairs(other)) < len(pairs(first)) // 2


def test_resumed_loader_skips_exactly_the_done_batches(lengths) -> None:
    data = list(range(len(lengths)))

    def loader():
        make = lambda generator: NoisySortedBatchSampler(BATCH, lengths, generator)  # noqa: E731
        return resumable_train_loader(data, BATCH, 7, make)

    full = loader()
    full.sampler.set_epoch(3)
    whole = [b.tolist() for b in full]
    resumed = loader()
    resumed.sampler.set_epoch(3)
    resumed.load_state_dict({"epoch": 3, "batches_done": 5})
    assert [b.tolist() for b in resumed] == whole[5:]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, "megabatch"),
        ("true", "megabatch"),
        ("megabatch", "megabatch"),
        ("sorted", "sorted"),
        (False, None),
        ("false", None),
    ],
)
def test_choices(value, expected) -> None:
    assert length_grouping(value) == expected


def test_bad_choice_names_the_value_and_the_choices() -> None:
    with pytest.raises(
        ConfigError, match=r"data.group_by_length='sort' is not one of: true .*sorted"
    ):
        length_grouping("sort")
