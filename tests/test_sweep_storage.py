"""Where a sweep's storage URL comes from, and that its password is never written or passed on:
`hydra.sweeper.storage=env:NAME | file:PATH`, FTLAB_STORAGE_URL for a null setting, and a
password in the setting itself refused. (A real PostgreSQL sweep: tests/test_sweep.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from src.errors import ConfigError
from src.sweep.runner import Sweep
from src.sweep.settings import SweepSettings
from src.sweep.space import parse_params
from src.sweep.study import STORAGE_ENV, resolve_ref, storage_ref, storage_url
from src.sweep.trial_env import ENV_STORAGE

URL = "postgresql+psycopg://ftlab:hunter2@db.example:5432/optuna"


def test_storage_setting_spellings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(STORAGE_ENV, raising=False)
    assert storage_url(None, tmp_path) == f"sqlite:///{tmp_path.resolve() / 'optuna.db'}"
    assert storage_ref(None) is None
    monkeypatch.setenv(STORAGE_ENV, URL)
    assert storage_url(None, tmp_path) == URL  # null: the environment's URL
    assert storage_ref(None) == f"env:{STORAGE_ENV}"

    monkeypatch.setenv("MY_DB", URL)
    assert storage_url("env:MY_DB", tmp_path) == URL and storage_ref("env:MY_DB") == "env:MY_DB"
    secret = tmp_path / "url.txt"
    secret.write_text(f"\n{URL}\n")
    assert storage_url(f"file:{secret}", tmp_path) == URL
    assert resolve_ref(f"file:{secret}") == URL
    assert storage_ref("sqlite:///x.db") is None  # no secret: trials get the URL itself
    assert storage_url("postgresql://ftlab@db/optuna", tmp_path).endswith("ftlab@db/optuna")


@pytest.mark.parametrize(
    "setting, message",
    [
        (URL, "holds a password in clear"),
        ("env:NOT_SET_ANYWHERE", "environment variable NOT_SET_ANYWHERE is not set"),
        ("file:/nonexistent/url.txt", "cannot read"),
    ],
)
def test_storage_setting_errors_name_the_fix_and_hide_the_password(
    tmp_path: Path, setting: str, message: str
) -> None:
    with pytest.raises(ConfigError) as e:
        storage_url(setting, tmp_path)
    assert message in str(e.value) and "hunter2" not in str(e.value)
    if setting == URL:
        assert STORAGE_ENV in str(e.value) and "file:PATH" in str(e.value)


def test_trial_environment_holds_the_reference_not_the_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a trial process is given: the reference it resolves itself, never the URL."""
    db = tmp_path / "secret.db"
    monkeypatch.setenv("MY_DB", f"sqlite:///{db}")  # stands in for a URL with a password
    settings = SweepSettings(
        n_trials=1,
        study_name="s",
        storage=storage_url("env:MY_DB", tmp_path),
        storage_ref=storage_ref("env:MY_DB"),
        direction="maximize",
        monitor="val/acc",
    )
    sweep = Sweep(settings, parse_params({"optimizer.lr": "interval(0.1, 0.2)"}), [], tmp_path)
    trial = sweep.study.ask()
    env = sweep._trial_env(trial, [])
    assert env[ENV_STORAGE] == "env:MY_DB"
    assert resolve_ref(env[ENV_STORAGE]) == f"sqlite:///{db}"  # what the trial opens


def test_a_trial_lost_with_its_worker_says_so(tmp_path: Path) -> None:
    """A RUNNING trial whose heartbeats stopped: FAIL with an error that says why (Optuna leaves
    it empty), and a WAITING retry with the same params that starts without that error."""
    import time

    import optuna
    from optuna.trial import TrialState

    from src.sweep.study import fail_stale_trials, open_storage, retry_of

    storage = open_storage(f"sqlite:///{tmp_path / 'hb.db'}", heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(storage=storage, study_name="lost")
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    storage.record_heartbeat(trial._trial_id)
    time.sleep(2.5)
    fail_stale_trials(study)
    lost, retry = study.get_trials()
    assert lost.state == TrialState.FAIL and lost.user_attrs["error"].startswith("worker lost")
    assert retry.state == TrialState.WAITING and retry_of(retry) == [lost.number]
    assert retry.params == lost.params


def test_workers_follow_the_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """n_workers=auto: one worker per devices_per_worker visible GPUs, one without GPUs; each
    trial trains on all of its worker's GPUs (trainer.devices) unless the command says otherwise."""
    from src.sweep.placement import gpu_assignment, resolve_workers, visible_gpus

    monkeypatch.delenv(STORAGE_ENV, raising=False)  # the SQLite study in tmp_path
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3,4,5,6,7")
    gpus = visible_gpus()
    assert resolve_workers("auto", gpus, None) == 8
    assert resolve_workers("auto", gpus, 2) == 4
    assert resolve_workers(3, gpus, None) == 3
    assert resolve_workers("auto", [], None) == 1
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert visible_gpus() == []
    with pytest.raises(ConfigError, match="n_workers='many' is invalid"):
        resolve_workers("many", gpus, None)

    settings = SweepSettings(
        n_trials=1,
        study_name="g",
        storage=storage_url(None, tmp_path),
        direction="maximize",
        monitor="val/acc",
        n_workers=4,
        devices_per_worker=2,
    )
    space = parse_params({"optimizer.lr": "interval(0.1, 0.2)"})
    sweep = Sweep(settings, space, ["seed=1"], tmp_path)
    trial = sweep.study.ask()
    held = gpu_assignment([str(i) for i in range(8)], 4, 2)[1]
    assert held == ["2", "3"]
    assert sweep.trial_overrides(trial, held)[-1] == "trainer.devices=2"
    assert not any(o.startswith("trainer.devices") for o in sweep.trial_overrides(trial, []))
    pinned = Sweep(settings, space, ["trainer.devices=1"], tmp_path)
    assert [o for o in pinned.trial_overrides(trial, held) if "devices" in o] == [
        "trainer.devices=1"
    ]


def test_storage_proxy_address_and_trials_that_use_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad `hydra.sweeper.storage_proxy` fails before anything starts; a trial process with a
    proxy in its environment opens the study through it, not through the database URL."""
    import socket
    import threading

    import optuna

    from src.sweep.storage_proxy import parse_address, serve
    from src.sweep.trial_env import ENV_STORAGE_PROXY, ENV_STUDY, ENV_TRIAL_ID

    assert parse_address("db.example:13000") == ("db.example", 13000)
    assert parse_address(":13000") == ("localhost", 13000)
    for bad in ("db.example", "db.example:http", "db:0", "db:70000"):
        with pytest.raises(ConfigError, match=r"storage_proxy=.* is invalid: give HOST:PORT"):
            parse_address(bad)
    settings = dict(n_trials=1, study_name="s", storage="sqlite:///x.db", direction="maximize")
    with pytest.raises(ConfigError, match=r"storage_proxy='db' is invalid"):
        SweepSettings(**settings, monitor="val/acc", storage_proxy="db").check()

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="p", storage=url, direction="maximize")
    trial_id = study.ask()._trial_id
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    threading.Thread(target=serve, args=(url, "127.0.0.1", port), daemon=True).start()
    from src.sweep.trial import load_trial

    monkeypatch.setenv(ENV_STORAGE, f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}")
    monkeypatch.setenv(ENV_STORAGE_PROXY, f"127.0.0.1:{port}")
    monkeypatch.setenv(ENV_STUDY, "p")
    monkeypatch.setenv(ENV_TRIAL_ID, str(trial_id))
    trial = load_trial()
    trial.report(0.5, 1)
    assert optuna.load_study(study_name="p", storage=url).trials[0].intermediate_values == {1: 0.5}
    assert not (tmp_path / "no").exists()  # the database URL was never opened


def test_a_schema_created_by_another_process_at_the_same_moment_is_opened_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes opening a new SQLite study at once: the one whose table creation loses the
    race (alembic_version UNIQUE) opens the database again instead of failing the sweep; any
    other error is still one line."""
    import src.sweep.study as study_module

    real, calls = study_module.RDBStorage, []

    def racing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError(
                "(sqlite3.IntegrityError) UNIQUE constraint failed: alembic_version.version_num"
            )
        return real(*args, **kwargs)

    monkeypatch.setattr(study_module, "RDBStorage", racing)
    storage = study_module.open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    assert len(calls) == 2 and storage.get_all_studies() == []

    def broken(*args, **kwargs):
        raise RuntimeError("unable to open database file")

    monkeypatch.setattr(study_module, "RDBStorage", broken)
    with pytest.raises(ConfigError, match="cannot be opened: unable to open database file"):
        study_module.open_storage(f"sqlite:///{tmp_path / 'other.db'}")
