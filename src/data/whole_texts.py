"""Held-out splits that do not leak into training, for data sets made of sentences *and* their
phrases (`data.carve_whole_texts`).

SST-2's training set (GLUE) holds ~6.9k review sentences and ~60k phrases cut from them; its dev
set holds whole sentences only. A validation split carved at random from such data is mostly
short phrases, and its sentences have their phrases (often with their labels) in training: on
SST-2 it reached 95.4% while dev stayed at 89-90, so it could not pick a checkpoint or a sweep's
best trial. Carving whole texts only, and dropping from training every text contained in a
held-out one, makes the held-out split look like dev and keeps it unseen.

Containment is by words (whitespace-separated, case-insensitive): "good" is in "a good film",
not in "goodness".
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from src.errors import DataError

log = logging.getLogger(__name__)


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.lower().split())


def _spans(words: tuple[str, ...]) -> Iterable[tuple[str, ...]]:
    """Every contiguous run of words, the whole text included."""
    n = len(words)
    for i in range(n):
        for j in range(i + 1, n + 1):
            yield words[i:j]


def whole_text_mask(texts: Sequence[str]) -> list[bool]:
    """For each text: True when it is not a proper part of another text of `texts` (a duplicate
    of a whole text is whole too)."""
    words = [_words(t) for t in texts]
    known = set(words)
    contained: set[tuple[str, ...]] = set()
    for w in known:
        for span in _spans(w):
            if span != w and span in known:
                contained.add(span)
    return [w not in contained for w in words]


def contained_mask(texts: Sequence[str], held: Sequence[str]) -> list[bool]:
    """For each text: True when it equals or is a part of one of the `held` texts."""
    parts = {span for h in {_words(t) for t in held} for span in _spans(h)}
    return [_words(t) in parts for t in texts]


def carve_whole_texts(
    texts: Sequence[str],
    strata: Sequence[Any],
    fraction: float,
    seed: int,
) -> tuple[list[int], list[int]]:
    """(keep, held) indices: `fraction` of the examples held out from the whole texts (seeded,
    stratified on each example's `strata`), and every text inside a held-out one dropped."""
    from src.data.splits import stratified_split

    pool = [i for i, whole in enumerate(whole_text_mask(texts)) if whole]
    n_held = max(1, round(fraction * len(texts)))
    if n_held > len(pool):
        raise DataError(
            f"data.carve_whole_texts: {fraction} of {len(texts)} examples is {n_held}, but only "
            f"{len(pool)} texts are not part of another; lower data.val_fraction / "
            "data.test_fraction, or set data.carve_whole_texts=false"
        )
    _, held_at = stratified_split([strata[i] for i in pool], n_held / len(pool), seed)
    held = [pool[j] for j in held_at]
    inside = contained_mask(texts, [texts[i] for i in held])
    keep = [i for i, c in enumerate(inside) if not c]
    log.info(
        "data: held out %d whole texts (of %d); dropped %d training examples contained in "
        "them, %d left",
        len(held),
        len(pool),
        len(texts) - len(held) - len(keep),
        len(keep),
    )
    return keep, held
