"""`hydra/sweeper: ftlab_optuna` — selected by `conf/hparams_search/*.yaml`.

This module is imported by Hydra's plugin scan on every run, sweep or not, so it imports nothing
heavy at the top: optuna and src.sweep load only when a sweep starts.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional  # noqa: UP035  (OmegaConf structured configs want typing.*)

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
class SlurmConf:
    """`hydra.sweeper.slurm.*`, used with `hydra.sweeper.launcher=slurm` (src/sweep/slurm.py)."""

    workers: int = 2  # worker jobs at a time; each runs n_workers trial slots (auto: per GPU)
    partition: Optional[str] = None  # noqa: UP045
    account: Optional[str] = None  # noqa: UP045
    qos: Optional[str] = None  # noqa: UP045
    # Minutes per job. Near the limit (submitit's SIGUSR2, 90 s before) a job re-queues its
    # trials in the study and requeues itself; the trials continue from their last.ckpt.
    time_min: int = 240
    cpus_per_task: Optional[int] = None  # noqa: UP045
    gpus_per_task: Optional[int] = None  # noqa: UP045
    mem_gb: Optional[float] = None  # noqa: UP045
    # Per trial: a trial spans `nodes` x `tasks_per_node` DDP processes (trainer.num_nodes,
    # trainer.devices), started by srun, one task each; above 1, a job runs one trial at a time.
    nodes: int = 1
    tasks_per_node: int = 1
    array_parallelism: Optional[int] = None  # noqa: UP045  (null: all workers at once)
    additional_parameters: Dict[str, Any] = field(default_factory=dict)  # noqa: UP006  (sbatch)
    # false: submit the jobs and exit; the same command again follows, extends or resumes.
    follow: bool = True


@dataclass
class FtlabOptunaSweeperConf:
    """`hydra.sweeper.*`. Unknown keys are an error (a typo must not be silently ignored)."""

    _target_: str = "hydra_plugins.ftlab_sweeper.ftlab_sweeper.FtlabOptunaSweeper"
    # Sampler and pruner are config groups (conf/hydra/sweeper/{sampler,pruner}/), so one switches
    # whole from the command line: hydra/sweeper/pruner=hyperband, hydra/sweeper/sampler=random.
    # None selected: the sampler is TPESampler(seed=42), no pruning. `_self_` first, so that a
    # selected option is not overwritten by the `None` defaults below.
    defaults: List[Any] = field(  # noqa: UP006
        default_factory=lambda: ["_self_", {"sampler": None}, {"pruner": None}]
    )
    # sampler/pruner stay configs: each trial process rebuilds the pruner from the same spec.
    _recursive_: bool = False
    # Finished trials (complete + pruned + failed) the study aims at, over all runs and commands.
    n_trials: int = 20
    # Trial processes at a time for this command; each gets its own GPU(s) when there are some.
    # auto: one per devices_per_worker visible GPUs (one per GPU by default); 1 without GPUs.
    n_workers: Any = "auto"
    # null: the hparams_search name. Same name + same storage = the same study (resume, share).
    study_name: Any = None
    # null: $FTLAB_STORAGE_URL when set, else the SQLite file <sweep dir>/optuna.db. A path, or an
    # RDB URL (postgresql://user@host/db) for many machines; a URL with a password only by
    # reference: env:VARIABLE or file:PATH (never written to multirun.yaml or a trial's env).
    storage: Any = None
    # HOST:PORT of Optuna's gRPC storage proxy in front of `storage` (python -m
    # src.sweep.storage_proxy), for hundreds of workers: asks, reports and tells go through it.
    storage_proxy: Any = None
    # maximize | minimize; null: from `mode` (max -> maximize). Must agree with `mode`.
    direction: Any = None
    # `_target_` + kwargs of an optuna sampler; null: TPESampler(seed=42).
    sampler: Any = None
    # `_target_` + kwargs of an optuna pruner; null: no pruning. Its steps count validations
    # (1 = after the first epoch) or, in a cross-validated trial, folds.
    pruner: Any = None
    # config key -> search range (see src/sweep/space.py for the spellings).
    params: Any = field(default_factory=dict)
    # Seconds between heartbeats of a running trial; a trial silent for grace_period is retried.
    heartbeat_interval: int = 30
    grace_period: Any = None  # null: 2 x heartbeat_interval
    max_retry: int = 3
    # GPUs per worker (its CUDA_VISIBLE_DEVICES; the trial gets trainer.devices=<that many> unless
    # it sets trainer.devices); null: the visible GPUs split evenly between the workers.
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
    # Checkpoints are kept for the best keep_checkpoints COMPLETE trials (and running ones, and
    # failed ones a retry may continue); the others' are deleted as trials finish. null: keep all.
    keep_checkpoints: Any = 3
    # When the study is done: train the best trial's configuration again on the whole training
    # data (data.limit_train=null) with a test pass, in <sweep dir>/refit_trial_<n>; best.yaml then
    # reproduces that run. refit_overrides are added to it (e.g. [trainer.max_epochs=5]).
    # Seconds between status lines (finished / running / pruned / failed, best, time left); one
    # is also logged after every trial. 0: only after trials.
    progress_interval_s: float = 60.0
    refit: bool = False
    refit_overrides: Any = field(default_factory=list)
    # local: this command runs the trials; slurm: it submits hydra.sweeper.slurm.workers jobs that
    # each run this command with launcher=local against the same study (which the nodes must
    # reach: a PostgreSQL URL, or SQLite on a shared file system), and follows the study.
    launcher: str = "local"
    slurm: SlurmConf = field(default_factory=SlurmConf)


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
        from src.sweep.placement import resolve_workers, visible_gpus
        from src.sweep.pruning import resolve_resource
        from src.sweep.runner import Sweep
        from src.sweep.settings import SweepSettings
        from src.sweep.space import override_key, parse_params, split_arguments
        from src.sweep.study import storage_ref, storage_url

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
            n_workers=resolve_workers(
                s.get("n_workers", "auto"), visible_gpus(), s.get("devices_per_worker")
            ),
            study_name=str(study_name),
            storage=storage_url(s.get("storage"), sweep_dir),
            storage_ref=storage_ref(s.get("storage")),
            storage_proxy=str(s["storage_proxy"]) if s.get("storage_proxy") else None,
            direction=direction,
            monitor=str(cfg.monitor),
            sampler=_container(s.get("sampler")),
            pruner=resolve_resource(_container(s.get("pruner")), cfg, space),
            heartbeat_interval=int(s.get("heartbeat_interval", 30)),
            grace_period=s.get("grace_period"),
            max_retry=int(s.get("max_retry", 3)),
            devices_per_worker=s.get("devices_per_worker"),
            report_interval_s=float(s.get("report_interval_s", 60.0)),
            enqueue=_container(s.get("enqueue")),
            seed_from=_container(s.get("seed_from")),
            trial_start=str(s.get("trial_start", "warm")),
            keep_checkpoints=s.get("keep_checkpoints", 3),
            progress_interval_s=float(s.get("progress_interval_s", 60.0)),
        )
        launcher = str(s.get("launcher", "local"))
        if launcher not in ("local", "slurm"):
            raise ConfigError(
                f"hydra.sweeper.launcher={launcher!r} is invalid: choose local or slurm"
            )
        if launcher == "slurm":
            from src.sweep.slurm import SlurmSettings

            slurm = SlurmSettings.from_mapping(_container(s.get("slurm")))
        groups = [str(g) for g in choices]
        sweep = Sweep(settings, space, [*plain, *hydra_overrides], sweep_dir, config_groups=groups)
        OmegaConf.save(cfg, sweep_dir / "multirun.yaml")
        if launcher == "slurm":
            from src import PROJECT_ROOT
            from src.sweep.slurm import run_on_slurm, worker_argv

            argv = worker_argv(
                list(cfg.hydra.overrides.hydra),
                list(cfg.hydra.overrides.task),
                cfg.hydra.job.get("config_name"),
                sweep_dir,
            )
            done = run_on_slurm(sweep, slurm, argv, str(PROJECT_ROOT))
            study = sweep.study
        else:
            study, done = sweep.run(), True
        if s.get("refit") and done:
            from src.sweep.refit import refit_best, refit_overrides

            refit_best(sweep, refit_overrides(cfg, _container(s.get("refit_overrides"))))
            sweep.report(plots=False)
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
