"""Optuna sweeps end to end on a tiny BERT: pruning, resume after a kill, shared studies, parallel
workers, NaN trials, DDP trials and a real PostgreSQL server. Each test runs the CLI as users type it
(`python -m src.train -m hparams_search=NAME ...`) with a small search config of its own."""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from src.bench.postgres import PASSWORD, local_postgres, server_binaries
from src.errors import ConfigError
from src.sweep import trial_env
from src.sweep.placement import gpu_assignment
from src.sweep.space import parse_params, split_arguments, to_overrides
from src.sweep.study import mask_url, retry_of, top_trial_run_dirs
from src.sweep.trial_outcome import Outcome, last_error_line, read_outcome
from tests.conftest import QUIET, ROOT, read_metrics, run_cli, tiny_text_overrides

optuna.logging.set_verbosity(optuna.logging.WARNING)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def search_config(
    folder: Path,
    name: str,
    *,
    n_trials: int,
    pruner: dict | None = None,
    sampler: dict | None = None,
    params: dict | None = None,
) -> Path:
    """A search config `hparams_search/<name>.yaml` in `folder` (added with hydra.searchpath)."""
    sweeper = {
        "n_trials": n_trials,
        "study_name": name,
        "direction": "maximize",
        "heartbeat_interval": 1,
        "grace_period": 3,
        "report_interval_s": 3600,  # plots at the end only: they cost CPU the trials need
        "sampler": sampler
        or {"_target_": "optuna.samplers.TPESampler", "seed": 7, "n_startup_trials": 3},
        "pruner": pruner,
        "params": params
        or {"optimizer.lr": "tag(log, interval(1e-3, 3e-2))", "data.batch_size": "choice(8, 16)"},
    }
    cfg = {
        "defaults": [{"override /hydra/sweeper": "ftlab_optuna"}],
        "monitor": "val/acc",
        "mode": "max",
        "hydra": {"sweeper": sweeper},
    }
    path = folder / "hparams_search" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# @package _global_\n" + yaml.safe_dump(cfg, sort_keys=False))
    return path


def sweep_cmd(
    name: str, folder: Path, sweep_dir: Path, tiny_bert: Path, data: Path, *extra: str
) -> list[str]:
    """The sweep command line: a tiny BERT on the keyword task, 15 steps an epoch, 4 epochs."""
    return [
        sys.executable,
        "-m",
        "src.train",
        "-m",
        f"hydra.searchpath=[file://{folder}]",
        f"hparams_search={name}",
        *tiny_text_overrides(tiny_bert, data),
        "trainer.max_epochs=4",
        "scheduler=constant",
        "trainer.log_every_n_steps=1",
        f"paths.cache_dir={folder / 'cache'}",
        f"hydra.sweep.dir={sweep_dir}",
        *QUIET,
        *extra,
    ]


# Trials that a test kills mid-way and retries from last.ckpt: an epoch of the tiny BERT takes
# ~0.25 s here, so the 4 epochs of sweep_cmd can end between a test seeing a checkpoint and its
# kill landing, and the retry would resume with nothing left to train (seen in CI). 40 epochs and
# no early stop leave seconds.
LONG_EPOCHS = 40


def long_trials(cmd: list[str]) -> list[str]:
    """`cmd` (from sweep_cmd) with LONG_EPOCHS epochs a trial and no early stopping."""
    cmd = list(cmd)
    cmd[cmd.index("trainer.max_epochs=4")] = f"trainer.max_epochs={LONG_EPOCHS}"
    return [*cmd, "callbacks.early_stopping=null"]


def run_sweep(cmd: list[str], timeout: int = 400) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }


def load(sweep_dir: Path, name: str, storage: str | None = None) -> optuna.Study:
    return optuna.load_study(
        study_name=name, storage=storage or f"sqlite:///{sweep_dir / 'optuna.db'}"
    )


def _trials_if_created(sweep_dir: Path, name: str) -> list:
    """The study's trials, or [] while the sweeper has not created it yet."""
    if not (sweep_dir / "optuna.db").is_file():
        return []
    try:
        return load(sweep_dir, name).get_trials()
    except Exception:  # the database exists a moment before the study in it
        return []


def read_trials_csv(sweep_dir: Path) -> list[dict[str, str]]:
    with open(sweep_dir / "trials.csv") as f:
        return list(csv.DictReader(f))


# -- pieces ------------------------------------------------------------------------------------


def test_search_space_spellings() -> None:
    space = parse_params(
        {
            "optimizer.lr": "tag(log, interval(1e-5, 1e-3))",
            "trainer.max_epochs": "range(1, 4)",
            "data.batch_size": "choice(16, 32)",
            "optimizer.weight_decay": {"type": "float", "low": 1e-4, "high": 0.1, "log": True},
        }
    )
    assert space["optimizer.lr"].log and space["optimizer.lr"].low == 1e-5
    assert (space["trainer.max_epochs"].low, space["trainer.max_epochs"].high) == (
        1,
        3,
    )  # stop excluded
    assert space["data.batch_size"].choices == (16, 32)
    assert space["optimizer.weight_decay"].log
    plain, cli = split_arguments(["seed=3", "scheduler.warmup=choice(0,0.1)"])
    assert plain == ["seed=3"] and list(cli) == ["scheduler.warmup"]
    assert to_overrides({"optimizer.lr": 3.2e-05, "x": "a b", "y": None}) == [
        "optimizer.lr=3.2e-05",
        "x='a b'",
        "y=null",
    ]


def test_gpu_assignment_and_masking(tmp_path: Path) -> None:
    assert gpu_assignment(["0", "1", "2", "3"], 2, None) == [["0", "1"], ["2", "3"]]
    assert gpu_assignment(["0", "1"], 4, None) == [["0"], ["1"], ["0"], ["1"]]
    assert gpu_assignment([], 2, None) == [[], []]
    assert "hunter2" not in mask_url("postgresql+psycopg://me:hunter2@db:5432/optuna")
    log = tmp_path / "trial.log"
    log.write_text(
        "Traceback...\nsrc.run.NonFiniteLossError: boom\nerror: val/loss is nan after epoch 0\n"
    )
    assert last_error_line(log, 2) == "val/loss is nan after epoch 0"


def test_a_finished_trial_process_is_read_back_as_complete_pruned_or_failed(tmp_path: Path) -> None:
    log = tmp_path / "trial.log"
    log.write_text("Traceback...\nRuntimeError: CUDA out of memory\n")

    def read(returncode: int) -> Outcome:
        return read_outcome(returncode, tmp_path, log, "val/acc")

    assert read(-11) == (TrialState.FAIL, None, "RuntimeError: CUDA out of memory")
    assert read(0).state == TrialState.FAIL and "no finite val/acc" in read(0).error
    (tmp_path / "metrics.json").write_text(json.dumps({"monitor_value": float("nan")}))
    assert read(0).state == TrialState.FAIL and "nan" in read(0).error
    (tmp_path / "metrics.json").write_text(json.dumps({"monitor_value": 0.75}))
    assert read(0) == (TrialState.COMPLETE, 0.75, None)
    (tmp_path / trial_env.PRUNED_MARKER).touch()
    assert read(0) == (TrialState.PRUNED, None, None)


# -- the "done when" list ------------------------------------------------------------------------


def test_pruning_sweep_with_two_workers(
    tmp_path: Path, tiny_bert: Path, tiny_text_data: Path
) -> None:
    """6 trials, 2 at a time, median pruner: some trials are PRUNED; the report is complete."""
    # lr 1e-6 never leaves chance level, 3e-3 learns the keyword task by epoch 2. The seeded random
    # sampler draws 3e-3, 1e-6, 3e-3, 3e-3, 1e-6, 1e-6: whichever two trials finish first, one
    # learned, so the median beats chance at epoch 2 and the later 1e-6 trials are pruned there.
    pruner = {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 2, "n_warmup_steps": 0}
    sampler = {"_target_": "optuna.samplers.RandomSampler", "seed": 0}
    params = {"optimizer.lr": "choice(1e-6, 3e-3)"}
    search_config(tmp_path, "prune", n_trials=6, pruner=pruner, sampler=sampler, params=params)
    sweep_dir = tmp_path / "sweep"
    proc = run_sweep(
        sweep_cmd(
            "prune",
            tmp_path,
            sweep_dir,
            tiny_bert,
            tiny_text_data,
            "hydra.sweeper.n_workers=2",
            "hydra.sweeper.keep_checkpoints=2",
        )
    )

    study = load(sweep_dir, "prune")
    trials = study.get_trials()
    # the status line, after every trial (and every progress_interval_s)
    output = proc.stdout + proc.stderr
    assert "sweep 'prune': 6/6 finished (" in output and "elapsed" in output, output[-3000:]
    assert len(trials) == 6 and all(t.state in FINISHED for t in trials), [t.state for t in trials]
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned, [(t.number, t.intermediate_values) for t in trials]
    for t in pruned:  # recorded with its last reported value, stopped before max_epochs
        assert t.value == t.intermediate_values[t.last_step]
        assert t.last_step < 4 and t.params["optimizer.lr"] == 1e-6  # steps count epochs: 1..4
    assert {t.number for t in trials if t.params["optimizer.lr"] == 1e-6} - {1} <= {
        t.number for t in pruned
    }
    for t in trials:  # one report per epoch (step 1 after the first), through the storage
        assert sorted(t.intermediate_values) == list(range(1, len(t.intermediate_values) + 1))
        assert Path(t.user_attrs["run_dir"]).is_dir()
        assert list((Path(t.user_attrs["run_dir"]) / "tensorboard").glob("events.out.tfevents.*"))
    # keep_checkpoints=2: only the two best trials still have checkpoints
    best_two = sorted(
        (t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: -t.value
    )[:2]
    with_ckpts = {
        t.number for t in trials if list(Path(t.user_attrs["run_dir"]).glob("checkpoints/*.ckpt"))
    }
    assert with_ckpts == {t.number for t in best_two}, (with_ckpts, [t.value for t in trials])
    if sum(t.state == TrialState.COMPLETE for t in trials) > 2:  # an ensemble of more: one line
        with pytest.raises(ConfigError, match=r"keep_checkpoints\); use top_k<=2"):
            top_trial_run_dirs(str(sweep_dir), "prune", 3)
    # n_workers=2: two trial processes ran at the same time
    spans = sorted((t.datetime_start, t.datetime_complete) for t in trials)
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:], strict=False)), spans

    rows = read_trials_csv(sweep_dir)
    assert [r["state"] for r in rows].count("PRUNED") == len(pruned)
    assert {
        "number",
        "state",
        "value",
        "params.optimizer.lr",
        "duration_s",
        "run_dir",
    } <= set(rows[0])
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert results["best_value"] == study.best_value and results["best_params"] == study.best_params
    assert results["counts"]["pruned"] == len(pruned) and results["counts"]["complete"] == 6 - len(
        pruned
    )
    plots = {p.name for p in (sweep_dir / "plots").glob("*.png")}
    assert {
        "optimization_history.png",
        "intermediate_values.png",
        "parallel_coordinate.png",
        "param_importances.png",
    } <= plots

    # the report rebuilds from the storage alone
    from src.sweep_report import main as report_main

    out = tmp_path / "rebuilt"
    assert report_main([str(sweep_dir / "optuna.db"), "prune", str(out), "--no-plots"]) == 0
    assert read_trials_csv(out) == rows


def test_killed_sweep_resumes_to_exactly_n_trials(
    tmp_path: Path, tiny_bert: Path, tiny_text_data: Path
) -> None:
    """Kill -9 the sweeper mid-trial, once that trial has saved a last.ckpt; the same command
    again finishes n_trials, redoing nothing: the killed trial's retry continues from it."""
    search_config(tmp_path, "resume", n_trials=2)
    sweep_dir = tmp_path / "sweep"
    cmd = long_trials(sweep_cmd("resume", tmp_path, sweep_dir, tiny_bert, tiny_text_data))
    with open(tmp_path / "first.log", "w") as out:
        first = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=out, stderr=subprocess.STDOUT)
        deadline = time.time() + 300
        try:
            while time.time() < deadline and first.poll() is None:
                trials = _trials_if_created(sweep_dir, "resume")
                running = [t for t in trials if t.state == TrialState.RUNNING]
                if (
                    {t.state for t in trials} & set(FINISHED)
                    and running
                    and (sweep_dir / f"trial_{running[0].number}/checkpoints/last.ckpt").is_file()
                    and max(running[0].intermediate_values, default=0) <= LONG_EPOCHS // 2
                ):
                    break
                time.sleep(0.5)
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait()
    before = {t.number: t for t in load(sweep_dir, "resume").get_trials()}
    killed = [t for t in before.values() if t.state == TrialState.RUNNING]
    done_before = [t for t in before.values() if t.state in FINISHED]
    assert killed and done_before, ((tmp_path / "first.log").read_text()[-3000:], before)
    for k in killed:  # the killed sweeper's trial process does not train on as an orphan
        assert _exits_within(k.user_attrs["pid"], 30), k.user_attrs

    run_sweep(cmd)
    trials = load(sweep_dir, "resume").get_trials()
    finished = [t for t in trials if t.state in FINISHED]
    assert len(finished) == 2, [(t.number, t.state) for t in trials]
    for t in done_before:  # finished trials were kept as they were, not redone
        again = trials[t.number]
        assert (again.state, again.value, again.datetime_complete) == (
            t.state,
            t.value,
            t.datetime_complete,
        )
    for k in killed:  # the dead worker's trial: FAIL, retried once with the same params
        assert trials[k.number].state == TrialState.FAIL
        retries = [t for t in trials if retry_of(t)[:1] == [k.number]]
        assert len(retries) == 1 and retries[0].state in FINISHED and retries[0].params == k.params
        error = trials[k.number].user_attrs["error"]  # not empty: says what happened
        assert error.startswith("worker lost: no heartbeat"), error
        assert "error" not in retries[0].user_attrs or not retries[0].user_attrs["error"]
        # ... in the same run dir, from the killed attempt's last.ckpt: its first report comes
        # after epoch 2 or later, at the step it had reached (steps count validations)
        retry = retries[0]
        assert retry.user_attrs["run_dir"] == k.user_attrs["run_dir"]
        assert min(retry.intermediate_values) >= 2, retry.intermediate_values
        # It redoes at most the one epoch whose report reached the study before its last.ckpt
        # was written. It may start later than the killed attempt's last report: the orphaned
        # trial trains on (saving last.ckpt, its reports lost with the sweeper) until it sees
        # its parent gone, ~1 s here.
        assert min(retry.intermediate_values) >= max(k.intermediate_values), (
            k.intermediate_values,
            retry.intermediate_values,
        )
        trial_log = (Path(retry.user_attrs["run_dir"]) / "trial.log").read_text()
        assert "resume=true" in trial_log and trial_log.count("src.train") >= 2  # both attempts
    params = [tuple(sorted(t.params.items())) for t in finished]
    assert len(set(params)) == len(params), params  # no trial ran twice
    assert len({t.user_attrs["run_dir"] for t in finished}) == 2
    assert read_metrics(Path(retry.user_attrs["run_dir"]))["epochs"] == LONG_EPOCHS  # to the end


def _exits_within(pid: int, seconds: float) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.5)
    return False


def test_two_sweep_commands_share_one_study_and_survive_a_nan_trial(
    tmp_path: Path, tiny_bert: Path, tiny_text_data: Path
) -> None:
    """Two commands started together on one SQLite storage finish n_trials between them; the
    trial whose loss goes NaN (lr 1e30) is FAIL with its error, and both sweeps complete."""
    grid = {"optimizer.lr": [0.003, 1.0e30]}
    sampler = {"_target_": "optuna.samplers.GridSampler", "search_space": grid}
    params = {"optimizer.lr": "choice(0.003, 1.0e30)"}
    search_config(tmp_path, "shared", n_trials=2, sampler=sampler, params=params)
    sweep_dir = tmp_path / "sweep"
    # No worker dies here: a long grace period, so heartbeats delayed by two commands' warm-start
    # imports on 2 loaded cores are not taken for a lost worker (CI: a 3 s grace retried a trial).
    cmd = [
        *sweep_cmd("shared", tmp_path, sweep_dir, tiny_bert, tiny_text_data),
        "hydra.sweeper.grace_period=60",
    ]
    procs = [
        subprocess.Popen(
            cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=400)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[-2000:] for o in outputs]
    trials = load(sweep_dir, "shared").get_trials()
    _assert_shared(trials, 2, states=(*FINISHED, TrialState.FAIL))
    by_lr = {t.params["optimizer.lr"]: t for t in trials}
    assert sorted(by_lr) == sorted(grid["optimizer.lr"])  # each grid point once
    assert by_lr[0.003].state == TrialState.COMPLETE
    assert by_lr[1e30].state == TrialState.FAIL
    assert "nan" in by_lr[1e30].user_attrs["error"].lower(), by_lr[1e30].user_attrs
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert results["counts"]["fail"] == 1 and results["counts"]["complete"] == 1
    rows = {r["number"]: r for r in read_trials_csv(sweep_dir)}
    assert "nan" in rows[str(by_lr[1e30].number)]["error"]


def _assert_shared(trials: list, n_trials: int, states: tuple = FINISHED) -> None:
    assert len(trials) == n_trials and all(t.state in states for t in trials), [
        (t.number, t.state) for t in trials
    ]
    assert sorted(t.number for t in trials) == list(range(n_trials))
    assert len({t.user_attrs["sweep_pid"] for t in trials}) == 2  # both commands ran trials


def test_ddp_trial_reports_from_rank_zero_and_prunes(
    tmp_path: Path, tiny_bert: Path, tiny_text_data: Path
) -> None:
    """A trial with 2 DDP processes (gloo): reports every epoch, and a prune stops every rank."""
    # val/acc is never above 1.01: the pruner stops the trial at its second report, deterministically.
    pruner = {"_target_": "optuna.pruners.ThresholdPruner", "lower": 1.01, "n_warmup_steps": 2}
    search_config(tmp_path, "ddp", n_trials=1, pruner=pruner)
    sweep_dir = tmp_path / "sweep"
    run_sweep(
        sweep_cmd(
            "ddp",
            tmp_path,
            sweep_dir,
            tiny_bert,
            tiny_text_data,
            "trainer=ddp",  # strategy=ddp, devices=2
            "trainer.accelerator=cpu",
        )
    )
    (trial,) = load(sweep_dir, "ddp").get_trials()
    assert trial.state == TrialState.PRUNED, trial.user_attrs
    assert sorted(trial.intermediate_values) == [1, 2]
    metrics = yaml.safe_load((Path(trial.user_attrs["run_dir"]) / "metrics.json").read_text())
    assert metrics["epochs"] == 2  # both ranks stopped after the second epoch, none hung


# -- many machines: a real PostgreSQL server ------------------------------------------------------

PG_PASSWORD = PASSWORD


@pytest.fixture(scope="module")
def postgres_url():
    if server_binaries() is None:
        if os.environ.get("CI"):
            pytest.fail(
                "PostgreSQL server binaries missing: .ci/run installs Debian's postgresql package"
            )
        pytest.skip("no PostgreSQL server here (apt-get install postgresql); CI installs it")
    with local_postgres() as url:
        yield url


def test_postgres_two_workers_one_study(
    tmp_path: Path, tiny_bert: Path, tiny_text_data: Path, postgres_url: str
) -> None:
    """Two sweep commands, as two machines would run them, share one study in PostgreSQL. The
    URL's password reaches them by reference (one through FTLAB_STORAGE_URL, one through a file)
    and nothing ftlab writes holds it; written in the setting itself it is refused."""
    search_config(tmp_path, "pg", n_trials=2)
    secret = tmp_path / "storage-url"
    secret.write_text(postgres_url + "\n")
    by_reference = {
        "a": ([], {"FTLAB_STORAGE_URL": postgres_url}),  # storage null: the env var
        "b": ([f"hydra.sweeper.storage=file:{secret}"], {}),
    }
    procs = []
    for machine, (setting, env) in by_reference.items():
        # each "machine" has its own sweep dir, only the database is shared
        cmd = sweep_cmd("pg", tmp_path, tmp_path / machine, tiny_bert, tiny_text_data, *setting)
        procs.append(
            subprocess.Popen(
                cmd,
                cwd=ROOT,
                env={**_env(), **env},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=400)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[-2000:] for o in outputs]
    _assert_shared(
        load(
            tmp_path, "pg", storage=postgres_url.replace("postgresql://", "postgresql+psycopg://")
        ).get_trials(),
        2,
    )
    for machine, output in zip("ab", outputs, strict=False):
        assert PG_PASSWORD not in output  # masked in logs
        results = (tmp_path / machine / "optimization_results.yaml").read_text()
        assert "127.0.0.1" in results
        written = [p for p in (tmp_path / machine).rglob("*") if p.is_file()]
        assert any(p.name == "multirun.yaml" for p in written)
        for path in written:  # multirun.yaml, trial logs, .hydra configs, reports, checkpoints
            assert PG_PASSWORD.encode() not in path.read_bytes(), path

    clear = sweep_cmd(
        "pg",
        tmp_path,
        tmp_path / "c",
        tiny_bert,
        tiny_text_data,
        f"hydra.sweeper.storage='{postgres_url}'",
    )
    proc = subprocess.run(clear, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and PG_PASSWORD not in proc.stdout + proc.stderr
    assert "holds a password in clear" in proc.stderr and "FTLAB_STORAGE_URL" in proc.stderr
    assert not (tmp_path / "c" / "multirun.yaml").exists()


def test_postgres_through_the_storage_proxy(
    tmp_path: Path, tiny_bert: Path, tiny_text_data: Path, postgres_url: str
) -> None:
    """`hydra.sweeper.storage_proxy`: the study's traffic goes through Optuna's gRPC proxy started
    with `python -m src.sweep.storage_proxy` (its URL by reference); every trial finishes with a
    report per epoch. A proxy that does not answer is a one-line error before any trial."""
    search_config(tmp_path, "proxied", n_trials=2)
    secret = tmp_path / "storage-url"
    secret.write_text(postgres_url + "\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "src.sweep.storage_proxy", f"file:{secret}"]
        + ["--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        setting = [f"hydra.sweeper.storage=file:{secret}"]
        cmd = sweep_cmd(
            "proxied", tmp_path, tmp_path / "sweep", tiny_bert, tiny_text_data, *setting
        )
        run_sweep([*cmd, f"hydra.sweeper.storage_proxy=127.0.0.1:{port}"])
    finally:
        server.terminate()
        log = server.communicate(timeout=30)[0]
    assert PG_PASSWORD not in log and f"127.0.0.1:{port}" in log, log
    trials = load(
        tmp_path, "proxied", storage=postgres_url.replace("postgresql://", "postgresql+psycopg://")
    ).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for t in trials:  # one report per epoch, from the trial process through the proxy
        assert sorted(t.intermediate_values) == [1, 2, 3, 4], t.intermediate_values

    # nothing listens on `port` now
    cmd = sweep_cmd("proxied", tmp_path, tmp_path / "dead", tiny_bert, tiny_text_data, *setting)
    cmd += [f"hydra.sweeper.storage_proxy=127.0.0.1:{port}", "hydra.sweeper.n_trials=3"]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"storage_proxy='127.0.0.1:{port}': no storage proxy answers there" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cv_sweep_optimizes_the_cross_validation_mean(
    tmp_path: Path, tiny_bert: Path, tiny_text_data: Path
) -> None:
    """`cv.folds=K` in a sweep: each trial is a K-fold run, its value is the CV mean of the
    monitored metric, and the pruner gets the running mean once per fold (step k after k folds)."""
    search_config(
        tmp_path,
        "cvsweep",
        n_trials=2,
        sampler={"_target_": "optuna.samplers.RandomSampler", "seed": 3},
        pruner={"_target_": "optuna.pruners.NopPruner"},
    )
    sweep_dir = tmp_path / "sweep"
    cmd = sweep_cmd("cvsweep", tmp_path, sweep_dir, tiny_bert, tiny_text_data, "cv.folds=2")
    cmd[cmd.index("trainer.max_epochs=4")] = "trainer.max_epochs=2"
    run_sweep(cmd)
    trials = load(sweep_dir, "cvsweep").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for t in trials:
        run_dir = Path(t.user_attrs["run_dir"])
        metrics = yaml.safe_load((run_dir / "metrics.json").read_text())
        fold_values = [f["val/acc"] for f in metrics["folds"]]
        assert len(fold_values) == 2
        assert t.value == pytest.approx(sum(fold_values) / 2)
        assert sorted(t.intermediate_values) == [1, 2]
        assert t.intermediate_values[2] == pytest.approx(t.value)


# -- the best model, handed back ------------------------------------------------------------------


def test_best_trial_handed_back_reproduced_and_ensembled(
    tmp_path: Path, tiny_bert: Path, tiny_text_data: Path
) -> None:
    """optimization_results.yaml names the best trial's run dir, checkpoint and metrics; the
    sweep dir's best.yaml reruns it through `python -m src.train --config-dir ... --config-name
    best` with the same metrics (fp32, CPU), a cold run reproducing a warm trial;
    `python -m src.ensemble` takes the study's top_k."""
    grid = {"optimizer.lr": [0.003, 1e-4]}
    sampler = {"_target_": "optuna.samplers.GridSampler", "search_space": grid, "seed": 0}
    search_config(
        tmp_path,
        "best",
        n_trials=2,
        sampler=sampler,
        params={"optimizer.lr": "choice(0.003, 1e-4)"},
    )
    sweep_dir = tmp_path / "sweep"
    cmd = sweep_cmd("best", tmp_path, sweep_dir, tiny_bert, tiny_text_data)
    cmd[cmd.index("trainer.max_epochs=4")] = "trainer.max_epochs=2"
    cmd = [*cmd, "scheduler.warmup=0.0", "trainer.deterministic=true", "data.limit_train=80"]
    run_sweep(cmd)
    study = load(sweep_dir, "best")
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 2
    # The trials were warm (forked) starts; the rerun below is a cold `python -m src.train`.
    assert {t.user_attrs["trial_start"] for t in study.get_trials()} == {"warm"}

    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    best = results["best_trial"]
    run_dir = Path(best["run_dir"])
    trial_metrics = read_metrics(run_dir)
    assert best["number"] == study.best_trial.number and best["value"] == study.best_value
    assert (
        best["checkpoint"] == trial_metrics["best_ckpt_path"] and Path(best["checkpoint"]).is_file()
    )
    assert best["metrics"]["val/loss"] == trial_metrics["val/loss"]
    assert best["metrics"]["test/acc"] == trial_metrics["test/acc"]
    assert best["overrides"][-1] == f"optimizer.lr={study.best_params['optimizer.lr']!r}"
    assert "trainer.deterministic=true" in best["overrides"]
    assert shlex.split(best["command"])[3:] == [*best["overrides"], "hydra.mode=RUN"]
    overlay = sweep_dir / "best.yaml"
    assert best["overlay"] == str(overlay)
    assert shlex.split(best["overlay_command"])[3:] == [
        "--config-dir",
        str(sweep_dir),
        "--config-name",
        "best",
    ]

    # The overlay, through the CLI as a user types it, reproduces the trial in a new run dir.
    rerun = tmp_path / "rerun"
    proc = run_cli(
        "src.train",
        "--config-dir",
        str(sweep_dir),
        "--config-name",
        "best",
        f"hydra.run.dir={rerun}",
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    again = read_metrics(rerun)
    for key in (
        "val/loss",
        "val/acc",
        "test/loss",
        "test/acc",
        "monitor_value",
        "best_epoch",
        "global_step",
    ):
        assert again[key] == trial_metrics[key], (key, again[key], trial_metrics[key])
    assert again["precision"] == "32-true"
    job = yaml.safe_load((rerun / ".hydra" / "config.yaml").read_text())
    trial_job = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    assert job == trial_job  # the same composed config, key for key

    # Both trials' best checkpoints, best first, as an ensemble.
    out = tmp_path / "ensemble"
    proc = run_cli("src.ensemble", f"study.storage={sweep_dir}", "top_k=2", f"hydra.run.dir={out}")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    ens = read_metrics(out)
    ranked = sorted(study.get_trials(), key=lambda t: -t.value)
    assert ens["n_members"] == 2
    assert [ens[f"member{i}/ckpt_path"] for i in range(2)] == [
        str(Path(read_metrics(Path(t.user_attrs["run_dir"]))["best_ckpt_path"]).resolve())
        for t in ranked
    ]

    # refit=true on the finished study: no new trial; the best configuration is trained again on
    # all the training data (the trials had a slice of 80) and tested; best.yaml now reproduces it.
    run_sweep([*cmd, "hydra.sweeper.refit=true"])
    assert len(load(sweep_dir, "best").get_trials()) == 2
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    refit = results["refit"]
    assert refit["state"] == "COMPLETE" and refit["trial"] == study.best_trial.number, refit
    refit_dir = Path(refit["run_dir"])
    assert refit_dir == sweep_dir / f"refit_trial_{study.best_trial.number}"
    assert refit["overrides"][: len(best["overrides"])] == best["overrides"]
    assert refit["overrides"][len(best["overrides"]) :] == ["data.limit_train=null", "test=true"]
    assert Path(refit["checkpoint"]).is_file() and "test/acc" in refit["metrics"]
    report = yaml.safe_load((refit_dir / "data_report.json").read_text())
    trial_report = yaml.safe_load((run_dir / "data_report.json").read_text())
    assert report["splits"]["train"]["n_examples"] > trial_report["splits"]["train"]["n_examples"]
    best_yaml = yaml.safe_load(overlay.read_text())
    assert best_yaml["data"]["limit_train"] is None and best_yaml["test"] is True
    assert overlay.read_text().startswith("# Refit of the best trial")
    # a re-run does not refit again
    run_sweep([*cmd, "hydra.sweeper.refit=true"])
    again = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())["refit"]
    assert again == refit


# -- warm start ------------------------------------------------------------------------------------


def test_warm_start_pieces(tmp_path: Path) -> None:
    """enqueue: typed to the space, out-of-space keys and values refused, added once per study;
    seed_from: only trials whose params fit the new space are copied, once per source."""
    from src.errors import ConfigError
    from src.sweep.warm import enqueue, enqueue_params, seed_from

    space = parse_params(
        {"optimizer.lr": "tag(log, interval(1e-4, 1e-2))", "data.batch_size": "choice(8, 16)"}
    )
    assert enqueue_params(space, [{"optimizer.lr": "3e-3"}, {"data.batch_size": 16}]) == [
        {"optimizer.lr": 0.003},
        {"data.batch_size": 16},
    ]
    for bad in (
        [{"optimizer.weight_decay": 0.1}],
        [{"optimizer.lr": 0.5}],
        [{"data.batch_size": 12}],
        {"a": 1},
    ):
        with pytest.raises(ConfigError):
            enqueue_params(space, bad)
    url = f"sqlite:///{tmp_path / 'a.db'}"
    old = optuna.create_study(study_name="old", storage=url, direction="maximize")
    for lr, bs, value in ((3e-3, 8, 0.9), (5e-2, 8, 0.6), (1e-3, 16, 0.8)):  # 5e-2: outside
        old.add_trial(
            optuna.trial.create_trial(
                params={"optimizer.lr": lr, "data.batch_size": bs, "seed": 1},
                distributions={
                    "optimizer.lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True),
                    "data.batch_size": optuna.distributions.CategoricalDistribution([8, 16]),
                    "seed": optuna.distributions.IntDistribution(0, 3),
                },
                value=value,
                user_attrs={"run_dir": f"/runs/{lr}"},
            )
        )
    new = optuna.create_study(study_name="new", storage=url, direction="maximize")
    spec = {"storage": str(tmp_path / "a.db"), "study_name": "old"}
    assert seed_from(new, space, spec, url) == 2
    assert seed_from(new, space, spec, url) == 0  # a resumed sweep copies nothing twice
    copied = new.get_trials()
    assert [(t.params, t.value) for t in copied] == [
        ({"optimizer.lr": 3e-3, "data.batch_size": 8}, 0.9),
        ({"optimizer.lr": 1e-3, "data.batch_size": 16}, 0.8),
    ]
    assert [t.user_attrs["seeded_from"] for t in copied] == ["old#0", "old#2"]
    assert copied[0].user_attrs["run_dir"] == "/runs/0.003"
    with pytest.raises(ConfigError):
        seed_from(new, space, {"storage": str(tmp_path / "a.db"), "study_name": "new"}, url)
    assert enqueue(new, space, [{"optimizer.lr": 2e-3}]) == 1
    assert enqueue(new, space, [{"optimizer.lr": 2e-3}]) == 0


def test_the_forkserver_preloads_every_module_it_names_and_starts_no_thread() -> None:
    """A renamed module would silently leave its import to every warm trial; a thread started at
    import would not survive the fork."""
    code = (
        "import json, threading, src.sweep.preload as p; "
        "print(json.dumps([p.failed, threading.active_count()]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    failed, threads = json.loads(out.stdout.strip().splitlines()[-1])
    assert failed == {}
    assert threads == 1


def test_sweep_enqueued_and_seeded_trials_come_before_sampling(
    tmp_path: Path, tiny_bert: Path, tiny_text_data: Path
) -> None:
    """hydra.sweeper.enqueue: the known-good configuration is the study's first trial, and a
    re-run enqueues it no more; hydra.sweeper.seed_from: a new study (another search space) starts
    with the earlier study's finished trials, and runs its own n_trials after them."""
    params = {"optimizer.lr": "choice(0.003, 1e-4)", "optimizer.weight_decay": "choice(0.0, 0.01)"}
    sampler = {"_target_": "optuna.samplers.RandomSampler", "seed": 0}
    search_config(tmp_path, "early", n_trials=2, sampler=sampler, params=params)
    early_dir = tmp_path / "early"
    cmd = sweep_cmd("early", tmp_path, early_dir, tiny_bert, tiny_text_data)
    cmd[cmd.index("trainer.max_epochs=4")] = "trainer.max_epochs=1"
    cmd.append("hydra.sweeper.enqueue=[{optimizer.lr:1e-4,optimizer.weight_decay:0.01}]")
    run_sweep(cmd)
    run_sweep(cmd)  # resume of a finished study: nothing enqueued again, nothing run
    early = load(early_dir, "early").get_trials()
    assert [t.state for t in early] == [TrialState.COMPLETE] * 2, [
        (t.number, t.state) for t in early
    ]
    assert early[0].params == {"optimizer.lr": 1e-4, "optimizer.weight_decay": 0.01}
    assert early[0].user_attrs["enqueued"] and not early[1].user_attrs.get("enqueued")

    # The new study searches lr on a log interval and no longer weight_decay.
    tpe = {"_target_": "optuna.samplers.TPESampler", "seed": 1, "n_startup_trials": 2}
    search_config(
        tmp_path,
        "later",
        n_trials=1,
        sampler=tpe,
        params={"optimizer.lr": "tag(log, interval(1e-5, 1e-2))"},
    )
    later_dir = tmp_path / "later"
    cmd = sweep_cmd("later", tmp_path, later_dir, tiny_bert, tiny_text_data)
    cmd[cmd.index("trainer.max_epochs=4")] = "trainer.max_epochs=1"
    cmd.append(f"hydra.sweeper.seed_from={{storage:'{early_dir}',study_name:early}}")
    run_sweep(cmd)
    run_sweep(cmd)  # nothing copied twice
    later = load(later_dir, "later").get_trials()
    assert len(later) == 3, [(t.number, t.state, t.user_attrs) for t in later]
    for old, new in zip(early, later[:2], strict=True):  # copied first, before any sampling
        assert new.user_attrs["seeded_from"] == f"early#{old.number}"
        assert (new.state, new.value, new.params) == (
            old.state,
            old.value,
            {"optimizer.lr": old.params["optimizer.lr"]},
        )
    assert later[2].state == TrialState.COMPLETE and "seeded_from" not in later[2].user_attrs
    results = yaml.safe_load((later_dir / "optimization_results.yaml").read_text())
    assert results["seeded_trials"] == 2 and results["trial_epochs_total"] == 1
    rows = read_trials_csv(later_dir)
    assert [r["seeded_from"] for r in rows] == ["early#0", "early#1", ""]


# -- warm trial processes ---------------------------------------------------------------------------


def test_warm_trials_crash_alone_and_see_their_slot_gpus(
    tmp_path: Path, tiny_bert: Path, tiny_text_data: Path
) -> None:
    """Warm (forked) trials: one that calls os._exit(1) and one that segfaults are FAILED with
    their exit status, the trial after them runs in a healthy process; each trial sees its
    worker's CUDA_VISIBLE_DEVICES, and nothing initialised CUDA before the fork."""
    params = {"callbacks.fault.mode": "choice(exit, segv, ok)"}
    sampler = {"_target_": "optuna.samplers.RandomSampler", "seed": 0}
    search_config(tmp_path, "faults", n_trials=3, sampler=sampler, params=params)
    sweep_dir = tmp_path / "sweep"
    cmd = sweep_cmd("faults", tmp_path, sweep_dir, tiny_bert, tiny_text_data)
    cmd[cmd.index("trainer.max_epochs=4")] = "trainer.max_epochs=1"
    cmd += [
        "+callbacks.fault={_target_:tests.sweep_faults.Fault,mode:ok}",
        "hydra.sweeper.n_workers=2",
        "hydra.sweeper.enqueue=[{callbacks.fault.mode:exit},{callbacks.fault.mode:segv},"
        "{callbacks.fault.mode:ok}]",
    ]
    env = {**_env(), "CUDA_VISIBLE_DEVICES": "3,5"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    trials = load(sweep_dir, "faults").get_trials()
    modes = [t.params["callbacks.fault.mode"] for t in trials]
    assert modes == ["exit", "segv", "ok"], modes
    assert all(t.user_attrs["trial_start"] == "warm" for t in trials)
    exit_t, segv_t, *ok = trials
    assert exit_t.state == TrialState.FAIL and "status 1" in exit_t.user_attrs["error"]
    assert segv_t.state == TrialState.FAIL and "signal 11" in segv_t.user_attrs["error"]
    for t in ok:
        assert t.state == TrialState.COMPLETE, t.user_attrs
        seen = yaml.safe_load((Path(t.user_attrs["run_dir"]) / "fault_seen.json").read_text())
        assert seen["warm"] and not seen["cuda_initialized"]
        # the platform's default start method, as in a cold trial (it was "forkserver", so a
        # DataLoader with workers started a second forkserver that imported torch again)
        assert seen["start_method"] == multiprocessing.get_context().get_start_method()
        assert seen["CUDA_VISIBLE_DEVICES"] == t.user_attrs["gpus"] and seen[
            "CUDA_VISIBLE_DEVICES"
        ] in ("3", "5")
        assert t.user_attrs["startup_s"] > 0
    assert {t.user_attrs["gpus"] for t in trials} == {"3", "5"}  # both workers' slots ran trials
