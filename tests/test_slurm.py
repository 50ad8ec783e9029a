"""`hydra.sweeper.launcher=slurm` against a real SLURM scheduler (a one-node cluster on loopback,
brought up by `.ci/slurm-up`): worker jobs pull trials from one study, a cancelled job's trial is
retried from its checkpoint, a re-run submits nothing. Tiny BERT, a few epochs; each test ~1-3 min."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest
from optuna.trial import TrialState

from src.errors import ConfigError
from src.sweep.slurm import JOBS_ATTR, SlurmSettings, job_states, worker_argv
from src.sweep.study import retry_of
from tests.conftest import ROOT, read_metrics
from tests.test_sweep import (
    FINISHED,
    LONG_EPOCHS,
    _env,
    _trials_if_created,
    load,
    long_trials,
    search_config,
    sweep_cmd,
)

SLURM = [
    "hydra.sweeper.launcher=slurm",
    "hydra.sweeper.slurm.workers=2",
    "hydra.sweeper.slurm.cpus_per_task=1",
    "hydra.sweeper.slurm.time_min=20",
    "hydra.sweeper.progress_interval_s=10",
    "hydra.sweeper.trial_start=cold",  # no forkserver per job: 2 cores, 2 jobs
]


@pytest.fixture(scope="module")
def slurm_cluster() -> None:
    """A SLURM cluster that takes jobs; outside CI its absence is a skip, in CI a failure."""
    problem = None
    if shutil.which("sbatch") is None:
        problem = "no SLURM client here (sbatch)"
    else:
        up = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
        if up.returncode != 0 or not {"idle", "mix", "alloc"} & set(up.stdout.split()):
            problem = f"no SLURM node up (sinfo: {(up.stdout + up.stderr).strip()!r})"
    if problem:
        message = f"{problem}: .ci/slurm-up brings up a one-node cluster on loopback (root, apt)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def _slurm_env() -> dict[str, str]:
    # one thread per trial: each job has one of the machine's cores
    return {**_env(), "OMP_NUM_THREADS": "1"}


def _cancel_all(sweep_dir: Path, name: str) -> None:
    """No worker job outlives its test."""
    try:
        jobs = load(sweep_dir, name).user_attrs.get(JOBS_ATTR) or []
    except Exception:
        return
    if jobs:
        subprocess.run(["scancel", *jobs], capture_output=True)


def test_slurm_settings_and_worker_command(tmp_path: Path) -> None:
    s = SlurmSettings.from_mapping({"workers": 3, "partition": "gpu", "mem_gb": 8, "qos": None})
    params = s.executor_parameters("ftlab-x")
    assert params["partition"] == "gpu" and params["mem"] == "8192MB"
    assert params["array_parallelism"] == 3 and "qos" not in params
    with pytest.raises(ConfigError, match=r"hydra.sweeper.slurm.worker is not a setting"):
        SlurmSettings.from_mapping({"worker": 2})
    with pytest.raises(ConfigError, match=r"slurm.workers=0 is invalid"):
        SlurmSettings.from_mapping({"workers": 0})
    with pytest.raises(ConfigError, match=r"slurm.tasks_per_node=0 is invalid"):
        SlurmSettings.from_mapping({"tasks_per_node": 0})
    # trials over 2 nodes x 2 tasks: the job holds them all, its worker is one task on one node
    wide = SlurmSettings.from_mapping({"nodes": 2, "tasks_per_node": 2}).executor_parameters("x")
    assert wide["nodes"] == 2 and wide["ntasks_per_node"] == 2
    assert wide["srun_args"] == ["--nodes=1", "--ntasks=1"]
    assert "srun_args" not in params and "ntasks_per_node" not in params
    argv = worker_argv(
        ["hydra.sweeper.launcher=slurm", "hydra.sweep.dir=x", "hydra.sweeper.n_trials=4"],
        ["hparams_search=s", "optimizer.lr=tag(log, interval(1e-3, 3e-2))"],
        "train",
        tmp_path,
    )
    assert argv == [
        "-m",
        "--config-name=train",
        "hydra.sweeper.n_trials=4",
        f"hydra.sweep.dir={tmp_path}",
        "hydra.sweeper.launcher=local",
        "hparams_search=s",
        "optimizer.lr=tag(log, interval(1e-3, 3e-2))",
    ]


def test_a_requeued_job_is_live_while_completing_a_cancelled_one_is_not(
    tmp_path: Path, slurm_cluster: None
) -> None:
    """Both show COMPLETING while their processes end (here 8 s: the script's SIGTERM trap); the
    requeued one comes back, so a re-run must not replace it."""
    script = tmp_path / "job.sh"
    script.write_text(
        "#!/bin/bash\ntrap 'sleep 8; exit 0' TERM\nfor i in $(seq 600); do sleep 1; done\n"
    )
    sbatch = ["sbatch", "--parsable", "-t", "5", "-c", "1", f"--output={tmp_path}/%j.out"]
    jobs = [
        subprocess.run([*sbatch, str(script)], capture_output=True, text=True, check=True)
        .stdout.strip()
        .split(";")[0]
        for _ in range(2)
    ]
    requeued, cancelled = jobs
    try:
        deadline = time.time() + 60
        while time.time() < deadline and set(job_states(jobs).values()) != {"RUNNING"}:
            time.sleep(0.5)
        assert job_states(jobs) == {requeued: "RUNNING", cancelled: "RUNNING"}
        subprocess.run(["scontrol", "requeue", requeued], check=True)
        subprocess.run(["scancel", cancelled], check=True)
        time.sleep(1)
        raw = subprocess.run(
            ["squeue", "-h", "-j", ",".join(jobs), "-o", "%i %T"], capture_output=True, text=True
        ).stdout.split()
        assert raw.count("COMPLETING") == 2, raw  # what squeue alone shows
        assert job_states(jobs) == {requeued: "REQUEUED"}
        deadline = time.time() + 60
        while time.time() < deadline and job_states([requeued]).get(requeued) != "PENDING":
            time.sleep(0.5)
        assert job_states(jobs) == {requeued: "PENDING"}
    finally:
        subprocess.run(["scancel", *jobs], capture_output=True)


@pytest.mark.integration
def test_two_worker_jobs_finish_exactly_n_trials_and_a_rerun_submits_nothing(
    tmp_path: Path, tiny_bert: Path, tiny_text_data: Path, slurm_cluster: None
) -> None:
    search_config(tmp_path, "sl", n_trials=4)
    sweep_dir = tmp_path / "sweep"
    cmd = sweep_cmd("sl", tmp_path, sweep_dir, tiny_bert, tiny_text_data, *SLURM)
    cmd[cmd.index("trainer.max_epochs=4")] = "trainer.max_epochs=2"
    try:
        first = subprocess.run(
            cmd, cwd=ROOT, env=_slurm_env(), capture_output=True, text=True, timeout=600
        )
        out = first.stdout + first.stderr
        assert first.returncode == 0, out[-4000:]
        study = load(sweep_dir, "sl")
        trials = study.get_trials()
        assert len(trials) == 4 and all(t.state in FINISHED for t in trials), [
            (t.number, t.state, t.user_attrs.get("error")) for t in trials
        ]
        params = [tuple(sorted(t.params.items())) for t in trials]
        assert len(set(params)) == 4, params  # no trial ran twice
        jobs = study.user_attrs[JOBS_ATTR]
        assert len(jobs) == 2 and "submitted 2 worker job(s)" in out, out[-3000:]
        assert {t.user_attrs["slurm_job"] for t in trials} <= set(jobs)
        assert list((sweep_dir / "slurm").glob("*_log.out")), "job logs go under the sweep dir"
        assert "sweep 'sl': 4/4 finished" in out and "best val/acc" in out, out[-3000:]
        assert (sweep_dir / "optimization_results.yaml").is_file()

        # the same command again: reports the finished study, submits nothing
        again = subprocess.run(
            cmd, cwd=ROOT, env=_slurm_env(), capture_output=True, text=True, timeout=300
        )
        out = again.stdout + again.stderr
        assert again.returncode == 0, out[-3000:]
        assert "is done: no job submitted" in out and "submitted" not in out.replace(
            "no job submitted", ""
        ), out[-3000:]
        assert load(sweep_dir, "sl").user_attrs[JOBS_ATTR] == jobs
        assert len(load(sweep_dir, "sl").get_trials()) == 4
    finally:
        _cancel_all(sweep_dir, "sl")


@pytest.mark.integration
def test_scancel_of_a_worker_job_retries_its_trial_from_its_checkpoint(
    tmp_path: Path, tiny_bert: Path, tiny_text_data: Path, slurm_cluster: None
) -> None:
    """A worker job cancelled mid-trial: the trial is re-queued, the other job continues it from
    its last.ckpt in the same run dir, and the study still reaches n_trials. The follower, exited
    at once with follow=false, is re-run while a job still runs: it submits no duplicate."""
    search_config(tmp_path, "cancel", n_trials=2)
    sweep_dir = tmp_path / "sweep"
    cmd = long_trials(sweep_cmd("cancel", tmp_path, sweep_dir, tiny_bert, tiny_text_data, *SLURM))
    try:
        submitted = subprocess.run(
            [*cmd, "hydra.sweeper.slurm.follow=false"],
            cwd=ROOT,
            env=_slurm_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert submitted.returncode == 0, (submitted.stdout + submitted.stderr)[-3000:]
        jobs = load(sweep_dir, "cancel").user_attrs[JOBS_ATTR]
        assert len(jobs) == 2, jobs
        victim = None
        deadline = time.time() + 300
        while time.time() < deadline and victim is None:
            for t in _trials_if_created(sweep_dir, "cancel"):
                ckpt = sweep_dir / f"trial_{t.number}" / "checkpoints" / "last.ckpt"
                early = max(t.intermediate_values, default=0) <= LONG_EPOCHS // 2  # first half
                if (
                    t.state == TrialState.RUNNING
                    and "slurm_job" in t.user_attrs
                    and ckpt.is_file()
                    and early
                ):
                    victim = t
                    break
            time.sleep(0.5)
        assert victim is not None, [
            (t.number, t.state) for t in _trials_if_created(sweep_dir, "cancel")
        ]
        subprocess.run(["scancel", victim.user_attrs["slurm_job"]], check=True)

        # the follower again, while the other job still runs: follows to the end; at most one
        # job replaces the cancelled one (when a trial is left with no worker), none duplicates
        follow = subprocess.run(
            cmd, cwd=ROOT, env=_slurm_env(), capture_output=True, text=True, timeout=600
        )
        out = follow.stdout + follow.stderr
        assert follow.returncode == 0, out[-4000:]
        assert "1 worker job(s) of this study already queued or running" in out, out[-3000:]
        study = load(sweep_dir, "cancel")
        all_jobs = study.user_attrs[JOBS_ATTR]
        assert all_jobs[:2] == jobs and len(all_jobs) <= 3, all_jobs
        trials = study.get_trials()
        finished = [t for t in trials if t.state in FINISHED]
        assert len(finished) == 2, [(t.number, t.state, t.user_attrs.get("error")) for t in trials]
        killed = trials[victim.number]
        assert killed.state == TrialState.FAIL, killed.user_attrs
        assert killed.user_attrs["error"] in ("sweep interrupted", None) or killed.user_attrs[
            "error"
        ].startswith("worker lost"), killed.user_attrs
        (retry,) = [t for t in trials if retry_of(t)[:1] == [victim.number]]
        assert retry.state in FINISHED and retry.params == victim.params
        assert retry.user_attrs["slurm_job"] != victim.user_attrs["slurm_job"]
        # continued from the cancelled attempt's last.ckpt, in its run dir: its first report is
        # after epoch 2 or later (steps count validations), and it trained to the end
        assert retry.user_attrs["run_dir"] == victim.user_attrs["run_dir"]
        assert min(retry.intermediate_values) >= 2, retry.intermediate_values
        assert max(retry.intermediate_values) == LONG_EPOCHS, retry.intermediate_values
        assert "resume=true" in (Path(retry.user_attrs["run_dir"]) / "trial.log").read_text()
        (other,) = [t for t in finished if t.number != retry.number]  # never interrupted
        steps = read_metrics(Path(retry.user_attrs["run_dir"]))["global_step"]
        assert (
            steps
            == read_metrics(Path(other.user_attrs["run_dir"]))["global_step"]
            == LONG_EPOCHS * 15
        )
        params = [tuple(sorted(t.params.items())) for t in finished]
        assert len(set(params)) == 2, params
        deadline = time.time() + 90
        while job_states(all_jobs) and time.time() < deadline:
            time.sleep(1)
        assert not job_states(all_jobs), "the worker jobs end with the study"
    finally:
        _cancel_all(sweep_dir, "cancel")


@pytest.mark.integration
def test_a_worker_job_at_its_time_limit_requeues_itself_and_its_trial_resumes(
    tmp_path: Path, tiny_bert: Path, tiny_text_data: Path, slurm_cluster: None
) -> None:
    """SIGUSR2 to a worker job (what submitit asks SLURM to send 90 s before the time limit, and
    what a signal-based preemption sends): the job re-queues its trial in the study and requeues
    itself; the requeued job continues the trial from its last.ckpt to the same global step."""
    search_config(tmp_path, "requeue", n_trials=1)
    sweep_dir = tmp_path / "sweep"
    cmd = long_trials(sweep_cmd("requeue", tmp_path, sweep_dir, tiny_bert, tiny_text_data, *SLURM))
    cmd += ["hydra.sweeper.slurm.workers=1", "hydra.sweeper.slurm.follow=false"]
    try:
        submitted = subprocess.run(
            cmd, cwd=ROOT, env=_slurm_env(), capture_output=True, text=True, timeout=300
        )
        assert submitted.returncode == 0, (submitted.stdout + submitted.stderr)[-3000:]
        (job,) = load(sweep_dir, "requeue").user_attrs[JOBS_ATTR]
        ckpt = sweep_dir / "trial_0" / "checkpoints" / "last.ckpt"
        deadline = time.time() + 300
        while time.time() < deadline and not ckpt.is_file():
            time.sleep(0.5)
        assert ckpt.is_file(), _trials_if_created(sweep_dir, "requeue")
        subprocess.run(["scancel", "--signal=USR2", job], check=True)

        deadline = time.time() + 300
        trials: list = []
        pending_since: dict[str, float] = {}
        while time.time() < deadline:
            trials = _trials_if_created(sweep_dir, "requeue")
            if any(t.state in FINISHED for t in trials):
                break
            _release_requeued(job, pending_since)
            time.sleep(1)
        # the job requeued itself as soon as its sweep command had re-queued the trial
        log = "".join(p.read_text() for p in (sweep_dir / "slurm").glob(f"{job}_*_log.out"))
        caught = _logged_at(log, "Caught signal SIGUSR2")
        requeued = _logged_at(log, f"Requeued job {job}")
        assert caught and requeued and requeued - caught < 60, log[-3000:]
        (first, retry) = trials
        assert first.state == TrialState.FAIL and first.user_attrs["error"] == "sweep interrupted"
        assert retry.state == TrialState.COMPLETE and retry_of(retry) == [0]
        assert retry.user_attrs["slurm_job"] == job  # the same job, requeued
        assert retry.user_attrs["run_dir"] == first.user_attrs["run_dir"]
        assert min(retry.intermediate_values) >= 2, retry.intermediate_values
        assert read_metrics(Path(retry.user_attrs["run_dir"]))["global_step"] == LONG_EPOCHS * 15
    finally:
        _cancel_all(sweep_dir, "requeue")


@pytest.mark.integration
def test_a_worker_job_requeued_by_scontrol_resumes_its_trial_from_its_checkpoint(
    tmp_path: Path, tiny_bert: Path, tiny_text_data: Path, slurm_cluster: None
) -> None:
    """`scontrol requeue` of a running worker job: SLURM sends SIGCONT + SIGTERM to every process
    of the job (SIGKILL after KillWait), then runs the batch script again from its start (after a
    ~2 min BeginTime hold). The job's sweep command re-queues its trial; the restarted job takes
    the retry and continues it from its last.ckpt to an uninterrupted trial's global step. A
    follower started while the job is being requeued submits no second job."""
    search_config(tmp_path, "scontrol", n_trials=1)
    sweep_dir = tmp_path / "sweep"
    cmd = long_trials(sweep_cmd("scontrol", tmp_path, sweep_dir, tiny_bert, tiny_text_data, *SLURM))
    cmd += ["hydra.sweeper.slurm.workers=1"]
    follower = None
    try:
        submitted = subprocess.run(
            [*cmd, "hydra.sweeper.slurm.follow=false"],
            cwd=ROOT,
            env=_slurm_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert submitted.returncode == 0, (submitted.stdout + submitted.stderr)[-3000:]
        (job,) = load(sweep_dir, "scontrol").user_attrs[JOBS_ATTR]
        ckpt = sweep_dir / "trial_0" / "checkpoints" / "last.ckpt"
        deadline = time.time() + 300
        while time.time() < deadline and not ckpt.is_file():
            time.sleep(0.5)
        assert ckpt.is_file(), _trials_if_created(sweep_dir, "scontrol")
        subprocess.run(["scontrol", "requeue", job], check=True)
        # the follower at once, while the requeued job is COMPLETING: it must count it as live
        follower = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=_slurm_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline, pending_since = time.time() + 400, {}
        while time.time() < deadline and follower.poll() is None:
            _release_requeued(job, pending_since)
            time.sleep(1)
        out = follower.communicate(timeout=60)[0]
        assert follower.returncode == 0, out[-4000:]
        study = load(sweep_dir, "scontrol")
        assert study.user_attrs[JOBS_ATTR] == [job], (study.user_attrs[JOBS_ATTR], out[-3000:])
        log = "".join(p.read_text() for p in (sweep_dir / "slurm").glob(f"{job}_*_log.*"))
        # the batch script ran twice (SLURM restarted it); no SIGUSR2, no submitit requeue
        assert log.count("Starting with JobEnvironment") == 2, log[-3000:]
        assert "SIGUSR2" not in log, log[-3000:]
        (first, retry) = study.get_trials()
        assert first.state == TrialState.FAIL and first.user_attrs["error"] == "sweep interrupted"
        assert retry.state == TrialState.COMPLETE and retry_of(retry) == [0]
        assert retry.user_attrs["slurm_job"] == job  # the same job, restarted
        assert retry.user_attrs["run_dir"] == first.user_attrs["run_dir"]
        # continued, not restarted: the retry's reports go on after the first attempt's
        assert min(retry.intermediate_values) >= 2, retry.intermediate_values
        assert max(retry.intermediate_values) == LONG_EPOCHS, retry.intermediate_values
        # ... from a checkpoint the first attempt wrote: a report reaches the study just before its
        # epoch's last.ckpt is written, so a kill between the two redoes that one epoch, no more
        assert (
            max(first.intermediate_values)
            <= min(retry.intermediate_values)
            <= max(first.intermediate_values) + 1
        ), (
            first.intermediate_values,
            retry.intermediate_values,
        )
        assert "resume=true" in (sweep_dir / "trial_0" / "trial.log").read_text()
        assert read_metrics(Path(retry.user_attrs["run_dir"]))["global_step"] == LONG_EPOCHS * 15
    finally:
        if follower is not None:
            follower.kill()
        _cancel_all(sweep_dir, "scontrol")


@pytest.mark.integration
def test_a_trial_of_two_srun_tasks_reports_once_per_step_from_global_rank_zero(
    tmp_path: Path, tiny_bert: Path, tiny_text_data: Path, slurm_cluster: None
) -> None:
    """slurm.tasks_per_node=2 (nodes=1: the one node here): the worker job holds 2 tasks and
    starts each trial as an srun step of 2 tasks, DDP over gloo through Lightning's
    SLURMEnvironment; global rank 0 alone reports, once per validation (steps 1..3)."""
    never = {"_target_": "optuna.pruners.ThresholdPruner", "lower": 0.0}  # asked, never prunes
    search_config(tmp_path, "srun", n_trials=1, pruner=never)
    sweep_dir = tmp_path / "sweep"
    cmd = sweep_cmd("srun", tmp_path, sweep_dir, tiny_bert, tiny_text_data, *SLURM)
    cmd[cmd.index("trainer.max_epochs=4")] = "trainer.max_epochs=3"
    cmd += [
        "hydra.sweeper.slurm.workers=1",
        "hydra.sweeper.slurm.tasks_per_node=2",
        "trainer.accelerator=cpu",
    ]
    try:
        done = subprocess.run(
            cmd, cwd=ROOT, env=_slurm_env(), capture_output=True, text=True, timeout=600
        )
        out = done.stdout + done.stderr
        assert done.returncode == 0, out[-4000:]
        (trial,) = load(sweep_dir, "srun").get_trials()
        log = (Path(trial.user_attrs["run_dir"]) / "trial.log").read_text()
        assert trial.state == TrialState.COMPLETE, (trial.user_attrs, log[-3000:])
        assert sorted(trial.intermediate_values) == [1, 2, 3], trial.intermediate_values
        assert log.startswith("srun --nodes=1 --ntasks=2 --ntasks-per-node=2 "), log[:300]
        for rank in (0, 1):  # both tasks joined one process group
            assert f"GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/2" in log, log[-3000:]
        # one report per validation (global rank 0's; any other rank's would be a line more)
        reports = [ln.split(" - ", 1)[-1] for ln in log.splitlines() if "reported val/acc=" in ln]
        assert reports == [
            f"reported val/acc={trial.intermediate_values[k]:.4f} as step {k}" for k in (1, 2, 3)
        ], log[-3000:]
        assert read_metrics(Path(trial.user_attrs["run_dir"]))["epochs"] == 3
    finally:
        _cancel_all(sweep_dir, "srun")


def _release_requeued(job: str, pending_since: dict[str, float]) -> None:
    """Start a requeued job now instead of after SLURM's ~2 min BeginTime hold; but not within
    seconds of its requeue: a job started in the second it was requeued is killed at once
    ("Killing non-startable batch JobId=1: Job credential revoked" in slurmctld.log: the old
    credential is revoked to the second) and never runs again, as CI saw."""
    if job_states([job]).get(job) != "PENDING":
        pending_since.pop(job, None)
        return
    if time.time() - pending_since.setdefault(job, time.time()) >= 3:
        subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now"], check=False)


def _logged_at(log: str, text: str) -> float | None:
    """When submitit logged the first line holding `text` (`submitit INFO (2026-12-02 09:17:08,379)`)."""
    for line in log.splitlines():
        if text in line and line.startswith("submitit") and "(" in line:
            stamp = line.split("(", 1)[1].split(")", 1)[0]
            return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return None


@pytest.mark.integration
def test_refused_and_lost_worker_jobs_are_one_line_errors(
    tmp_path: Path, tiny_bert: Path, tiny_text_data: Path, slurm_cluster: None
) -> None:
    """sbatch's refusal, and every worker job gone before the study is done: `error: ...`."""
    search_config(tmp_path, "lost", n_trials=2)
    sweep_dir = tmp_path / "sweep"
    cmd = sweep_cmd("lost", tmp_path, sweep_dir, tiny_bert, tiny_text_data, *SLURM)
    refused = subprocess.run(
        [*cmd, "hydra.sweeper.slurm.partition=nosuch"],
        cwd=ROOT,
        env=_slurm_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "error: hydra.sweeper.launcher=slurm: sbatch refused the worker jobs" in refused.stderr
    assert "Traceback" not in refused.stderr, refused.stderr[-3000:]

    follower = subprocess.Popen(
        cmd, cwd=ROOT, env=_slurm_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.time() + 120
        jobs: list = []
        while time.time() < deadline and not jobs:
            with contextlib.suppress(Exception):
                jobs = load(sweep_dir, "lost").user_attrs.get(JOBS_ATTR) or []
            time.sleep(1)
        assert jobs
        subprocess.run(["scancel", *jobs], check=True)
        out = follower.communicate(timeout=180)[0]
        assert follower.returncode == 2, out[-3000:]
        assert "error: every worker job of study 'lost' ended before its 2 trials finished" in out
        assert "re-run the command to submit new ones" in out, out[-3000:]
    finally:
        follower.kill()
        _cancel_all(sweep_dir, "lost")
