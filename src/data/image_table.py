"""A table of images (task=image_csv): a csv / tsv / json(l) / parquet file per split whose rows
name an image file, as a path relative to `data.root`, and its label(s), read as the task type
reads them (src/data/labels.py).

Pandas only (no torch), so train checks the tables, their columns, labels and image paths before
the heavy imports, and the data module (src/data/image_csv.py) reads them with the same code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from src.data.labels import is_missing, where
from src.data.preflight import encode_file_labels, label_columns_wanted, read_split_files
from src.errors import DataError

# Missing image files named in the error beyond the first (their rows).
MAX_MISSING_LISTED = 5


@dataclass(frozen=True)
class ImageTable:
    """Every split's image files and encoded labels, in table order."""

    label_names: list[str]
    files: dict[str, str]  # split -> its table file
    paths: dict[str, list[str]]  # split -> each row's image file (inside the root)
    labels: dict[str, list[Any]]  # split -> each row's class id, 0/1 vector or target(s)


def image_root(root: Any, train_file: Any) -> Path:
    """`data.root`, or (null) the folder of the training table."""
    if root not in (None, ""):
        return Path(str(root)).expanduser()
    return Path(str(train_file)).expanduser().parent


def read_image_table(data: Any) -> ImageTable:
    """The tables of `data` (the image_csv data settings): files that parse, the image and label
    columns, labels that fit the task type, and image paths that stay inside the root and name
    existing files; each mistake a one-line error naming the value, the file and the row."""
    root = image_root(data.get("root"), data.get("train_file"))
    if not root.is_dir():
        raise DataError(
            f"data.root={str(root)!r} is not a folder: the image paths of the tables are relative "
            "to it (set data.root=DIR)"
        )
    column = str(data.get("image_column"))
    frames = read_split_files(data, {"data.image_column": column, **label_columns_wanted(data)})
    label_names, labels = encode_file_labels(data, frames)
    paths = {
        split: image_paths(root, frame[column].tolist(), split, str(file), column)
        for split, (file, frame) in frames.items()
    }
    return ImageTable(label_names, {s: str(f) for s, (f, _) in frames.items()}, paths, labels)


def image_paths(root: Path, cells: list[Any], split: str, file: str, column: str) -> list[str]:
    """Each row's image file under `root`. A missing cell, a path that leaves the root (`..`, an
    absolute path elsewhere) or a file that does not exist is an error naming the row."""
    base = os.path.normpath(os.path.abspath(root))
    out, missing = [], []
    for row, cell in enumerate(cells):
        if is_missing(cell):
            raise DataError(
                f"missing image path ({cell!r}) in column {column!r} at {where(split, row, file)}: "
                "every row needs an image file; fix or remove the row"
            )
        given = str(cell).strip()
        # lexical: `..` and absolute paths are caught, symlinks inside the root are followed
        path = os.path.normpath(os.path.join(base, given))
        if os.path.commonpath([base, path]) != base:
            raise DataError(
                f"image path {given!r} at {where(split, row, file)} (column {column!r}) is outside "
                f"data.root={base}: paths are relative to data.root and stay inside it"
            )
        if not os.path.isfile(path):
            missing.append((row, given, path))
        out.append(path)
    if missing:
        row, given, path = missing[0]
        rows = ", ".join(str(r + 1) for r, _, _ in missing[1 : 1 + MAX_MISSING_LISTED])
        more = len(missing) - 1
        also = f"; {more} more missing (rows {rows}{', ...' if more > MAX_MISSING_LISTED else ''})"
        raise DataError(
            f"image file not found: {path} ({column!r} = {given!r} at "
            f"{where(split, row, file)}){also if more else ''}; paths are relative to "
            f"data.root={base}"
        )
    return out
