"""Class labels: the classes come from the training split (or `data.label_names`); every other
split must fit them. Pure Python, so the same checks run before the heavy imports (on the files'
label columns, src/data/preflight.py) and inside the data module (also for hub data)."""

from __future__ import annotations

import dataclasses
import json
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
    if encoder.source == "found in the training data":
        return "; set data.label_names=[...] to declare every class"
    return ""


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


# --------------------------------------------------------------------------- multi-label


def parse_label_set(value: Any) -> list[int | str]:
    """One multi-label cell as its labels: a list, a JSON list (`[8, 20]`, `["joy"]`), or
    comma-separated ids or names (`8,20`, `joy, love`). `[]` is the empty set."""
    if isinstance(value, (list, tuple)):
        items = list(value)
    else:
        text = str(value).strip()
        if text.startswith("["):
            try:
                items = json.loads(text)
            except json.JSONDecodeError as e:
                raise ValueError(f"not a JSON list ({e.msg})") from e
        else:
            items = text.split(",")
    return [canonical(v) for v in items if not (isinstance(v, str) and not v.strip())]


def multilabel_encoder(
    values: Sequence[Any], label_names: Sequence[Any] | None, file: str | None, column: str
) -> LabelEncoder:
    """The labels of a multi-label column: `label_names` (ids are positions in it), else every
    label found in the training split (integers 0..K-1 as ids, as for classes)."""
    flat: list[Any] = []
    for row, value in enumerate(values):
        flat += _label_set(value, "train", row, file, column)
    if label_names:
        return encoder_from_train(flat, label_names, file, column)
    if not flat:
        raise DataError(
            f"the training data ({file or 'train split'}) has no label at all in {column!r}"
        )
    return encoder_from_train(flat, None, file, column)


def _label_set(value: Any, split: str, row: int, file: str | None, column: str) -> list[Any]:
    if is_missing(value) and not isinstance(value, (list, tuple)):
        raise DataError(
            f"missing labels ({value!r}) in column {column!r} at {where(split, row, file)}: every "
            "example needs its label set (`[]` for none)"
        )
    try:
        return parse_label_set(value)
    except ValueError as e:
        raise DataError(
            f"labels {value!r} at {where(split, row, file)} (column {column!r}) are {e}; "
            "give ids or names separated by commas (`8,20`) or a JSON list"
        ) from e


def encode_label_sets(
    encoder: LabelEncoder, split: str, values: Sequence[Any], file: str | None, column: str
) -> list[list[float]]:
    """Each row's label set as a 0/1 vector over `encoder.names`; a label outside them is an
    error naming the label, the file and the row."""
    k = len(encoder.names)
    out = []
    for row, value in enumerate(values):
        vector = [0.0] * k
        items = _label_set(value, split, row, file, column)
        for item in items:
            if item not in encoder.ids:
                raise DataError(
                    f"label {item!r} at {where(split, row, file)} (column {column!r}) is not one "
                    f"of the {k} labels {encoder.source}"
                    + (f" (ids 0..{k - 1})" if isinstance(item, int) else f": {encoder.names}")
                    + _hint(item, encoder)
                )
            vector[encoder.ids[item]] = 1.0
        out.append(vector)
    return out


def encode_indicator_columns(
    split: str, columns: dict[str, Sequence[Any]], file: str | None
) -> list[list[float]]:
    """One 0/1 column per label (`data.label_columns`) as each row's 0/1 vector."""
    names = list(columns)
    out = []
    for row, cells in enumerate(zip(*columns.values(), strict=True)):
        vector = []
        for name, cell in zip(names, cells, strict=True):
            key = canonical(cell) if not isinstance(cell, bool) else int(cell)
            if key not in (0, 1):
                raise DataError(
                    f"value {cell!r} at {where(split, row, file)} (label column {name!r}) is not 0 "
                    "or 1: data.label_columns are one 0/1 indicator column per label"
                )
            vector.append(float(key))
        out.append(vector)
    return out


# --------------------------------------------------------------------------- regression


def encode_targets(
    split: str, columns: dict[str, Sequence[Any]], file: str | None
) -> list[float] | list[list[float]]:
    """Regression targets as floats (one column: a float per row, else a list per row); a missing
    or non-numeric value is an error naming it, the file and the row."""
    parsed: list[list[float]] = []
    for row, cells in enumerate(zip(*columns.values(), strict=True)):
        values = []
        for name, cell in zip(columns, cells, strict=True):
            number = None
            if not is_missing(cell) and not isinstance(cell, bool):
                try:
                    number = float(str(cell).strip()) if isinstance(cell, str) else float(cell)
                except (TypeError, ValueError):
                    number = None
            if number is None or not math.isfinite(number):
                raise DataError(
                    f"target {cell!r} at {where(split, row, file)} (column {name!r}) is not a "
                    "number: task.type=regression needs a finite number in every row"
                )
            values.append(number)
        parsed.append(values)
    return [v[0] for v in parsed] if len(columns) == 1 else parsed


def target_stats(targets: Sequence[Any]) -> dict[str, list[float]]:
    """Mean, std, min, max of each target (a float per row, or a list per row)."""
    rows = [t if isinstance(t, (list, tuple)) else [t] for t in targets]
    stats: dict[str, list[float]] = {"mean": [], "std": [], "min": [], "max": []}
    for column in zip(*rows, strict=True):
        n = len(column)
        mean = sum(column) / n
        stats["mean"].append(mean)
        stats["std"].append(math.sqrt(sum((x - mean) ** 2 for x in column) / max(n - 1, 1)))
        stats["min"].append(min(column))
        stats["max"].append(max(column))
    return stats


# --------------------------------------------------------------------------- every type


def encode_labels(
    task_type: str,
    columns: dict[str, dict[str, Sequence[Any]]],
    files: dict[str, str | None],
    label_column: str,
    label_columns: Sequence[str] | None = None,
    label_names: Sequence[Any] | None = None,
    label_source: str | None = None,
) -> tuple[list[str], dict[str, list]]:
    """The label names and every split's labels as `task_type` reads them: class ids
    (multiclass), 0/1 vectors (multilabel: a label set per row, or `label_columns` of 0/1),
    targets (regression: `label_column`, or one per `label_columns`). `columns`: split -> the
    label column(s) -> cell values; `train` decides the classes.

    Without a `train` split (src.eval on new data) `label_names` are the classes, named in errors
    as `label_source` (e.g. "of the checkpoint")."""
    if "train" not in columns and task_type != "regression" and not label_names:
        raise DataError("labels without a train split need their classes (label_names)")
    if task_type == "multiclass":
        col = label_column
        values = {s: cells[col] for s, cells in columns.items()}
        encoder = encoder_from_train(values.get("train", []), label_names, files.get("train"), col)
        encoder = _named(encoder, label_source)
        return encoder.names, {s: encoder.encode(s, values[s], files.get(s), col) for s in values}
    if task_type == "regression":
        cols = list(label_columns or [label_column])
        names = [str(n) for n in label_names or cols]
        if len(names) != len(cols):
            raise DataError(
                f"data.label_names has {len(names)} names for {len(cols)} regression targets {cols}"
            )
        return names, {
            s: encode_targets(s, {c: cells[c] for c in cols}, files.get(s))
            for s, cells in columns.items()
        }
    if task_type != "multilabel":
        raise DataError(f"task.type={task_type!r}: no label encoding for it")
    if label_columns:
        cols = list(label_columns)
        return cols, {
            s: encode_indicator_columns(s, {c: cells[c] for c in cols}, files.get(s))
            for s, cells in columns.items()
        }
    col = label_column
    values = {s: cells[col] for s, cells in columns.items()}
    encoder = multilabel_encoder(values.get("train", []), label_names, files.get("train"), col)
    encoder = _named(encoder, label_source)
    return encoder.names, {
        s: encode_label_sets(encoder, s, values[s], files.get(s), col) for s in values
    }


def _named(encoder: LabelEncoder, source: str | None) -> LabelEncoder:
    """`encoder` with its classes' origin, for messages, replaced by `source` when given."""
    return encoder if source is None else dataclasses.replace(encoder, source=source)
