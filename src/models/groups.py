"""Layer groups declared by parameter-name patterns (as timm's `group_matcher`), and checked.

A backbone declares its groups as an ordered list of `(name, pattern)`: `pattern` is a regular
expression matched at the start of a parameter's name (as `named_parameters()` gives it), and
`name` is the group's name, or a template whose `{}` takes the number the pattern captures
(`("layer{}", r"model\\.encoder\\.layer\\.(\\d+)\\.")` gives layer0, layer1, ...). Groups are
ordered input side first: by the declaration they first come from, then by that number. Several
declarations may feed one group (DeBERTa's relative position table joins `embeddings`).

`declared_groups` checks that groups + head cover every parameter exactly once, so a bare
`nn.Parameter` outside the listed modules (ViT's `class_token`) is an error naming it, instead
of silently training as part of the head. `module_view` turns a group's parameters into the
modules the freezing code acts on: the largest submodules wholly inside the group (their
train/eval mode, BatchNorm), plus one holder for bare parameters of modules the group shares.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase
from typing import Any

from torch import nn

from src.errors import ConfigError

GroupPatterns = Sequence[tuple[str, str]]
LayerGroup = tuple[str, tuple[nn.Module, ...]]
GLOB_CHARS = "*?["


class LayerGroupError(ConfigError):
    """A backbone's declared groups and its head do not cover every parameter exactly once."""


def _names(names: Sequence[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def declared_groups(
    network: nn.Module, patterns: GroupPatterns, head: Sequence[nn.Module]
) -> list[tuple[str, list[tuple[str, nn.Parameter]]]]:
    """The groups `patterns` declare over `network`'s parameters, input side first.

    Raises LayerGroupError when a parameter is in no group and not in the head, or in more than
    one of them (two groups, or a group and the head).
    """
    compiled = [(template, re.compile(pattern)) for template, pattern in patterns]
    head_ids = {id(p) for m in head for p in m.parameters()}
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {}
    position: dict[str, tuple] = {}
    loose, doubled = [], []
    for name, param in network.named_parameters():
        hits = []
        for index, (template, regex) in enumerate(compiled):
            match = regex.match(name)
            if match is None:
                continue
            captured = [c for c in match.groups() if c is not None]
            group = template.format(*captured) if "{" in template else template
            hits.append(group)
            numbers = tuple(int(c) for c in captured if c.isdigit())
            position[group] = min(position.get(group, (index, numbers)), (index, numbers))
        owners = set(hits) | ({"head"} if id(param) in head_ids else set())
        if not owners:
            loose.append(name)
        elif len(owners) > 1:
            doubled.append(f"{name} ({' + '.join(sorted(owners))})")
        if hits:
            groups.setdefault(hits[0], []).append((name, param))
    if loose or doubled:
        what = type(getattr(network, "model", network)).__name__
        problems = []
        if loose:
            problems.append(f"{len(loose)} in no layer group nor the head: {_names(loose)}")
        if doubled:
            problems.append(f"{len(doubled)} in more than one: {_names(doubled)}")
        raise LayerGroupError(
            f"the layer groups of {what} do not cover every parameter exactly once ("
            f"{'; '.join(problems)}); declare them in the backbone's group patterns "
            "(src/models/text.py, src/models/vision.py)"
        )
    return sorted(groups.items(), key=lambda item: position[item[0]])


class GroupParameters(nn.Module):
    """A group's bare parameters whose module is shared with other groups (ViT's `class_token`
    on the whole model), held so that code acting on a group's modules reaches them too. Not a
    submodule of the network: the parameters are registered here as well, not moved."""

    def __init__(self, params: Sequence[tuple[str, nn.Parameter]]) -> None:
        super().__init__()
        for name, param in params:
            self.register_parameter(name.replace(".", "__"), param)


def module_view(
    network: nn.Module, groups: Sequence[tuple[str, Sequence[tuple[str, nn.Parameter]]]]
) -> list[LayerGroup]:
    """Each group as modules: the largest submodules whose parameters are all in the group,
    then a `GroupParameters` for the rest (parameters held directly by a shared module)."""
    owner = {id(p): group for group, params in groups for _, p in params}
    modules: dict[str, list[nn.Module]] = {group: [] for group, _ in groups}
    bare: dict[str, list[tuple[str, nn.Parameter]]] = {group: [] for group, _ in groups}

    def visit(module: nn.Module, prefix: str) -> None:
        found = {owner.get(id(p)) for p in module.parameters()}
        if len(found) == 1 and None not in found:
            modules[found.pop()].append(module)
            return
        for name, param in module.named_parameters(recurse=False):
            if id(param) in owner:
                bare[owner[id(param)]].append((prefix + name, param))
        for name, child in module.named_children():
            visit(child, f"{prefix}{name}.")

    visit(network, "")
    return [
        (group, (*modules[group], *([GroupParameters(bare[group])] if bare[group] else [])))
        for group, _ in groups
    ]


def select_groups(requested: Sequence[str], group_names: Sequence[str], key: str) -> list[str]:
    """The groups `requested` names (names or globs such as `layer1?`), in the model's order.

    An entry that names no group is an error listing the valid names.
    """
    chosen: set[str] = set()
    for entry in requested:
        entry = str(entry)
        if entry == "head":
            raise ConfigError(
                f"{key} has 'head': the head always trains; valid layer groups: "
                f"{', '.join(group_names)}"
            )
        hits = (
            [g for g in group_names if fnmatchcase(g, entry)]
            if any(c in entry for c in GLOB_CHARS)
            else [g for g in group_names if g == entry]
        )
        if not hits:
            raise ConfigError(
                f"{key} has {entry!r}, not a layer group of this model; valid: "
                f"{', '.join(group_names)} (or a glob such as layer*)"
            )
        chosen.update(hits)
    return [g for g in group_names if g in chosen]


def selected_groups(
    finetune_cfg: Mapping[str, Any] | None, group_names: list[str]
) -> tuple[list[str] | None, list[str]]:
    """(finetune.trainable, finetune.frozen) as this model's group names (globs expanded):
    None when trainable is not given. A name the model lacks, or a group in both, is an error."""
    cfg = finetune_cfg or {}
    given = cfg.get("trainable")
    trainable = None if given is None else select_groups(given, group_names, "finetune.trainable")
    frozen = select_groups(cfg.get("frozen") or [], group_names, "finetune.frozen")
    both = [g for g in frozen if trainable is not None and g in trainable]
    if both:
        raise ConfigError(
            f"finetune.trainable and finetune.frozen both name {', '.join(both)}; "
            "name each group in one of them"
        )
    return trainable, frozen


def phase_groups(
    phase: Mapping[str, Any], index: int, group_names: list[str], frozen: Sequence[str]
) -> list[str]:
    """The layer groups phase `index` trains (the head always does), in the model's order."""
    given = phase.get("trainable")
    if given is None:
        return [g for g in group_names if g not in frozen]
    key = f"finetune.phases[{index}].trainable"
    chosen = select_groups(given, group_names, key)
    both = [g for g in chosen if g in frozen]
    if both:
        raise ConfigError(
            f"{key} and finetune.frozen both name {', '.join(both)}; a frozen group never trains"
        )
    return chosen
