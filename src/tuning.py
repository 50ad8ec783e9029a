"""LR range test before a run: `python -m src.train ... tune.lr_find=true [tune.use_suggestion=true]`."""

from __future__ import annotations

import functools
import logging
import math
import sys
from pathlib import Path

import lightning as L
from omegaconf import DictConfig

log = logging.getLogger(__name__)


def maybe_find_lr(
    cfg: DictConfig,
    trainer: L.Trainer,
    module: L.LightningModule,
    datamodule: L.LightningDataModule,
    resuming: bool,
) -> float | None:
    """Run Lightning's Tuner.lr_find when `tune.lr_find` is set; return the suggested LR."""
    tune = cfg.get("tune") or {}
    if not tune.get("lr_find"):
        return None
    if resuming:
        log.info("tune.lr_find skipped: resuming from a checkpoint keeps the run's LR")
        return None
    from lightning.pytorch.tuner import Tuner

    # Runs on the composed setup (this trainer, its freeze schedule, the configured param
    # groups); Lightning restores the initial weights afterwards. The sweep sets every param
    # group to the same LR, so the suggestion is for the head (`optimizer.lr`).
    num_training = int(tune.get("num_training", 100))
    max_epochs = trainer.fit_loop.max_epochs
    # The test stops after num_training steps, over several epochs if one is shorter; the
    # optimizer setup needs a finite epoch count (estimated_stepping_batches), so not -1.
    needed = math.ceil(num_training / _batches_per_epoch(datamodule))
    trainer.fit_loop.max_epochs = max(max_epochs or 1, needed)
    try:
        finder = Tuner(trainer).lr_find(
            module,
            datamodule=datamodule,
            min_lr=float(tune.get("min_lr", 1e-7)),
            max_lr=float(tune.get("max_lr", 1.0)),
            num_training=num_training,
            update_attr=False,
        )
    finally:
        trainer.fit_loop.max_epochs = max_epochs
    suggestion = finder.suggestion() if finder is not None else None
    plot = Path(cfg.paths.output_dir) / "lr_find.png"
    if finder is not None and trainer.is_global_zero:
        figure = finder.plot(suggest=suggestion is not None)
        plot.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(plot, dpi=100)
    used = bool(tune.get("use_suggestion")) and suggestion is not None
    if suggestion is None:
        message = "lr_find found no suggestion (the loss did not fall); keeping optimizer.lr"
    else:
        message = f"lr_find suggests optimizer.lr={suggestion:.3g} (plot: {plot}); " + (
            "using it" if used else "not used (tune.use_suggestion=false)"
        )
    print(f"ftlab: {message}", file=sys.stderr, flush=True)
    if used:
        set_learning_rate(cfg, module, float(suggestion))
    return suggestion


def _batches_per_epoch(datamodule: L.LightningDataModule) -> int:
    try:
        return max(1, len(datamodule.train_dataloader()))
    except TypeError:  # an iterable dataset has no length: assume the worst, one batch
        return 1


def set_learning_rate(cfg: DictConfig, module: L.LightningModule, lr: float) -> None:
    """The run's head LR becomes `lr`: in the optimizer factory, the stored config and `cfg`."""
    factory = module.optimizer_factory
    keywords = {**factory.keywords, "lr": lr}
    module.optimizer_factory = functools.partial(factory.func, *factory.args, **keywords)
    module.hparams.config["optimizer"]["lr"] = lr  # checkpoints rebuild runs from this
    cfg.optimizer.lr = lr
