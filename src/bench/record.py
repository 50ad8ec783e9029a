"""What every measurement script writes: `results.json` and `REPORT.md` in its folder, stamped
with the date and the commit it measured (`+dirty` when src/ or conf/ had uncommitted changes)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def commit_label() -> str:
    """HEAD's short hash, `+dirty` when src/ or conf/ has uncommitted changes (measured code that
    no commit holds says so)."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no", "--", "src", "conf"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return commit + ("+dirty" if dirty else "")


def write_record(out: Path, results: dict[str, Any], markdown: Callable[[dict], str]) -> None:
    """Stamp `results` (date, commit), write `<out>/results.json` and `<out>/REPORT.md`, print it."""
    results.update(date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), commit=commit_label())
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "REPORT.md").write_text(markdown(results))
    print((out / "REPORT.md").read_text())
