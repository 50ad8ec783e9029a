"""LoRA adapters (peft) for `finetune=lora`, in text encoders and image backbones alike.

The adapters go in place (`peft.inject_adapter_in_model`), so the network keeps its layer groups,
its head and its forward; the pretrained weights are frozen and only the adapters and the head
train. What is adapted (`finetune.target_modules`):

- `auto` (the default): the network's own choice. Text encoders: the attention's query and value
  projections under whatever names the architecture gives them (BERT/RoBERTa/ELECTRA `query`,
  `value`; DistilBERT `q_lin`, `v_lin`; DeBERTa-v2 `query_proj`, `value_proj`), as in the LoRA
  paper. ViT: every `nn.MultiheadAttention` (its in- and out-projections). CNNs: every
  convolution with `groups=1` (ResNet's, MobileNet's pointwise and full convolutions).
- a list of layer names (the last part of a module's name, e.g. `[query, value]` or
  `[conv1, conv2]`), or of full module names.

Layers peft's LoRA can adapt: `nn.Linear`, `nn.Conv1d`/`nn.Conv2d` and `nn.MultiheadAttention`,
outside the head. Two kinds are left out, each with a reason in the error when named alone:
grouped (depthwise) convolutions, where peft needs a rank divisible by the groups and cannot
merge; and the `out_proj` of an `nn.MultiheadAttention`, whose forward reads `out_proj.weight`
directly, so an adapter there would be silently skipped (adapt the attention module itself).
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig, ListConfig
from torch import nn

from src.errors import ConfigError

log = logging.getLogger(__name__)

ADAPTABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.MultiheadAttention)
# Text encoders' query and value projections, by architecture: the first pair present is used.
TEXT_ATTENTION_PAIRS = (("query", "value"), ("q_lin", "v_lin"), ("query_proj", "value_proj"))


def check_lora_config(cfg: DictConfig) -> None:
    """rank, alpha, dropout and target_modules, before any model is built."""
    rank = cfg.get("rank")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ConfigError(f"finetune.rank={rank!r} is invalid: must be an int >= 1")
    alpha, dropout = cfg.get("alpha"), cfg.get("dropout", 0.0)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        raise ConfigError(f"finetune.alpha={alpha!r} is invalid: must be a float > 0")
    if not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ConfigError(f"finetune.dropout={dropout!r} is invalid: must be in [0, 1)")
    targets = cfg.get("target_modules", "auto")
    if targets == "auto":
        return
    if (
        not isinstance(targets, (list, ListConfig))
        or not targets
        or not all(isinstance(t, str) and t for t in targets)
    ):
        raise ConfigError(
            f"finetune.target_modules={targets!r} must be auto or a non-empty list of layer "
            "names, e.g. [query,value]"
        )


def adaptable_modules(network: Any) -> dict[str, nn.Module]:
    """Full name (under `network.model`) -> module, for every layer LoRA can adapt outside the
    head, in model order (see the module docstring for what is left out)."""
    head = head_module_ids(network)
    skipped = {
        id(m.out_proj) for m in network.model.modules() if isinstance(m, nn.MultiheadAttention)
    }
    return {
        name: m
        for name, m in network.model.named_modules()
        if name
        and isinstance(m, ADAPTABLE)
        and id(m) not in head
        and id(m) not in skipped
        and getattr(m, "groups", 1) == 1
    }


def head_module_ids(network: Any) -> set[int]:
    """The head's modules (and their submodules): they train whole, never through adapters."""
    return {id(m) for h in network.head_modules() for m in h.modules()}


def resolve_targets(network: Any, targets: Any) -> list[str]:
    """The full module names to adapt for `finetune.target_modules` (see the module docstring)."""
    modules = adaptable_modules(network)
    if targets == "auto":
        return auto_targets(network, modules)
    chosen: list[str] = []
    for target in [str(t) for t in targets]:
        hits = [n for n in modules if n == target or n.rsplit(".", 1)[-1] == target]
        if not hits:
            raise ConfigError(_not_adaptable(network, target, modules))
        chosen += [n for n in hits if n not in chosen]
    return [n for n in modules if n in chosen]  # model order


def auto_targets(network: Any, modules: dict[str, nn.Module]) -> list[str]:
    """`target_modules: auto`: attention's query/value (text), the attention modules (ViT), the
    ungrouped convolutions (CNNs)."""
    leaf = {n: n.rsplit(".", 1)[-1] for n in modules}
    if network.modality == "text":
        for pair in TEXT_ATTENTION_PAIRS:
            if all(name in leaf.values() for name in pair):
                return [n for n in modules if leaf[n] in pair]
    else:
        attention = [n for n, m in modules.items() if isinstance(m, nn.MultiheadAttention)]
        convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)]
        if attention or convs:
            return attention or convs
    raise ConfigError(
        f"finetune.target_modules=auto knows no default for this {network.modality} model; "
        f"name its layers, valid: {', '.join(leaf_names(modules))}"
    )


def leaf_names(modules: dict[str, nn.Module]) -> list[str]:
    """How to name these layers to a user: by their last name part (query, value, out_proj), or
    by full name where last parts are indices (torchvision's Sequential stages: features.1.conv.0.0)."""
    leaves = sorted({n.rsplit(".", 1)[-1] for n in modules})
    return list(modules) if any(leaf.isdigit() for leaf in leaves) else leaves


def listed(names: list[str], most: int = 12) -> str:
    """`names` joined, the first `most` of them and how many more."""
    more = len(names) - most
    return ", ".join(names[:most]) + (f" and {more} more" if more > 0 else "")


def _not_adaptable(network: Any, target: str, modules: dict[str, nn.Module]) -> str:
    everything = dict(network.model.named_modules())
    named = [n for n in everything if n and (n == target or n.rsplit(".", 1)[-1] == target)]
    why = "not a layer of this model"
    if named:
        m = everything[named[0]]
        if any(
            isinstance(p, nn.MultiheadAttention) and p.out_proj is m for p in everything.values()
        ):
            why = (
                "the out_proj of an nn.MultiheadAttention, whose forward reads its weight directly "
                "(an adapter there would be skipped); name the attention module instead"
            )
        elif getattr(m, "groups", 1) != 1:
            why = f"a grouped convolution (groups={m.groups}), which LoRA here does not adapt"
        elif id(m) in head_module_ids(network):
            why = "in the head, which trains whole"
        else:
            why = f"a {type(m).__name__}, which LoRA does not adapt"
    return f"finetune.target_modules has {[target]}: {why}; valid: {', '.join(leaf_names(modules))}"


def inject_lora(network: Any, finetune_cfg: DictConfig) -> None:
    """LoRA adapters in place (peft), so the network keeps its layer groups; base weights frozen."""
    from peft import LoraConfig, inject_adapter_in_model

    targets = resolve_targets(network, finetune_cfg.get("target_modules", "auto"))
    config = LoraConfig(
        r=int(finetune_cfg.rank),
        lora_alpha=float(finetune_cfg.alpha),
        lora_dropout=float(finetune_cfg.get("dropout", 0.0)),
        target_modules=targets,
        bias="none",
    )
    inject_adapter_in_model(config, network.model)
    # peft freezes everything but the adapters; the new classification head must train too.
    for p in network.head_parameters():
        p.requires_grad_(True)
    params = list(network.parameters())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    log.info(
        "lora: adapters on %d layers (%s); %s trainable of %s parameters (adapters + head)",
        len(targets),
        listed(leaf_names(dict.fromkeys(targets))),
        f"{trainable:,}",
        f"{sum(p.numel() for p in params):,}",
    )
