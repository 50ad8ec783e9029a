"""Seeded, stratified splits of a training set: a validation hold-out, or K cross-validation folds."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _shuffled_by_class(targets: Sequence[int], seed: int) -> list[list[int]]:
    """Each class's indices in a seeded random order (classes in sorted order)."""
    g = torch.Generator().manual_seed(seed)
    by_class: list[list[int]] = []
    for c in sorted(set(targets)):
        idx = [i for i, t in enumerate(targets) if t == c]
        by_class.append([idx[j] for j in torch.randperm(len(idx), generator=g).tolist()])
    return by_class


def stratified_split(
    targets: Sequence[int], fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """(train, val) indices: `fraction` of each class goes to val, chosen with `seed`."""
    train, val = [], []
    for perm in _shuffled_by_class(targets, seed):
        n_val = max(1, round(len(perm) * fraction)) if len(perm) > 1 else 0
        val += perm[:n_val]
        train += perm[n_val:]
    return sorted(train), sorted(val)


def stratified_folds(targets: Sequence[int], folds: int, seed: int) -> list[list[int]]:
    """`folds` disjoint index lists covering every example, each with the class balance of the
    whole (like sklearn's StratifiedKFold with shuffle): each class is dealt round-robin, and
    each class starts where the previous one stopped, so fold sizes differ by at most one."""
    if folds < 2:
        raise ValueError(f"folds={folds}: need at least 2")
    out: list[list[int]] = [[] for _ in range(folds)]
    start = 0
    for perm in _shuffled_by_class(targets, seed):
        for j, i in enumerate(perm):
            out[(start + j) % folds].append(i)
        start = (start + len(perm)) % folds
    return [sorted(f) for f in out]


def fold_split(
    targets: Sequence[int], folds: int, fold: int, seed: int
) -> tuple[list[int], list[int]]:
    """(train, val) indices for cross-validation fold `fold` of `folds`: val is that fold."""
    parts = stratified_folds(targets, folds, seed)
    val = parts[fold]
    train = sorted(i for k, p in enumerate(parts) if k != fold for i in p)
    return train, val


def quantile_bins(values: Sequence[float], bins: int) -> list[int]:
    """Each value's quantile bin (0..bins-1, by rank): strata for splitting regression targets."""
    order = sorted(range(len(values)), key=values.__getitem__)
    out = [0] * len(values)
    for rank, i in enumerate(order):
        out[i] = rank * bins // max(len(values), 1)
    return out
