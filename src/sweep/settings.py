"""`hydra.sweeper.*` as the sweep loop uses it, with the checks that fail before any storage or trial
(the Hydra-facing schema with each setting's documentation: hydra_plugins/ftlab_sweeper/)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from src.errors import ConfigError
from src.sweep.launch import TRIAL_STARTS
from src.sweep.pruning import build, build_pruner


@dataclass
class SweepSettings:
    """`hydra.sweeper.*`, resolved (see conf/hparams_search/*.yaml for what each means)."""

    n_trials: int
    study_name: str
    storage: str  # an RDB URL
    direction: str
    monitor: str
    n_workers: int = 1
    sampler: Mapping[str, Any] | None = None
    pruner: Mapping[str, Any] | None = None
    heartbeat_interval: int = 30
    grace_period: int | None = None
    max_retry: int = 3
    devices_per_worker: int | None = None
    report_interval_s: float = 60.0
    enqueue: list[dict[str, Any]] | None = None  # configurations to try first
    seed_from: dict[str, Any] | None = None  # {storage, study_name} of an earlier study
    trial_start: str = "warm"  # warm: forked from a preloaded forkserver; cold: a new interpreter
    # Trials whose checkpoints are kept: the best `keep_checkpoints` COMPLETE ones, plus running
    # trials and failed ones that may be retried from their last.ckpt; null keeps every trial's.
    keep_checkpoints: int | None = 3
    progress_interval_s: float = 60.0  # a status line this often (and after every trial)
    poll_interval_s: float = 2.0
    extra_env: dict[str, str] = field(default_factory=dict)
    # What trials are told to open: `storage`, or the `env:NAME` / `file:PATH` reference that
    # holds it when it has a password (the secret is never passed on in clear).
    storage_ref: str | None = None
    # HOST:PORT of `python -m src.sweep.storage_proxy` in front of `storage`: asks, reports and
    # tells go through it; heartbeats, stale trials and the budget lock stay on `storage`.
    storage_proxy: str | None = None

    def check(self) -> None:
        if self.n_trials < 1:
            raise ConfigError(
                f"hydra.sweeper.n_trials={self.n_trials} is invalid: must be an int >= 1"
            )
        if self.n_workers < 1:
            raise ConfigError(
                f"hydra.sweeper.n_workers={self.n_workers} is invalid: must be an int >= 1"
            )
        if self.direction not in ("maximize", "minimize"):
            raise ConfigError(
                f"hydra.sweeper.direction={self.direction!r} is invalid: choose maximize or minimize"
            )
        if self.trial_start not in TRIAL_STARTS:
            raise ConfigError(
                f"hydra.sweeper.trial_start={self.trial_start!r} is invalid: choose {' or '.join(TRIAL_STARTS)}"
            )
        if self.keep_checkpoints is not None and (
            isinstance(self.keep_checkpoints, bool) or int(self.keep_checkpoints) < 1
        ):
            raise ConfigError(
                f"hydra.sweeper.keep_checkpoints={self.keep_checkpoints!r} is invalid: an int >= 1 "
                "(the best trials whose checkpoints are kept) or null (keep every trial's)"
            )
        if self.heartbeat_interval < 1:
            raise ConfigError(
                f"hydra.sweeper.heartbeat_interval={self.heartbeat_interval} is invalid: must be an int >= 1 (seconds)"
            )
        if self.storage_proxy is not None:
            from src.sweep.storage_proxy import parse_address

            parse_address(self.storage_proxy)
        # A bad sampler or pruner spec fails here, before any storage or trial.
        build_pruner(dict(self.pruner) if self.pruner else None)
        if self.sampler:
            build("sampler", dict(self.sampler))
