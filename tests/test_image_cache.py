"""data.cache_images: decoded images (val / test also resized and cropped) kept between epochs.
The batches must be exactly the uncached ones, with any budget, with loader workers, for
ImageFolder and image-table data; a bad value is named."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from src.data.image import ImageDataModule, build_transforms
from src.data.image_cache import CachedImages, cache_budget, split_transform
from src.data.image_csv import ImageCsvDataModule
from src.errors import ConfigError
from src.models.networks import ImagePreprocessing

PRE = ImagePreprocessing(36, 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


@pytest.fixture(scope="module")
def mixed_images(tmp_path_factory) -> Path:
    """train/ and val/ of two classes: JPEGs of different sizes, a PNG and a palette GIF."""
    root = tmp_path_factory.mktemp("mixed_images")
    rng = random.Random(1)
    for split, count in (("train", 10), ("val", 5)):
        for cls, color in (("blue", (20, 40, 220)), ("red", (220, 30, 20))):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(count):
                size = (rng.randint(30, 90), rng.randint(30, 90))
                img = Image.effect_noise(size, 40).convert("RGB")
                img = Image.blend(img, Image.new("RGB", size, color), 0.6)
                if i == 0:
                    img.save(folder / "lossless.png")
                elif i == 1:
                    img.convert("P").save(folder / "palette.gif")
                else:
                    img.save(folder / f"{i}.jpg", quality=90)
    return root


def image_folder(root: Path, cache: object, workers: int = 0, **kwargs) -> ImageDataModule:
    module = ImageDataModule(
        PRE, str(root), batch_size=4, num_workers=workers, cache_images=cache, **kwargs
    )
    module.setup("fit")
    return module


def batches(module, epochs: int = 2) -> list[dict[str, torch.Tensor]]:
    """Every train batch of `epochs` epochs, then every val and test batch."""
    out = []
    loader = module.train_dataloader()
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)  # as Lightning does at each epoch start
        torch.manual_seed(100 + epoch)  # random transforms in this process draw from it
        out += list(loader)
    out += list(module.val_dataloader()) + list(module.test_dataloader())
    return out


def assert_same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x["labels"], y["labels"])
        assert torch.equal(x["pixel_values"], y["pixel_values"])


def test_the_eval_transform_runs_its_resize_and_crop_once_the_train_transform_nothing() -> None:
    head, rest = split_transform(build_transforms(PRE, False, 0.0))
    assert [type(t) for t in head] == [v2.Resize, v2.CenterCrop]
    assert [type(t) for t in rest.transforms] == [v2.ToImage, v2.ToDtype, v2.Normalize]
    head, rest = split_transform(build_transforms(PRE, True, 0.2))
    assert head == [] and type(rest.transforms[0]) is v2.RandomResizedCrop


@pytest.mark.parametrize("augment", [True, False, [{"_target_": "RandomRotation", "degrees": 15}]])
def test_cached_batches_are_the_uncached_ones(mixed_images, augment) -> None:
    plain = image_folder(mixed_images, False, augment=augment)
    cached = image_folder(mixed_images, 1.0, augment=augment)
    assert_same_batches(batches(plain), batches(cached))
    train, val = cached._dataset("train").base, cached._dataset("val").base
    assert isinstance(train, CachedImages) and train.cached == len(train) == 20
    assert isinstance(val, CachedImages) and val.cached == len(val) == 10
    assert cached._dataset("test") is cached._dataset("val")  # no test/: test is val


def test_a_budget_too_small_for_all_caches_some_and_changes_nothing(mixed_images, caplog) -> None:
    val_bytes = 10 * 3 * 32 * 32  # the val images once resized and centre-cropped
    plain = image_folder(mixed_images, False)
    with caplog.at_level(logging.INFO, logger="src.data.image_cache"):
        cached = image_folder(mixed_images, (val_bytes + 20_000) / 2**30)
        got = batches(cached)
    train, val = cached._dataset("train").base, cached._dataset("val").base
    assert val.cached == 10 and 0 < train.cached < 20
    assert_same_batches(batches(plain), got)
    assert f"train {train.cached}/20" in caplog.text and "val 10/10" in caplog.text


def test_loader_workers_read_the_cache(mixed_images) -> None:
    plain = image_folder(mixed_images, False, workers=2)
    cached = image_folder(mixed_images, 1.0, workers=2)
    assert_same_batches(batches(plain, epochs=1), batches(cached, epochs=1))


def test_a_transform_working_in_place_cannot_change_the_cache(mixed_images) -> None:
    module = image_folder(mixed_images, 1.0, augment=False)
    val = module._dataset("val").base
    first = val[0][0].clone()  # a JPEG: a tensor in the cache
    val._rest.transforms.insert(0, v2.Lambda(lambda img: img.zero_()))
    val[0]
    del val._rest.transforms[0]
    assert torch.equal(val[0][0], first)


def test_image_table_data_is_cached_the_same(mixed_images, tmp_path) -> None:
    rows = ["image,label"] + [
        f"{p.relative_to(mixed_images)},{p.parent.name}"
        for p in sorted(mixed_images.glob("train/*/*"))
    ]
    table = tmp_path / "train.csv"
    table.write_text("\n".join(rows) + "\n")

    def module(cache):
        m = ImageCsvDataModule(
            PRE, str(table), root=str(mixed_images), batch_size=4, num_workers=0,
            cache_images=cache, test_fraction=0.2,
        )  # fmt: skip
        m.setup("fit")
        return m

    plain, cached = module(False), module(1.0)
    assert_same_batches(batches(plain), batches(cached))
    assert cached._dataset("train").base.cached == len(cached._dataset("train"))
    # a test split of its own is read once, after training: not cached
    assert not isinstance(cached._dataset("test").base, CachedImages)


@pytest.mark.parametrize("value", ["all", -1, True, [1]])
def test_a_bad_budget_is_named(mixed_images, value) -> None:
    with pytest.raises(ConfigError, match=r"data\.cache_images=.* is invalid: must be auto"):
        image_folder(mixed_images, value)


def test_budget_values() -> None:
    assert cache_budget(False) == 0 and cache_budget(None) == 0
    assert cache_budget(0.5) == 2**29 and cache_budget(2) == 2 * 2**30
    auto = cache_budget("auto")
    assert auto > 0 and cache_budget("auto", processes_per_node=4) <= auto // 4 + 2**20


def test_image_tasks_default_to_auto_shared_among_the_training_processes(tiny_images) -> None:
    from hydra import compose, initialize_config_dir

    import src  # noqa: F401  (resolvers)
    from src.pipeline import build_datamodule
    from tests.conftest import ROOT

    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        for task in ("image_folder", "image_csv"):
            cfg = compose("train", overrides=[f"task={task}", "model=resnet18"])
            assert cfg.data.cache_images == "auto", task
        cfg = compose(
            "train",
            overrides=[
                "task=image_folder",
                "model=resnet18",
                "model.weights=null",
                f"data.root={tiny_images}",
                "trainer.devices=4",
            ],
        )
    datamodule = build_datamodule(cfg, None)
    one = cache_budget("auto")
    assert 0 < datamodule.cache_bytes <= one // 4 + 2**20


@pytest.mark.parametrize(
    "trainer,cached",
    [
        (None, ["val", "train"]),  # the data module used alone
        ({"max_epochs": 1}, []),  # each image read once: nothing to gain
        ({"max_epochs": 1, "val_check_interval": 0.5}, ["val"]),
        ({"max_epochs": 1, "val_check_interval": 20}, ["val"]),
        ({"max_epochs": 3}, ["val", "train"]),
        ({"max_epochs": -1, "max_steps": 100}, ["val", "train"]),
        ({"max_epochs": 3, "fast_dev_run": True}, []),
        ({"max_epochs": 3, "fn": "test"}, []),  # src.eval, Trainer.test alone: one pass
        ({"max_epochs": 3, "fn": "predict"}, []),
    ],
)
def test_only_splits_read_more_than_once_are_cached(mixed_images, trainer, cached) -> None:
    from types import SimpleNamespace

    module = image_folder(mixed_images, 1.0)
    if trainer is not None:
        settings = {"fast_dev_run": False, "val_check_interval": 1.0, "fn": "fit", **trainer}
        settings["state"] = SimpleNamespace(fn=settings.pop("fn"))
        module.trainer = SimpleNamespace(**settings)
    got = [s for s in ("val", "train") if isinstance(module._dataset(s).base, CachedImages)]
    assert got == cached


def test_a_fit_of_several_epochs_caches_and_its_test_pass_reads_nothing_new(
    tiny_images, tmp_path, caplog
) -> None:
    from src.pipeline import train
    from tests.test_augment import compose_image

    cfg = compose_image(tiny_images, tmp_path, "trainer.max_epochs=2", "test=true")
    with caplog.at_level(logging.INFO, logger="src.data.image_cache"):
        metrics = train(cfg, report_to_sweep=False)
    fills = [r.getMessage() for r in caplog.records if "data.cache_images:" in r.getMessage()]
    assert len(fills) == 1, fills  # once, at the fit's first loader; the test pass reuses it
    assert "val 8/8, train 28/28" in fills[0] and metrics["test/acc"] is not None
