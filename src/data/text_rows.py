"""Row-level work on a text data set's columns before tokenizing: reading a column fast, dropping
rows without text, and the HTML that scraped text brings (counted for the report, stripped on
request)."""

from __future__ import annotations

from typing import Any

from src.data.report import MAX_LISTED
from src.errors import DataError


def column_values(ds: Any, name: str) -> list[Any]:
    """A column as a Python list, fast: `ds[name]` is a lazy column in `datasets` >= 4, and
    indexing it per example (as LengthGroupedSampler does with `lengths[i]`) costs seconds an
    epoch on SST-2. The arrow format respects an indices mapping (select / shuffle)."""
    return ds.with_format("arrow")[name].to_pylist()


def columns(ds: Any, names: list[str]) -> dict[str, list]:
    return {name: column_values(ds, name) for name in names}


def drop_empty_texts(
    raw: dict[str, Any], text_columns: list[str], files: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Each split without its rows that have an empty, whitespace-only or missing text (either
    text of a pair), and what was dropped (count, reason, the first row numbers); a split left
    with no text at all is an error naming its file."""
    kept, dropped = {}, {}
    shown = " / ".join(text_columns)
    for split, ds in raw.items():
        empty = [
            i
            for i, texts in enumerate(zip(*columns(ds, text_columns).values(), strict=True))
            if any(t is None or not str(t).strip() for t in texts)
        ]
        dropped[split] = {
            "count": len(empty),
            "reason": f"empty, whitespace-only or missing {shown}",
            "rows": empty[:MAX_LISTED],  # 0-based data rows of the file (header excluded)
        }
        if len(empty) == len(ds):
            raise DataError(
                f"the {split} split has no example with text: all {len(ds)} rows have an "
                f"empty or missing {shown} ({files.get(split)})"
            )
        if empty:
            drop = set(empty)
            ds = ds.select([i for i in range(len(ds)) if i not in drop])
        kept[split] = ds
    return kept, dropped


def html_summary(train: Any, text_columns: list[str], stripped: bool) -> dict[str, Any]:
    """How many training texts hold HTML tags or entities (counted before data.strip_html)."""
    from src.data.html import html_markup

    found = [
        m
        for col in columns(train, text_columns).values()
        for t in col
        if (m := html_markup(str(t)))
    ]
    return {
        "texts_with_html": len(found),
        "n_texts": len(train) * len(text_columns),
        "example": found[0] if found else None,
        "stripped": bool(stripped),
    }


def strip_html_columns(ds: Any, text_columns: list[str]) -> Any:
    """data.strip_html=true: tags become spaces, entities their characters."""
    from src.data.html import strip_html

    return ds.map(lambda b: {c: [strip_html(t) for t in b[c]] for c in text_columns}, batched=True)
