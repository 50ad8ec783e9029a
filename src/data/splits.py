"""Seeded, stratified splits of a training set: a validation hold-out, or K cross-validation folds."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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


def multilabel_folds(labels: Sequence[Sequence[float]], folds: int, seed: int) -> list[list[int]]:
    """`folds` disjoint index lists covering every example, each with about the label balance of
    the whole: iterative stratification (Sechidis et al. 2011, the iterative-stratification
    package) deals the examples of the rarest remaining label first, each to the fold that still
    wants most of that label, so a rare label is spread over the folds instead of left to chance.
    `labels`: one 0/1 vector per example."""
    import numpy as np

    y = np.asarray(labels, dtype=float).reshape(len(labels), -1) > 0.5
    if folds < 2:
        raise ValueError(f"folds={folds}: need at least 2")
    if y.shape[1] == 1:  # one label: its presence is a class
        return stratified_folds(y[:, 0].astype(int).tolist(), folds, seed)
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    splitter = MultilabelStratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [sorted(test.tolist()) for _, test in splitter.split(np.zeros(len(y)), y.astype(int))]


def fold_split(
    targets: Sequence[Any], folds: int, fold: int, seed: int
) -> tuple[list[int], list[int]]:
    """(train, val) indices for cross-validation fold `fold` of `folds`: val is that fold.
    `targets`: a class (or target bin) per example, or a 0/1 label vector per example
    (multi-label: iterative stratification)."""
    multilabel = len(targets) > 0 and isinstance(targets[0], (list, tuple))
    parts = (multilabel_folds if multilabel else stratified_folds)(targets, folds, seed)
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


def split_strata(task_type: str, labels: Sequence[Any]) -> list[Any]:
    """What held-out splits and folds are stratified on: the class (multiclass), the quintile of
    the first target (regression), nothing (multi-label: a seeded random split; its CV folds are
    stratified on the label sets instead, `fold_targets`)."""
    if task_type == "multiclass":
        return list(labels)
    if task_type == "regression":
        return quantile_bins([t[0] if isinstance(t, (list, tuple)) else t for t in labels], 5)
    return [0] * len(labels)


def fold_targets(task_type: str, labels: Sequence[Any]) -> list[Any]:
    """What CV folds are stratified on: the label sets (multi-label, iterative), else the strata."""
    return list(labels) if task_type == "multilabel" else split_strata(task_type, labels)


def carve_splits(
    labels: Sequence[Any],
    task_type: str,
    has_val: bool,
    has_test: bool,
    val_fraction: float,
    test_fraction: float | None,
    seed: int,
    folds: int | None = None,
    fold: int | None = None,
) -> dict[str, list[int]]:
    """Indices into the training examples of the splits drawn from them: `train`, `test`
    (`test_fraction`, when there is no test data and no CV over a given val split), `val` (the
    CV fold `fold` of `folds`, else `val_fraction` of the rest when there is no val data).
    Seeded and stratified (`split_strata`). With CV and given val data but no test data, the
    caller tests every fold on the val data."""
    strata = split_strata(task_type, labels)
    pool, carved = list(range(len(labels))), {}
    if not has_test and test_fraction and not (folds and has_val):
        pool, carved["test"] = stratified_split(strata, test_fraction, seed)
    if folds:
        targets = fold_targets(task_type, [labels[i] for i in pool])
        train, val = fold_split(targets, folds, fold, seed)
    elif has_val:
        train, val = list(range(len(pool))), None
    else:
        train, val = stratified_split([strata[i] for i in pool], val_fraction, seed)
    carved["train"] = [pool[i] for i in train]
    if val is not None:
        carved["val"] = [pool[i] for i in val]
    return carved
