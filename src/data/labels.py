"""Class labels: the classes come from the training split (or `data.label_names`); every other
split must fit them. Pure Python, so the same checks run before the heavy imports (on the files'
label columns, src/data/preflight.py) and inside the data module (also for hub data)."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from src.errors import DataError

log = logging.getLogger(__name__)

# Cell values that mean "no label" (pandas reads csv cells with keep_default_na=False as text).
MISSING = {"", "nan", "na", "n/a", "null", "none"}


def is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return isinstance(value, str) and value.strip().lower() in MISSING


def canonical(value: Any) -> int | str:
    """A label as an int (ints, integral floats, strings of digits) or a stripped string."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    text = str(value).strip()
    if text.lstrip("-").isdigit():
        return int(text)
    return text


def where(split: str, row: int, file: str | None) -> str:
    """`row 12 of FILE`: rows are counted from 1, the header line not counted."""
    return f"row {row + 1} of {file}" if file else f"row {row + 1} of the {split} split"


@dataclass(frozen=True)
class LabelEncoder:
    """Label value -> class id (0..K-1), with the class names in id order."""

    names: list[str]
    ids: dict[int | str, int]
    source: str  # where the classes came from, for messages

    def encode(self, split: str, values: Sequence[Any], file: str | None, column: str) -> list[int]:
        """The class id of every value; a missing label or one outside the classes is an error
        naming the value, the file and the row."""
        out = []
        for row, value in enumerate(values):
            if is_missing(value):
                raise DataError(
                    f"missing label ({value!r}) in column {column!r} at {where(split, row, file)}: "
                    "every example needs a label; fix or remove the row"
                )
            key = canonical(value)
            if key not in self.ids:
                raise DataError(
                    f"label {value!r} at {where(split, row, file)} (column {column!r}) is not one "
                    f"of the {len(self.names)} classes {self.source}: {self.names}{_hint(key, self)}"
                )
            out.append(self.ids[key])
        return out


def _hint(key: int | str, encoder: LabelEncoder) -> str:
    same = [n for n in encoder.names if n.lower() == str(key).lower()]
    if same:
        return f" (labels are case-sensitive: {same[0]!r} is a class)"
    if encoder.source == "of data.label_names":
        return "; add it to data.label_names"
    return "; set data.label_names=[...] to declare every class"


def encoder_from_train(
    values: Sequence[Any], label_names: Sequence[Any] | None, file: str | None, column: str
) -> LabelEncoder:
    """The classes: `label_names` when given, else the distinct labels of the training split.

    Integer labels must be 0..K-1 to be used as class ids; other integers (e.g. 1..5 stars) are
    mapped to ids in sorted order, with a logged note. A training split with one class is an
    error (nothing to learn)."""
    for row, value in enumerate(values):
        if is_missing(value):
            raise DataError(
                f"missing label ({value!r}) in column {column!r} at {where('train', row, file)}: "
                "every example needs a label; fix or remove the row"
            )
    distinct = sorted({canonical(v) for v in values}, key=lambda v: (isinstance(v, str), v))
    if label_names:
        names = [str(n) for n in label_names]
        by_name: dict[int | str, int] = {canonical(n): i for i, n in enumerate(names)}
        if all(isinstance(k, int) for k in by_name):  # names that are numbers: match by value
            ids = by_name
        else:  # ints are positions in label_names, strings are names
            ids = {**{i: i for i in range(len(names))}, **by_name}
        return LabelEncoder(names, ids, "of data.label_names")
    if len(distinct) < 2:
        raise DataError(
            f"the training data ({file or 'train split'}) has one class only "
            f"({distinct[0]!r} in column {column!r}): a classifier needs at least 2; "
            "check data.label_column"
        )
    if all(isinstance(v, int) for v in distinct):
        if distinct != list(range(len(distinct))):
            log.info(
                "data: integer labels %s are not 0..%d: mapped to class ids in sorted order (%s)",
                distinct,
                len(distinct) - 1,
                ", ".join(f"{v}->{i}" for i, v in enumerate(distinct)),
            )
        return LabelEncoder(
            [str(v) for v in distinct],
            {v: i for i, v in enumerate(distinct)},
            "found in the training data",
        )
    # strings, sorted (numbers mixed in come first)
    return LabelEncoder(
        [str(v) for v in distinct],
        {v: i for i, v in enumerate(distinct)},
        "found in the training data",
    )
