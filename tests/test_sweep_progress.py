"""The sweep's status line: counts, best so far and time left, from the study alone."""

from __future__ import annotations

import datetime as dt
import time

import optuna
from optuna.trial import FrozenTrial, TrialState

from src.sweep.progress import status_line, time_left


def _trial(state: TrialState, value: float | None, seconds: float, started: float) -> FrozenTrial:
    start = dt.datetime.fromtimestamp(started)
    return FrozenTrial(
        number=0,
        state=state,
        value=value if state == TrialState.COMPLETE else None,
        datetime_start=start,
        datetime_complete=start + dt.timedelta(seconds=seconds),
        params={},
        distributions={},
        user_attrs={},
        system_attrs={},
        intermediate_values={1: value} if value is not None else {},
        trial_id=0,
    )


def test_status_line_counts_best_and_time_left() -> None:
    study = optuna.create_study(study_name="demo", direction="maximize")
    now = time.time()
    study.add_trial(_trial(TrialState.COMPLETE, 0.81, 60, now - 400))
    study.add_trial(_trial(TrialState.COMPLETE, 0.86, 60, now - 300))
    study.add_trial(_trial(TrialState.PRUNED, 0.55, 20, now - 200))
    study.add_trial(_trial(TrialState.FAIL, None, 5, now - 100))
    line = status_line(study, 10, 2, "val/acc", now - 425)
    assert line.startswith(
        "sweep 'demo': 4/10 finished (2 complete, 1 pruned, 1 failed), 0 running"
    )
    assert "best val/acc 0.8600 (trial 1)" in line and "7m05s elapsed" in line
    # 6 left x the median finished duration (60 s: complete and pruned ones), 2 at a time
    assert "~3m00s left" in line
    trials = study.get_trials()
    assert time_left(trials, 0, 0, 2) == 0.0
    assert time_left([trials[3]], 5, 0, 1) is None  # only a failure: no estimate yet
