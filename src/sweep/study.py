"""The study and its storage: URLs, heartbeats, the trial budget shared by every sweep command.

Why SQLite (not Optuna's journal file) is the default: only RDB storages have heartbeats, and the
heartbeat is what lets a re-run find the trials of a dead worker and retry them
(`fail_stale_trials` + `RetryHeartbeatStaleTrialCallback`). The write rate is low (one report per
trial epoch), which SQLite with a busy timeout handles across processes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from src.errors import ConfigError

log = logging.getLogger(__name__)

# SQLite waits this long for a lock held by another process before failing.
SQLITE_TIMEOUT_S = 120


# Where a sweep finds an RDB URL that holds a password, when `hydra.sweeper.storage` is null.
STORAGE_ENV = "FTLAB_STORAGE_URL"


def storage_url(storage: str | None, sweep_dir: Path, what: str = "hydra.sweeper.storage") -> str:
    """The storage URL a setting names.

    - `null`: `$FTLAB_STORAGE_URL` when set, else the SQLite file `<sweep dir>/optuna.db`;
    - `env:NAME`: the URL in the environment variable NAME;
    - `file:PATH`: the URL on the first line of the file PATH (e.g. a mounted secret);
    - a plain path: a SQLite file; an RDB URL (`postgresql://user@host/db`) as is.

    An RDB URL with a password written in the setting itself is refused: ftlab would write it to
    multirun.yaml and hand it to every trial. `env:`/`file:` keep the secret out of both (the
    trials get the same reference and read it themselves), as do PGPASSWORD and ~/.pgpass.
    """
    if not storage:
        if not os.environ.get(STORAGE_ENV):
            return f"sqlite:///{(sweep_dir / 'optuna.db').resolve()}"
        storage = f"env:{STORAGE_ENV}"
    ref = str(storage)
    if not ref.startswith(("env:", "file:")) and _password(ref):
        raise ConfigError(
            f"{what}={mask_url(ref)!r} holds a password in clear, which would be written to "
            f"multirun.yaml and passed to every trial: put the URL in ${STORAGE_ENV} and leave "
            f"{what} null, or name where it is with {what}=env:VARIABLE or {what}=file:PATH "
            "(or leave the password out and use PGPASSWORD or ~/.pgpass)"
        )
    return resolve_ref(ref, what)


def storage_ref(storage: str | None) -> str | None:
    """How trials are told where the storage is without its secret: the `env:NAME` / `file:PATH`
    reference the setting uses (null -> `env:FTLAB_STORAGE_URL` when that is set); None when
    the setting is a plain path or URL, which trials get resolved."""
    if not storage:
        return f"env:{STORAGE_ENV}" if os.environ.get(STORAGE_ENV) else None
    return str(storage) if str(storage).startswith(("env:", "file:")) else None


def resolve_ref(ref: str, what: str = "hydra.sweeper.storage") -> str:
    """`env:NAME` / `file:PATH` -> the URL they hold; a path -> SQLite; an RDB URL as is."""
    if ref.startswith("env:"):
        name = ref[len("env:") :]
        value = os.environ.get(name, "").strip()
        if not value:
            raise ConfigError(f"{what}={ref}: the environment variable {name} is not set or empty")
        return resolve_ref(value, what) if not value.startswith(("env:", "file:")) else value
    if ref.startswith("file:"):
        path = Path(ref[len("file:") :]).expanduser()
        try:
            lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
        except OSError as e:
            raise ConfigError(f"{what}={ref}: cannot read {path}: {e.strerror}") from None
        if not lines:
            raise ConfigError(f"{what}={ref}: {path} is empty (it should hold the storage URL)")
        return (
            resolve_ref(lines[0], what) if not lines[0].startswith(("env:", "file:")) else lines[0]
        )
    if "://" not in ref:
        return f"sqlite:///{Path(ref).expanduser().resolve()}"
    if ref.startswith("postgresql://") and importlib.util.find_spec("psycopg2") is None:
        # SQLAlchemy's default PostgreSQL driver is psycopg2; ftlab installs psycopg 3.
        return "postgresql+psycopg://" + ref[len("postgresql://") :]
    return ref


def _password(url: str) -> bool:
    try:
        from sqlalchemy.engine import make_url

        return bool(make_url(url).password)
    except Exception:
        return False


def mask_url(url: str) -> str:
    """The URL with its password replaced by ***, for logs and reports."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1] if "@" in url else url


SCHEMA_ATTEMPTS = 3
# What creating Optuna's tables says when another process created them a moment before.
_SCHEMA_RACE = (
    "UNIQUE constraint failed: alembic_version",
    "already exists",
    "duplicate key value",
)


def open_storage(
    url: str,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    max_retry: int | None = 3,
    pooled: bool = True,
) -> RDBStorage:
    """An RDB storage; with a heartbeat, stale RUNNING trials are failed and retried up to
    `max_retry`. `pooled=False`: a connection only while a call runs (no idle ones held)."""
    if url.split(":", 1)[0].split("+")[0] not in (
        "sqlite",
        "postgresql",
        "mysql",
        "oracle",
        "mssql",
    ):
        raise ConfigError(
            f"hydra.sweeper.storage={mask_url(url)!r}: use a SQLite path or an RDB URL (postgresql://, mysql://)"
        )
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    engine_kwargs: dict[str, Any] = (
        {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
        if url.startswith("sqlite")
        else {"pool_pre_ping": True}
    )
    if not pooled:
        from sqlalchemy.pool import NullPool

        engine_kwargs = {**engine_kwargs, "poolclass": NullPool}
        engine_kwargs.pop("pool_pre_ping", None)
    kwargs: dict[str, Any] = {}
    with quiet_experimental():
        if heartbeat_interval:
            kwargs = {
                "heartbeat_interval": int(heartbeat_interval),
                "grace_period": int(grace_period) if grace_period else None,
                "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(
                    max_retry=max_retry
                ),
            }
        for attempt in range(SCHEMA_ATTEMPTS):
            try:
                return RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
            except Exception as e:  # bad host, password, missing driver: one line, password masked
                message = str(e).splitlines()[0] if str(e) else type(e).__name__
                # Another process (a second sweep command, a report, a dashboard) created the
                # schema of a new database at the same moment: it is there now, open it again.
                if attempt + 1 < SCHEMA_ATTEMPTS and any(m in message for m in _SCHEMA_RACE):
                    time.sleep(0.5)
                    continue
                raise ConfigError(
                    f"hydra.sweeper.storage={mask_url(url)!r} cannot be opened: {message.replace(url, mask_url(url))}"
                ) from None
    raise AssertionError("unreachable")


@contextlib.contextmanager
def quiet_experimental() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", FutureWarning)
        # We record heartbeats ourselves around study.ask(); Optuna expects Study.optimize.
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        yield


def fail_stale_trials(study: optuna.Study, storage: RDBStorage | None = None) -> None:
    """RUNNING trials whose worker stopped sending heartbeats -> FAIL, re-queued as WAITING copies.
    Each first gets an `error` that says so (Optuna leaves it empty, and a finished trial can no
    longer be changed); trials.csv's `retried_as` names the trial that retries it. `storage`: the
    database with the heartbeats, when the study itself goes through a storage proxy."""
    if storage is not None and storage is not study._storage:
        study = optuna.load_study(
            study_name=study.study_name,
            storage=storage,
            sampler=optuna.samplers.RandomSampler(),
        )
    storage = study._storage
    try:
        stale = storage._get_stale_trial_ids(study._study_id)  # what Optuna is about to fail
    except (AttributeError, NotImplementedError):
        stale = []
    if stale:
        grace = getattr(storage, "grace_period", None) or 2 * (
            storage.get_heartbeat_interval() or 0
        )
        error = (
            f"worker lost: no heartbeat for {grace} s (sweep killed, machine down or preempted; "
            "the duration runs to when this was noticed)"
        )
        for trial_id in stale:
            with contextlib.suppress(Exception):  # another process may have failed it already
                storage.set_trial_user_attr(trial_id, "error", error)
                log.warning("trial %d: %s", storage.get_trial(trial_id).number, error)
    with quiet_experimental():
        optuna.storages.fail_stale_trials(study)


def retry_of(trial: FrozenTrial) -> list[int]:
    """Numbers of the trials this one retries (oldest first); empty for a fresh trial."""
    with quiet_experimental():
        return list(RetryHeartbeatStaleTrialCallback.retry_history(trial))


@dataclass
class Budget:
    """Where the study stands against its `n_trials` target."""

    finished: int  # COMPLETE + PRUNED + FAILED that no retry replaced
    running: int
    waiting: int  # queued retries of dead workers' trials

    @property
    def used(self) -> int:
        return self.finished + self.running + self.waiting


def budget(study: optuna.Study) -> Budget:
    # Trials copied from an earlier study (hydra.sweeper.seed_from) are knowledge, not work done.
    trials = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("seeded_from")]
    replaced = {n for t in trials for n in retry_of(t)}
    finished = sum(
        1
        for t in trials
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        or (t.state == TrialState.FAIL and t.number not in replaced)
    )
    running = sum(1 for t in trials if t.state == TrialState.RUNNING)
    waiting = sum(1 for t in trials if t.state == TrialState.WAITING)
    return Budget(finished, running, waiting)


class BudgetLock:
    """Serialises "count the trials, then ask for one" across threads, processes and machines.

    Without it, two sweep commands that both see `n_trials - 1` trials would both start one and
    overshoot the target. SQLite: a file lock beside the database; PostgreSQL: an advisory lock;
    MySQL: GET_LOCK. Other storages get only the in-process lock (a warning says so).
    """

    def __init__(self, url: str, study_name: str) -> None:
        self.url, self.study_name = url, study_name
        self._thread_lock = threading.Lock()
        self._key = int.from_bytes(
            hashlib.sha256(f"ftlab-sweep:{study_name}".encode()).digest()[:8], "big", signed=True
        )
        self._engine = None
        dialect = url.split(":", 1)[0].split("+")[0]
        self._kind = dialect if dialect in ("sqlite", "postgresql", "mysql") else "none"
        if self._kind == "none":
            log.warning(
                "no cross-process lock for %s storage: concurrent sweep commands may overshoot n_trials",
                dialect,
            )

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        with self._thread_lock:
            if self._kind == "sqlite":
                lock_path = Path(self.url[len("sqlite:///") :] + ".lock")
                lock_path.parent.mkdir(parents=True, exist_ok=True)
                with open(lock_path, "a") as f:
                    fcntl.flock(f, fcntl.LOCK_EX)
                    try:
                        yield
                    finally:
                        fcntl.flock(f, fcntl.LOCK_UN)
            elif self._kind in ("postgresql", "mysql"):
                with self._sql_lock():
                    yield
            else:
                yield

    @contextlib.contextmanager
    def _sql_lock(self) -> Iterator[None]:
        import sqlalchemy
        from sqlalchemy.pool import NullPool

        if self._engine is None:
            self._engine = sqlalchemy.create_engine(self.url, poolclass=NullPool)
        with self._engine.connect() as conn:
            if self._kind == "postgresql":
                conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self._key})
                unlock = sqlalchemy.text("SELECT pg_advisory_unlock(:k)")
            else:
                conn.execute(sqlalchemy.text("SELECT GET_LOCK(:k, -1)"), {"k": str(self._key)})
                unlock = sqlalchemy.text("SELECT RELEASE_LOCK(:k)")
            try:
                yield
            finally:
                conn.execute(
                    unlock, {"k": self._key if self._kind == "postgresql" else str(self._key)}
                )
                conn.commit()


def load_existing_study(
    storage: str, study_name: str | None, what: str = "study"
) -> tuple[optuna.Study, str]:
    """An existing study and its storage URL. `storage`: a sweep dir (its optuna.db), a SQLite
    file or an RDB URL; `study_name`: null when the storage holds a single study. `what` names
    the setting in errors (`study`, `hydra.sweeper.seed_from`); `env:NAME` / `file:PATH` name
    where an RDB URL with a password is (see `storage_url`)."""
    if "://" not in storage and not storage.startswith(("env:", "file:")):
        path = Path(storage).expanduser()
        if path.is_dir():
            path = path / "optuna.db"
        if not path.is_file():
            raise ConfigError(f"{what}.storage={storage!r}: no sweep dir or SQLite file there")
        storage = str(path)
    url = storage_url(storage, Path.cwd(), what=f"{what}.storage")
    rdb = open_storage(url)
    names = [s.study_name for s in optuna.get_all_study_summaries(rdb)]
    if study_name is None:
        if len(names) != 1:
            raise ConfigError(
                f"{what}: a study name is needed, {mask_url(url)} holds {names or 'no studies'}"
            )
        study_name = names[0]
    elif study_name not in names:
        raise ConfigError(
            f"{what}: study {study_name!r} is not in {mask_url(url)}: it has {names or 'no studies'}"
        )
    return optuna.load_study(study_name=study_name, storage=rdb), url


def top_trial_run_dirs(storage: str, study_name: str | None, top_k: int | None) -> list[str]:
    """Run dirs of the `top_k` best COMPLETE trials of a study (best first), e.g. to ensemble them."""
    if top_k is None or int(top_k) < 1:
        raise ConfigError(f"top_k={top_k} is invalid: must be an int >= 1")
    study, _ = load_existing_study(storage, study_name)
    study_name = study.study_name
    done = [
        t
        for t in study.get_trials(deepcopy=False)
        if t.state == TrialState.COMPLETE and t.value is not None
    ]
    if not done:
        raise ConfigError(f"study {study_name!r} has no COMPLETE trial to ensemble")
    done.sort(key=lambda t: t.value, reverse=study.direction.name == "MAXIMIZE")
    chosen = done[: int(top_k)]
    if len(chosen) < int(top_k):
        log.warning(
            "study %r has only %d COMPLETE trials (top_k=%s)", study_name, len(chosen), top_k
        )
    run_dirs = []
    for t in chosen:
        run_dir = t.user_attrs.get("run_dir")
        if not run_dir or not Path(run_dir).is_dir():
            raise ConfigError(
                f"trial {t.number} of study {study_name!r}: its run dir {run_dir} is not on this machine"
            )
        if not list(Path(run_dir).rglob("*.ckpt")):
            kept = sum(
                1 for u in done if list(Path(u.user_attrs.get("run_dir") or "/-").rglob("*.ckpt"))
            )
            raise ConfigError(
                f"trial {t.number} of study {study_name!r} (rank {chosen.index(t) + 1}) has no "
                f"checkpoint left in {run_dir}: the sweep kept only the best trials' "
                f"(hydra.sweeper.keep_checkpoints); use top_k<={kept}"
            )
        log.info("trial %d (%s): %s", t.number, t.value, run_dir)
        run_dirs.append(run_dir)
    return run_dirs
