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
