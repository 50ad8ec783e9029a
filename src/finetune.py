"""Fine-tuning strategies over layer groups, selected by the `finetune=` config group."""

from __future__ import annotations

from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig

from src.errors import ConfigError
from src.models.networks import Network

STRATEGIES = ("full",)


def prepare_network(network: Network, finetune_cfg: DictConfig | None) -> Network:
    """Changes a strategy makes to the network before training (e.g. adapters)."""
    strategy = (finetune_cfg or {}).get("strategy", "full")
    if strategy not in STRATEGIES:
        raise ConfigError(f"finetune.strategy={strategy!r}; valid: {', '.join(STRATEGIES)}")
    return network


def finetune_callbacks(finetune_cfg: DictConfig | None) -> list[Callback]:
    """Callbacks that freeze / unfreeze layer groups during training (none for `full`)."""
    return []
