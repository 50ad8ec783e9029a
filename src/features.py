"""The frozen-feature cache: feature extraction trains the head on stored backbone features.

With `finetune=feature_extraction` the backbone is frozen and in eval mode, so for a
deterministic train transform its output for an example never changes: it is computed once
(under the run's precision, on its device), stored under `<paths.cache_dir>/features/<key>/`,
and every epoch after that runs the head only. The batches are the ones the uncached run would
see (the same epoch-seeded sampler, the same eval batches), so the metrics match it.

The key covers the network (architecture, config, a hash of the frozen weights), the data (the
split contents: file lists with sizes and mtimes, or the tokenized data's fingerprint; the
tokenization key; the split carving, folds included), the preprocessing (transforms, max_length),
the precision and device kind. Any change gives a new key; entries are never overwritten.

`finetune.feature_cache`: auto (on where exact), true (fail where not), false. It is off with
train-time augmentation, with any trainable backbone group (other strategies), for networks
whose head cannot run apart, and (auto) for fast_dev_run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset, Subset

from src.data.text_rows import column_values
from src.errors import ConfigError
from src.finetune import feature_cache_setting
from src.models.networks import Network

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: JPEGs decoded by torchvision (src/data/image.py: rgb_loader)
SPLITS = ("train", "val", "test")
# datamodule attributes that decide what lands in which split or how it is preprocessed
DATA_SETTINGS = ("max_length", "val_fraction", "limit_train", "seed", "folds", "fold", "augment")


def maybe_cache_features(
    cfg: DictConfig, datamodule: L.LightningDataModule, module: L.LightningModule
) -> L.LightningDataModule:
    """`datamodule`, or a `CachedFeatureDataModule` over it where the cache is on (logged)."""
    setting = feature_cache_setting(cfg.get("finetune"))
    blocker = feature_cache_blocker(cfg, datamodule, module.network)
    identity = _data_identity(datamodule) if blocker is None else None
    if blocker is None and identity is None:
        blocker = f"cannot identify the data of {type(datamodule).__name__} for the cache key"
    if blocker is not None and setting is True:
        raise ConfigError(
            f"finetune.feature_cache=true, but cached features would change results: {blocker} "
            "(set finetune.feature_cache=auto to run uncached)"
        )
    if blocker is not None:
        log.info("feature cache off: %s", blocker)
        return datamodule
    log.info("feature cache on: frozen backbone in eval mode, deterministic train transform")
    cache_root = Path(cfg.paths.cache_dir) / "features"
    return CachedFeatureDataModule(datamodule, module.network, cache_root, identity)


def feature_cache_blocker(
    cfg: DictConfig, datamodule: L.LightningDataModule, network: Network
) -> str | None:
    """Why cached features would not be exact, or are not wanted (None: cache them)."""
    finetune = cfg.get("finetune") or {}
    strategy = str(finetune.get("strategy", "full"))
    setting = feature_cache_setting(finetune)
    if strategy != "feature_extraction":
        return f"finetune={strategy} trains backbone groups"
    if setting is False:
        return "finetune.feature_cache=false"
    augment = getattr(datamodule, "augment", False)
    if augment:
        from src.data.augment import describe

        return f"{describe(augment)} makes the train transform random (features differ per epoch)"
    mixing = [k for k in ("mixup_alpha", "cutmix_alpha") if getattr(datamodule, k, None)]
    if mixing:
        return (
            f"data.{mixing[0]} mixes the training images of each batch (features differ per epoch)"
        )
    blocker = network.feature_cache_blocker()
    if blocker is not None:
        return blocker
    if setting == "auto" and (cfg.get("trainer") or {}).get("fast_dev_run"):
        return "trainer.fast_dev_run runs a few batches, not worth a pass over all the data"
    return None


# --------------------------------------------------------------------------- the data module


class FeatureDataset(Dataset):
    """{"features", "labels"} rows of stored features."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.features, self.labels = tensors["features"], tensors["labels"]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"features": self.features[i], "labels": self.labels[i]}


class _EvalFeatureLoader(DataLoader):
    """Draws from the global RNG as the loader it stands in for does: a loader with persistent
    workers draws its worker seed once, a plain one at every epoch. The draws move the RNG that
    the head's dropout uses at the next training step, so they must match the uncached run."""

    def __init__(self, dataset: Dataset, batch_size: int, draws_once: bool) -> None:
        super().__init__(dataset, batch_size=batch_size)
        self._draws_once, self._drawn = draws_once, False

    def __iter__(self):
        if self._draws_once and self._drawn:
            with torch.random.fork_rng(devices=[]):
                return super().__iter__()
        self._drawn = True
        return super().__iter__()


class CachedFeatureDataModule(L.LightningDataModule):
    """Serves `{"features", "labels"}` batches of `data` in the order `data` serves its own.

    Features are loaded or computed at the first loader request inside a fit/test, when the
    network is on its device under the trainer's precision. Outside one (e.g. lr_find counting
    batches) the wrapped loaders are returned, which have the same length.
    """

    def __init__(
        self,
        data: L.LightningDataModule,
        network: Network,
        cache_root: Path,
        data_identity: Any,
    ) -> None:
        super().__init__()
        self.data, self.network, self.cache_root = data, network, Path(cache_root)
        self.data_identity = data_identity
        self.cache_dir: Path | None = None  # the entry in use
        self.computed = False  # whether this run computed the entry (False: a cache hit)
        self._tensors: dict[str, dict[str, torch.Tensor]] | None = None

    def prepare_data(self) -> None:
        self.data.prepare_data()

    def setup(self, stage: str) -> None:
        self.data.setup(stage)

    def __getattr__(self, name: str) -> Any:
        # the rest of the wrapped data module's interface (data_report, splits, ...)
        if name == "data":
            raise AttributeError(name)
        return getattr(self.data, name)

    def train_dataloader(self) -> DataLoader:
        loader = self.data.train_dataloader()
        if self.trainer is None:
            return loader
        data = FeatureDataset(self._features()["train"])
        # The wrapped loader's own sampler (epoch-seeded, length-grouped for text): same batches.
        kwargs: dict[str, Any] = {"generator": loader.generator}
        if loader.batch_size is None:
            kwargs["batch_sampler"] = loader.batch_sampler
        else:
            kwargs.update(
                batch_size=loader.batch_size, sampler=loader.sampler, drop_last=loader.drop_last
            )
        return type(loader)(data, **kwargs)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def _eval_loader(self, split: str) -> DataLoader:
        loader = getattr(self.data, f"{split}_dataloader")()
        if self.trainer is None:
            return loader
        draws_once = bool(loader.persistent_workers and loader.num_workers > 0)
        data = FeatureDataset(self._features()[split])
        return _EvalFeatureLoader(data, int(loader.batch_size), draws_once)

    # ------------------------------------------------------------------ the cache entry

    def _features(self) -> dict[str, dict[str, torch.Tensor]]:
        if self._tensors is None:
            self._tensors = self._load_or_compute()
        return self._tensors

    def _key(self) -> str:
        trainer = self.trainer
        spec = {
            "version": CACHE_VERSION,
            "network": self.network.feature_identity(),
            "data": self.data_identity,
            "batch_sizes": {s: self._compute_batch_size(s) for s in SPLITS},
            "precision": str(trainer.precision),
            "device": self._device().type,
        }
        text = json.dumps(spec, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def _load_or_compute(self) -> dict[str, dict[str, torch.Tensor]]:
        key = self._key()
        entry = self.cache_root / key
        self.cache_dir = entry
        if (entry / "meta.json").is_file():
            log.info("feature cache hit: %s", entry)
            return _load_entry(entry)
        log.info("feature cache miss: computing the backbone's features once (%s)", entry)
        tensors = self._compute()
        self.computed = True
        _publish_entry(
            entry, tensors, {"key": key, "sizes": {s: len(t["labels"]) for s, t in tensors.items()}}
        )
        return tensors

    def _device(self) -> torch.device:
        return next(self.network.parameters()).device

    def _compute_batch_size(self, split: str) -> int:
        if split == "train":
            return int(
                getattr(self.data, "eval_batch_size", None)
                or self.data.train_dataloader().batch_size
            )
        return int(getattr(self.data, f"{split}_dataloader")().batch_size)

    def _compute(self) -> dict[str, dict[str, torch.Tensor]]:
        """Every split's features, in eval mode, under no_grad and the trainer's precision; the
        global RNG is left as it was (the uncached run does not draw from it here)."""
        network = self.network
        device = self._device()
        modes = {m: m.training for m in network.modules()}
        cuda = [device.index or 0] if device.type == "cuda" else []
        out: dict[str, dict[str, torch.Tensor]] = {}
        network.eval()
        try:
            with torch.random.fork_rng(devices=cuda), torch.no_grad():
                splits = getattr(self.data, "splits", None) or {}
                for split in SPLITS:
                    same_as_val = split == "test" and splits.get("test") is splits.get("val")
                    if same_as_val and self._compute_batch_size("test") == self._compute_batch_size(
                        "val"
                    ):
                        out[split] = out["val"]
                        continue
                    loader, order = self._compute_loader(split)
                    out[split] = self._run(loader, order, device)
        finally:
            for m, training in modes.items():
                m.train(training)
        return out

    def _compute_loader(self, split: str) -> tuple[DataLoader, list[int] | None]:
        """A loader over `split` and, for train, the example order it yields (None: as served)."""
        if split != "train":
            return getattr(self.data, f"{split}_dataloader")(), None
        train = self.data.train_dataloader()
        ds = train.dataset
        order = list(range(len(ds)))
        if "length" in (getattr(ds, "column_names", None) or []):
            # shortest first: batches of similar lengths, little padding
            order.sort(key=column_values(ds, "length").__getitem__)
        loader = DataLoader(
            Subset(ds, order),
            batch_size=self._compute_batch_size("train"),
            collate_fn=train.collate_fn,
            num_workers=int(getattr(self.data, "num_workers", 0) or 0),
        )
        return loader, order

    def _run(
        self, loader: DataLoader, order: list[int] | None, device: torch.device
    ) -> dict[str, torch.Tensor]:
        precision = self.trainer.precision_plugin
        features, labels = [], []
        for batch in loader:
            batch = dict(batch)
            labels.append(batch.pop("labels"))
            batch = precision.convert_input(move_data_to_device(batch, device))
            with precision.forward_context():
                features.append(self.network.features(batch).cpu())
        tensors = {"features": torch.cat(features), "labels": torch.cat(labels)}
        if order is not None:  # back to the dataset's own order
            index = torch.tensor(order)
            for name, t in tensors.items():
                restored = torch.empty_like(t)
                restored[index] = t
                tensors[name] = restored
        return tensors


def _load_entry(entry: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {s: torch.load(entry / f"{s}.pt", map_location="cpu", weights_only=True) for s in SPLITS}


def _publish_entry(entry: Path, tensors: dict[str, dict[str, torch.Tensor]], meta: dict) -> None:
    """Atomically: a killed run never leaves half an entry; a parallel run's entry wins."""
    tmp = entry.with_name(f"{entry.name}.tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    for split, t in tensors.items():
        torch.save(t, tmp / f"{split}.pt")
    (tmp / "meta.json").write_text(json.dumps(meta, sort_keys=True))
    try:
        os.replace(tmp, entry)
    except OSError:
        # Another process (a parallel sweep trial) published the same key first: identical.
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- the data's identity


def _data_identity(datamodule: L.LightningDataModule) -> Any:
    """What is in each split (in order) and how it is preprocessed; None: unknown data."""
    splits = getattr(datamodule, "splits", None)
    if not splits:
        return None
    identity: dict[str, Any] = {
        "datamodule": type(datamodule).__qualname__,
        "settings": {k: getattr(datamodule, k) for k in DATA_SETTINGS if hasattr(datamodule, k)},
    }
    cache_key = getattr(datamodule, "_cache_key", None)  # text: files, tokenizer, max_length, ...
    if callable(cache_key):
        identity["tokenized"] = cache_key()
    for split in SPLITS:
        content = _dataset_identity(splits.get(split))
        if content is None:
            return None
        identity[split] = hashlib.sha256(
            json.dumps(content, sort_keys=True, default=str).encode()
        ).hexdigest()
    return identity


def _dataset_identity(ds: Any) -> Any:
    if ds is None:
        return None
    if isinstance(ds, Subset):
        inner = _dataset_identity(ds.dataset)
        return None if inner is None else ["subset", [int(i) for i in ds.indices], inner]
    fingerprint = getattr(ds, "_fingerprint", None)  # a `datasets.Dataset`: content + history
    if fingerprint is not None:
        return ["datasets", len(ds), fingerprint]
    if hasattr(ds, "samples") and hasattr(ds, "transform"):  # torchvision ImageFolder
        files = [[path, target, *_stat(path)] for path, target in ds.samples]
        return ["folder", repr(ds.transform), files]
    if hasattr(ds, "base"):  # a wrapper turning rows into batch dicts
        inner = _dataset_identity(ds.base)
        return None if inner is None else [type(ds).__qualname__, inner]
    return None


def _stat(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns
