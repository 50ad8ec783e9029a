"""The sampler and the pruner: built from their configs with one-line errors, and the pruner's
resource matched to what a trial reports.

Both are config groups (`conf/hydra/sweeper/{sampler,pruner}/`), so `hydra/sweeper/pruner=median`
switches the pruner whole. Setting `hydra.sweeper.pruner._target_=...` instead merges the new class
with the old one's arguments; that is reported as one line naming the arguments and the groups.

A trial reports after every validation, with step = the number of validations done (1 after the
first epoch), or after every fold of a cross-validated trial (step = folds done). So a pruner's
`min_resource: 1` / `n_warmup_steps: 1` means "the first cut after the first epoch".
"""

from __future__ import annotations

import math
from typing import Any

from omegaconf import DictConfig, OmegaConf

from src import PROJECT_ROOT
from src.errors import ConfigError

GROUPS_DIR = PROJECT_ROOT / "conf" / "hydra" / "sweeper"


def group_options(kind: str) -> list[str]:
    """The shipped options of `hydra/sweeper/<kind>` (sampler or pruner)."""
    return sorted(p.stem for p in (GROUPS_DIR / kind).glob("*.yaml"))


def build(kind: str, spec: dict[str, Any]) -> Any:
    """An optuna sampler or pruner from `{_target_: ..., **kwargs}`; ConfigError on a bad spec."""
    import optuna
    from hydra.utils import instantiate

    base = {"sampler": optuna.samplers.BaseSampler, "pruner": optuna.pruners.BasePruner}[kind]
    target = spec.get("_target_")
    args = ", ".join(f"{k}={v!r}" for k, v in spec.items() if k != "_target_")
    switch = f"switch it whole with hydra/sweeper/{kind}=NAME ({', '.join(group_options(kind))})"
    if not target:
        raise ConfigError(f"hydra.sweeper.{kind} has no _target_ ({args}): {switch}")
    try:
        obj = instantiate(spec)
    except Exception as e:
        cause = str(e.__cause__ or e).strip().splitlines()[-1]
        raise ConfigError(
            f"hydra.sweeper.{kind}: {target}({args}) cannot be built: {cause}; {switch}"
        ) from None
    if not isinstance(obj, base):
        raise ConfigError(f"hydra.sweeper.{kind}: {target} is not an optuna {kind}; {switch}")
    return obj


def build_pruner(spec: dict[str, Any] | None):
    """The pruner of `spec`; null -> NopPruner (no pruning)."""
    import optuna

    return build("pruner", spec) if spec else optuna.pruners.NopPruner()


def reports_per_trial(cfg: DictConfig, space: dict[str, Any]) -> int:
    """The most steps a trial reports: its folds when it cross-validates, else its validations
    (the largest `trainer.max_epochs` searched or set, per `check_val_every_n_epoch` and
    `val_check_interval`)."""
    folds = OmegaConf.select(cfg, "cv.folds", default=None)
    if folds:
        return int(folds)
    dist = space.get("trainer.max_epochs")
    if dist is not None and hasattr(dist, "high"):
        epochs = int(dist.high)
    elif dist is not None and hasattr(dist, "choices"):
        epochs = max(int(c) for c in dist.choices)
    else:
        epochs = int(OmegaConf.select(cfg, "trainer.max_epochs", default=1) or 1)
    every = int(OmegaConf.select(cfg, "trainer.check_val_every_n_epoch", default=1) or 1)
    interval = OmegaConf.select(cfg, "trainer.val_check_interval", default=1.0)
    per_epoch = math.ceil(1 / interval) if isinstance(interval, float) and interval < 1 else 1
    return max(1, epochs // every * per_epoch)


def resolve_resource(
    spec: dict[str, Any] | None, cfg: DictConfig, space: dict[str, Any]
) -> dict[str, Any] | None:
    """Hyperband's `max_resource: auto` as the steps a trial reports at most. (Optuna's own `auto`
    takes the steps of the first trial to finish, which is a short one when epochs are searched:
    then every bracket collapses to a single rung.)"""
    if not spec or spec.get("max_resource") != "auto":
        return spec
    return {**spec, "max_resource": reports_per_trial(cfg, space)}


def describe(spec: dict[str, Any] | None) -> str:
    """`HyperbandPruner(min_resource=1, max_resource=4)` for the log."""
    if not spec:
        return "none"
    name = str(spec.get("_target_", "?")).rsplit(".", 1)[-1]
    return f"{name}({', '.join(f'{k}={v}' for k, v in spec.items() if k != '_target_')})"
