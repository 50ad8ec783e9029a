"""`Network`: the base class of every backbone with a classification head.

A network declares its layer groups by parameter-name patterns (`group_patterns()`, see
src/models/groups.py) and its head (`head_modules()`). `layer_groups()` gives the groups as
modules, input side first; building a network (`check_groups()`) fails on any parameter that
the groups and the head do not cover exactly once. Freezing, discriminative learning rates and
feature caching are written once over these groups, so they work the same for every backbone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from src.models.groups import (
    GroupPatterns,
    LayerGroup,
    LayerGroupError,
    declared_groups,
    module_view,
)


class Network(nn.Module):
    """Base class: `forward(batch) -> logits`, plus the structure fine-tuning techniques need.

    The frozen part (everything but the head) and the head can also run apart:
    `head_forward(features(batch)) == forward(batch)`, and `forward` takes a batch holding
    `"features"` (the frozen part's output, e.g. from the feature cache) instead of raw inputs.
    """

    modality: str

    # -- layer groups

    def group_patterns(self) -> GroupPatterns:
        """(group name or `name{}` template, parameter-name regex), input side first."""
        raise NotImplementedError

    def head_modules(self) -> list[nn.Module]:
        raise NotImplementedError

    def group_parameters(self) -> list[tuple[str, list[tuple[str, nn.Parameter]]]]:
        """Each group's named parameters, input side first (raises LayerGroupError when groups
        and head do not cover every parameter exactly once)."""
        return declared_groups(self, self.group_patterns(), self.head_modules())

    def layer_groups(self) -> list[LayerGroup]:
        """Backbone groups as (name, modules), input side first; the modules hold exactly the
        group's parameters. Recomputed when the parameters change (LoRA adapters, a dropped
        pooler)."""
        key = tuple((name, id(p)) for name, p in self.named_parameters())
        cached = self.__dict__.get("_layer_groups")
        if cached is None or cached[0] != key:
            cached = (key, module_view(self, self.group_parameters()))
            self.__dict__["_layer_groups"] = cached
        return cached[1]

    def group_names(self) -> list[str]:
        return [name for name, _ in self.layer_groups()]

    def check_groups(self) -> Network:
        """Fail (one line naming the parameters) unless groups + head cover every parameter
        exactly once; called whenever a network is built."""
        self.layer_groups()
        return self

    def head_parameters(self) -> Iterator[nn.Parameter]:
        return (p for m in self.head_modules() for p in m.parameters())

    # -- the frozen part and the head apart (feature extraction's feature cache)

    def features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The frozen part's output for `batch`: exactly the head's input, one row per example."""
        raise NotImplementedError

    def head_forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from `features()`'s output: the rest of `forward`."""
        raise NotImplementedError

    def feature_cache_blocker(self) -> str | None:
        """Why `features()` cannot stand in for the frozen part of this network (None: it can).

        Every parameter outside the head must be in a layer group, so that feature extraction
        freezes all of what `features()` computes.
        """
        try:
            self.layer_groups()
        except LayerGroupError as e:
            return str(e)
        return None

    def feature_identity(self) -> dict[str, Any]:
        """What decides `features()`' output: the architecture and the frozen part's weights."""
        return {"network": type(self).__name__, "frozen_state": self.frozen_state_digest()}

    def frozen_state_digest(self) -> str:
        """sha256 of the parameters and buffers outside the head (different weights: new key)."""
        head = {id(t) for m in self.head_modules() for t in (*m.parameters(), *m.buffers())}
        digest = hashlib.sha256()
        for name, t in (*self.named_parameters(), *self.named_buffers()):
            if id(t) in head:
                continue
            t = t.detach().cpu().contiguous()
            digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()
