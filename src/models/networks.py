"""Backbones with a new classification head, each declaring its ordered layer groups.

A network (`src.models.base.Network`) declares its layer groups by parameter-name patterns,
from the input side to the output side, plus its head; building one checks that groups + head
cover every parameter exactly once. Freezing, discriminative learning rates and feature caching
are written once over these groups and so work the same for CNNs, ViTs and text encoders.

- text (transformers encoders): src/models/text.py
- images (torchvision): src/models/vision.py
- the group declarations and their checks: src/models/groups.py
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig

from src.errors import ConfigError
from src.models.base import Network
from src.models.groups import LayerGroup, LayerGroupError
from src.models.text import (
    HF_FEATURE_HEADS,
    HF_GROUP_PATTERNS,
    HFTextNetwork,
    build_hf_network,
    load_tokenizer,
    resolve_pretrained,
)
from src.models.vision import (
    TORCHVISION_ARCHS,
    ImagePreprocessing,
    TorchvisionNetwork,
    build_torchvision_network,
    image_preprocessing,
    torchvision_state_dict,
)

__all__ = [
    "HF_FEATURE_HEADS",
    "HF_GROUP_PATTERNS",
    "TORCHVISION_ARCHS",
    "HFTextNetwork",
    "ImagePreprocessing",
    "LayerGroup",
    "LayerGroupError",
    "Network",
    "TorchvisionNetwork",
    "build_network",
    "build_processor",
    "image_preprocessing",
    "load_tokenizer",
    "resolve_pretrained",
    "torchvision_state_dict",
]


def build_processor(model_cfg: DictConfig) -> Any:
    """What the data side needs from the model: a tokenizer, or image preprocessing."""
    if model_cfg.family == "hf":
        return load_tokenizer(model_cfg)
    return image_preprocessing(model_cfg)


def build_network(
    model_cfg: DictConfig, label_names: Sequence[str], pretrained_weights: bool = True
) -> Network:
    """The backbone with a new head for `label_names`; its layer groups checked to cover every
    parameter exactly once."""
    if model_cfg.family == "hf":
        return build_hf_network(model_cfg, label_names, pretrained_weights)
    if model_cfg.family == "torchvision":
        return build_torchvision_network(model_cfg, len(label_names), pretrained_weights)
    raise ConfigError(f"model.family={model_cfg.family!r}; valid: hf, torchvision")
