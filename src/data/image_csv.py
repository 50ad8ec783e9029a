"""Images listed in a table (task=image_csv): a path relative to `data.root` and label(s) per row,
for every task type: a class, a label set (`8,20`, a JSON list, one 0/1 column per label) or
number(s). What ImageFolder layouts cannot say: several labels per image, or a score."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from src.data.image import ImageDataModule, build_transforms, probe_image, rgb_loader
from src.data.image_table import image_root, read_image_table
from src.data.report import MAX_LISTED
from src.data.splits import carve_splits
from src.errors import DataError
from src.models.networks import ImagePreprocessing

log = logging.getLogger(__name__)


class ImageRows(Dataset):
    """(image, label) of each (path, label) sample, through `transform`; the label as a tensor
    (a class id, a 0/1 vector or the target(s)). `samples` and `transform` are what the feature
    cache keys on, as for ImageFolder."""

    def __init__(self, samples: Sequence[tuple[str, Any]], transform: Any) -> None:
        self.samples, self.transform = list(samples), transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(rgb_loader(self.samples[i][0])), self.label(i)

    def label(self, i: int) -> torch.Tensor:
        return torch.as_tensor(self.samples[i][1])


class ImageCsvDataModule(ImageDataModule):
    """The images of `train_file` (+ optional `val_file`, `test_file`), labels read as `task_type`
    reads them; held-out splits and CV folds carved from train as for the other data modules.

    Every image is decoded once at setup: unreadable ones are dropped and counted (with their
    rows) in `data_report`; a table whose images are all unreadable is an error."""

    def __init__(
        self,
        processor: ImagePreprocessing,
        train_file: str,
        root: str | None = None,
        val_file: str | None = None,
        test_file: str | None = None,
        image_column: str = "image",
        label_column: str = "label",
        label_columns: list[str] | None = None,
        label_names: list[str] | None = None,
        task_type: str = "multiclass",
        delimiter: str | None = None,
        header: bool = True,
        column_names: list[str] | None = None,
        quoting: str | None = None,
        val_fraction: float = 0.2,
        test_fraction: float | None = 0.1,
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
        super().__init__(
            processor,
            root=str(image_root(root, train_file)),
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            augment=augment,
            color_jitter=color_jitter,
            mixup_alpha=mixup_alpha,
            cutmix_alpha=cutmix_alpha,
            num_workers=num_workers,
            cache_images=cache_images,
            seed=seed,
            folds=folds,
            fold=fold,
        )
        self.task_type = task_type
        # what src/data/image_table.py reads: the same settings train checks before heavy imports
        self.table = {
            "root": str(self.root),
            "train_file": train_file,
            "val_file": val_file,
            "test_file": test_file,
            "image_column": image_column,
            "label_column": label_column,
            "label_columns": list(label_columns) if label_columns else None,
            "label_names": list(label_names) if label_names else None,
            "task_type": task_type,
            "delimiter": delimiter,
            "header": header,
            "column_names": list(column_names) if column_names else None,
            "quoting": quoting,
        }

    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        table = read_image_table(self.table)
        self.label_names = table.label_names
        rows = {
            split: self._readable(split, table.files[split], table.paths[split], labels)
            for split, labels in table.labels.items()
        }
        train_transform = build_transforms(self.pre, self.augment, self.color_jitter)
        eval_transform = build_transforms(self.pre, False, self.color_jitter)
        carved = carve_splits(
            [label for _, label in rows["train"]],
            self.task_type,
            "val" in rows,
            "test" in rows,
            self.val_fraction,
            self.test_fraction,
            self.seed,
            self.folds,
            self.fold,
        )
        train = ImageRows(rows["train"], train_transform)
        full = len(carved["train"]) == len(train)
        splits: dict[str, Dataset] = {"train": train if full else Subset(train, carved["train"])}
        held_out = ImageRows(rows["train"], eval_transform)
        for split in ("val", "test"):
            if split in carved:
                splits[split] = Subset(held_out, carved[split])
            elif split in rows:
                splits[split] = ImageRows(rows[split], eval_transform)
        if "test" not in splits and self.folds and "val" in rows:
            # Cross-validation folds the training table; a val table becomes the test split, so
            # every fold is tested on the same held-out images.
            splits["test"] = ImageRows(rows["val"], eval_transform)
        if "test" not in splits:
            log.warning(
                "data: no data.test_file and data.test_fraction=%s: the val split, which picks "
                "the best checkpoint, is reported as test (optimistic); set data.test_file or "
                "data.test_fraction",
                self.test_fraction,
            )
            splits["test"] = splits["val"]
        self._publish(splits)

    def _readable(
        self, split: str, file: str, paths: list[str], labels: list[Any]
    ) -> list[tuple[str, Any]]:
        """(path, label) of the rows whose image PIL decodes; the others dropped and counted."""
        for path in paths:
            if path not in self._probes:
                self._probes[path] = probe_image(path)
        bad = [(row, path) for row, path in enumerate(paths) if self._probes[path][1] is not None]
        self._dropped[split] = {
            "count": len(bad),
            "reason": "unreadable image",
            "paths": [
                f"{path} (row {row + 1} of {file}): {self._probes[path][1]}"
                for row, path in bad[:MAX_LISTED]
            ],
        }
        if len(bad) == len(paths):
            row, path = bad[0]
            raise DataError(
                f"cannot read image {path}: {self._probes[path][1]} (row {row + 1} of {file}); "
                f"no readable image in {file}"
            )
        return [
            (p, label) for p, label in zip(paths, labels, strict=True) if not self._probes[p][1]
        ]
