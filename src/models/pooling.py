"""How a text encoder turns its token states into one vector per example: `model.pooling`.

- `cls`: `last_hidden_state[:, 0]`, the first ([CLS]) token's state.
- `mean`: the attention-mask-weighted mean of `last_hidden_state` (padding ignored), as
  sentence-transformers pools.
- `pooler`: the encoder's `pooler_output` (BERT: dense + tanh over [CLS]), which BERT's own
  classification head reads; an error for encoders without a pooler.
- `auto`: the checkpoint's own choice. A sentence-transformers model dir names its pooling in
  `modules.json` -> `1_Pooling/config.json` (all-MiniLM-L6-v2: mean tokens); without one, what
  the architecture's classification head reads (BERT: pooler; RoBERTa, ELECTRA, DistilBERT: cls).
- absent / null (checkpoints written before this setting): the architecture's own head.

No torch import here: `check_pooling` runs with the config checks, before the heavy imports.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from src.errors import ConfigError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

POOLINGS = ("auto", "cls", "mean", "pooler")

# sentence-transformers' Pooling config keys -> the pooling built here (None: not built here)
ST_POOLING_MODES: dict[str, str | None] = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": None,
    "pooling_mode_mean_sqrt_len_tokens": None,
    "pooling_mode_weightedmean_tokens": None,
    "pooling_mode_lasttoken": None,
}
ST_POOLING_TYPE = "sentence_transformers.models.Pooling"


def check_pooling(value: object) -> None:
    """`model.pooling` is one of POOLINGS (or null: the architecture's own head)."""
    if value is not None and (not isinstance(value, str) or value not in POOLINGS):
        raise ConfigError(f"model.pooling={value!r} is invalid; valid: {', '.join(POOLINGS)}")


def _checkpoint_file(model_dir: str, filename: str) -> Path | None:
    """`filename` inside a local model dir, or from the hub (cached or fetched); None if absent
    or unreachable (offline): `auto` then falls back to the architecture's head."""
    local = Path(model_dir) / filename
    if Path(model_dir).is_dir():
        return local if local.is_file() else None
    from transformers.utils import cached_file

    try:
        found = cached_file(
            model_dir,
            filename,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
        )
    except (OSError, ValueError):
        return None
    return Path(found) if found else None


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read {path}: {e}") from e


def checkpoint_pooling(model_dir: str) -> tuple[str, str] | None:
    """(pooling, where it is said) from a sentence-transformers model's Pooling module config;
    None when the checkpoint names none. A pooling not built here is an error naming it."""
    folder = "1_Pooling"
    modules_file = _checkpoint_file(model_dir, "modules.json")
    if modules_file is not None:
        modules = _read_json(modules_file)
        paths = [
            m.get("path")
            for m in (modules if isinstance(modules, list) else [])
            if isinstance(m, dict) and m.get("type") == ST_POOLING_TYPE and m.get("path")
        ]
        folder = paths[0] if paths else folder
    config_file = _checkpoint_file(model_dir, f"{folder}/config.json")
    if config_file is None:
        return None
    config = _read_json(config_file)
    where = f"{folder}/config.json"
    modes = [k for k, on in (config.items() if isinstance(config, dict) else []) if on is True]
    modes = [k for k in modes if k in ST_POOLING_MODES]
    if not modes:
        return None
    built = [ST_POOLING_MODES[k] for k in modes]
    if len(modes) > 1 or built[0] is None:
        named = " + ".join(k.removeprefix("pooling_mode_") for k in modes)
        raise ConfigError(
            f"model.pooling=auto: the checkpoint's {where} pools by {named}, which ftlab does not "
            f"build; set model.pooling to one of: {', '.join(p for p in POOLINGS if p != 'auto')}"
        )
    return built[0], where


def resolve_pooling(requested: str | None, model_dir: str) -> tuple[str | None, str]:
    """The pooling to build (None: the architecture's own head) and why, for the log."""
    check_pooling(requested)
    if requested is None:
        return None, "not set: the architecture's own head"
    if requested != "auto":
        return requested, "as set"
    found = checkpoint_pooling(model_dir)
    if found is None:
        return None, "auto: the checkpoint names none, so the architecture's own head"
    return found[0], f"auto: as the checkpoint's {found[1]} says"


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of the token states where `attention_mask` is 1 (padding changes nothing), summed in
    float32 (bf16 sums of hundreds of tokens lose digits), returned in the states' dtype."""
    states = hidden.float()
    if attention_mask is None:
        return states.mean(dim=1).to(hidden.dtype)
    mask = attention_mask.unsqueeze(-1).to(states.dtype)
    return ((states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)).to(hidden.dtype)
