"""Labelled data other than a run's own test split, for `src.eval data.test_file=... | data.root=...`:
a table file (text tasks, image tables) or an image folder, read as the run reads its data, with
the checkpoint's classes. The training data need not exist.

`check_labelled_data` reads the files with pandas before anything heavy (a missing file, column,
or a label the checkpoint does not know is a one-line error); `labelled_datamodule` builds the
run's data module serving only that data (as both its val and test split).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from src.errors import ConfigError, DataError

TEXT = "src.data.text.TextDataModule"
IMAGE_TABLE = "src.data.image_csv.ImageCsvDataModule"
IMAGE_FOLDER = "src.data.image.ImageDataModule"
# Which keys of the eval config's `data` each kind of data module reads its new data from.
KEYS = {TEXT: ("test_file",), IMAGE_TABLE: ("test_file", "root"), IMAGE_FOLDER: ("root",)}
CHECKPOINT_CLASSES = "of the checkpoint"


def labelled_data_config(run_cfg: DictConfig, given: dict[str, Any]) -> DictConfig:
    """The run's data settings pointed at the `given` data (eval's data.test_file / data.root)
    and nothing else: no train or val file, no hub, no held-out fractions."""
    target = str(run_cfg.data.get("_target_"))
    valid = KEYS.get(target)
    if valid is None:
        raise ConfigError(f"src.eval cannot test this run ({target}) on other data")
    for key in given:
        if key not in valid:
            raise ConfigError(
                f"data.{key} is not read by task={run_cfg.task.name} ({target.rsplit('.', 1)[1]}); "
                f"give {' or '.join(f'data.{k}' for k in valid)}"
            )
    if target != IMAGE_FOLDER and "test_file" not in given:
        raise ConfigError(f"data.root needs data.test_file (task={run_cfg.task.name}: a table)")
    data = OmegaConf.to_container(run_cfg.data, resolve=True)
    if target == IMAGE_FOLDER:
        data["root"] = str(given["root"])
    else:
        test_file = str(Path(str(given["test_file"])).expanduser())
        if not Path(test_file).is_file():
            raise DataError(f"data.test_file={str(given['test_file'])!r}: no such file")
        data.update(train_file=None, val_file=None, test_file=test_file)
        if "hub" in data:
            data["hub"] = None
        if target == IMAGE_TABLE:  # the image paths are relative to the table's folder
            data["root"] = str(given.get("root") or Path(test_file).parent)
    data.update(val_fraction=None, test_fraction=None, folds=None, fold=None)
    return OmegaConf.create({k: v for k, v in data.items() if k in run_cfg.data or v is not None})


def check_labelled_data(data: DictConfig, label_names: list[str]) -> None:
    """The new data, read with pandas: the file parses and has the run's columns, every label
    is one of the checkpoint's (`label_names`); an image folder's classes too."""
    target = str(data.get("_target_"))
    if target == IMAGE_FOLDER:
        image_folder_samples(data, label_names)
        return
    from src.data.labels import encode_labels
    from src.data.preflight import label_columns_wanted, read_split_files

    wanted = dict(label_columns_wanted(data))
    if target == TEXT:
        wanted["data.text_column"] = data.get("text_column")
        wanted["data.text_pair_column"] = data.get("text_pair_column")
    else:
        wanted["data.image_column"] = data.get("image_column")
        root = Path(str(data.root)).expanduser()
        if not root.is_dir():
            raise DataError(f"data.root={str(root)!r} is not a folder (the images' folder)")
    file, frame = read_split_files(data, wanted)["test"]
    columns = list(dict.fromkeys(str(c) for c in label_columns_wanted(data).values()))
    encode_labels(
        str(data.get("task_type") or "multiclass"),
        {"test": {c: frame[c].tolist() for c in columns}},
        {"test": str(file)},
        str(data.get("label_column")),
        [str(c) for c in data.get("label_columns") or []] or None,
        label_names,
        label_source=CHECKPOINT_CLASSES,
    )


def image_folder_samples(data: DictConfig, label_names: list[str]) -> list[tuple[str, int]]:
    """(path, class id) of the images of `data.root`/<class>/ (or `data.root`/<test_dir>/<class>/
    when that folder exists: a run's own layout); a class folder the checkpoint does not know is
    an error naming it."""
    from torchvision.datasets.folder import find_classes, make_dataset

    from src.data.image import is_image_file

    root = Path(str(data.root)).expanduser()
    if not root.is_dir():
        raise DataError(f"data.root={str(root)!r} is not a folder (expected DIR/<class>/<image>)")
    if (root / str(data.get("test_dir") or "test")).is_dir():
        root = root / str(data.get("test_dir") or "test")
    try:
        classes, _ = find_classes(str(root))
    except FileNotFoundError as e:
        raise DataError(f"data.root={str(root)!r}: no class folder in it ({e})") from e
    unknown = [c for c in classes if c not in label_names]
    if unknown:
        raise DataError(
            f"data.root={str(root)!r}: class folder {unknown[0]!r} is not one of the "
            f"{len(label_names)} classes of the checkpoint: {label_names}"
        )
    ids = {c: label_names.index(c) for c in classes}
    samples = make_dataset(str(root), ids, is_valid_file=is_image_file, allow_empty=True)
    if not samples:
        raise DataError(f"data.root={str(root)!r}: no image in its class folders")
    return samples


def labelled_datamodule(data: DictConfig, label_names: list[str], processor: Any) -> Any:
    """The run's data module (`data`: from `labelled_data_config`) serving only the new data, as
    its val and test split, with the checkpoint's classes."""
    from hydra.utils import instantiate

    datamodule = instantiate(data, processor=processor, _recursive_=False)
    target = str(data.get("_target_"))
    if target == TEXT:
        datamodule.label_names = list(label_names)
        datamodule.setup_test_only()
        return datamodule
    if target == IMAGE_FOLDER:
        samples = image_folder_samples(data, label_names)
    else:
        from src.data.image_table import read_image_table

        table = read_image_table({**OmegaConf.to_container(data), "label_names": label_names})
        samples = list(zip(table.paths["test"], table.labels["test"], strict=True))
    images = readable_images(samples, datamodule.pre)
    datamodule.label_names = list(label_names)
    datamodule.splits = {"val": images, "test": images}  # setup() keeps splits already set
    return datamodule


def readable_images(samples: list[tuple[str, Any]], processor: Any) -> Any:
    """The samples PIL can decode, as the image data modules serve them (eval transform)."""
    import logging

    from src.data.image import _AsDict, build_transforms, probe_image
    from src.data.image_csv import ImageRows

    bad = [path for path, _ in samples if probe_image(path)[1] is not None]
    if len(bad) == len(samples):
        raise DataError(f"cannot read any image: {bad[0]}: {probe_image(bad[0])[1]}")
    if bad:
        logging.getLogger(__name__).warning(
            "data: %d unreadable images skipped (first: %s)", len(bad), bad[0]
        )
    skipped = set(bad)
    kept = [s for s in samples if s[0] not in skipped]
    return _AsDict(ImageRows(kept, build_transforms(processor, augment=False, color_jitter=0.0)))
