"""The trial's side, inside `python -m src.train`: report each validation to the study, obey the pruner.

The sweeper starts each trial as its own process and tells it where its study lives through
environment variables; `sweep_callbacks(cfg)` (called from src/train.py) returns nothing when they
are absent, so ordinary runs are untouched.

Why not `optuna_integration.PyTorchLightningPruningCallback`: it raises `TrialPruned` out of
`trainer.fit` (our train() would die before writing metrics.json), and under DDP it needs RDB
storage plus a `check_pruned()` call after fit. Here rank 0 reports and asks the pruner, the
decision is broadcast to every rank, training stops cleanly, and a marker file tells the sweeper
to record the trial PRUNED (the sweeper owns every trial's final state).
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig

from src.errors import FtlabError
from src.sweep.trial_env import (  # noqa: F401  (ENV_* are this module's API too)
    ENV_PARENT_PID,
    ENV_PRUNER,
    ENV_STORAGE,
    ENV_STORAGE_PROXY,
    ENV_STUDY,
    ENV_TRIAL_ID,
    ENV_TRIAL_NUMBER,
    EPOCHS_PLANNED_ATTR,
    EPOCHS_TRAINED_ATTR,
    PRUNED_MARKER,
    TIMING_FILE,
)

log = logging.getLogger(__name__)


def sweep_callbacks(cfg: DictConfig) -> list[Callback]:
    """Callbacks for a sweep trial (pruning report); none outside a sweep. The NaN check
    (`src.callbacks.FiniteLossCheck`) is in every run's callbacks."""
    if not os.environ.get(ENV_TRIAL_ID):
        return []
    die_with_sweeper()
    return [TrialReporter(cfg.monitor, Path(cfg.paths.output_dir))]


def die_with_sweeper() -> None:
    """A trial whose sweeper was killed must not train on as an orphan (Linux: parent-death signal)."""
    try:
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    # DDP ranks > 0 are children of rank 0, not of the sweeper; the signal above covers them.
    # Ranks that a launcher started (srun's tasks, torchrun's workers: on each node, children
    # of slurmstepd or of the elastic agent, which the sweeper's death ends) have no such parent.
    parent = os.environ.get(ENV_PARENT_PID)
    is_rank_zero = os.environ.get("LOCAL_RANK", "0") == "0"
    if is_rank_zero and parent and not launched_externally() and os.getppid() != int(parent):
        raise FtlabError(
            "the sweeper that started this trial is gone; not training an orphan trial"
        )


def launched_externally() -> bool:
    """Whether this trial process is one rank of several that srun or torchrun started (Lightning's
    SLURMEnvironment / TorchElasticEnvironment), not a process the sweeper started itself. A trial
    the sweeper starts directly never sees SLURM's task layout (src/sweep/slurm.py removes it)."""
    return "TORCHELASTIC_RUN_ID" in os.environ or "SLURM_NTASKS" in os.environ


def world_size() -> int:
    """The trial's processes, as the launcher that started them says (1 when none did)."""
    for name in ("WORLD_SIZE", "SLURM_NTASKS"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 1


def load_trial():
    """This process's Optuna trial, from the environment the sweeper set."""
    import optuna

    from src.sweep.pruning import build_pruner
    from src.sweep.storage_proxy import proxy_storage
    from src.sweep.study import open_storage, resolve_ref

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = json.loads(os.environ.get(ENV_PRUNER) or "null")
    if os.environ.get(ENV_STORAGE_PROXY):
        storage = proxy_storage(os.environ[ENV_STORAGE_PROXY])
    else:
        # ENV_STORAGE is the URL, or `env:NAME` / `file:PATH` when the URL holds a password.
        storage = open_storage(resolve_ref(os.environ[ENV_STORAGE]))
    # The sampler is never used here; RandomSampler keeps Trial() from fitting a TPE model.
    study = optuna.load_study(
        study_name=os.environ[ENV_STUDY],
        storage=storage,
        pruner=build_pruner(spec),
        sampler=optuna.samplers.RandomSampler(),
    )
    return optuna.trial.Trial(study, int(os.environ[ENV_TRIAL_ID]))


def report_cv_fold(cfg: DictConfig, folds_done: int, folds: int, value: float | None) -> bool:
    """In a sweep trial that cross-validates: report the running CV mean after `folds_done` folds
    (the step) and return whether the pruner stops the trial (then the pruned marker is written);
    never after the last fold, which completes the trial. Outside a sweep: False. The folds
    themselves report nothing: their per-epoch values restart with every fold, which a pruner
    cannot compare across trials; the running mean it can."""
    if not os.environ.get(ENV_TRIAL_ID) or value is None or not math.isfinite(value):
        return False
    if world_size() > 1:
        # Every DDP rank runs the fold loop; they could not agree on a stop without a
        # collective between folds, so a multi-process CV trial is never pruned.
        return False
    trial = load_trial()
    trial.report(float(value), folds_done)
    if folds_done >= folds or not trial.should_prune():
        return False
    (Path(cfg.paths.output_dir) / PRUNED_MARKER).write_text(json.dumps({"step": folds_done}) + "\n")
    return True


class TrialReporter(Callback):
    """Report `monitor` after every validation to the Optuna trial; stop when the pruner says so.

    Step k is the k-th validation (1 after the first epoch), so a pruner's `min_resource: 1` or
    `n_warmup_steps: 1` allows the first cut after the first epoch. The count is saved in the
    checkpoint: a retried trial that resumes from `last.ckpt` goes on at the same step. A prune at
    the last validation is ignored: that trial trained fully and competes for the best.
    """

    def __init__(self, monitor: str, run_dir: Path) -> None:
        self.monitor, self.run_dir = monitor, run_dir
        self.step = 0  # validations reported so far
        self.pruned_at: int | None = None
        self._trial = None
        self._timed = False
        self._planned_recorded = False

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.step = int(state_dict.get("step", 0))

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if not self._timed and trainer.is_global_zero:
            self._timed = True
            (self.run_dir / TIMING_FILE).write_text(
                json.dumps({"first_step_at": time.time()}) + "\n"
            )

    def _optuna_trial(self):
        """The trial, loaded on rank 0 only (other ranks never touch the storage)."""
        if self._trial is None:
            self._trial = load_trial()
        return self._trial

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.step += 1
        prune = False
        if trainer.is_global_zero:
            value = trainer.callback_metrics.get(self.monitor)
            if value is not None and math.isfinite(float(value)):
                trial = self._optuna_trial()
                trial.report(float(value), self.step)
                # Steps count validations (several per epoch with val_check_interval < 1): the
                # epochs behind each report, and the epochs the trial was set to train, are what
                # the sweep's report adds up (trained, and saved by pruning).
                trial.set_user_attr(EPOCHS_TRAINED_ATTR, epochs_trained(trainer))
                # once per trial process: a retried trial resumes past step 1 as a new trial
                if not self._planned_recorded and trainer.max_epochs and trainer.max_epochs > 0:
                    trial.set_user_attr(EPOCHS_PLANNED_ATTR, int(trainer.max_epochs))
                    self._planned_recorded = True
                log.info("reported %s=%.4f as step %d", self.monitor, float(value), self.step)
                prune = trial.should_prune() and not is_last_validation(trainer)
        # Every rank must take the same decision, or the others would wait forever in a collective.
        prune = bool(trainer.strategy.broadcast(prune, src=0))
        if prune:
            self.pruned_at = self.step
            trainer.should_stop = True
            # The pruner's word is final: stop now, even inside an epoch before the trainer's
            # min_epochs / min_steps (conf/trainer sets min_epochs: 1 for early stopping), or a
            # mid-epoch cut (val_check_interval < 1) would train on to the epoch's end.
            trainer.fit_loop.min_epochs = 0
            trainer.fit_loop.epoch_loop.min_steps = 0
            if trainer.is_global_zero:
                log.info(
                    "trial pruned after validation %d (%s=%s)",
                    self.step,
                    self.monitor,
                    trainer.callback_metrics.get(self.monitor),
                )
                (self.run_dir / PRUNED_MARKER).write_text(
                    json.dumps({"step": self.step, "epoch": trainer.current_epoch}) + "\n"
                )


def epochs_trained(trainer: L.Trainer) -> float:
    """Epochs of training behind this validation: whole epochs plus the share of this one's
    batches (0.5 after a mid-epoch validation with val_check_interval=0.5)."""
    batches = trainer.num_training_batches
    done = trainer.fit_loop.epoch_loop.batch_progress.current.completed
    if not batches or not math.isfinite(float(batches)):
        return float(trainer.current_epoch + 1)
    return round(trainer.current_epoch + min(done, batches) / batches, 3)


def is_last_validation(trainer: L.Trainer) -> bool:
    """Whether no validation is left after this one (the last epoch's last, or max_steps)."""
    if trainer.max_steps not in (None, -1) and trainer.global_step >= trainer.max_steps:
        return True
    max_epochs = trainer.max_epochs
    if max_epochs is None or max_epochs < 0 or trainer.current_epoch < max_epochs - 1:
        return False
    loop = trainer.fit_loop.epoch_loop
    if loop.batch_progress.is_last_batch:
        return True
    # Inside the last epoch (val_check_interval < 1). Lightning validates after every
    # val_check_batch-th batch, so the last validation need not follow the last batch: 15
    # batches checked every 7 are validated after batches 7 and 14. It is the last one when the
    # next check would fall past the end of the epoch (or of the fit, when counted over it).
    every, batches = float(trainer.val_check_batch), float(trainer.num_training_batches)
    if not (math.isfinite(every) and math.isfinite(batches)):
        return False
    if trainer.check_val_every_n_epoch is None:  # counted over the fit's batches
        return loop.total_batch_idx + every >= max_epochs * batches
    return loop.batch_idx + every >= batches
