"""The sweep's status line: trials finished / running / pruned / failed against `n_trials`, the best
value so far and an estimate of the time left.

Logged when a trial finishes and every `hydra.sweeper.progress_interval_s` in between, as plain
log lines: the same in a terminal, in `nohup` output, in CI and in a batch job's log.
"""

from __future__ import annotations

import statistics
import time

import optuna
from optuna.trial import TrialState

from src.sweep.report import epoch_counts
from src.sweep.study import budget


def status_line(
    study: optuna.Study, n_trials: int, n_workers: int, monitor: str, started: float
) -> str:
    """`sweep 'sentiment': 7/16 finished (4 complete, 2 pruned, 1 failed), 1 running; best
    val/acc 0.8725 (trial 5); 9 trial-epochs trained, 4.5 saved by pruning; 6m12s elapsed, ~8m left`."""
    trials = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("seeded_from")]
    b = budget(study)
    count = {s: sum(1 for t in trials if t.state == s) for s in TrialState}
    parts = [
        f"{count[TrialState.COMPLETE]} complete",
        f"{count[TrialState.PRUNED]} pruned",
        f"{count[TrialState.FAIL]} failed",
    ]
    line = f"sweep {study.study_name!r}: {b.finished}/{n_trials} finished ({', '.join(parts)}), {b.running} running"
    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if done:
        best = study.best_trial
        line += f"; best {monitor} {best.value:.4f} (trial {best.number})"
    epochs = epoch_counts(trials)
    if epochs["trial_epochs_saved"]:
        line += (
            f"; {epochs['trial_epochs_total']:g} trial-epochs trained,"
            f" {epochs['trial_epochs_saved']:g} saved by pruning"
        )
    elapsed = time.time() - started
    line += f"; {_duration(elapsed)} elapsed"
    left = time_left(trials, n_trials - b.finished, b.running, n_workers)
    if left is not None:
        line += f", ~{_duration(left)} left"
    return line


def time_left(
    trials: list[optuna.trial.FrozenTrial], remaining: int, running: int, n_workers: int
) -> float | None:
    """Remaining trials x the median duration of the finished ones, shared by the workers, less
    what the running ones have already done. None before a trial has finished."""
    durations = [
        t.duration.total_seconds()
        for t in trials
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and t.duration is not None
    ]
    if not durations or remaining <= 0:
        return None if not durations else 0.0
    per_trial = statistics.median(durations)
    now = time.time()
    underway = sum(
        min(now - t.datetime_start.timestamp(), per_trial)
        for t in trials
        if t.state == TrialState.RUNNING and t.datetime_start is not None
    )
    return max(0.0, (remaining * per_trial - underway) / max(1, min(n_workers, remaining)))


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"
