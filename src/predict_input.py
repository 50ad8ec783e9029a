"""What `python -m src.predict` reads: sentences (`text=`), a table file or images (`input=`).

Checked and read before torch is imported, so a mistyped path, suffix or column fails in about a
second, with a message that names the bad value and what would be valid.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from src.errors import ConfigError, DataError

TEXT_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl")
# src.data.image.IMAGE_SUFFIXES, repeated so that checking the input imports no torch (a test
# keeps the two equal).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
# A string ending like a file name (reviews.cvs, photo.JPG), not like a sentence ("3.50", "end.").
FILE_LIKE_END = re.compile(r"[^\s.]\.[A-Za-z][A-Za-z0-9]{0,4}$")


@dataclass
class PredictInput:
    """What to predict: sentences (text=), a table file or images (input=)."""

    kind: str  # "sentences" | "table" | "images"
    key: str  # the config key it came from: "text" or "input"
    texts: list[str] = field(default_factory=list)  # the sentences
    path: Path | None = None  # the table file, image file or image folder
    frame: Any = None  # the table (pandas DataFrame), every column as read
    files: list[Path] = field(default_factory=list)  # the image files

    @property
    def modality(self) -> str:
        return "image" if self.kind == "images" else "text"

    def describe(self) -> str:
        return f"{self.key}={str(self.path)!r}" if self.path else f"{self.key}=..."


def looks_like_path(value: str) -> bool:
    """A string more likely meant as a path than as a sentence: it holds a path separator, or ends
    in a file-like suffix (`data/new_reviews`, `reviews.cvs`)."""
    separators = {"/", os.sep, os.altsep} - {None}
    return any(s in value for s in separators) or bool(FILE_LIKE_END.search(value.strip()))


def cell(value: Any) -> str:
    """A table value as CSV text: '' for missing, JSON for nested values."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def read_table(path: Path, columns: Sequence[str]) -> Any:
    """A csv / tsv / json / jsonl file as a DataFrame (every column kept), with `columns` in it."""
    import pandas as pd

    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        elif suffix == ".tsv":  # GLUE-style: no quoting (as the training reader)
            frame = pd.read_csv(
                path, sep="\t", dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE
            )
        else:
            frame = pd.read_json(path, lines=suffix == ".jsonl", dtype=False)
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from e
    except Exception as e:  # empty file, parse errors
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"cannot parse {path} as {suffix[1:]}: {first}") from e
    frame.columns = [str(c) for c in frame.columns]
    check_columns(frame, path, columns)
    if len(frame) == 0:
        raise DataError(f"{path} has no rows to predict")
    return frame


def check_columns(frame: Any, path: Path, columns: Sequence[str]) -> None:
    for col in columns:
        if col not in frame.columns:
            key = "text_column" if col == columns[0] else "text_pair_column"
            raise DataError(
                f"column {col!r} not in {path}; columns found: "
                f"{', '.join(frame.columns)} (set {key}=NAME)"
            )


def image_files(path: Path) -> list[Path]:
    """An image file, or every image under a folder (sorted)."""
    if path.is_dir():
        files = sorted(
            p for p in path.rglob("*") if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES)
        )
        if not files:
            raise DataError(f"input={str(path)!r}: no image files in this folder")
        return files
    return [path]


def sentences(value: Any, key: str) -> list[str]:
    """`text=` (or the legacy `input=` sentence or list) as a list of strings."""
    values = list(value) if isinstance(value, ListConfig) else [value]
    texts = [cell(v) for v in values]
    if not texts or (key == "text" and not isinstance(value, ListConfig) and not texts[0]):
        raise ConfigError(f"{key}={value!r} is empty: give text='a sentence' or a list")
    if key == "input":
        for i, t in enumerate(texts):
            if looks_like_path(t):
                where = f"input[{i}]" if isinstance(value, ListConfig) else "input"
                raise DataError(
                    f"{where}={t!r} looks like a path, but a list is read as sentences and "
                    "input= takes one file or folder; to classify such strings give text=[...]"
                )
    return texts


def read_input(cfg: DictConfig) -> PredictInput:
    """`text=` or `input=`, checked and read: no such file, suffix, columns, empty table."""
    given_text = cfg.get("text") is not None
    given_input = not OmegaConf.is_missing(cfg, "input") and cfg.get("input") not in (None, "")
    if given_text and given_input:
        raise ConfigError(
            "give text=... (sentences) or input=FILE|FOLDER, not both "
            f"(text={cfg.text!r}, input={cfg.input!r})"
        )
    if given_text:
        return PredictInput("sentences", "text", texts=sentences(cfg.text, "text"))
    if not given_input:
        raise ConfigError(
            "nothing to predict: give text='a sentence' (or a list), input=FILE or input=FOLDER"
        )
    value = cfg.input
    if isinstance(value, ListConfig):
        return PredictInput("sentences", "input", texts=sentences(value, "input"))
    path = Path(str(value)).expanduser()
    valid = ", ".join((*TEXT_SUFFIXES, *IMAGE_SUFFIXES))
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in TEXT_SUFFIXES:
            columns = [str(cfg.text_column)]
            if cfg.get("text_pair_column"):
                columns.append(str(cfg.text_pair_column))
            return PredictInput("table", "input", path=path, frame=read_table(path, columns))
        if suffix in IMAGE_SUFFIXES:
            return PredictInput("images", "input", path=path, files=[path])
        raise DataError(f"cannot read input={str(value)!r}: suffix {path.suffix!r}; valid: {valid}")
    if path.is_dir():
        return PredictInput("images", "input", path=path, files=image_files(path))
    if path.suffix.lower() in (*TEXT_SUFFIXES, *IMAGE_SUFFIXES):
        raise DataError(f"input={str(value)!r}: no such file")
    if looks_like_path(str(value)):
        raise DataError(
            f"input={str(value)!r}: no such file or folder (to classify this string as a "
            "sentence, give text='...')"
        )
    # A plain sentence given as input= (the older spelling of text=).
    return PredictInput("sentences", "input", texts=sentences(value, "input"))
