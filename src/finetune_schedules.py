"""The Lightning callbacks that change what trains, and with which LR, as epochs pass.

`FreezeSchedule` is one `BaseFinetuning` callback for every strategy: it freezes before the
optimizer is built, adds unfrozen groups to the optimizer with their discriminative LR (the same
names and no-decay rules as `src.optim`), lets the LR scheduler drive them, and restores the exact
frozen state and param groups when a run resumes from a checkpoint. `PhaseSchedule` extends it:
at each phase's first epoch it rebuilds the optimizer and LR scheduler for the phase.
`src.finetune.finetune_callbacks` picks one from the config.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from functools import partial
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BaseFinetuning
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim import Optimizer

from src.errors import ConfigError
from src.models.groups import phase_groups, selected_groups
from src.optim import (
    discriminative_param_groups,
    group_lr,
    group_param_groups,
    scheduler_config,
    sync_scheduler_groups,
)

log = logging.getLogger(__name__)


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(module.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


# --------------------------------------------------------------------------- the callback


class FreezeSchedule(BaseFinetuning):
    """Which layer groups train at each epoch; unfrozen groups join the optimizer mid-run.

    `trainable_groups`: how many groups, from the top, train from the start (None: all of them);
    `trainable` names them instead (globs allowed); groups in `frozen` never train. Groups that
    train from the start keep requires_grad as the network has it (e.g. LoRA's: adapters only);
    the others are frozen. At each epoch in `milestones` (or every `unfreeze_every` epochs),
    `groups_per_step` more groups unfreeze, top down, skipping `frozen`.
    Frozen groups keep their BatchNorm layers in eval mode, so running statistics stay as
    pretrained and normalisation uses them, as at inference. With `frozen_eval`, frozen groups
    run wholly in eval mode (dropout off too): the frozen part is then a fixed function of the
    input, which is what makes feature extraction's cached features exact.
    """

    def __init__(
        self,
        trainable_groups: int | None = None,
        milestones: Sequence[int] = (),
        unfreeze_every: int | None = None,
        groups_per_step: int = 1,
        frozen_eval: bool = False,
        trainable: Sequence[str] | None = None,
        frozen: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.trainable_groups = trainable_groups
        self.selection = {
            "trainable": None if trainable is None else [str(t) for t in trainable],
            "frozen": [str(f) for f in frozen],
        }
        self.milestones = sorted(int(m) for m in milestones)
        self.unfreeze_every = unfreeze_every
        self.groups_per_step = groups_per_step
        self.frozen_eval = frozen_eval
        self.trainable: set[str] = set()  # groups this schedule has made trainable
        self._restored_trainable: list[str] | None = None

    def unfreeze_steps(self, epoch: int) -> int:
        """How many unfreezing steps have happened by the start of `epoch`."""
        if self.unfreeze_every:
            return epoch // self.unfreeze_every
        return sum(m <= epoch for m in self.milestones)

    def start_and_queue(self, names: list[str]) -> tuple[set[str], list[str]]:
        """The groups that train from the start, and the rest in unfreezing order (top down);
        `frozen` groups are in neither."""
        trainable, frozen = selected_groups(self.selection, names)
        if trainable is None:
            n = len(names) if self.trainable_groups is None else self.trainable_groups
            if n > len(names):
                raise ConfigError(
                    f"finetune.trainable_groups={n} is beyond this model's {len(names)} layer groups"
                )
            trainable = names[len(names) - n :]
        start = set(trainable) - set(frozen)
        queue = [n for n in reversed(names) if n not in start and n not in frozen]
        return start, queue

    # -- freezing before the optimizer exists (BaseFinetuning calls this in `setup`)

    def freeze_before_training(self, pl_module: L.LightningModule) -> None:
        groups = pl_module.network.layer_groups()
        start, _ = self.start_and_queue([name for name, _ in groups])
        for name, modules in groups:
            if name not in start:
                # train_bn=False also stops running-stat updates (track_running_stats=False)
                self.freeze(modules, train_bn=False)
        self.trainable = start

    # -- unfreezing at epoch starts (BaseFinetuning records new param groups for resuming)

    def finetune_function(
        self, pl_module: L.LightningModule, epoch: int, optimizer: Optimizer
    ) -> None:
        groups = pl_module.network.layer_groups()
        _, queue = self.start_and_queue([name for name, _ in groups])
        due = set(queue[: self.unfreeze_steps(epoch) * self.groups_per_step])
        for depth, (name, modules) in enumerate(reversed(groups), start=1):
            if name in due and name not in self.trainable:
                self.unfreeze_group(pl_module, optimizer, name, modules, depth)
                log.info("epoch %d: unfroze layer group %s", epoch, name)

    def unfreeze_group(
        self,
        pl_module: L.LightningModule,
        optimizer: Optimizer,
        name: str,
        modules: Iterable[nn.Module],
        depth: int,
    ) -> None:
        """Make a group trainable and add it to the optimizer with its discriminative LR."""
        modules = list(modules)
        self.make_trainable(modules)
        for m in modules:
            m.train()
        lr, weight_decay, lr_decay = optimizer_settings(pl_module)
        # by identity: BaseFinetuning.filter_on_optimizer compares values, which tied or
        # zero-initialised weights would match
        present = {id(p) for g in optimizer.param_groups for p in g["params"]}
        params = [
            p for m in modules for p in m.parameters() if p.requires_grad and id(p) not in present
        ]
        for group in group_param_groups(name, params, group_lr(lr, lr_decay, depth), weight_decay):
            optimizer.add_param_group(group)
        sync_schedulers(pl_module.trainer, optimizer)
        self.trainable.add(name)

    # -- the hooks around it

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._restored_trainable is not None:
            # resuming: `setup` froze to the starting state; unfreeze what was trainable at the
            # checkpoint before BaseFinetuning restores the param groups and Lightning the
            # optimizer and scheduler states (those need the same group count).
            by_name = dict(pl_module.network.layer_groups())
            for name in self._restored_trainable:
                if name not in self.trainable:
                    self.make_trainable(by_name[name])
                    for m in by_name[name]:
                        m.train()
                    self.trainable.add(name)
            self._restored_trainable = None
        super().on_fit_start(trainer, pl_module)
        for optimizer in trainer.optimizers:
            sync_schedulers(trainer, optimizer)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after Lightning's "modules in eval mode" check, which would flag frozen BatchNorm
        self.frozen_to_eval(pl_module)
        self.log_trainable(trainer, pl_module)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        n_before = len(self.trainable)
        super().on_train_epoch_start(trainer, pl_module)
        self.frozen_to_eval(pl_module)
        if len(self.trainable) != n_before:
            self.log_trainable(trainer, pl_module)

    def frozen_to_eval(self, pl_module: L.LightningModule) -> None:
        """Frozen groups' BatchNorm (with `frozen_eval`: all their modules) in eval mode."""
        for name, modules in pl_module.network.layer_groups():
            if name not in self.trainable:
                for m in modules:
                    for sub in m.modules():
                        if self.frozen_eval or isinstance(sub, _BatchNorm):
                            sub.eval()

    def log_trainable(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainable, total = count_parameters(pl_module.network)
        if trainer.is_global_zero:
            log.info(
                "epoch %d: %s of %s parameters trainable (%.2f%%)",
                trainer.current_epoch,
                f"{trainable:,}",
                f"{total:,}",
                100 * trainable / max(total, 1),
            )
            for logger in trainer.loggers:
                logger.log_metrics(
                    {"params/trainable": trainable, "params/total": total}, step=trainer.global_step
                )

    # -- resume: the trainable groups travel with the checkpoint

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "trainable": sorted(self.trainable)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._restored_trainable = list(state_dict.get("trainable", []))


class PhaseSchedule(FreezeSchedule):
    """`finetune=phases`: each phase trains its own groups with its own LR, decay and schedule.

    At the first epoch of a phase its groups become trainable (the others frozen, their BatchNorm
    in eval mode) and the optimizer and LR scheduler are rebuilt for it: the module's optimizer
    factory over `src.optim`'s discriminative param groups, a `scheduler_config` schedule over the
    phase's steps. Parameters that trained in the previous phase keep their optimizer state
    (Adam's moments and step count, as fastai's freeze/unfreeze does). The phase index and what
    each phase did travel with checkpoints: a resumed run rebuilds the phase it was in, and
    Lightning then restores that optimizer's and scheduler's state into it.

    A phase whose schedule is `plateau` (scheduler=plateau sets it for every phase that names no
    schedule of its own) starts at its own LRs, and its plateau starts afresh (best value, bad
    epochs, reductions): a phase changes what trains, so the monitored metric of the phase
    before says nothing about when this one has stalled. Within the phase the plateau scales the
    phase's discriminative LRs.
    """

    def __init__(self, phases: Sequence[Mapping[str, Any]], frozen: Sequence[str] = ()) -> None:
        super().__init__(trainable_groups=0, frozen=frozen)
        self.phases = [dict(p) for p in phases]
        self.phase: int | None = None  # the phase the optimizer is built for
        self.record: list[dict[str, Any]] = []  # each phase as it ran (metrics.json)
        self._restored_phase: int | None = None

    def phase_at(self, epoch: int) -> int:
        """The phase `epoch` (0-based) belongs to."""
        end = 0
        for index, phase in enumerate(self.phases):
            end += int(phase["epochs"])
            if epoch < end:
                return index
        return len(self.phases) - 1

    def set_trainable(self, pl_module: L.LightningModule, index: int) -> None:
        """Phase `index`'s groups (and the head) train; the others are frozen."""
        groups = pl_module.network.layer_groups()
        names = [name for name, _ in groups]
        _, frozen = selected_groups(self.selection, names)
        chosen = set(phase_groups(self.phases[index], index, names, frozen))
        for name, modules in groups:
            if name in chosen and name not in self.trainable:
                self.make_trainable(modules)
                for m in modules:
                    m.train()
            elif name not in chosen:
                self.freeze(modules, train_bn=False)
        self.trainable = chosen

    def settings(self, pl_module: L.LightningModule, index: int) -> dict[str, Any]:
        """Phase `index`'s lr, lr_decay, schedule and warmup, defaults filled in from the run."""
        phase = self.phases[index]
        lr, _, lr_decay = optimizer_settings(pl_module)
        scheduler = pl_module.hparams.get("scheduler") or {"name": "constant", "warmup": 0}
        given = {k: phase.get(k) for k in ("lr", "lr_decay", "schedule", "warmup")}
        defaults = {
            "lr": lr,
            "lr_decay": lr_decay,
            "schedule": scheduler["name"],
            "warmup": float(scheduler.get("warmup", 0)),
        }
        return {k: defaults[k] if v is None else v for k, v in given.items()}

    def build(self, trainer: L.Trainer, pl_module: L.LightningModule, index: int) -> None:
        """Phase `index`'s trainable groups, optimizer and scheduler, in place of the current ones."""
        self.set_trainable(pl_module, index)
        settings = self.settings(pl_module, index)
        _, weight_decay, _ = optimizer_settings(pl_module)
        old, config = trainer.optimizers[0], trainer.lr_scheduler_configs[0]
        factory = pl_module.optimizer_factory
        if factory.keywords.get("fused") and not old.defaults.get("fused"):
            # configure_optimizers chose the unfused kernels (fp16 loss scaling): keep its choice
            factory = partial(factory.func, **{**factory.keywords, "fused": False})
        groups = discriminative_param_groups(
            pl_module.network, float(settings["lr"]), float(settings["lr_decay"]), weight_decay
        )
        optimizer = factory(groups)
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p in old.state:  # trained in the previous phase: its moments carry on
                    optimizer.state[p] = old.state[p]
        steps = steps_per_epoch(trainer) * int(self.phases[index]["epochs"])
        # the run's scheduler settings (plateau's factor, patience, ...) with the phase's schedule
        run_sched = pl_module.hparams.get("scheduler") or {}
        sched = {**run_sched, "name": settings["schedule"], "warmup": float(settings["warmup"])}
        run = pl_module.hparams.get("config") or {}
        lightning_cfg = scheduler_config(
            sched, optimizer, steps, run.get("monitor"), run.get("mode")
        )
        trainer.strategy.optimizers = [optimizer]
        # interval, monitor: a plateau phase steps per epoch on the metric, the others per step
        trainer.strategy.lr_scheduler_configs = [dataclasses.replace(config, **lightning_cfg)]
        self.phase = index
        if all(r["phase"] != index for r in self.record):
            first_epoch = sum(int(p["epochs"]) for p in self.phases[:index])
            self.record.append(
                {
                    "phase": index,
                    "epochs": [first_epoch, first_epoch + int(self.phases[index]["epochs"]) - 1],
                    "first_step": trainer.global_step,
                    "steps": steps,
                    "trainable": [
                        n for n, _ in pl_module.network.layer_groups() if n in self.trainable
                    ]
                    + ["head"],
                    **settings,
                }
            )
            log.info(
                "phase %d of %d (epochs %d-%d): %s train at lr %.3g (lr_decay %g, %s schedule)",
                index + 1,
                len(self.phases),
                *self.record[-1]["epochs"],
                ", ".join(self.record[-1]["trainable"]),
                settings["lr"],
                settings["lr_decay"],
                settings["schedule"],
            )

    # -- the hooks (BaseFinetuning's param-group bookkeeping is not used: the optimizer is rebuilt)

    def freeze_before_training(self, pl_module: L.LightningModule) -> None:
        self.set_trainable(pl_module, 0)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # configure_optimizers built the run's optimizer; the phase's replaces it. Resuming, it
        # is the checkpoint's phase, whose optimizer/scheduler state Lightning loads next.
        index = self._restored_phase if self._restored_phase is not None else 0
        self._restored_phase = None
        self.build(trainer, pl_module, index)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        index = self.phase_at(trainer.current_epoch)
        changed = index != self.phase
        if changed:
            self.build(trainer, pl_module, index)
        self.frozen_to_eval(pl_module)
        if changed:
            self.log_trainable(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {"phase": self.phase, "record": self.record, "trainable": sorted(self.trainable)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored_phase = int(state_dict["phase"])
        self.record = list(state_dict.get("record", []))


def steps_per_epoch(trainer: L.Trainer) -> int:
    """Optimizer steps in one training epoch (as Lightning's estimated_stepping_batches counts)."""
    trainer.estimated_stepping_batches  # noqa: B018 (sets up the train data if not done yet)
    batches = trainer.num_training_batches
    if not math.isfinite(batches):
        raise ConfigError(
            "finetune=phases needs a train set of known length: its phases are counted in epochs"
        )
    return max(1, math.ceil(batches / trainer.accumulate_grad_batches))


def phase_results(trainer: L.Trainer) -> dict[str, Any]:
    """`{"phases": [...]}` for metrics.json: each phase as it ran (epochs, first step, groups,
    lr, lr_decay, schedule, warmup); empty for the other strategies."""
    for callback in trainer.callbacks:
        if isinstance(callback, PhaseSchedule):
            return {"phases": callback.record}
    return {}


def optimizer_settings(pl_module: L.LightningModule) -> tuple[float, float, float]:
    """(head lr, weight decay, lr_decay) as the module's configure_optimizers uses them."""
    keywords = pl_module.optimizer_factory.keywords
    return (
        float(keywords["lr"]),
        float(keywords.get("weight_decay", 0.0)),
        float(pl_module.hparams.lr_decay),
    )


def sync_schedulers(trainer: L.Trainer, optimizer: Optimizer) -> None:
    """Every scheduler of `optimizer` also drives the param groups added after it was built."""
    for config in trainer.lr_scheduler_configs:
        if config.scheduler.optimizer is optimizer:
            sync_scheduler_groups(config.scheduler)
