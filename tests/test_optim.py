"""LR schedules: per-step warmup then decay, warmup as a fraction or a step count."""

from __future__ import annotations

import pytest
import torch

from src.errors import ConfigError
from src.optim import build_scheduler, warmup_steps


def lrs(name: str, warmup: float, total: int) -> list[float]:
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    sched = build_scheduler(name, opt, warmup, total)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_warmup_fraction_and_steps() -> None:
    assert warmup_steps(0.1, 100) == 10
    assert warmup_steps(7, 100) == 7
    with pytest.raises(ConfigError):
        warmup_steps(-1, 100)


def test_linear_warmup_then_linear_decay() -> None:
    values = lrs("linear", 0.1, 100)
    assert values[0] == 0.0
    assert values[5] == pytest.approx(0.5)
    assert values[10] == pytest.approx(1.0)
    assert values[55] == pytest.approx(0.5)
    assert values[-1] == pytest.approx(1 / 90)


def test_cosine_halfway_is_half() -> None:
    values = lrs("cosine", 0, 100)
    assert values[0] == pytest.approx(1.0)
    assert values[50] == pytest.approx(0.5)


def test_constant_after_warmup() -> None:
    values = lrs("constant", 4, 20)
    assert values[2] == pytest.approx(0.5)
    assert set(values[4:]) == {1.0}


def test_unknown_schedule_lists_choices() -> None:
    with pytest.raises(ConfigError, match="constant, linear, cosine"):
        lrs("triangle", 0, 10)


@pytest.mark.parametrize("precision", ["bf16-mixed", "32-true"])
def test_fused_adamw_trains_and_clips_under_mixed_and_full_precision(
    precision: str, tmp_path, monkeypatch
) -> None:
    """The default optimizer is fused AdamW; Lightning's AMP plugin refuses to clip for fused
    optimizers, so the Classifier clips itself when there is no GradScaler."""
    from functools import partial

    import lightning as L
    from omegaconf import OmegaConf

    from src.models.classifier import Classifier
    from src.models.networks import build_network

    arch = {"name": "resnet18", "family": "torchvision", "arch": "resnet18", "weights": None}
    network = build_network(OmegaConf.create(arch), ["a", "b"])
    module = Classifier(
        network=network,
        label_names=["a", "b"],
        optimizer=partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.01, fused=True),
        scheduler={"name": "constant", "warmup": 0},
    )
    clipped: list[float] = []
    real_clip = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *args, **kwargs):
        params = list(params)
        total = real_clip(params, max_norm, *args, **kwargs)
        after = torch.norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
        clipped.append(float(after))
        return total

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    g = torch.Generator().manual_seed(0)
    data = [
        {"pixel_values": torch.randn(3, 32, 32, generator=g), "labels": i % 2} for i in range(16)
    ]
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        accelerator="cpu",
        precision=precision,
        max_steps=2,
        gradient_clip_val=1e-3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(data, batch_size=8))
    assert trainer.global_step == 2
    assert len(clipped) == 2 and all(n <= 1e-3 * 1.01 for n in clipped), clipped
