"""The run contract's results: the metric keys every metrics.json has, metrics.json itself, and
the one-line summary a run prints."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from src.atomic import write_json_atomic

# The names of the run contract for multiclass tasks: metrics.json always has these keys (other
# task types declare theirs in src/tasks).
VAL_KEYS = ("val/loss", "val/acc", "val/precision", "val/recall", "val/f1")
TEST_KEYS = ("test/loss", "test/acc", "test/precision", "test/recall", "test/f1")


def write_metrics(run_dir: str | Path, metrics: dict[str, Any]) -> None:
    """`<run_dir>/metrics.json`, written then renamed."""
    write_json_atomic(Path(run_dir) / "metrics.json", metrics)


def print_summary(metrics: dict[str, Any], keys: tuple[str, ...] = VAL_KEYS + TEST_KEYS) -> None:
    """One line of the run's metrics (`keys`: the task type's, src/tasks)."""
    shown = [k for k in keys if metrics.get(k) is not None]
    line = "  ".join(f"{k}={metrics[k]:.4f}" for k in shown)
    print(f"ftlab: {line}", file=sys.stderr, flush=True)
