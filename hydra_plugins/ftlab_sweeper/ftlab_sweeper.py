"""`hydra/sweeper: ftlab_optuna` — selected by `conf/hparams_search/*.yaml`.

This module is imported by Hydra's plugin scan on every run, sweep or not, so it imports nothing
heavy at the top: optuna and src.sweep load only when a sweep starts.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

# Hydra overrides that belong to the sweep itself, not to its trials.
_SWEEP_ONLY = (
    "hydra.sweep",
    "hydra.mode",
    "hydra.run",
    "hydra/sweeper",
    "hydra.launcher",
    "hydra/launcher",
)


@dataclass
class FtlabOptunaSweeperConf:
    """`hydra.sweeper.*`. Unknown keys are an error (a typo must not be silently ignored)."""

    _target_: str = "hydra_plugins.ftlab_sweeper.ftlab_sweeper.FtlabOptunaSweeper"
    # sampler/pruner stay configs: each trial process rebuilds the pruner from the same spec.
    _recursive_: bool = False
    # Finished trials (complete + pruned + failed) the study aims at, over all runs and commands.
    n_trials: int = 20
    # Trial processes at a time for this command; each gets its own GPU(s) when there are some.
    n_workers: int = 1
    # null: the hparams_search name. Same name + same storage = the same study (resume, share).
    study_name: Any = None
    # null: SQLite file <sweep dir>/optuna.db. A path, or an RDB URL (postgresql://...) for many machines.
    storage: Any = None
    # maximize | minimize; null: from `mode` (max -> maximize). Must agree with `mode`.
    direction: Any = None
    # `_target_` + kwargs of an optuna sampler; null: TPESampler(seed=42).
    sampler: Any = None
    # `_target_` + kwargs of an optuna pruner; null: no pruning.
    pruner: Any = None
    # config key -> search range (see src/sweep/space.py for the spellings).
    params: Any = field(default_factory=dict)
    # Seconds between heartbeats of a running trial; a trial silent for grace_period is retried.
    heartbeat_interval: int = 30
    grace_period: Any = None  # null: 2 x heartbeat_interval
    max_retry: int = 3
    # GPUs per worker (CUDA_VISIBLE_DEVICES); null: the visible GPUs split evenly between workers.
    devices_per_worker: Any = None
    # The plots are redrawn at most this often during a sweep (tables after every trial).
    report_interval_s: float = 60.0
    # Known-good configurations tried first: [{optimizer.lr: 3e-5, data.batch_size: 32}, ...]
    # (keys left out are sampled). Each is enqueued once per study, so a resumed sweep adds none.
    enqueue: Any = None
    # {storage: <sweep dir | optuna.db | RDB URL>, study_name: NAME}: copy that study's finished
    # trials whose params fit this search space into this study (once), so the sampler starts from
    # them. They do not count towards n_trials.
    seed_from: Any = None
    # warm: each trial is a child forked from a server that has imported torch, Lightning,
    # transformers once (saves their import time per trial); cold: a fresh `python -m src.train`.
    trial_start: str = "warm"


ConfigStore.instance().store(
    group="hydra/sweeper", name="ftlab_optuna", node=FtlabOptunaSweeperConf, provider="ftlab"
)


class FtlabOptunaSweeper(Sweeper):
    """Runs an Optuna study whose trials are `python -m src.train` processes."""

    def __init__(self, **settings: Any) -> None:
        self.settings = settings
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.hydra_context = hydra_context

    def sweep(self, arguments: list[str]) -> Any:
        from src.errors import exit_on_user_error

        with exit_on_user_error():
            return self._sweep(arguments)

    def _sweep(self, arguments: list[str]) -> Any:
        import optuna

        from src.errors import ConfigError
        from src.sweep.runner import Sweep, SweepSettings
        from src.sweep.space import override_key, parse_params, split_arguments
        from src.sweep.study import storage_url

        assert self.config is not None
        cfg, s = self.config, self.settings
        optuna.logging.set_verbosity(optuna.logging.WARNING)

        space = parse_params(_container(s.get("params")))
        plain, cli_space = split_arguments(list(arguments))
        space.update(cli_space)
        # A plain `key=value` on the command line fixes that key: it leaves the search space.
        for key in {override_key(o) for o in plain} & set(space):
            log.info("%s is fixed on the command line: not searched", key)
            del space[key]
        for key in space:
            if OmegaConf.select(cfg, key, default="__missing__") == "__missing__":
                raise ConfigError(
                    f"hydra.sweeper.params: {key!r} is not a config key (python -m src.train --cfg job lists them)"
                )

        mode = cfg.get("mode", "max")
        direction = s.get("direction") or ("maximize" if mode == "max" else "minimize")
        if (direction == "maximize") != (mode == "max"):
            raise ConfigError(
                f"hydra.sweeper.direction={direction} disagrees with mode={mode} (monitor={cfg.monitor})"
            )
        choices = cfg.hydra.runtime.choices
        study_name = (
            s.get("study_name") or choices.get("hparams_search") or f"{cfg.task_name}_sweep"
        )
        sweep_dir = Path(str(cfg.hydra.sweep.dir)).resolve()
        hydra_overrides = [
            o for o in cfg.hydra.overrides.hydra if not o.lstrip("+~").startswith(_SWEEP_ONLY)
        ]

        settings = SweepSettings(
            n_trials=int(s.get("n_trials", 20)),
            n_workers=int(s.get("n_workers", 1)),
            study_name=str(study_name),
            storage=storage_url(s.get("storage"), sweep_dir),
            direction=direction,
            monitor=str(cfg.monitor),
            sampler=_container(s.get("sampler")),
            pruner=_container(s.get("pruner")),
            heartbeat_interval=int(s.get("heartbeat_interval", 30)),
            grace_period=s.get("grace_period"),
            max_retry=int(s.get("max_retry", 3)),
            devices_per_worker=s.get("devices_per_worker"),
            report_interval_s=float(s.get("report_interval_s", 60.0)),
            enqueue=_container(s.get("enqueue")),
            seed_from=_container(s.get("seed_from")),
            trial_start=str(s.get("trial_start", "warm")),
        )
        groups = [str(g) for g in choices]
        sweep = Sweep(settings, space, [*plain, *hydra_overrides], sweep_dir, config_groups=groups)
        OmegaConf.save(cfg, sweep_dir / "multirun.yaml")
        study = sweep.run()
        done = [
            t
            for t in study.get_trials(deepcopy=False)
            if t.value is not None and t.state.name == "COMPLETE"
        ]
        if done:
            log.info(
                "best %s = %s with %s (report in %s)",
                cfg.monitor,
                study.best_value,
                study.best_params,
                sweep_dir,
            )
            return study.best_value
        return None


def _container(value: Any) -> Any:
    if isinstance(value, (DictConfig,)) or OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    return value
