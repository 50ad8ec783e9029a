"""Fine-tuning strategies over layer groups, selected by the `finetune=` config group.

- `full`: every layer group and the head train.
- `feature_extraction`: every backbone group frozen and in eval mode (dropout off, BatchNorm's
  pretrained statistics), the head trains; the backbone's features are computed once and cached
  where that is exact (`finetune.feature_cache`, see `src.features`).
- `partial`: the top `trainable_groups` groups and the head train.
- `gradual`: ULMFiT; the head first, then one more group (top down) per milestone epoch.
- `lora`: LoRA adapters (peft, `src.lora`) in a text encoder or an image backbone; only adapters
  and head train.
- `phases`: a list of phases (`src.phases`), each with its groups, epochs, LR, layer-wise decay
  and schedule, e.g. the head alone at 1e-3, then everything at 3e-5 with LLRD.

Every strategy also takes groups by name: `finetune.trainable=[layer4,pooler]` (only these
groups and the head train from the start: under `lora` only their adapters; under `gradual` the
rest then unfreezes top down) and `finetune.frozen=[embeddings]` (never trained). Entries are
group names or globs (`layer1*`); a name the model does not have is an error listing its groups.

What trains when is a Lightning callback from `src.finetune_schedules` (`FreezeSchedule`,
`PhaseSchedule`), which `finetune_callbacks` picks for the strategy.
"""

from __future__ import annotations

import logging
from typing import Any

from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, ListConfig

from src.errors import ConfigError
from src.finetune_schedules import FreezeSchedule, PhaseSchedule
from src.lora import check_lora_config, inject_lora
from src.models.groups import phase_groups, selected_groups
from src.models.networks import Network
from src.phases import phase_list

log = logging.getLogger(__name__)

STRATEGIES = ("full", "feature_extraction", "partial", "gradual", "lora", "phases")
FEATURE_CACHE_VALUES = ("auto", True, False)


# --------------------------------------------------------------------------- config checks


def _strategy(finetune_cfg: DictConfig | None) -> str:
    return str((finetune_cfg or {}).get("strategy", "full"))


def _int_at_least(value: Any, key: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key}={value!r} is invalid: must be an int >= {minimum}")
    return value


def check_finetune_config(finetune_cfg: DictConfig | None, modality: str) -> None:
    """Values that are wrong whatever the network (its group count is checked in prepare_network)."""
    cfg = finetune_cfg or {}
    strategy = _strategy(finetune_cfg)
    if strategy not in STRATEGIES:
        raise ConfigError(f"finetune.strategy={strategy!r}; valid: {', '.join(STRATEGIES)}")
    decay = cfg.get("lr_decay", 1.0)
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not decay > 0:
        raise ConfigError(
            f"finetune.lr_decay={decay!r} is invalid: must be a float > 0 "
            "(1.0: one LR for all groups; 0.8: layer-wise decay; 1/2.6: ULMFiT)"
        )
    feature_cache = feature_cache_setting(finetune_cfg)
    if feature_cache is True and strategy != "feature_extraction":
        raise ConfigError(
            f"finetune.feature_cache=true needs finetune=feature_extraction: with "
            f"finetune={strategy} backbone groups train, so their features change at every step"
        )
    for key in ("trainable", "frozen"):
        _check_group_list(cfg.get(key), f"finetune.{key}")
    if strategy == "feature_extraction" and cfg.get("trainable") is not None:
        raise ConfigError(
            "finetune.trainable with finetune=feature_extraction: feature extraction freezes "
            "every layer group; to train some, use finetune=partial finetune.trainable=[...]"
        )
    if strategy == "phases":
        phase_list(cfg)
    if strategy == "partial" and cfg.get("trainable") is None:
        _int_at_least(cfg.get("trainable_groups"), "finetune.trainable_groups", 0)
    if strategy == "gradual":
        at, every = cfg.get("unfreeze_at"), cfg.get("unfreeze_every")
        if at is None and every is None:
            raise ConfigError(
                "finetune=gradual needs finetune.unfreeze_at=[1,2,3] or finetune.unfreeze_every=N"
            )
        if at is not None:
            if not isinstance(at, (list, ListConfig)) or not at:
                raise ConfigError(
                    f"finetune.unfreeze_at={at!r} must be a non-empty list of epochs, e.g. [1,2,3]"
                )
            for epoch in at:
                _int_at_least(epoch, "finetune.unfreeze_at entry", 0)
        else:
            _int_at_least(every, "finetune.unfreeze_every", 1)
        _int_at_least(cfg.get("groups_per_step", 1), "finetune.groups_per_step", 1)
    if strategy == "lora":
        check_lora_config(cfg)


def _check_group_list(value: Any, key: str) -> None:
    if value is None:
        return
    if not isinstance(value, (list, ListConfig)) or not all(
        isinstance(v, str) and v for v in value
    ):
        raise ConfigError(
            f"{key}={value!r} is invalid: must be a list of layer group names, e.g. "
            f"{key}=[layer4,pooler] (or null)"
        )


def feature_cache_setting(finetune_cfg: DictConfig | None) -> str | bool:
    """`finetune.feature_cache`: "auto" (on where exact), True (demanded) or False; absent: off,
    except for feature_extraction, where it is "auto"."""
    cfg = finetune_cfg or {}
    default = "auto" if _strategy(finetune_cfg) == "feature_extraction" else False
    value = cfg.get("feature_cache", default)
    if value is None:
        return False
    if not any(value is v or (isinstance(v, str) and value == v) for v in FEATURE_CACHE_VALUES):
        raise ConfigError(f"finetune.feature_cache={value!r} is invalid; valid: auto, true, false")
    return value


# --------------------------------------------------------------------------- the network


def prepare_network(network: Network, finetune_cfg: DictConfig | None) -> Network:
    """Check the strategy against the built network; inject LoRA adapters for `lora`.

    Also called when a checkpoint is evaluated, so a LoRA checkpoint's keys find their modules.
    """
    check_finetune_config(finetune_cfg, network.modality)
    strategy = _strategy(finetune_cfg)
    names = network.group_names()
    trainable, frozen = selected_groups(finetune_cfg, names)
    if strategy == "partial" and trainable is None and finetune_cfg.trainable_groups > len(names):
        raise ConfigError(
            f"finetune.trainable_groups={finetune_cfg.trainable_groups} is beyond this model's "
            f"{len(names)} layer groups ({', '.join(names)}); valid: 0..{len(names)}"
        )
    if strategy == "phases":
        for i, phase in enumerate(phase_list(finetune_cfg)):
            phase_groups(phase, i, names, frozen)
    if trainable is not None or frozen:
        log.info(
            "layer groups by name: trainable %s; frozen %s",
            ", ".join([*(trainable if trainable is not None else []), "head"]),
            ", ".join(frozen) or "none",
        )
    if strategy == "lora":
        inject_lora(network, finetune_cfg)
        network.check_groups()  # the adapters too belong to exactly one group (or the head)
    return network


def finetune_callbacks(finetune_cfg: DictConfig | None) -> list[Callback]:
    """The FreezeSchedule for the strategy (for `full` and `lora` it freezes only the groups
    that finetune.trainable / finetune.frozen exclude)."""
    cfg = finetune_cfg or {}
    strategy = _strategy(finetune_cfg)
    by_name = {"trainable": cfg.get("trainable"), "frozen": list(cfg.get("frozen") or [])}
    if strategy == "feature_extraction":
        return [FreezeSchedule(trainable_groups=0, frozen_eval=True, **by_name)]
    if strategy == "partial":
        count = None if by_name["trainable"] is not None else int(cfg.trainable_groups)
        return [FreezeSchedule(trainable_groups=count, **by_name)]
    if strategy == "phases":
        return [PhaseSchedule(phase_list(cfg), frozen=by_name["frozen"])]
    if strategy == "gradual":
        return [
            FreezeSchedule(
                trainable_groups=0,
                milestones=list(cfg.get("unfreeze_at") or []),
                unfreeze_every=None if cfg.get("unfreeze_at") else cfg.get("unfreeze_every"),
                groups_per_step=int(cfg.get("groups_per_step", 1)),
                **by_name,
            )
        ]
    return [FreezeSchedule(trainable_groups=None, **by_name)]
