"""Image classification data: ImageFolder layouts, transforms v2, the backbone's normalisation."""

from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import datasets
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import v2

from src.data.augment import MixCollate, augment_entries, build_augment, check_mixing, sets_size
from src.data.image_cache import cache_budget, cache_splits
from src.data.report import MAX_LISTED, build_report, warn_about
from src.data.resumable import resumable_train_loader
from src.data.splits import carve_splits
from src.data.workers import loader_workers
from src.errors import DataError
from src.models.networks import ImagePreprocessing

log = logging.getLogger(__name__)

# ImageFolder's own list leaves GIFs out; hymenoptera has one (a palette GIF).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")


JPEG_MAGIC = b"\xff\xd8\xff"


def rgb_loader(path: str) -> torch.Tensor | Image.Image:
    """Every image as 3-channel RGB. JPEGs as a uint8 tensor decoded by torchvision
    (`decode_jpeg`, libjpeg-turbo): here 1.28 vs 1.53 ms an image for PIL, and the training
    transforms then take 1.36 instead of 2.00 ms (experiments/bench/image_path_pil.json). Everything
    else (PNG, palette GIFs, greyscale, RGBA, a JPEG torchvision refuses) through PIL."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise DataError(f"cannot read image {path}: {e.strerror or e}") from None
    if data.startswith(JPEG_MAGIC):
        try:
            buffer = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            return decode_jpeg(buffer, mode=ImageReadMode.RGB)
        except RuntimeError:
            pass  # PIL reads some JPEGs libjpeg-turbo's strict path does not
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.convert("RGB")
    except (OSError, SyntaxError, ValueError) as e:  # PIL: unidentified, truncated, unreadable
        raise DataError(f"cannot read image {path}: {e}") from None


def probe_image(path: str) -> tuple[str | None, str | None]:
    """(sha256 of the file, None) when PIL decodes it; (hash or None, the reason) when not."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        return None, e.strerror or type(e).__name__
    digest = hashlib.sha256(data).hexdigest()
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.draft("RGB", (64, 64))  # JPEG: decode at reduced scale; still reads every byte
            img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        return digest, str(e) or type(e).__name__
    return digest, None


def is_image_file(path: str) -> bool:
    return path.lower().endswith(IMAGE_SUFFIXES)


def build_transforms(
    pre: ImagePreprocessing, augment: bool | list[dict[str, Any]], color_jitter: float
) -> v2.Compose:
    """Train (`augment=True`): random resized crop, flip, colour jitter. Eval (`False`): resize +
    centre crop. A list: those transforms v2 (src/data/augment.py), on a float image in [0, 1]."""
    to_tensor = [
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(pre.mean, pre.std),
    ]
    eval_geometry = [v2.Resize(pre.resize_size, antialias=True), v2.CenterCrop(pre.crop_size)]
    if isinstance(augment, list):
        chosen = build_augment(augment, pre.crop_size)
        geometry = [] if any(sets_size(t) for t in chosen) else eval_geometry
        return v2.Compose([*to_tensor[:2], *geometry, *chosen, to_tensor[2]])
    if not augment:
        return v2.Compose([*eval_geometry, *to_tensor])
    jitter = [v2.ColorJitter(color_jitter, color_jitter, color_jitter)] if color_jitter else []
    return v2.Compose(
        [
            v2.RandomResizedCrop(pre.crop_size, antialias=True),
            v2.RandomHorizontalFlip(),
            *jitter,
            *to_tensor,
        ]
    )


class _AsDict(Dataset):
    """(image, label) -> {"pixel_values", "labels"}: the batch format every network takes."""

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, Any]:
        image, label = self.base[i]
        return {"pixel_values": image, "labels": label}


class ImageDataModule(L.LightningDataModule):
    """`root/train/<class>/*` (+ optional `root/val`, `root/test`) as ImageFolder data sets.

    Every image is decoded once at setup: unreadable ones are dropped and counted in
    `data_report`; a class left without a readable image is an error.
    """

    data_report: dict[str, Any] | None = None  # set by setup(); see src/data/report.py
    task_type = "multiclass"  # a folder per class: one class per image

    def __init__(
        self,
        processor: ImagePreprocessing,
        root: str,
        train_dir: str = "train",
        val_dir: str = "val",
        test_dir: str = "test",
        val_fraction: float = 0.2,
        test_fraction: float | None = None,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        augment: bool | list[dict[str, Any]] = True,
        color_jitter: float = 0.2,
        mixup_alpha: float | None = None,
        cutmix_alpha: float | None = None,
        num_workers: int | str = "auto",
        cache_images: bool | float | str = "auto",
        seed: int = 42,
        folds: int | None = None,
        fold: int | None = None,
    ) -> None:
        super().__init__()
        self.pre = processor
        self.root = Path(root).expanduser()
        self.dirs = {"train": train_dir, "val": val_dir, "test": test_dir}
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction  # no test/ folder: hold out this share of train
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        # True / False, or a list of transform entries: checked here, before any image is read
        self.augment = augment_entries(augment)
        if isinstance(self.augment, list):
            build_augment(self.augment, processor.crop_size)
        self.color_jitter = color_jitter
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha
        # `auto`: from the CPU cores (src/data/workers.py; src.pipeline resolves it for DDP)
        self.num_workers = loader_workers(num_workers)
        # decoded (val: also resized and cropped) images kept between epochs (image_cache.py)
        self.cache_bytes = cache_budget(cache_images)
        self._epoch_splits: dict[str, Dataset] | None = None
        self.seed = seed
        # Cross-validation: val is fold `fold` of `folds` stratified folds of train.
        self.folds, self.fold = folds, fold
        self.label_names: list[str] | None = None
        self.splits: dict[str, Dataset] | None = None
        self._probes: dict[str, tuple[str | None, str | None]] = {}  # path -> (hash, error)
        self._dropped: dict[str, dict[str, Any]] = {}

    @property
    def num_classes(self) -> int:
        return len(self.label_names or [])

    def _folder(self, split: str, train_transform: bool) -> datasets.ImageFolder:
        path = self.root / self.dirs[split]
        transform = build_transforms(
            self.pre, self.augment if train_transform else False, self.color_jitter
        )
        try:
            folder = datasets.ImageFolder(
                str(path), transform=transform, loader=rgb_loader, is_valid_file=is_image_file
            )
        except (FileNotFoundError, OSError) as e:
            raise DataError(f"no images in {path}: {e} (expected {path}/<class>/<image>)") from e
        return self._drop_unreadable(split, folder)

    def _drop_unreadable(self, split: str, folder: datasets.ImageFolder) -> datasets.ImageFolder:
        """Drop (and count) the images PIL cannot decode; fail if a class loses all of them."""
        for path, _ in folder.samples:
            if path not in self._probes:
                self._probes[path] = probe_image(path)
        bad = [(path, t) for path, t in folder.samples if self._probes[path][1] is not None]
        self._dropped[split] = {
            "count": len(bad),
            "reason": "unreadable image",
            "paths": [f"{path}: {self._probes[path][1]}" for path, _ in bad[:MAX_LISTED]],
        }
        if not bad:
            return folder
        folder.samples = [s for s in folder.samples if self._probes[s[0]][1] is None]
        folder.imgs, folder.targets = folder.samples, [t for _, t in folder.samples]
        for index, name in enumerate(folder.classes):
            if index not in folder.targets:
                path = next(p for p, t in bad if t == index)
                raise DataError(
                    f"cannot read image {path}: {self._probes[path][1]}; no readable image "
                    f"left in class {name!r} of {folder.root}"
                )
        return folder

    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        train_root = self.root / self.dirs["train"]
        if not train_root.is_dir():
            raise DataError(
                f"image folder not found: {train_root} (set data.root=DIR holding train/<class>/..., "
                "or paths.data_dir=DIR / FTLAB_DATA_DIR for the packaged tasks)"
            )
        train = self._folder("train", train_transform=True)
        self.label_names = list(train.classes)
        splits: dict[str, Dataset] = {}
        has_val = (self.root / self.dirs["val"]).is_dir()
        has_test = (self.root / self.dirs["test"]).is_dir()
        carved = carve_splits(
            train.targets,
            "multiclass",
            has_val,
            has_test,
            self.val_fraction,
            self.test_fraction,
            self.seed,
            self.folds,
            self.fold,
        )
        full = len(carved["train"]) == len(train.targets)
        splits["train"] = train if full else Subset(train, carved["train"])
        for split in ("val", "test"):
            if split in carved:  # held out of train, with the eval transform
                splits[split] = Subset(self._folder("train", train_transform=False), carved[split])
        if "val" not in carved:
            splits["val"] = self._folder("val", train_transform=False)
        elif self.folds and has_val and not has_test:
            # Cross-validation folds the training images; a val folder becomes the test split,
            # so every fold is tested on the same held-out data.
            splits["test"] = self._folder("val", train_transform=False)
        if has_test:
            splits["test"] = self._folder("test", train_transform=False)
        if "test" not in splits:
            log.warning(
                "data: no %s/ folder and data.test_fraction=%s: the val split, which picks the "
                "best checkpoint, is reported as test (optimistic); add %s/ or set "
                "data.test_fraction",
                self.dirs["test"],
                self.test_fraction,
                self.dirs["test"],
            )
            splits["test"] = splits["val"]
        for split in ("val", "test"):
            ds = splits[split]
            classes = (ds.dataset if isinstance(ds, Subset) else ds).classes
            if classes != self.label_names:
                raise DataError(
                    f"the {split} folder's classes {classes} differ from train's {self.label_names}"
                )
        self._publish(splits)

    def _publish(self, splits: dict[str, Dataset]) -> None:
        """The final splits: their report (logged where worth a look), then batch dicts."""
        self.data_report = self._report(splits)
        warn_about(self.data_report)
        self.splits = {name: _AsDict(ds) for name, ds in splits.items()}
        log.info("images: %s", {name: len(ds) for name, ds in self.splits.items()})

    def _report(self, splits: dict[str, Dataset]) -> dict[str, Any]:
        """data_report.json: counts, unreadable images dropped, duplicate files (by content)."""

        def samples(ds: Dataset) -> list[tuple[str, int]]:
            if isinstance(ds, Subset):
                return [ds.dataset.samples[i] for i in ds.indices]
            return list(ds.samples)

        listed = {split: samples(ds) for split, ds in splits.items()}
        return build_report(
            labels={s: [t for _, t in items] for s, items in listed.items()},
            keys={s: [self._probes[p][0] for p, _ in items] for s, items in listed.items()},
            label_names=self.label_names,
            dropped=dict(self._dropped),
            test_is_val=splits["test"] is splits["val"],
            task_type=self.task_type,
        )

    def _dataset(self, split: str) -> Dataset:
        """What `split`'s loader reads: the image cache's copy for the splits a fit reads more
        than once (test too when it is val), filled at the first loader a fit asks for (so not at
        all when cached features replace the images, nor for src.eval's one pass)."""
        if self._epoch_splits is None:
            trainer = getattr(self, "trainer", None)
            if trainer is not None and trainer.state.fn != "fit":
                return self.splits[split]  # test / validate / predict alone: one pass
            self._epoch_splits = self._cached_splits(self._read_again())
        return self._epoch_splits.get(split, self.splits[split])

    def _read_again(self) -> list[str]:
        """The splits the attached trainer reads more than once: train and val over several
        epochs, val too with several validations an epoch (one epoch, as in the default config,
        reads each image once: caching would only add the fill). Without a trainer, both."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return ["val", "train"]
        if trainer.fast_dev_run:
            return []
        epochs = trainer.max_epochs
        several = epochs is None or epochs < 0 or epochs > 1
        interval = trainer.val_check_interval
        several_val = several or isinstance(interval, int) or float(interval) < 1.0
        return [s for s, again in (("val", several_val), ("train", several)) if again]

    def _cached_splits(self, names: list[str]) -> dict[str, Dataset]:
        epoch = {s: self.splits[s].base for s in names if s in self.splits}
        if self.cache_bytes <= 0 or not epoch:
            return {}
        test = self.splits.get("test")
        if "val" in epoch and test is not None and test.base is epoch["val"]:
            epoch["test"] = epoch["val"]
        cached = cache_splits(epoch, self.cache_bytes, rgb_loader)
        as_dict = {id(ds): _AsDict(ds) for ds in cached.values()}
        return {s: as_dict[id(ds)] for s, ds in cached.items()}

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(
            self._dataset(split),
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(self.seed) if shuffle else None,
        )

    def train_collate(self) -> MixCollate | None:
        """MixUp / CutMix of the training batches (data.mixup_alpha, data.cutmix_alpha), or None."""
        alphas = check_mixing(
            {"mixup_alpha": self.mixup_alpha, "cutmix_alpha": self.cutmix_alpha}, self.task_type
        )
        if not alphas:
            return None
        return MixCollate(self.num_classes, alphas.get("mixup_alpha"), alphas.get("cutmix_alpha"))

    def train_dataloader(self) -> DataLoader:
        # Epoch-seeded and resumable: a run killed mid-epoch resumes on the same batches.
        collate = self.train_collate()
        return resumable_train_loader(
            self._dataset("train"),
            self.batch_size,
            self.seed,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            **({"collate_fn": collate} if collate else {}),
        )

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, shuffle=False)
