"""Files written whole or not at all: a temp file in the target's folder, then a rename.

A rename within one folder is atomic: a reader (or a run resumed after a kill) sees the old file
or the new one, never a part of one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temp path beside `path` to write; renamed over `path` when the block ends, removed when
    it raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | Path, data: dict[str, Any]) -> None:
    """Indented, sorted JSON (metrics.json, data_report.json), written then renamed."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
