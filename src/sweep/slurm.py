"""`hydra.sweeper.launcher=slurm`: the sweep command submits worker jobs through submitit.

Each worker job runs the same sweep command with `hydra.sweeper.launcher=local`: an ordinary set of
workers (src/sweep/runner.py) that pull trials from the shared study until it has `n_trials`
finished ones, so jobs start and finish trials asynchronously, never in batches. The study is the
only shared state: the submitting command records its job ids there, so a re-run tops the jobs up
to `slurm.workers` instead of submitting duplicates, then follows the study (status lines, the
report) until it is done, or exits at once with `slurm.follow=false`.

What survives what:
- `scancel`, preemption (SIGTERM to every process of the job): the job's sweep command stops its
  trials and re-queues them in the study; another worker continues each from its `last.ckpt`.
- the time limit: submitit's SIGUSR2 (90 s before) does the same, then requeues the job itself.
- a job or node killed outright: its trials stop sending heartbeats and are retried by the
  remaining workers after `grace_period`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any

from src.errors import ConfigError, FtlabError, require_int
from src.sweep.study import budget, mask_url

log = logging.getLogger(__name__)

LAUNCHERS = ("local", "slurm")
# The worker job's id, as its sweep command records it on each trial (`slurm_job`).
ENV_SLURM_JOB = "FTLAB_SLURM_JOB"
# "NODES,TASKS_PER_NODE" of a job whose trials span its whole allocation: the worker launches each
# trial with srun (src/sweep/runner.py), one task per DDP process, Lightning's SLURMEnvironment.
ENV_TRIAL_TASKS = "FTLAB_SLURM_TRIAL_TASKS"
# Study user attr: every worker job a sweep command submitted for this study.
JOBS_ATTR = "slurm_jobs"
# SLURM's per-task layout: a trial that sees it would take itself for a task SLURM launched
# (Lightning's SLURMEnvironment) and check its devices against the job's tasks. A trial is a
# process of its worker, not a task of the job.
_TASK_LAYOUT = ("SLURM_NTASKS", "SLURM_NPROCS", "SLURM_NTASKS_PER_NODE", "SLURM_STEP_NUM_TASKS")
# Network file systems: the sweep dir must be on one that every node mounts (submitit's pickles,
# job logs, trial dirs; the SQLite study when it is the storage).
_SHARED_FS = frozenset(
    "nfs nfs4 lustre gpfs beegfs cifs smb3 ceph glusterfs wekafs 9p virtiofs".split()  # noqa: SIM905
)


@dataclass
class SlurmSettings:
    """`hydra.sweeper.slurm.*` (submitit's SlurmExecutor names where they exist)."""

    workers: int = 2  # worker jobs at a time (each runs hydra.sweeper.n_workers trial slots)
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time_min: int = 240  # per job; at the limit the job re-queues its trials and itself
    cpus_per_task: int | None = None
    gpus_per_task: int | None = None
    mem_gb: float | None = None
    nodes: int = 1  # per trial: a trial spans the job's nodes (DDP, trainer.num_nodes)
    tasks_per_node: int = 1  # per trial and node: DDP processes (trainer.devices), one per GPU
    array_parallelism: int | None = None  # null: all `workers` at once
    additional_parameters: dict[str, Any] = field(default_factory=dict)  # extra sbatch options
    follow: bool = True  # false: submit and exit; a re-run follows, extends or resumes

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> SlurmSettings:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values or {}) - known)
        if unknown:
            raise ConfigError(
                f"hydra.sweeper.slurm.{unknown[0]} is not a setting: choose from {', '.join(sorted(known))}"
            )
        settings = cls(**{k: v for k, v in (values or {}).items() if v is not None})
        settings.check()
        return settings

    def check(self) -> None:
        for name in ("workers", "time_min", "nodes", "tasks_per_node"):
            require_int(getattr(self, name), f"hydra.sweeper.slurm.{name}", 1)

    @property
    def trial_tasks(self) -> int:
        """DDP processes per trial; above 1 each trial is an srun step over the whole job."""
        return self.nodes * self.tasks_per_node

    def executor_parameters(self, job_name: str) -> dict[str, Any]:
        params: dict[str, Any] = {
            "job_name": job_name,
            "time": self.time_min,
            "nodes": self.nodes,
            "array_parallelism": self.array_parallelism or self.workers,
            "additional_parameters": dict(self.additional_parameters or {}),
        }
        for name in ("partition", "account", "qos", "cpus_per_task", "gpus_per_task"):
            if getattr(self, name) is not None:
                params[name] = getattr(self, name)
        if self.trial_tasks > 1:
            # The allocation: nodes x tasks_per_node tasks, for the trials' srun steps. The worker
            # itself is one task on the first node (its trial steps overlap its CPUs: srun --overlap).
            params["ntasks_per_node"] = self.tasks_per_node
            params["srun_args"] = ["--nodes=1", "--ntasks=1"]
        if self.mem_gb is not None:
            params["mem"] = f"{int(float(self.mem_gb) * 1024)}MB"
        return params


class WorkerJob:
    """What a worker job runs (pickled by submitit): the sweep command, as an ordinary local sweep.

    SIGTERM (scancel, preemption) reaches every process of the job, the sweep command included:
    it stops its trials and re-queues them (runner.py). submitit ignores it in this process,
    which waits for the sweep command to finish that. SIGUSR2 (the time limit is near, or a
    signal-based preemption) calls `checkpoint`: the same, then submitit requeues this job.
    """

    trial_layout: tuple[int, int] = (1, 1)  # jobs pickled before trials could span nodes

    def __init__(
        self, argv: Sequence[str], cwd: str, trial_layout: tuple[int, int] = (1, 1)
    ) -> None:
        self.argv = list(argv)
        self.cwd = cwd
        self.trial_layout = tuple(trial_layout)  # (nodes, tasks per node) of each trial
        self._proc: subprocess.Popen | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {
            "argv": self.argv,
            "cwd": self.cwd,
            "trial_layout": self.trial_layout,
            "_proc": None,
        }

    def __call__(self) -> int:
        import submitit

        env = {k: v for k, v in os.environ.items() if k not in _TASK_LAYOUT}
        env[ENV_SLURM_JOB] = submitit.JobEnvironment().job_id
        env.setdefault("PYTHONUNBUFFERED", "1")
        argv = list(self.argv)
        nodes, tasks = self.trial_layout
        if nodes * tasks > 1:  # a trial takes the whole allocation: one at a time, srun'd
            env[ENV_TRIAL_TASKS] = f"{nodes},{tasks}"
            fixed = ("hydra.sweeper.n_workers=", "hydra.sweeper.trial_start=")
            argv = [a for a in argv if not a.lstrip("+~").startswith(fixed)]
            argv += ["hydra.sweeper.n_workers=1", "hydra.sweeper.trial_start=cold"]
        cmd = [sys.executable, "-m", "src.train", *argv]
        print("worker job: " + " ".join(cmd), flush=True)
        self._proc = subprocess.Popen(cmd, cwd=self.cwd, env=env)
        returncode = self._proc.wait()
        if returncode not in (0, 130):  # 130: stopped by a signal, its trials re-queued
            raise RuntimeError(f"the sweep command exited with status {returncode}")
        return returncode

    def checkpoint(self) -> Any:
        import submitit

        if self._proc is not None:
            # SLURM signals every process of the job: the sweep command re-queues its trials;
            # wait for that, within the 90 s (signal_delay_s) before SLURM's kill.
            _wait_exit(self._proc.pid, timeout=75)
        return submitit.helpers.DelayedSubmission(WorkerJob(self.argv, self.cwd, self.trial_layout))


def trial_layout() -> tuple[int, int] | None:
    """(nodes, tasks per node) when this process is the worker of a job whose trials are srun
    steps over its whole allocation; None otherwise."""
    value = os.environ.get(ENV_TRIAL_TASKS, "")
    parts = value.split(",")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        return None
    return int(parts[0]), int(parts[1])


def trial_srun(nodes: int, tasks_per_node: int) -> list[str]:
    """The srun that starts one trial's DDP processes, one task each: Lightning takes its ranks
    from SLURM (SLURMEnvironment: SLURM_PROCID, SLURM_LOCALID, SLURM_NODEID, SLURM_NTASKS). Its
    CPUs overlap the worker's own step; a rank that fails ends the others."""
    return [
        "srun",
        f"--nodes={nodes}",
        f"--ntasks={nodes * tasks_per_node}",
        f"--ntasks-per-node={tasks_per_node}",
        "--overlap",
        "--kill-on-bad-exit=1",
        "--export=ALL",
    ]


def _wait_exit(pid: int, timeout: float) -> None:
    """Wait until the child `pid` has exited, without reaping it: this runs in a signal handler
    that interrupted `Popen.wait()`, which holds the Popen's lock and reaps it afterwards."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return
        except ChildProcessError:
            return
        time.sleep(0.5)


def worker_argv(
    hydra_overrides: Sequence[str],
    task_overrides: Sequence[str],
    config_name: str | None,
    sweep_dir: Path,
) -> list[str]:
    """The sweep command line of a worker job: this command's, run locally in the same sweep dir
    (an explicit `hydra.sweep.dir`: its default has the time in it)."""
    replaced = ("hydra.sweep.dir=", "hydra.sweeper.launcher=")
    hydra = [o for o in hydra_overrides if not o.lstrip("+~").startswith(replaced)]
    argv = ["-m"] + ([f"--config-name={config_name}"] if config_name else [])
    return [
        *argv,
        *hydra,
        f"hydra.sweep.dir={sweep_dir}",
        "hydra.sweeper.launcher=local",
        *task_overrides,
    ]


def warn_unshared(sweep_dir: Path, storage: str) -> None:
    """Worker jobs on other nodes need the sweep dir (and a SQLite study) on a shared file system:
    warn when it is local (fine on a one-node cluster), and when an RDB host is loopback."""
    fstype = _fstype(sweep_dir)
    if fstype not in _SHARED_FS and not fstype.startswith("fuse"):
        what = "and its SQLite study " if storage.startswith("sqlite") else ""
        log.warning(
            "the sweep dir %s%s is on a local file system (%s): worker jobs on other nodes cannot "
            "read it; fine on a one-node cluster, else use a shared dir%s",
            sweep_dir,
            f" {what.strip()}" if what else "",
            fstype,
            " and a PostgreSQL storage" if what else "",
        )
    elif storage.startswith("sqlite"):
        log.warning("SQLite study on %s (%s): use PostgreSQL for many nodes", sweep_dir, fstype)
    host = _rdb_host(storage)
    if host in ("localhost", "127.0.0.1", "::1"):
        log.warning(
            "storage %s is on loopback: only worker jobs on this machine can reach it",
            mask_url(storage),
        )


def _fstype(path: Path) -> str:
    """The file system type of the mount that holds `path` (from /proc/mounts)."""
    best, fstype = "", "unknown"
    path = path.resolve()
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return fstype
    for line in mounts:
        parts = line.split()
        if len(parts) >= 3:
            mount = parts[1].replace("\\040", " ")
            if (path == Path(mount) or Path(mount) in path.parents) and len(mount) > len(best):
                best, fstype = mount, parts[2]
    return fstype


def _rdb_host(url: str) -> str | None:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).host
    except Exception:
        return None


# squeue states of a job that has stopped pulling trials (a requeued one is PENDING again).
ENDING = frozenset(
    {
        "COMPLETING",
        "COMPLETED",
        "CANCELLED",
        "FAILED",
        "TIMEOUT",
        "NODE_FAIL",
        "PREEMPTED",
        "BOOT_FAIL",
        "DEADLINE",
        "OUT_OF_MEMORY",
        "SPECIAL_EXIT",
    }
)


def job_states(job_ids: Sequence[str]) -> dict[str, str]:
    """The queued or running jobs among `job_ids` -> their state (`squeue`: works without SLURM
    accounting, which submitit's own job state needs)."""
    if not job_ids:
        return {}
    try:
        out = subprocess.run(
            ["squeue", "-h", "-r", "-o", "%i %T %e"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise FtlabError(f"hydra.sweeper.launcher=slurm: squeue failed: {e}") from None
    wanted, live = set(job_ids), {}
    for line in out.splitlines():
        job, state, end = ([*line.split(), "", ""])[:3]
        if job not in wanted:
            continue
        if state == "COMPLETING" and _requeued(end):
            state = "REQUEUED"
        # A job on its way out (a cancelled one COMPLETING, say) runs no more trials: not live.
        if state not in ENDING:
            live[job] = state
    return live


def _requeued(end_time: str) -> bool:
    """A COMPLETING job that comes back: `scontrol requeue` (or submitit's own, at the time limit)
    shows COMPLETING while its processes end, like a cancelled job, but its end time is no longer
    the moment it was stopped: it is unset, or its time limit from now (measured, SLURM 22.05)."""
    if end_time in ("", "N/A", "NONE", "Unknown"):
        return True
    try:
        return datetime.fromisoformat(end_time).timestamp() > time.time() + 5
    except ValueError:
        return False


def submit(sweep: Any, slurm: SlurmSettings, argv: Sequence[str], cwd: str) -> list[str]:
    """Top the study's worker jobs up to `slurm.workers`; the ids of those submitted now."""
    import submitit

    study = sweep.study
    with sweep.lock.hold():  # two commands at once must not both top up
        recorded = list(study.user_attrs.get(JOBS_ATTR) or [])
        active = job_states(recorded)
        b = budget(study)
        # Up to `workers` jobs, and no more than there are trials to start (running ones have
        # a worker): a re-run replaces cancelled jobs, never duplicates live ones.
        n = min(slurm.workers - len(active), sweep.s.n_trials - b.finished - b.running)
        if active:
            log.info(
                "%d worker job(s) of this study already queued or running: %s",
                len(active),
                ", ".join(f"{j} ({s})" for j, s in sorted(active.items())),
            )
        if n <= 0:
            return []
        folder = sweep.sweep_dir / "slurm"
        # max_num_timeout: a job at its time limit requeues itself this often (each time its
        # trials continue from their checkpoints); after that, a re-run submits new jobs.
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=100)
        executor.update_parameters(**slurm.executor_parameters(f"ftlab-{sweep.s.study_name}"))
        try:
            with executor.batch():
                layout = (slurm.nodes, slurm.tasks_per_node)
                jobs = [executor.submit(WorkerJob(argv, cwd, layout)) for _ in range(n)]
        except Exception as e:  # sbatch's refusal (partition, account, time) in one line
            message = str(e).strip().splitlines()
            raise FtlabError(
                f"hydra.sweeper.launcher=slurm: sbatch refused the worker jobs: {message[-1] if message else e}"
            ) from None
        ids = [j.job_id for j in jobs]
        study.set_user_attr(JOBS_ATTR, recorded + ids)
    log.info("submitted %d worker job(s): %s (logs: %s)", len(ids), ", ".join(ids), folder)
    return ids


def last_job_error(sweep_dir: Path, job_id: str) -> str | None:
    """The last `error:` or exception line of a worker job's logs."""
    lines: list[str] = []
    for path in sorted((sweep_dir / "slurm").glob(f"{job_id}_*_log.*")):
        with contextlib.suppress(OSError):
            lines += [ln.strip() for ln in path.read_text(errors="replace").splitlines()[-200:]]
    for ln in reversed(lines):
        if ln.startswith("error: "):
            return ln[len("error: ") :]
    for ln in reversed(lines):
        head = ln.split(":", 1)[0]
        if head.endswith(("Error", "Exception")) and " " not in head:
            return ln
    return None


def run_on_slurm(sweep: Any, slurm: SlurmSettings, argv: Sequence[str], cwd: str) -> bool:
    """Submit worker jobs and, unless `follow=false`, follow the study until it is done.
    True when the study has its `n_trials` finished trials."""
    s = sweep.s
    warn_unshared(sweep.sweep_dir, s.storage)
    b = budget(sweep.study)
    log.info(
        "study %r in %s: %d of %d trials finished; launcher slurm, %d worker job(s); sweep dir %s",
        s.study_name,
        mask_url(s.storage),
        b.finished,
        s.n_trials,
        slurm.workers,
        sweep.sweep_dir,
    )
    if b.finished >= s.n_trials:
        log.info("study %r is done: no job submitted", s.study_name)
        sweep.report(plots=not (sweep.sweep_dir / "plots").is_dir())
        return True
    submit(sweep, slurm, argv, cwd)
    if not slurm.follow:
        log.info("not following (hydra.sweeper.slurm.follow=false): re-run the command to follow")
        sweep.report(plots=False)
        return False
    try:
        return _follow(sweep)
    except KeyboardInterrupt:
        print(
            "error: stopped following; the worker jobs go on: re-run the command to follow",
            file=sys.stderr,
        )
        raise SystemExit(130) from None


def _follow(sweep: Any, job_poll_s: float = 10.0) -> bool:
    s, study = sweep.s, sweep.study
    seen_ended: set[str] = set()
    idle_polls = 0
    last_status = last_jobs = 0.0
    reported = -1
    while (finished := budget(study).finished) < s.n_trials:
        now = time.time()
        if finished != reported:  # tables after every trial, plots every report_interval_s
            reported = finished
            sweep.report()
        if now - last_jobs >= job_poll_s:
            last_jobs = now
            recorded = list(study.user_attrs.get(JOBS_ATTR) or [])
            active = job_states(recorded)
            for job in [j for j in recorded if j not in active and j not in seen_ended]:
                seen_ended.add(job)
                error = last_job_error(sweep.sweep_dir, job)
                log.warning("worker job %s ended%s", job, f": {error}" if error else "")
            # No live job at two polls in a row (a requeued job may pass through an ending
            # state between them): the study cannot finish without a new job.
            idle_polls = 0 if active else idle_polls + 1
            if idle_polls >= 2 and budget(study).finished < s.n_trials:
                errors = [e for e in (last_job_error(sweep.sweep_dir, j) for j in recorded) if e]
                raise FtlabError(
                    f"every worker job of study {s.study_name!r} ended before its {s.n_trials} "
                    f"trials finished"
                    + (f" ({errors[-1]})" if errors else "")
                    + f"; logs in {sweep.sweep_dir / 'slurm'}; re-run the command to submit new ones"
                )
            s.n_workers = max(1, len(active))  # for the status line's time estimate
        if now - last_status >= s.progress_interval_s > 0:
            last_status = now
            sweep.log_status()
        time.sleep(s.poll_interval_s)
    sweep.log_status()
    sweep.report(plots=True)
    return True
