"""Parameter groups (discriminative LRs, no decay on biases and norms) and LR schedules."""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import partial
from typing import Any

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau

from src.errors import ConfigError

STEP_SCHEDULES = ("constant", "linear", "cosine", "one_cycle")  # LambdaLR, stepped per step
SCHEDULES = (*STEP_SCHEDULES, "plateau")  # plateau: per epoch, on the monitored metric
# scheduler=plateau's settings (conf/scheduler/plateau.yaml) and their defaults
PLATEAU_DEFAULTS = {"factor": 0.1, "patience": 2, "threshold": 1e-4, "cooldown": 0, "min_lr": 0.0}
# Slanted triangular LR (ULMFiT): the LR climbs from peak/32 to the peak, then falls back to peak/32.
STLR_RATIO = 32.0


def split_decay(params: Iterable[nn.Parameter]) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(decay, no_decay): biases and norm weights (1-D tensors) get no weight decay."""
    decay, no_decay = [], []
    for p in params:
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return decay, no_decay


def group_param_groups(
    name: str, params: Iterable[nn.Parameter], lr: float, weight_decay: float
) -> list[dict[str, Any]]:
    """Optimizer param groups for one layer group (named for the LR monitor)."""
    decay, no_decay = split_decay(params)
    groups = []
    if decay:
        groups.append({"name": name, "params": decay, "lr": lr, "weight_decay": weight_decay})
    if no_decay:
        groups.append(
            {"name": f"{name}/no_decay", "params": no_decay, "lr": lr, "weight_decay": 0.0}
        )
    return groups


def group_lr(lr: float, lr_decay: float, depth_from_top: int) -> float:
    """Discriminative LR: the head has depth 0, the top backbone group 1, and so on."""
    return lr * lr_decay**depth_from_top


def discriminative_param_groups(
    network: Any, lr: float, lr_decay: float, weight_decay: float
) -> list[dict[str, Any]]:
    """One param group (x decay/no-decay) per layer group, trainable parameters only."""
    groups = group_param_groups("head", network.head_parameters(), lr, weight_decay)
    layer_groups = network.layer_groups()
    for depth, (name, modules) in enumerate(reversed(layer_groups), start=1):
        params = [p for m in modules for p in m.parameters()]
        groups += group_param_groups(name, params, group_lr(lr, lr_decay, depth), weight_decay)
    return groups


def warmup_steps(warmup: float, total_steps: int) -> int:
    """`warmup` < 1 is a fraction of all steps; >= 1 a number of steps."""
    if warmup < 0:
        raise ConfigError(f"scheduler.warmup={warmup} must be >= 0 (a fraction < 1, or steps)")
    return int(math.ceil(warmup * total_steps)) if warmup < 1 else int(warmup)


def slanted_triangular(step: int, n_up: int, total_steps: int, ratio: float = STLR_RATIO) -> float:
    """ULMFiT's STLR multiplier: linear from 1/ratio up to 1 over n_up steps, then back down."""
    p = step / n_up if step < n_up else max(0.0, 1 - (step - n_up) / max(1, total_steps - n_up))
    return (1 + p * (ratio - 1)) / ratio


def build_scheduler(name: str, optimizer: Optimizer, warmup: float, total_steps: int) -> LambdaLR:
    """Per-step schedules: transformers' warmup schedules, by name, and one-cycle (STLR).

    All are LambdaLR with one multiplier for every group, so a group's LR is its own peak
    (`initial_lr`, discriminative) times the schedule; see `sync_scheduler_groups`.
    """
    from transformers import get_scheduler

    n_warmup = warmup_steps(warmup, total_steps)
    if name == "one_cycle":
        # a partial, not a lambda: LambdaLR saves callable objects' state in checkpoints
        return LambdaLR(
            optimizer, partial(slanted_triangular, n_up=max(1, n_warmup), total_steps=total_steps)
        )
    if name == "constant":
        return get_scheduler("constant_with_warmup", optimizer, num_warmup_steps=n_warmup)
    if name in ("linear", "cosine"):
        return get_scheduler(
            name, optimizer, num_warmup_steps=n_warmup, num_training_steps=total_steps
        )
    if name == "plateau":
        raise ConfigError(
            "scheduler.name=plateau is stepped per epoch: build it with scheduler_config"
        )
    raise ConfigError(f"scheduler.name={name!r}; valid: {', '.join(SCHEDULES)}")


class PlateauScale(ReduceLROnPlateau):
    """torch's ReduceLROnPlateau: every param group's LR times `factor` after `patience` epochs
    without improvement of the monitored metric. It scales the LRs the groups have, so
    discriminative LRs keep their ratios; `scale` (the product of the reductions so far) lets a
    group added mid-run (gradual unfreezing) join at its own LR times the same scale."""

    def __init__(self, optimizer: Optimizer, **kwargs: Any) -> None:
        super().__init__(optimizer, **kwargs)
        self.scale = 1.0

    def _reduce_lr(self, epoch: Any) -> None:
        super()._reduce_lr(epoch)
        self.scale *= self.factor

    def add_new_groups(self) -> None:
        groups = self.optimizer.param_groups
        for group in groups[len(self.min_lrs) :]:
            group.setdefault("initial_lr", group["lr"])
            self.min_lrs.append(self.default_min_lr or 0.0)
            group["lr"] = max(group["initial_lr"] * self.scale, self.min_lrs[-1])
        self._last_lr = [g["lr"] for g in groups]


def scheduler_config(
    sched: dict[str, Any],
    optimizer: Optimizer,
    total_steps: int,
    monitor: str | None = None,
    mode: str | None = None,
) -> dict[str, Any]:
    """The Lightning `lr_scheduler` dict for `sched` (scheduler.name and its settings): the
    per-step LambdaLR schedules, or plateau, stepped per epoch on `sched`'s monitor and mode
    (default: the run's `monitor` / `mode`)."""
    name = str(sched["name"])
    if name == "plateau":
        settings = {k: sched.get(k, v) for k, v in PLATEAU_DEFAULTS.items()}
        plateau = PlateauScale(
            optimizer,
            mode=str(sched.get("mode") or mode or "max"),
            factor=float(settings["factor"]),
            patience=int(settings["patience"]),
            threshold=float(settings["threshold"]),
            cooldown=int(settings["cooldown"]),
            min_lr=float(settings["min_lr"]),
        )
        return {
            "scheduler": plateau,
            "interval": "epoch",
            "frequency": 1,
            "monitor": str(sched.get("monitor") or monitor),
            "strict": True,
            "reduce_on_plateau": True,
        }
    scheduler = build_scheduler(name, optimizer, float(sched.get("warmup", 0)), total_steps)
    return {
        "scheduler": scheduler,
        "interval": "step",
        "frequency": 1,
        "monitor": None,
        "strict": True,
        "reduce_on_plateau": False,
    }


def sync_scheduler_groups(scheduler: LambdaLR | PlateauScale) -> None:
    """Let a scheduler drive param groups added after it was built (gradual unfreezing).

    torch's LambdaLR only knows the groups it was built with (and zips strictly, so a new group
    would make its next step fail). A new group gets group 0's multiplier with its own LR as peak
    (`initial_lr`), and joins the schedule where it is now: lr = initial_lr * multiplier(step).
    Under plateau, a new group joins at its own LR times the reductions so far.
    """
    if isinstance(scheduler, PlateauScale):
        scheduler.add_new_groups()
        return
    if not isinstance(scheduler, LambdaLR):
        raise ConfigError(
            f"{type(scheduler).__name__} cannot take param groups added mid-run; "
            f"use one of: {', '.join(SCHEDULES)}"
        )
    groups = scheduler.optimizer.param_groups
    for group in groups[len(scheduler.lr_lambdas) :]:
        group.setdefault("initial_lr", group["lr"])
        scheduler.lr_lambdas.append(scheduler.lr_lambdas[0])
        scheduler.base_lrs.append(group["initial_lr"])
        group["lr"] = group["initial_lr"] * scheduler.lr_lambdas[0](scheduler.last_epoch)
    scheduler._last_lr = [g["lr"] for g in groups]
