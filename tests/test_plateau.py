"""scheduler=plateau: ReduceLROnPlateau on the monitored metric, stepped per epoch; it scales the
discriminative LRs of finetune=gradual (groups unfrozen later join at the reduced scale) and
starts afresh in each plateau phase of finetune=phases."""

from __future__ import annotations

from functools import partial

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from src.checks import check_scheduler
from src.errors import ConfigError
from src.finetune import finetune_callbacks, prepare_network
from src.models.classifier import Classifier
from src.optim import PlateauScale
from tests.test_finetune import BERT_TOP_DOWN, LABELS, LR, TokenData, bert, finetune_cfg
from tests.test_phases import phases_cfg

PLATEAU = {"name": "plateau", "monitor": "val/flat", "mode": "max", "factor": 0.5}


class FlatClassifier(Classifier):
    """Logs val/flat, a metric that never improves after its first value."""

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        self.log("val/flat", 0.5)


class EpochLRs(Callback):
    """Each param group's LR at every step, and whether every step of an epoch had the same LRs."""

    def __init__(self) -> None:
        self.at: dict[int, list[dict[str, float]]] = {}

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        groups = trainer.optimizers[0].param_groups
        self.at.setdefault(trainer.current_epoch, []).append({g["name"]: g["lr"] for g in groups})

    def epoch(self, epoch: int) -> dict[str, float]:
        steps = self.at[epoch]
        assert all(s == steps[0] for s in steps), f"LRs changed within epoch {epoch}"
        return steps[0]


def fit_flat(network, finetune, scheduler: dict, epochs: int, tmp_path) -> EpochLRs:
    module = FlatClassifier(
        network=prepare_network(network, finetune),
        label_names=LABELS,
        optimizer=partial(torch.optim.AdamW, lr=LR, weight_decay=0.01),
        scheduler=scheduler,
        lr_decay=float(finetune.get("lr_decay", 1.0)),
        config={"monitor": "val/acc", "mode": "max"},
    )
    probe = EpochLRs()
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[*finetune_callbacks(finetune), probe],
    )
    L.seed_everything(0, verbose=False)
    data = DataLoader(TokenData(), batch_size=8)
    trainer.fit(
        module, train_dataloaders=data, val_dataloaders=DataLoader(TokenData(), batch_size=8)
    )
    configs = trainer.lr_scheduler_configs
    assert isinstance(configs[0].scheduler, PlateauScale) and configs[0].interval == "epoch"
    return probe


def test_plateau_with_gradual_scales_every_group_after_patience_epochs(tiny_bert, tmp_path):
    finetune = finetune_cfg("gradual", unfreeze_every=1, lr_decay=0.5)
    probe = fit_flat(bert(tiny_bert), finetune, {**PLATEAU, "patience": 1}, 6, tmp_path)
    # val/flat: epoch 0 sets the best; epochs 1, 2 do not improve -> more than patience=1 bad
    # epochs at the end of epoch 2: x0.5; again at the end of epoch 4 (bad epochs 3, 4)
    scale = [1, 1, 1, 0.5, 0.5, 0.25]
    depth = {"head": 0, **{name: d for d, name in enumerate(BERT_TOP_DOWN, start=1)}}
    for epoch in range(6):
        lrs = probe.epoch(epoch)
        unfrozen = {"head", *BERT_TOP_DOWN[:epoch]}  # one more group per epoch, top down
        assert {n.removesuffix("/no_decay") for n in lrs} == unfrozen, epoch
        for name, lr in lrs.items():
            expected = LR * 0.5 ** depth[name.removesuffix("/no_decay")] * scale[epoch]
            assert lr == pytest.approx(expected, rel=1e-6), (epoch, name)


def test_plateau_phase_starts_at_its_lr_with_a_fresh_plateau(tiny_bert, tmp_path) -> None:
    phases = [
        {"trainable": [], "epochs": 2, "lr": 1e-2, "schedule": "plateau"},
        {"trainable": "all", "epochs": 3, "lr": 1e-3, "lr_decay": 0.5},  # run's scheduler: plateau
    ]
    probe = fit_flat(bert(tiny_bert), phases_cfg(phases), {**PLATEAU, "patience": 0}, 5, tmp_path)
    head = [probe.epoch(e)["head"] for e in range(5)]
    # phase 0: best at epoch 0, epoch 1 is bad -> x0.5 at its end (phase 1 starts then anyway);
    # phase 1: its own lr, a fresh best at epoch 2, epoch 3 is bad -> x0.5 from epoch 4
    assert head == pytest.approx([1e-2, 1e-2, 1e-3, 1e-3, 5e-4])
    assert probe.epoch(4)["pooler"] == pytest.approx(5e-4 * 0.5)  # decay ratios kept


def test_plateau_phase_after_a_per_step_phase(tiny_bert, tmp_path) -> None:
    """The Lightning scheduler config follows the phase: per step (linear), then per epoch."""
    phases = [
        {"trainable": [], "epochs": 1, "lr": 1e-2, "schedule": "linear", "warmup": 0},
        {"trainable": "all", "epochs": 3, "lr": 1e-3},
    ]
    probe = fit_flat(bert(tiny_bert), phases_cfg(phases), {**PLATEAU, "patience": 0}, 4, tmp_path)
    assert [s["head"] for s in probe.at[0]] == pytest.approx([1e-2, 1e-2 * 2 / 3, 1e-2 / 3])
    assert [probe.epoch(e)["head"] for e in (1, 2, 3)] == pytest.approx([1e-3, 1e-3, 5e-4])


@pytest.mark.parametrize(
    "values,message",
    [
        ({"factor": 1.5}, r"scheduler.factor=1.5 is invalid: must be a float in \(0, 1\)"),
        ({"patience": -1}, r"scheduler.patience=-1 is invalid"),
        ({"monitor": "val/nope"}, r"scheduler.monitor='val/nope'; valid: val/acc"),
        ({"warmup": 0.1}, r"scheduler.warmup is not a setting of scheduler=plateau"),
        ({"name": "sometimes"}, r"scheduler.name='sometimes'; valid: .*plateau"),
    ],
)
def test_bad_plateau_settings_are_one_line(values, message) -> None:
    sched = OmegaConf.create({**PLATEAU, "monitor": "val/acc", "patience": 2, **values})
    with pytest.raises(ConfigError, match=message):
        check_scheduler(sched, ("val/acc", "val/loss"))


def test_plateau_config_composes_on_the_monitor() -> None:
    from tests.test_configs import compose_train

    cfg = compose_train("scheduler=plateau", "monitor=val/loss", "mode=min")
    assert cfg.scheduler.monitor == "val/loss" and cfg.scheduler.mode == "min"
    check_scheduler(cfg.scheduler, ("val/acc", "val/loss"))
