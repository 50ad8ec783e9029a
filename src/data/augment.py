"""Image augmentation as config: `data.augment` and batch-level MixUp / CutMix.

`data.augment`:
- `true`: the default train transform (random resized crop, horizontal flip, colour jitter);
- `false` or `[]`: none (the eval transform: resize + centre crop);
- a list of torchvision.transforms.v2 transforms, each a Hydra `_target_` entry (a bare class
  name means `torchvision.transforms.v2.<name>`), e.g.
  `[{_target_: RandomResizedCrop, scale: [0.5, 1]}, {_target_: RandomHorizontalFlip},
  {_target_: TrivialAugmentWide}, {_target_: RandomErasing, p: 0.25}]`.
  They run in order on a float image in [0, 1] (a tv_tensors.Image), before normalisation. An
  entry whose class takes a `size` and gives none gets the model's crop size; when no entry sets
  the size, the eval resize + centre crop comes first.

`data.mixup_alpha` / `data.cutmix_alpha` (multiclass only): MixUp / CutMix of each training
batch (one of the two, at random, when both are set); the labels become class probabilities,
which the cross-entropy loss takes as soft targets. Validation and test batches are not mixed.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from src.errors import ConfigError

V2 = "torchvision.transforms.v2"
BATCH_LEVEL = ("MixUp", "CutMix")  # need a batch: data.mixup_alpha / data.cutmix_alpha
EXAMPLE = "e.g. data.augment=[{_target_:RandomRotation,degrees:15},{_target_:TrivialAugmentWide}]"


def augment_entries(augment: Any) -> list[dict[str, Any]] | bool:
    """`data.augment` as True / False or a plain list of transform entries (`[]` is False)."""
    if isinstance(augment, (ListConfig, DictConfig)):
        augment = OmegaConf.to_container(augment, resolve=True)
    if augment is None or isinstance(augment, bool):
        return bool(augment)
    if isinstance(augment, list):
        return list(augment) if augment else False
    raise ConfigError(
        f"data.augment={augment!r} is invalid: true (the default random crop, flip, colour "
        f"jitter), false, or a list of torchvision.transforms.v2 transforms; {EXAMPLE}"
    )


def _full_target(target: Any) -> Any:
    return f"{V2}.{target}" if isinstance(target, str) and "." not in target else target


def _expand(node: Any) -> Any:
    """Bare class names in `_target_` (nested entries too) as torchvision.transforms.v2 paths."""
    if isinstance(node, Mapping):
        return {k: _full_target(v) if k == "_target_" else _expand(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand(v) for v in node]
    return node


def _valid_names() -> str:
    from torchvision.transforms import v2

    names = [
        n
        for n, obj in vars(v2).items()
        if isinstance(obj, type) and issubclass(obj, v2.Transform) and n not in BATCH_LEVEL
    ]
    return ", ".join(sorted(names))


def build_augment(entries: Sequence[Any], crop_size: int) -> list[Any]:
    """The transforms of `data.augment`'s list, instantiated (a bad entry: one-line ConfigError)."""
    from hydra.errors import InstantiationException
    from hydra.utils import get_class, instantiate
    from torchvision.transforms import v2

    transforms = []
    for i, entry in enumerate(entries):
        at = f"data.augment[{i}]"
        if not isinstance(entry, Mapping) or "_target_" not in entry:
            raise ConfigError(f"{at}={entry!r} must be a mapping with a _target_; {EXAMPLE}")
        entry = _expand(dict(entry))
        target = entry["_target_"]
        try:
            cls = get_class(str(target))
        except Exception:  # hydra: ImportError / ValueError wrapped in its own exceptions
            cls = None
        if not (isinstance(cls, type) and issubclass(cls, v2.Transform)):
            raise ConfigError(
                f"{at}._target_={target!r} is not a torchvision.transforms.v2 transform; valid "
                f"(as {V2}.NAME or NAME): {_valid_names()}"
            )
        if cls.__name__ in BATCH_LEVEL:
            raise ConfigError(
                f"{at}: {cls.__name__} mixes whole batches; set data."
                f"{cls.__name__.lower()}_alpha=ALPHA instead"
            )
        if "size" in inspect.signature(cls).parameters and "size" not in entry:
            entry["size"] = crop_size  # the model's input size
        try:
            transforms.append(instantiate(entry, _convert_="all"))
        except InstantiationException as e:
            cause = e.__cause__ or e
            first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause)
            raise ConfigError(f"{at} ({cls.__name__}): {first}") from e
    return transforms


def sets_size(transform: Any) -> bool:
    """Whether `transform` decides the output size (crops and resizes have a `size`)."""
    return getattr(transform, "size", None) is not None


def describe(augment: Any) -> str:
    """`data.augment` in a message: true, or the list's class names."""
    if not isinstance(augment, list):
        return f"data.augment={str(augment).lower()}"
    names = [str(_full_target(e.get("_target_"))).rsplit(".", 1)[-1] for e in augment]
    return f"data.augment=[{', '.join(names)}]"


# --------------------------------------------------------------------------- MixUp / CutMix


def check_mixing(data: Mapping[str, Any], task_type: str) -> dict[str, float]:
    """data.mixup_alpha / data.cutmix_alpha: null, 0 (off) or a float > 0; multiclass only.
    The alphas that are on."""
    alphas = {}
    for key in ("mixup_alpha", "cutmix_alpha"):
        value = data.get(key)
        if value is None or (not isinstance(value, bool) and value == 0):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(f"data.{key}={value!r} is invalid: must be a float > 0 (or null)")
        if task_type != "multiclass":
            raise ConfigError(
                f"data.{key}={value} needs task.type=multiclass (one class per image); "
                f"task.type={task_type} has no class to mix"
            )
        alphas[key] = float(value)
    return alphas


def check_augment_config(data: Mapping[str, Any], task_type: str) -> None:
    """`data.augment` and the mixing alphas, before any heavy work (torchvision only for a list)."""
    if "augment" in data:
        entries = augment_entries(data.get("augment"))
        if isinstance(entries, list):
            build_augment(entries, 224)
    check_mixing(data, task_type)


class MixCollate:
    """default_collate, then MixUp or CutMix of the batch's pixel_values and labels (one of them
    at random when both are on): the labels become class probabilities (soft targets)."""

    def __init__(self, num_classes: int, mixup_alpha: float | None, cutmix_alpha: float | None):
        from torchvision.transforms import v2

        mixers = []
        if mixup_alpha:
            mixers.append(v2.MixUp(alpha=float(mixup_alpha), num_classes=num_classes))
        if cutmix_alpha:
            mixers.append(v2.CutMix(alpha=float(cutmix_alpha), num_classes=num_classes))
        self.mix = mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        from torch.utils.data import default_collate

        batch = default_collate(rows)
        batch["pixel_values"], batch["labels"] = self.mix(batch["pixel_values"], batch["labels"])
        return batch
