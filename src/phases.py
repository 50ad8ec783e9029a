"""The phase list of `finetune=phases`, read and checked without torch (so a bad spec is one line
in about a second, before any model loads).

A phase is a mapping: `epochs` (int >= 1), `trainable` (`all` / null: every layer group; `[]`:
the head only; else group names or globs), and optionally `lr` (default `optimizer.lr`),
`lr_decay` (default `finetune.lr_decay`), `schedule` (default `scheduler.name`) and `warmup`
(default `scheduler.warmup`, a fraction of the phase's steps or a number of steps). Group names
are resolved against the model in `src.finetune` (a name it lacks lists its groups).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from src.errors import ConfigError

PHASE_KEYS = ("epochs", "trainable", "lr", "lr_decay", "schedule", "warmup")
# = src.optim.SCHEDULES (no torch here)
SCHEDULES = ("constant", "linear", "cosine", "one_cycle", "plateau")
EXAMPLE = "e.g. finetune.phases=[{trainable:[],epochs:1,lr:1e-3},{trainable:all,epochs:2,lr:3e-5}]"


def _number(value: Any, key: str, minimum: float, strict: bool = True) -> None:
    bad = isinstance(value, bool) or not isinstance(value, (int, float))
    if bad or (value <= minimum if strict else value < minimum):
        bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
        raise ConfigError(f"{key}={value!r} is invalid: must be a number {bound}")


def phase_list(finetune_cfg: Mapping | None) -> list[dict[str, Any]]:
    """`finetune.phases` as plain dicts, each key checked (not yet against the model's groups)."""
    cfg = finetune_cfg or {}
    phases = cfg.get("phases")
    if isinstance(phases, (ListConfig, DictConfig)):
        phases = OmegaConf.to_container(phases, resolve=True)
    if not isinstance(phases, list) or not phases:
        raise ConfigError(
            f"finetune.phases={phases!r} must be a non-empty list of phases; {EXAMPLE}"
        )
    for key in ("trainable", "trainable_groups", "unfreeze_at", "unfreeze_every"):
        if cfg.get(key) is not None:
            raise ConfigError(
                f"finetune.{key} does not apply to finetune=phases: each phase names its groups "
                f"(finetune.phases[i].trainable); finetune.frozen keeps groups out of every phase"
            )
    out = []
    for i, phase in enumerate(phases):
        at = f"finetune.phases[{i}]"
        if not isinstance(phase, dict):
            raise ConfigError(f"{at}={phase!r} must be a mapping with keys {', '.join(PHASE_KEYS)}")
        unknown = [k for k in phase if k not in PHASE_KEYS]
        if unknown:
            raise ConfigError(
                f"{at}.{unknown[0]} is not a phase setting; valid: {', '.join(PHASE_KEYS)}"
            )
        epochs = phase.get("epochs")
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ConfigError(f"{at}.epochs={epochs!r} is invalid: must be an int >= 1")
        trainable = phase.get("trainable", "all")
        if (
            trainable is not None
            and trainable != "all"
            and not (
                isinstance(trainable, list) and all(isinstance(t, str) and t for t in trainable)
            )
        ):
            raise ConfigError(
                f"{at}.trainable={trainable!r} is invalid: `all`, [] (the head only) or a list of "
                "layer group names or globs, e.g. [layer4,pooler] or [layer1*]"
            )
        for key in ("lr", "lr_decay"):
            if phase.get(key) is not None:
                _number(phase[key], f"{at}.{key}", 0.0)
        schedule = phase.get("schedule")
        if schedule is not None and schedule not in SCHEDULES:
            raise ConfigError(f"{at}.schedule={schedule!r}; valid: {', '.join(SCHEDULES)}")
        if phase.get("warmup") is not None:
            _number(phase["warmup"], f"{at}.warmup", 0.0, strict=False)
        out.append({**phase, "trainable": None if trainable == "all" else trainable})
    if all(p["trainable"] == [] for p in out):
        raise ConfigError(
            "finetune.phases: no phase trains a layer group (every trainable is []): that is "
            "finetune=feature_extraction, which also caches the frozen backbone's features"
        )
    return out


def check_phases_run(cfg: DictConfig) -> None:
    """The phase list against the rest of the run's config: epochs, LR finder."""
    phases = phase_list(cfg.get("finetune"))
    epochs = [p["epochs"] for p in phases]
    max_epochs = cfg.trainer.get("max_epochs")
    if sum(epochs) != max_epochs:
        raise ConfigError(
            f"finetune.phases last {' + '.join(map(str, epochs))} = {sum(epochs)} epochs but "
            f"trainer.max_epochs={max_epochs}; set trainer.max_epochs={sum(epochs)} (or change "
            "the phases' epochs)"
        )
    if (cfg.get("tune") or {}).get("lr_find"):
        raise ConfigError(
            "tune.lr_find with finetune=phases: each phase sets its own lr "
            "(finetune.phases[i].lr); run the range test with finetune=full"
        )
