"""`hydra.sweeper.refit=true`: when the study is done, train the best trial's configuration again on
the whole training data and test it.

A sweep usually searches on a slice (`data.limit_train=N`) and skips the test pass (the search
configs set `test: false`); the refit is the best trial's command with `data.limit_train=null`,
`test=true` and `hydra.sweeper.refit_overrides` on top, in `<sweep dir>/refit_trial_<n>/`. It is
recorded in the study (user attr `refit`), so optimization_results.yaml reports it, best.yaml
reproduces it, and a re-run of the sweep command neither repeats a finished refit nor starts
a killed one over: it continues from its last.ckpt (`resume=true`). It starts cold (a new
interpreter): one start-up is nothing next to a training on the whole data.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from src import PROJECT_ROOT
from src.sweep.best import train_command
from src.sweep.launch import cold_start
from src.sweep.runner import Sweep
from src.sweep.space import format_value
from src.sweep.trial_outcome import last_error_line, read_json

log = logging.getLogger(__name__)

ATTR = "refit"


def refit_overrides(cfg: DictConfig, extra: Sequence[str] | None) -> list[str]:
    """What a refit adds to the best trial's overrides: the whole training data, a test pass,
    then the user's `hydra.sweeper.refit_overrides`."""
    added = ["test=true"]
    if OmegaConf.select(cfg, "data.limit_train", default="__absent__") != "__absent__":
        added.insert(0, "data.limit_train=null")
    return [*added, *(str(o) for o in extra or [])]


def refit_best(sweep: Sweep, added: Sequence[str]) -> dict[str, Any] | None:
    """Refit the best COMPLETE trial (once per study and best trial); the record, or None."""
    study = sweep.study
    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if not done:
        log.warning("refit: the study has no COMPLETE trial to refit")
        return None
    best = study.best_trial
    overrides = [*(best.user_attrs.get("overrides") or []), *added]
    previous = study.user_attrs.get(ATTR) or {}
    if previous.get("trial") == best.number and previous.get("state") == "COMPLETE":
        log.info("refit of trial %d already done: %s", best.number, previous.get("run_dir"))
        return previous
    same = previous.get("trial") == best.number
    if same and previous.get("state") == "RUNNING" and _running_elsewhere(previous):
        log.info(
            "refit of trial %d is running in another sweep command (%s, pid %s)",
            best.number,
            previous.get("host"),
            previous.get("pid"),
        )
        return previous
    run_dir = sweep.sweep_dir / f"refit_trial_{best.number}"
    run_dir.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {
        "trial": best.number,
        "state": "RUNNING",
        "run_dir": str(run_dir),
        "overrides": overrides,
        "command": train_command(overrides),
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
    study.set_user_attr(ATTR, record)
    log.info("refit of trial %d started: %s", best.number, " ".join(added))
    argv = [*overrides, "hydra.mode=RUN", f"hydra.run.dir={format_value(str(run_dir))}"]
    argv.append("resume=true")  # a killed refit continues from its last.ckpt when re-run
    env = {**os.environ, **sweep.s.extra_env, "HYDRA_FULL_ERROR": "0"}
    log_file = run_dir / "refit.log"
    started = time.time()
    with open(log_file, "a") as out:
        out.write(train_command(argv) + "\n")
        out.flush()
        proc = cold_start(argv, env, PROJECT_ROOT, out)
        returncode = proc.wait()
    metrics = read_json(run_dir / "metrics.json")
    record.update(
        state="COMPLETE" if returncode == 0 and metrics else "FAIL",
        duration_s=round(time.time() - started, 1),
        checkpoint=metrics.get("best_ckpt_path"),
        metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float)) or v is None},
    )
    if record["state"] == "FAIL":
        record["error"] = last_error_line(log_file, returncode)
        log.error("refit of trial %d failed: %s (%s)", best.number, record["error"], log_file)
    else:
        tested = {k: v for k, v in record["metrics"].items() if k.startswith("test/")}
        log.info("refit of trial %d done: %s (%s)", best.number, tested, run_dir)
    study.set_user_attr(ATTR, record)
    return record


def _running_elsewhere(record: dict[str, Any]) -> bool:
    """Whether the sweep command that started this refit still runs (another host: assumed)."""
    if record.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(record.get("pid") or 0), 0)
    except (OSError, ValueError):
        return False
    return int(record.get("pid") or 0) not in (0, os.getpid())
