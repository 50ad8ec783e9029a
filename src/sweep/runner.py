"""The sweep loop: N workers, each asks the study for a trial and runs it as its own process.

A trial is `python -m src.train <base overrides> <trial params> hydra.run.dir=<sweep dir>/trial_<n>`.
Separate processes are what make the rest possible: a free worker takes the next trial at once
(no batches), a trial may itself launch DDP ranks, each worker can be pinned to its own GPUs, and a
crash, NaN or OOM kills one trial, never the sweep. While a trial runs its worker sends heartbeats,
so a later sweep command can tell a dead worker's trial from a live one and retry it. The
process is forked from a preloaded forkserver (warm, the default) or a new interpreter (cold):
src/sweep/launch.py.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import Trial, TrialState

from src import PROJECT_ROOT
from src.data.workers import ENV_CPU_SHARE, usable_cores
from src.errors import ConfigError
from src.sweep import trial_env
from src.sweep.launch import TrialProcess, WarmStarter, cold_start, kill_group
from src.sweep.placement import gpu_assignment, visible_gpus
from src.sweep.progress import status_line
from src.sweep.pruning import build, build_pruner, describe
from src.sweep.report import write_report
from src.sweep.retention import drop_checkpoints
from src.sweep.settings import SweepSettings
from src.sweep.slurm import trial_layout, trial_srun
from src.sweep.space import SearchSpace, format_value, to_overrides
from src.sweep.study import (
    Budget,
    BudgetLock,
    budget,
    fail_stale_trials,
    mask_url,
    open_storage,
    quiet_experimental,
    retry_of,
)
from src.sweep.trial_outcome import read_outcome, startup_seconds
from src.sweep.warm import enqueue, seed_from

log = logging.getLogger(__name__)


class Sweep:
    """One sweep command: its workers, its trial processes, its report."""

    def __init__(
        self,
        settings: SweepSettings,
        space: SearchSpace,
        base_overrides: Sequence[str],
        sweep_dir: Path,
        config_groups: Sequence[str] = (),
    ) -> None:
        settings.check()
        if not space:
            raise ConfigError(
                "hydra.sweeper.params is empty: nothing to search (see conf/hparams_search/)"
            )
        self.s = settings
        self.space = dict(space)
        self.base_overrides = list(base_overrides)
        # Config group names (task, model, ...): best.yaml writes their overrides as defaults.
        self.config_groups = sorted(config_groups)
        self.sweep_dir = sweep_dir
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        self.lock = BudgetLock(settings.storage, settings.study_name)
        # Under the lock: two commands creating a new database at once would race on its tables.
        with self.lock.hold():
            self.storage = open_storage(
                settings.storage,
                settings.heartbeat_interval,
                settings.grace_period,
                settings.max_retry,
                # behind a proxy this command's own connection is used only now and then
                pooled=settings.storage_proxy is None,
            )
        # The study's traffic (asks, reports, tells) goes through the proxy when there is one;
        # heartbeats, stale trials and the budget lock stay on the database (`self.storage`).
        self.study_storage: Any = self.storage
        if settings.storage_proxy:
            from src.sweep.storage_proxy import proxy_storage

            self.study_storage = proxy_storage(settings.storage_proxy)
        self._stop = threading.Event()
        self._interrupted = False
        self._done = False
        self._procs: dict[int, TrialProcess] = {}
        self._trials_run = 0  # by this command
        self._started = time.time()
        self._warm: WarmStarter | None = None
        self._report_lock = threading.Lock()
        self._last_plots = 0.0
        self.study = self._open_study()

    # -- the study -------------------------------------------------------------------------------
    def _open_study(self) -> optuna.Study:
        with self.lock.hold():
            study = optuna.create_study(
                storage=self.study_storage,
                study_name=self.s.study_name,
                direction=self.s.direction,
                load_if_exists=True,
            )
            if study.direction.name.lower() != self.s.direction:
                raise ConfigError(
                    f"study {self.s.study_name!r} in {mask_url(self.s.storage)} was created to {study.direction.name.lower()}, not {self.s.direction}: use another hydra.sweeper.study_name"
                )
            # Each sweep command gets its own sampler seed (seed + k for the k-th command on this
            # study): one command alone is reproducible, two at once do not draw the same trials.
            k = int(study.user_attrs.get("ftlab_sweep_commands", 0))
            study.set_user_attr("ftlab_sweep_commands", k + 1)
            study.set_user_attr("monitor", self.s.monitor)
            study.set_user_attr("n_trials", self.s.n_trials)
            groups = set(study.user_attrs.get("config_groups") or []) | set(self.config_groups)
            study.set_user_attr("config_groups", sorted(groups))
            # Warm start, before the first trial is asked for; once per study (resume adds nothing).
            if self.s.seed_from:
                seed_from(study, self.space, self.s.seed_from, self.s.storage)
            if self.s.enqueue:
                enqueue(study, self.space, self.s.enqueue)
        study.sampler = self._sampler(k)
        study.pruner = build_pruner(dict(self.s.pruner) if self.s.pruner else None)
        return study

    def _sampler(self, command_index: int) -> optuna.samplers.BaseSampler:
        spec = dict(self.s.sampler or {"_target_": "optuna.samplers.TPESampler", "seed": 42})
        if spec.get("seed") is not None:
            spec["seed"] = int(spec["seed"]) + command_index
        return build("sampler", spec)

    def _next_trial(self) -> Trial | None:
        """Start the next trial if the budget allows, atomically with respect to every other worker."""
        with self.lock.hold():
            fail_stale_trials(self.study, self.storage if self.s.storage_proxy else None)
            b: Budget = budget(self.study)
            if b.finished >= self.s.n_trials:
                self._done = True
                return None
            if b.waiting == 0 and b.used >= self.s.n_trials:
                return None  # the rest is running elsewhere; wait in case a worker dies
            # WAITING trials (retries of dead workers' trials) come first and keep their params.
            with quiet_experimental():
                trial = self.study.ask(fixed_distributions=self.space)
            # A heartbeat at once: a trial without any would never be seen as stale.
            self.storage.record_heartbeat(trial._trial_id)
            return trial

    # -- workers ---------------------------------------------------------------------------------
    def run(self) -> optuna.Study:
        """Run workers until the study has `n_trials` finished trials; write the report."""
        b = budget(self.study)
        log.info(
            "study %r in %s: %d of %d trials finished; %d worker(s); pruner %s; sweep dir %s",
            self.s.study_name,
            mask_url(self.s.storage),
            b.finished,
            self.s.n_trials,
            self.s.n_workers,
            describe(self.s.pruner),
            self.sweep_dir,
        )
        if self.s.trial_start == "warm" and b.finished < self.s.n_trials:
            self._start_forkserver()  # not for a finished study: its imports would be wasted
        gpus = gpu_assignment(visible_gpus(), self.s.n_workers, self.s.devices_per_worker)
        workers = [
            threading.Thread(
                target=self._worker, args=(i, gpus[i]), name=f"sweep-worker-{i}", daemon=True
            )
            for i in range(self.s.n_workers)
        ]
        # SIGTERM (kill, scancel, preemption) and SIGUSR2 (submitit's "time limit near") stop
        # the sweep as Ctrl-C does: its running trials are re-queued for the next worker.
        stop_signals = (signal.SIGTERM, signal.SIGUSR2)
        previous = {sig: signal.getsignal(sig) for sig in stop_signals}
        in_main = threading.current_thread() is threading.main_thread()
        if in_main:
            for sig in stop_signals:
                signal.signal(sig, _raise_keyboard_interrupt)
        try:
            for w in workers:
                w.start()
            last_status = time.time()
            while any(w.is_alive() for w in workers):
                for w in workers:
                    w.join(timeout=0.5)
                if time.time() - last_status >= self.s.progress_interval_s > 0:
                    last_status = time.time()
                    self.log_status()
        except KeyboardInterrupt:
            if in_main:  # a second signal (SLURM sends SIGTERM and SIGUSR2) must not cut this short
                for sig in stop_signals:
                    signal.signal(sig, signal.SIG_IGN)
            log.warning(
                "sweep interrupted: stopping trial processes; their trials are re-queued for the next run"
            )
            self._interrupted = True
            self._stop.set()
            for proc in list(self._procs.values()):
                kill_group(proc)
            for w in workers:
                w.join(timeout=60)
            self.report(plots=True)
            print("error: sweep interrupted; run the same command again to resume", file=sys.stderr)
            raise SystemExit(130) from None
        finally:
            if in_main:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
        # Plots cost seconds (matplotlib): not redrawn for a command that ran no trial.
        self.report(plots=self._trials_run > 0 or not (self.sweep_dir / "plots").is_dir())
        return self.study

    def _start_forkserver(self) -> None:
        """The warm-start forkserver; its imports overlap the study's set-up. Cold if unavailable."""
        import multiprocessing

        if "forkserver" not in multiprocessing.get_all_start_methods():
            log.warning("no forkserver on this platform: trials start cold")
            return
        try:
            self._warm = WarmStarter()
            self._warm.start_server()
        except Exception as e:  # e.g. no /dev/shm, no UNIX sockets
            log.warning("warm trial start unavailable (%s): trials start cold", e)
            self._warm = None

    def _worker(self, slot: int, gpus: list[str]) -> None:
        while not self._stop.is_set():
            try:
                trial = self._next_trial()
            except Exception:  # a storage hiccup must not end the worker silently
                log.exception("worker %d: could not get a trial; retrying", slot)
                self._stop.wait(self.s.poll_interval_s * 5)
                continue
            if trial is None:
                if self._done:
                    return
                self._stop.wait(self.s.poll_interval_s)
                continue
            self._trials_run += 1
            try:
                self._run_trial(trial, gpus)
            except Exception:
                log.exception("worker %d: trial %d could not be run", slot, trial.number)
                _tell_safely(self.study, trial, TrialState.FAIL)

    def _trial_env(self, trial: Trial, gpus: list[str]) -> dict[str, str]:
        env = {**os.environ, **self.s.extra_env}
        env.update(
            {
                trial_env.ENV_STORAGE: self.s.storage_ref or self.s.storage,
                trial_env.ENV_STUDY: self.s.study_name,
                trial_env.ENV_STORAGE_PROXY: self.s.storage_proxy or "",
                trial_env.ENV_TRIAL_ID: str(trial._trial_id),
                trial_env.ENV_TRIAL_NUMBER: str(trial.number),
                trial_env.ENV_PRUNER: json.dumps(dict(self.s.pruner) if self.s.pruner else None),
                trial_env.ENV_PARENT_PID: str(os.getpid()),
                "HYDRA_FULL_ERROR": "0",
            }
        )
        if trial_layout():
            # srun binds the step's GPUs; its ranks meet at the first node, on a port of their own
            env["MASTER_PORT"] = str(_free_port())
            return env
        share = max(1, usable_cores() // self.s.n_workers)
        if self.s.n_workers > 1:  # N trials at once: data.num_workers=auto takes a share
            env[ENV_CPU_SHARE] = str(share)
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        elif self.s.n_workers > 1 and "OMP_NUM_THREADS" not in os.environ:
            # N CPU trials at once: split the cores instead of N x all cores fighting.
            env["OMP_NUM_THREADS"] = str(share)
        return env

    def trial_overrides(self, trial: Trial, gpus: list[str]) -> list[str]:
        """The sweep's overrides, the trial's params, and `trainer.devices=<its GPUs>` (the trial
        trains on every GPU its worker holds, unless the command sets trainer.devices)."""
        overrides = [*self.base_overrides, *to_overrides(trial.params)]
        keys = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
        layout = trial_layout()
        if layout:  # one DDP process per srun task, on every node of the job
            nodes, tasks = layout
            wanted = {
                "trainer.num_nodes": nodes,
                "trainer.devices": tasks,
                "trainer.strategy": "ddp",
            }
            # ++: conf/trainer has no num_nodes (Lightning's default, 1)
            overrides += [f"++{k}={v}" for k, v in wanted.items() if k not in keys]
        elif gpus and "trainer.devices" not in keys:
            overrides.append(f"trainer.devices={len(gpus)}")
        return overrides

    def _resumable_dir(self, retried: list[int]) -> Path | None:
        """The run dir of the trial a retry replaces, when that trial left a `last.ckpt`: the
        retry continues it there (`resume=true`) instead of starting from scratch."""
        if not retried:
            return None
        first = self.storage.get_trial_id_from_study_id_trial_number(
            self.study._study_id, retried[0]
        )
        run_dir = self.storage.get_trial(first).user_attrs.get("run_dir")
        if run_dir and (Path(run_dir) / "checkpoints" / "last.ckpt").is_file():
            return Path(run_dir)
        return None

    def _run_trial(self, trial: Trial, gpus: list[str]) -> None:
        retried = retry_of(self.storage.get_trial(trial._trial_id))
        resume_dir = self._resumable_dir(retried)
        trial_dir = resume_dir or self.sweep_dir / f"trial_{trial.number}"
        trial_dir.mkdir(parents=True, exist_ok=True)
        (trial_dir / trial_env.PRUNED_MARKER).unlink(missing_ok=True)
        (trial_dir / "metrics.json").unlink(missing_ok=True)
        trial.set_user_attr("run_dir", str(trial_dir))
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("sweep_pid", os.getpid())
        if os.environ.get("FTLAB_SLURM_JOB"):  # a worker job of launcher=slurm (src/sweep/slurm.py)
            trial.set_user_attr("slurm_job", os.environ["FTLAB_SLURM_JOB"])
        if trial.user_attrs.get("error"):
            trial.set_user_attr("error", None)  # copied from the trial this one retries
        overrides = self.trial_overrides(trial, gpus)
        # What reproduces this trial outside the sweep (best.yaml, optimization_results.yaml).
        trial.set_user_attr("overrides", overrides)
        argv = [*overrides, "hydra.mode=RUN", f"hydra.run.dir={format_value(str(trial_dir))}"]
        if resume_dir is not None:
            argv.append("resume=true")  # a retry goes on from the killed attempt's last.ckpt
        layout = trial_layout()  # a worker job whose trials span its allocation: srun each
        prefix = trial_srun(*layout) if layout else []
        cmd = [*prefix, sys.executable, "-m", "src.train", *argv]
        warm = self._warm is not None
        trial.set_user_attr("trial_start", "warm" if warm else "cold")
        trial.set_user_attr("gpus", ",".join(gpus) if gpus else None)
        log.info(
            "trial %d%s started: %s%s",
            trial.number,
            f" (retry of {retried[-1]}{', resumed from its last.ckpt' if resume_dir else ''})"
            if retried
            else "",
            " ".join(to_overrides(trial.params)),
            f" on GPU {','.join(gpus)}" if gpus else "",
        )
        log_file = trial_dir / "trial.log"
        (trial_dir / trial_env.TIMING_FILE).unlink(missing_ok=True)
        with open(log_file, "a" if resume_dir else "w") as out:  # a retry keeps the first log
            out.write(("# warm start (forked): " if warm else "") + " ".join(cmd) + "\n")
            out.flush()
            env = self._trial_env(trial, gpus)
            launched = time.time()
            proc: TrialProcess
            if self._warm is not None:
                proc = self._warm.start(argv, env, PROJECT_ROOT, log_file)
            else:
                proc = cold_start(argv, env, PROJECT_ROOT, out, prefix)
            self._procs[trial.number] = proc
            trial.set_user_attr("pid", proc.pid)
            try:
                while True:
                    try:
                        returncode = proc.wait(timeout=self.s.heartbeat_interval)
                        break
                    except subprocess.TimeoutExpired:
                        try:
                            self.storage.record_heartbeat(trial._trial_id)
                        except Exception as e:  # a missed beat is not fatal; grace_period covers it
                            log.warning("trial %d: heartbeat failed: %s", trial.number, e)
            finally:
                self._procs.pop(trial.number, None)
        startup = startup_seconds(trial_dir, launched)
        if startup is not None:
            trial.set_user_attr("startup_s", startup)
        self._finish(trial, returncode, trial_dir, log_file)

    def _finish(self, trial: Trial, returncode: int, trial_dir: Path, log_file: Path) -> None:
        """Record the trial's outcome: COMPLETE (its best monitored value), PRUNED or FAIL."""
        if returncode != 0 or not (trial_dir / "metrics.json").is_file():
            # A signal to a whole SLURM job (scancel, preemption, time limit) reaches the trial
            # too, which may end before this sweep's handler has marked the sweep interrupted.
            self._stop.wait(3.0)
        if self._interrupted:
            trial.set_user_attr("error", "sweep interrupted")
            frozen = _tell_safely(self.study, trial, TrialState.FAIL)
            if frozen is not None:
                from optuna.storages import RetryHeartbeatStaleTrialCallback

                with quiet_experimental():  # re-queue it as a dead worker's trial would be
                    RetryHeartbeatStaleTrialCallback(max_retry=self.s.max_retry)(self.study, frozen)
            return
        state, value, error = read_outcome(returncode, trial_dir, log_file, self.s.monitor)
        if error:
            trial.set_user_attr("error", error)
        frozen = _tell_safely(self.study, trial, state, value)
        if state == TrialState.PRUNED and frozen is not None and frozen.value is not None:
            shown = f"after step {frozen.last_step}, last value {frozen.value:.4f}"
        else:
            shown = f"value {value:.4f}" if value is not None else (error or "")
        log.info("trial %d %s %s (%s)", trial.number, state.name, shown, trial_dir)
        self.drop_checkpoints()
        self.report()
        self.log_status()

    def log_status(self) -> None:
        """Trials done / running / pruned / failed, the best so far, the time left."""
        try:
            log.info(
                status_line(
                    self.study, self.s.n_trials, self.s.n_workers, self.s.monitor, self._started
                )
            )
        except Exception as e:  # a storage hiccup must not stop the sweep
            log.warning("no sweep status: %s", e)

    def drop_checkpoints(self) -> None:
        if self.s.keep_checkpoints is not None:
            drop_checkpoints(self.study, int(self.s.keep_checkpoints), self.s.direction)

    # -- report ----------------------------------------------------------------------------------
    def report(self, plots: bool | None = None) -> None:
        """Refresh the report; plots at most every `report_interval_s` unless asked for."""
        with self._report_lock:
            now = time.time()
            if plots is None:
                plots = now - self._last_plots >= self.s.report_interval_s
            try:
                write_report(
                    self.study,
                    self.sweep_dir,
                    storage_label=mask_url(self.s.storage),
                    n_trials=self.s.n_trials,
                    plots=plots,
                )
                if plots:
                    self._last_plots = now
            except Exception:
                log.exception("could not write the sweep report")


def _tell_safely(study: optuna.Study, trial: Trial, state: TrialState, value: float | None = None):
    """`study.tell`, tolerating a trial another process already finished (e.g. failed as stale)."""
    try:
        return study.tell(
            trial,
            value if state == TrialState.COMPLETE else None,
            state=state,
            skip_if_finished=True,
        )
    except (RuntimeError, ValueError, optuna.exceptions.UpdateFinishedTrialError) as e:
        log.warning("trial %d: could not record %s: %s", trial.number, state.name, e)
        return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
