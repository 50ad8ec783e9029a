"""The search space: Hydra sweep syntax or explicit dicts -> Optuna distributions -> overrides.

Two spellings, usable side by side in `hydra.sweeper.params` (and sweep syntax on the command line):

    optimizer.lr: tag(log, interval(1e-5, 1e-3))   # float, log-uniform
    finetune.lr_decay: interval(0.6, 1.0)           # float, uniform
    trainer.max_epochs: range(1, 4)                 # int 1, 2 or 3 (Python's range: stop excluded)
    data.batch_size: choice(16, 32, 64)             # categorical
    optimizer.weight_decay: {type: float, low: 1e-4, high: 0.1, log: true}
    scheduler.warmup: {type: categorical, choices: [0, 0.06, 0.1]}
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from src.errors import ConfigError

SearchSpace = dict[str, BaseDistribution]


def distribution_from_sweep(key: str, sweep: Any) -> BaseDistribution:
    """One Hydra sweep value (choice / range / interval, optionally tagged `log`) as a distribution."""
    log = "log" in getattr(sweep, "tags", set())
    if isinstance(sweep, ChoiceSweep):
        return CategoricalDistribution([_plain(v) for v in sweep.list])
    if isinstance(sweep, RangeSweep):
        values = list(sweep.range())
        if not values:
            raise ConfigError(f"hydra.sweeper.params.{key}: the range is empty")
        if all(isinstance(v, int) for v in (sweep.start, sweep.stop, sweep.step)):
            return IntDistribution(
                int(values[0]), int(values[-1]), step=1 if log else int(sweep.step), log=log
            )
        return FloatDistribution(
            float(values[0]), float(values[-1]), step=None if log else float(sweep.step), log=log
        )
    if isinstance(sweep, IntervalSweep):
        return FloatDistribution(float(sweep.start), float(sweep.end), log=log)
    raise ConfigError(
        f"hydra.sweeper.params.{key}={sweep!r}: use choice(...), range(...), interval(...) or a dict"
    )


def distribution_from_dict(key: str, spec: Mapping[str, Any]) -> BaseDistribution:
    """`{type: float|int|categorical, low, high, log, step, choices}` as a distribution."""
    kind = spec.get("type")
    try:
        if kind == "categorical":
            return CategoricalDistribution([_plain(v) for v in spec["choices"]])
        if kind == "float":
            return FloatDistribution(
                float(spec["low"]),
                float(spec["high"]),
                log=bool(spec.get("log", False)),
                step=spec.get("step"),
            )
        if kind == "int":
            return IntDistribution(
                int(spec["low"]),
                int(spec["high"]),
                log=bool(spec.get("log", False)),
                step=int(spec.get("step", 1)),
            )
    except (KeyError, ValueError, TypeError) as e:
        raise ConfigError(f"hydra.sweeper.params.{key}={dict(spec)}: {e}") from None
    raise ConfigError(
        f"hydra.sweeper.params.{key}: type={kind!r} is invalid: choose float, int or categorical"
    )


def parse_params(params: Mapping[str, Any] | None) -> SearchSpace:
    """`hydra.sweeper.params` (strings in sweep syntax, or dicts) as a search space."""
    space: SearchSpace = {}
    for key, value in (params or {}).items():
        if isinstance(value, Mapping):
            space[str(key)] = distribution_from_dict(str(key), value)
            continue
        override = _parse_one(f"{key}={value}")
        if not override.is_sweep_override():
            raise ConfigError(
                f"hydra.sweeper.params.{key}={value!r} is a single value, not a search range: use choice(...), range(...) or interval(...)"
            )
        space[str(key)] = distribution_from_sweep(str(key), override.value())
    return space


def split_arguments(arguments: list[str]) -> tuple[list[str], SearchSpace]:
    """Command-line overrides -> (plain overrides passed to every trial, sweep overrides as a space)."""
    plain: list[str] = []
    space: SearchSpace = {}
    for line in arguments:
        override = _parse_one(line)
        if override.is_sweep_override():
            space[override.get_key_element()] = distribution_from_sweep(
                override.get_key_element(), override.value()
            )
        else:
            plain.append(line)
    return plain, space


def override_key(line: str) -> str:
    """`optimizer.lr` for `optimizer.lr=1e-3`, `+x.y` / `++x.y` / `~x.y` stripped of their prefix."""
    return _parse_one(line).key_or_group


def to_overrides(params: Mapping[str, Any]) -> list[str]:
    """A trial's sampled values as Hydra command-line overrides."""
    return [f"{key}={format_value(value)}" for key, value in params.items()]


def format_value(value: Any) -> str:
    """A Python value as Hydra override grammar reads it back unchanged."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return {True: "nan"}.get(math.isnan(value), "inf" if value > 0 else "-inf")
        return repr(value)  # shortest round-trip form, e.g. 3.2e-05
    text = str(value)
    if re.fullmatch(r"[A-Za-z_][\w\-./]*", text) and text.lower() not in (
        "null",
        "true",
        "false",
        "nan",
        "inf",
    ):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _parse_one(line: str) -> Override:
    try:
        return OverridesParser.create().parse_overrides([line])[0]
    except Exception as e:  # hydra's grammar errors are long; keep the one useful line
        raise ConfigError(f"cannot parse override {line!r}: {str(e).splitlines()[0]}") from None


def _plain(value: Any) -> Any:
    """Optuna categoricals take None/bool/int/float/str only."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
