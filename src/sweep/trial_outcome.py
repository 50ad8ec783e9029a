"""What a finished trial process left behind, read back: its state and value for the study, or the
one line that says why it failed, and how long it took to reach its first training step."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, NamedTuple

from optuna.trial import TrialState

from src.sweep import trial_env


class Outcome(NamedTuple):
    state: TrialState
    value: float | None = None
    error: str | None = None


def read_outcome(returncode: int, trial_dir: Path, log_file: Path, monitor: str) -> Outcome:
    """COMPLETE with its best monitored value (metrics.json), PRUNED (the trial's marker) or FAIL
    with the reason: the process's error line, or a metrics.json without a finite value."""
    if returncode != 0:
        return Outcome(TrialState.FAIL, error=last_error_line(log_file, returncode))
    monitored = read_json(trial_dir / "metrics.json").get("monitor_value")
    if (trial_dir / trial_env.PRUNED_MARKER).is_file():
        return Outcome(TrialState.PRUNED)
    if isinstance(monitored, (int, float)) and math.isfinite(monitored):
        return Outcome(TrialState.COMPLETE, value=float(monitored))
    return Outcome(
        TrialState.FAIL,
        error=f"no finite {monitor} in {trial_dir / 'metrics.json'} (got {monitored!r})",
    )


def startup_seconds(trial_dir: Path, launched: float) -> float | None:
    """From the launch to the first training step (what warm start saves), or None if the trial
    never reached one."""
    first_step = read_json(trial_dir / trial_env.TIMING_FILE).get("first_step_at")
    return round(first_step - launched, 2) if isinstance(first_step, (int, float)) else None


def last_error_line(log_file: Path, returncode: int) -> str:
    """The one line that says why a trial process failed: ftlab's `error:` line, else the exception."""
    try:
        lines = [
            ln.strip()
            for ln in log_file.read_text(errors="replace").splitlines()[-400:]
            if ln.strip()
        ]
    except OSError:
        lines = []
    for ln in reversed(lines):
        if ln.startswith("error: "):
            return ln[len("error: ") :]
    for ln in reversed(lines):
        head = ln.split(":", 1)[0]
        if head.endswith(("Error", "Exception", "Interrupt")) and " " not in head:
            return ln
    return f"trial process exited with status {returncode}" + (
        f" (signal {-returncode})" if returncode < 0 else ""
    )


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
