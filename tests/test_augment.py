"""Image augmentation as config: data.augment lists of transforms v2 from YAML (train only),
MixUp / CutMix of training batches (soft targets, multiclass only), the feature cache off with
any of them, and bad entries as one-line errors."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torchvision.transforms import v2

import src  # noqa: F401  (the ${ftlab_root:} resolver)
from src.checks import check_train_config
from src.data.augment import check_mixing
from src.data.image import ImageDataModule
from src.errors import ConfigError
from src.features import feature_cache_blocker, maybe_cache_features
from src.models.networks import ImagePreprocessing
from tests.conftest import ROOT
from tests.test_feature_cache import cnn, run_cfg

PRE = ImagePreprocessing(36, 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def data_module(root: Path, yaml: str = "", **kwargs) -> ImageDataModule:
    """An ImageDataModule of the tiny images, its data settings read from YAML as Hydra passes them."""
    data = OmegaConf.create(yaml) if yaml else {}
    module = ImageDataModule(PRE, str(root), num_workers=0, batch_size=8, **data, **kwargs)
    module.setup("fit")
    return module


def transforms_of(module: ImageDataModule, split: str) -> list:
    ds = module.splits[split].base
    ds = getattr(ds, "dataset", ds)  # a Subset carved from train
    return list(ds.transform.transforms)


KINDS = {
    "RandomRotation": "augment: [{_target_: RandomRotation, degrees: 20}]",
    "RandomResizedCrop": "augment: [{_target_: RandomResizedCrop, scale: [0.5, 1.0]}]",
    "RandAugment": "augment: [{_target_: RandAugment, num_ops: 2, magnitude: 9}]",
    "TrivialAugmentWide": "augment: [{_target_: torchvision.transforms.v2.TrivialAugmentWide}]",
    "RandomErasing": "augment: [{_target_: RandomErasing, p: 1.0}]",
    "GaussianNoise": "augment: [{_target_: GaussianNoise, sigma: 0.05}]",
    "RandomApply": """
augment:
  - _target_: RandomApply
    p: 0.5
    transforms: [{_target_: GaussianBlur, kernel_size: 3}]
""",
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_transform_kind_from_yaml_applies_to_train_only(tiny_images, kind) -> None:
    module = data_module(tiny_images, KINDS[kind])
    train = transforms_of(module, "train")
    assert any(type(t).__name__ == kind for t in train)
    for split in ("val", "test"):
        assert not any(type(t).__name__ == kind for t in transforms_of(module, split))
    torch.manual_seed(0)
    batch = next(iter(module.train_dataloader()))
    assert batch["pixel_values"].shape == (8, 3, 32, 32)  # the model's crop size
    assert batch["pixel_values"].dtype == torch.float32 and batch["labels"].dtype == torch.int64
    if kind == "RandomResizedCrop":  # no size given: the model's crop size; no eval resize first
        crop = next(t for t in train if isinstance(t, v2.RandomResizedCrop))
        assert crop.size == (32, 32) and crop.scale == [0.5, 1.0]
        assert not any(isinstance(t, v2.CenterCrop) for t in train)
    else:  # no entry sets the size: the eval resize + centre crop first
        assert any(isinstance(t, v2.CenterCrop) for t in train)


def test_default_augmentation_is_unchanged(tiny_images) -> None:
    train = [type(t).__name__ for t in transforms_of(data_module(tiny_images), "train")]
    assert train == [
        "RandomResizedCrop",
        "RandomHorizontalFlip",
        "ColorJitter",
        "ToImage",
        "ToDtype",
        "Normalize",
    ]
    off = data_module(tiny_images, "augment: []")
    assert off.augment is False
    assert [type(t).__name__ for t in transforms_of(off, "train")][:2] == ["Resize", "CenterCrop"]


@pytest.mark.parametrize(
    "yaml,mixers",
    [
        ("mixup_alpha: 0.4", 1),
        ("cutmix_alpha: 1.0", 1),
        ("{mixup_alpha: 0.2, cutmix_alpha: 1.0}", 2),
    ],
    ids=["mixup", "cutmix", "both"],
)
def test_mixup_cutmix_give_soft_targets_in_training_batches(tiny_images, yaml, mixers) -> None:
    module = data_module(tiny_images, yaml, augment=False)
    torch.manual_seed(0)
    batch = next(iter(module.train_dataloader()))
    labels = batch["labels"]
    assert labels.shape == (8, 2) and labels.dtype == torch.float32
    torch.testing.assert_close(labels.sum(dim=1), torch.ones(8))
    assert (labels.max(dim=1).values < 1).any()  # mixed, not one-hot
    assert batch["pixel_values"].shape == (8, 3, 32, 32)
    val = next(iter(module.val_dataloader()))
    assert val["labels"].dtype == torch.int64 and val["labels"].ndim == 1  # eval: not mixed
    # the multiclass loss takes the probabilities as targets
    from src.tasks.objectives import Multiclass

    loss = Multiclass(["blue", "red"], label_smoothing=0.1).loss(torch.randn(8, 2), labels)
    assert torch.isfinite(loss)


def compose_image(root: Path, out: Path, *extra: str):
    overrides = [
        "task=image_folder",
        "model=resnet18",
        "model.weights=null",
        "model.image_size=32",
        f"data.root={root}",
        "data.num_workers=0",
        "data.batch_size=8",
        "trainer.precision=32-true",
        "trainer.accelerator=cpu",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.enable_model_summary=false",
        "callbacks.progress_bar=null",
        "callbacks.early_stopping=null",
        "callbacks.lr_monitor=null",
        "~logger",
        "test=false",
        f"paths.output_dir={out}",
        f"paths.cache_dir={out / 'cache'}",
        *extra,
    ]
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=overrides)


def test_a_run_trains_with_an_augment_list_and_mixing(tiny_images, tmp_path) -> None:
    from src.pipeline import train

    cfg = compose_image(
        tiny_images,
        tmp_path,
        "data.augment=[{_target_:RandomRotation,degrees:15},{_target_:TrivialAugmentWide}]",
        "data.mixup_alpha=0.2",
        "data.cutmix_alpha=1.0",
    )
    metrics = train(cfg, report_to_sweep=False)
    assert metrics["global_step"] == 2 and metrics["train/loss"] > 0


# --------------------------------------------------------------------------- the feature cache


@pytest.mark.parametrize(
    "data,needle",
    [
        (
            SimpleNamespace(augment=[{"_target_": "RandomRotation", "degrees": 5}]),
            "[RandomRotation]",
        ),
        (SimpleNamespace(augment=False, mixup_alpha=0.2), "data.mixup_alpha mixes"),
        (SimpleNamespace(augment=False, cutmix_alpha=1.0), "data.cutmix_alpha mixes"),
    ],
)
def test_feature_cache_is_off_with_augmentation(data, needle) -> None:
    assert needle in feature_cache_blocker(run_cfg(), data, cnn())


def test_feature_cache_off_is_logged_for_an_augment_list(tiny_images, caplog) -> None:
    module = data_module(tiny_images, "augment: [{_target_: RandomRotation, degrees: 5}]")
    with caplog.at_level(logging.INFO, logger="src.features"):
        assert maybe_cache_features(run_cfg(), module, SimpleNamespace(network=cnn())) is module
    assert "feature cache off: data.augment=[RandomRotation] makes the train transform random" in (
        caplog.text
    )


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "yaml,message",
    [
        (
            "augment: [{_target_: RandomSpin, degrees: 5}]",
            r"^data.augment\[0\]._target_='torchvision.transforms.v2.RandomSpin' is not a "
            r"torchvision.transforms.v2 transform; valid .*RandomRotation",
        ),
        (
            "augment: [{_target_: torch.nn.Linear, in_features: 2, out_features: 2}]",
            r"_target_='torch.nn.Linear' is not a torchvision.transforms.v2 transform",
        ),
        ("augment: [{_target_: RandomRotation}]", r"^data.augment\[0\] \(RandomRotation\): "),
        ("augment: [{_target_: MixUp}]", r"set data.mixup_alpha=ALPHA instead"),
        ("augment: [RandomRotation]", r"must be a mapping with a _target_"),
        ("augment: sometimes", r"data.augment='sometimes' is invalid"),
    ],
)
def test_bad_augment_entry_is_one_line_error(tiny_images, yaml, message) -> None:
    with pytest.raises(ConfigError, match=message):
        data_module(tiny_images, yaml)


def test_bad_target_fails_in_the_config_check(tiny_images, tmp_path) -> None:
    cfg = compose_image(tiny_images, tmp_path, "data.augment=[{_target_:Nope}]")
    with pytest.raises(ConfigError, match=r"data.augment\[0\]._target_=.*Nope"):
        check_train_config(cfg)


def test_mixing_needs_multiclass_and_a_positive_alpha() -> None:
    with pytest.raises(ConfigError, match=r"data.mixup_alpha=0.2 needs task.type=multiclass"):
        check_mixing({"mixup_alpha": 0.2}, "multilabel")
    with pytest.raises(ConfigError, match=r"data.cutmix_alpha=-1 is invalid"):
        check_mixing({"cutmix_alpha": -1}, "multiclass")
    assert check_mixing({"mixup_alpha": None, "cutmix_alpha": 0}, "regression") == {}
