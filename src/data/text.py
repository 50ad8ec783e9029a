"""Text classification data: `datasets` loading, cached tokenization, dynamic padding."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from src.data.length_grouping import NoisySortedBatchSampler, length_grouping
from src.data.report import build_report, length_summary, warn_about
from src.data.resumable import resumable_train_loader
from src.data.text_files import DEFAULT_READ, load_local_split
from src.data.text_rows import (
    column_values,
    columns,
    drop_empty_texts,
    html_summary,
    strip_html_columns,
)
from src.data.workers import loader_workers
from src.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def _file_identity(path: str | None) -> list[Any] | None:
    if not path:
        return None
    st = Path(path).expanduser().stat()
    return [str(Path(path).expanduser().resolve()), st.st_size, st.st_mtime_ns]


def _tokenizer_fingerprint(tokenizer: Any) -> str:
    """What decides the token ids: vocab, normalizer, pre-tokenizer, model; not the truncation
    and padding state, which the backend keeps from its last call."""
    if not hasattr(tokenizer, "backend_tokenizer"):
        return str(tokenizer.name_or_path)
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    spec.pop("truncation", None)
    spec.pop("padding", None)
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


class TextDataModule(L.LightningDataModule):
    """Train/val/test splits from local files (or the hub), tokenized once and cached on disk.

    Validation is carved from train (seeded, stratified) when there is no val file; when there
    is no test file, the validation split doubles as the test split. Rows whose text is empty,
    whitespace or missing are dropped (and counted in `data_report`).
    """

    data_report: dict[str, Any] | None = None  # set by setup(); see src/data/report.py

    def __init__(
        self,
        processor: Any,
        train_file: str | None,
        test_file: str | None = None,
        val_file: str | None = None,
        hub: dict[str, Any] | None = None,
        text_column: str = "text",
        text_pair_column: str | None = None,
        label_column: str = "label",
        label_names: list[str] | None = None,
        label_columns: list[str] | None = None,
        task_type: str = "multiclass",
        val_fraction: float = 0.1,
        test_fraction: float | None = None,
        carve_whole_texts: bool = False,
        strip_html: bool = False,
        delimiter: str | None = None,
        header: bool = True,
        column_names: list[str] | None = None,
        quoting: str | None = None,
        limit_train: int | None = None,
        max_length: int = 128,
        batch_size: int = 32,
        eval_batch_size: int = 128,
        group_by_length: bool | str = "sorted",
        num_workers: int | str = 0,
        cache_dir: str = ".cache/tokenized",
        seed: int = 42,
        folds: int | None = None,
        fold: int | None = None,
    ) -> None:
        super().__init__()
        self.tokenizer = processor
        self.files = {"train": train_file, "val": val_file, "test": test_file}
        self.hub = dict(hub) if hub else None
        self.text_columns = [str(c) for c in (text_column, text_pair_column) if c is not None]
        self.label_column = str(label_column)
        self.label_names = list(label_names) if label_names else None
        # multiclass: a class per example; multilabel: a label set (or one 0/1 column per label
        # in `label_columns`); regression: a number (or one per column in `label_columns`)
        self.task_type = task_type
        self.label_columns = [str(c) for c in label_columns] if label_columns else None
        self.read = {
            "quoting": quoting,
            "header": header is not False,
            "column_names": list(column_names) if column_names else None,
        }
        self.val_fraction = val_fraction
        # Without a test file, this fraction of train is held out as the test split (null: the
        # val split is also reported as test, with a warning).
        self.test_fraction = test_fraction
        # Carve held-out splits from texts that are not part of another, and drop from train
        # the texts inside them (data of sentences and their phrases: src/data/whole_texts.py).
        self.carve_whole_texts = carve_whole_texts
        if carve_whole_texts not in (True, False):
            raise ConfigError(f"data.carve_whole_texts={carve_whole_texts!r}: true or false")
        if carve_whole_texts and (text_pair_column is not None or folds):
            raise ConfigError(
                "data.carve_whole_texts=true carves val / test from single texts: not with "
                + ("data.text_pair_column" if text_pair_column is not None else "data.folds")
            )
        self.strip_html = strip_html
        self.delimiter = delimiter
        self.limit_train = limit_train
        self.max_length = max_length
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.group_by_length = length_grouping(group_by_length)
        self.num_workers = loader_workers(num_workers)
        self.cache_dir = cache_dir
        self.seed = seed
        # Cross-validation: val is fold `fold` of `folds` stratified folds of train.
        self.folds, self.fold = folds, fold
        self.splits: dict[str, Any] | None = None

    # ------------------------------------------------------------------ loading

    @property
    def num_classes(self) -> int:
        return len(self.label_names or [])

    def _raw_splits(self) -> dict[str, Any]:
        """Raw splits from local files, or from the hub when the train file is missing."""
        train_file = self.files["train"]
        if train_file and Path(train_file).expanduser().is_file():
            datasets_cache = str(Path(self.cache_dir).parent / "datasets")
            return {
                s: load_local_split(f, datasets_cache, self.delimiter, **self.read)
                for s, f in self.files.items()
                if f
            }
        if not self.hub:
            load_local_split(
                str(train_file), "", self.delimiter
            )  # raises the "file not found" error
        return self._hub_splits(train_file)

    def _hub_splits(self, missing: str | None) -> dict[str, Any]:
        from datasets import load_dataset

        hub = self.hub
        try:
            raw = load_dataset(hub["path"], hub.get("name"))
        except Exception as e:
            raise DataError(
                f"data file not found: {missing}, and {hub['path']}/{hub.get('name')} could not "
                f"be loaded from the Hugging Face hub ({type(e).__name__}). Either set "
                "paths.data_dir=DIR (or FTLAB_DATA_DIR) to a folder holding the local copy, or "
                "run with internet access"
            ) from e
        return {s: raw[hub[f"{s}_split"]] for s in SPLITS if hub.get(f"{s}_split")}

    def _check_columns(self, split: str, ds: Any) -> None:
        for col in [*self.text_columns, *(self.label_columns or [self.label_column])]:
            if col not in ds.column_names:
                raise DataError(
                    f"column {col!r} not in the {split} data; columns found: "
                    f"{', '.join(ds.column_names)} (set data.text_column / data.label_column)"
                )

    def _encode_labels(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Labels as the task type reads them (src/data/labels.py): class ids 0..K-1 (the classes
        come from the train split, or data.label_names), 0/1 vectors or regression targets; a
        val / test label that does not fit is an error naming the label, the file and the row."""
        from src.data.labels import encode_labels

        cols = self.label_columns or [self.label_column]
        self.label_names, encoded = encode_labels(
            self.task_type,
            {s: columns(ds, cols) for s, ds in raw.items()},
            self.files,
            self.label_column,
            self.label_columns,
            self.label_names,
        )
        return {
            s: ds.remove_columns([c for c in ("labels",) if c in ds.column_names]).add_column(
                "labels", encoded[s]
            )
            for s, ds in raw.items()
        }

    def _cache_key(self) -> str:
        tok = self.tokenizer
        spec = {
            "files": {s: _file_identity(f) for s, f in self.files.items()},
            "hub": self.hub if not _file_identity(self.files["train"]) else None,
            "tokenizer": _tokenizer_fingerprint(tok),
            "columns": [self.text_columns, self.label_column, self.label_names],
            "max_length": self.max_length,
            "val": [self.val_fraction, self.seed, self.limit_train, self.folds, self.fold],
            "test": self.test_fraction,
            "read": [self.delimiter, self.strip_html],
            # 2: empty texts dropped, data_report.json stored with the entry; 3: classes from
            # the train split, test carved with test_fraction, HTML counted; 4: val / test keep
            # their texts (errors.csv names the misclassified examples)
            "version": 4,
        }
        if self.carve_whole_texts:
            spec["carve_whole_texts"] = True
        # multiclass with the default reading: the key of earlier versions (caches stay valid)
        if self.task_type != "multiclass" or self.read != DEFAULT_READ:
            spec["labels"] = [self.task_type, self.label_columns]
            spec["read_file"] = self.read
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:20]

    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        from datasets import DatasetDict, load_from_disk

        train_file = self.files["train"]
        has_local = bool(train_file) and Path(train_file).expanduser().is_file()
        cache = Path(self.cache_dir) / self._cache_key() if has_local else None
        if cache is not None and (cache / "dataset_dict.json").is_file():
            self.splits = dict(load_from_disk(str(cache)))
            self.label_names = json.loads((cache / "label_names.json").read_text())
            self.data_report = json.loads((cache / "data_report.json").read_text())
            log.info("tokenized data loaded from cache %s", cache)
            warn_about(self.data_report)
            return
        raw = self._raw_splits()
        for split, ds in raw.items():
            self._check_columns(split, ds)
            if len(ds) == 0:
                raise DataError(f"the {split} split is empty ({self.files.get(split)})")
        raw = self._encode_labels(raw)  # before any row is dropped: errors name file rows
        raw, dropped = drop_empty_texts(raw, self.text_columns, self.files)
        html = html_summary(raw["train"], self.text_columns, self.strip_html)
        if self.strip_html:
            raw = {s: strip_html_columns(ds, self.text_columns) for s, ds in raw.items()}
        raw = self._carve_validation(raw)
        splits: dict[str, Any] = {}
        for split, ds in raw.items():
            same = next((s for s in splits if raw[s] is ds), None)  # test is val: tokenize once
            splits[split] = splits[same] if same else self._tokenize(ds, split != "train")
        self.data_report = {**self._report(raw, splits, dropped), "html": html}
        splits = {s: ds.remove_columns("n_tokens") for s, ds in splits.items()}
        warn_about(self.data_report)
        if cache is not None:
            tmp = cache.with_name(cache.name + f".tmp{os.getpid()}")
            DatasetDict(splits).save_to_disk(str(tmp))
            (tmp / "label_names.json").write_text(json.dumps(self.label_names))
            (tmp / "data_report.json").write_text(json.dumps(self.data_report))
            try:
                # Atomic: a killed run never leaves a half-written cache entry.
                os.replace(tmp, cache)
            except OSError:
                # Another process (a parallel sweep trial) published the same entry first; it is
                # identical and may be in use (memory-mapped), so keep it and drop ours.
                shutil.rmtree(tmp, ignore_errors=True)
            splits = dict(load_from_disk(str(cache)))
        self.splits = splits

    def setup_test_only(self) -> None:
        """Only `test_file`, its labels read as the classes `label_names` (a checkpoint's): what
        src.eval tests a trained run on, with no training data. Not cached (read once)."""
        from src.data.labels import encode_labels

        if not self.files["test"] or not self.label_names:
            raise DataError("a test-only data module needs data.test_file and data.label_names")
        datasets_cache = str(Path(self.cache_dir).parent / "datasets")
        ds = load_local_split(self.files["test"], datasets_cache, self.delimiter, **self.read)
        self._check_columns("test", ds)
        cols = self.label_columns or [self.label_column]
        self.label_names, encoded = encode_labels(
            self.task_type,
            {"test": columns(ds, cols)},
            self.files,
            self.label_column,
            self.label_columns,
            self.label_names,
            label_source="of the checkpoint",
        )
        ds = ds.remove_columns([c for c in ("labels",) if c in ds.column_names])
        raw, dropped = drop_empty_texts(
            {"test": ds.add_column("labels", encoded["test"])}, self.text_columns, self.files
        )
        if dropped["test"]["count"]:
            log.warning(
                "data: %d test rows dropped (%s)",
                dropped["test"]["count"],
                dropped["test"]["reason"],
            )
        test = raw["test"]
        if self.strip_html:
            test = strip_html_columns(test, self.text_columns)
        test = self._tokenize(test, keep_texts=True).remove_columns("n_tokens")
        self.splits = {"val": test, "test": test}

    def _report(
        self, raw: dict[str, Any], tokenized: dict[str, Any], dropped: dict[str, Any]
    ) -> dict[str, Any]:
        """data_report.json: counts, drops, duplicates and leakage, untruncated token lengths."""

        def keys(ds: Any) -> list[Any]:
            texts = [[str(t).strip() for t in col] for col in columns(ds, cols).values()]
            return texts[0] if len(texts) == 1 else list(zip(*texts, strict=True))

        cols = self.text_columns
        test_is_val = raw.get("test") is raw.get("val")
        key_lists = {s: keys(ds) for s, ds in raw.items() if not (s == "test" and test_is_val)}
        if test_is_val:
            key_lists["test"] = key_lists["val"]
        return build_report(
            labels={s: columns(ds, ["labels"])["labels"] for s, ds in raw.items()},
            task_type=self.task_type,
            keys=key_lists,
            label_names=self.label_names,
            dropped=dropped,
            test_is_val=test_is_val,
            token_lengths={
                "max_length": self.max_length,
                "splits": {
                    s: length_summary(columns(ds, ["n_tokens"])["n_tokens"], self.max_length)
                    for s, ds in tokenized.items()
                },
            },
        )

    def _carve_validation(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Held-out splits carved from train where there is no file for them (seeded and
        stratified, so small splits keep the class balance): test first (`test_fraction`, when
        there is no test file), then val (`val_fraction` of the rest) or the CV fold."""
        from datasets import ClassLabel

        from src.data.splits import fold_split, fold_targets, stratified_split
        from src.data.whole_texts import carve_whole_texts

        train = raw["train"]
        if self.limit_train is not None and self.limit_train < len(train):
            train = train.shuffle(seed=self.seed).select(range(self.limit_train))

        def carve(ds: Any, fraction: float) -> tuple[Any, Any]:
            if self.carve_whole_texts:
                texts = column_values(ds, self.text_columns[0])
                strata = self._split_targets(ds)
                keep, held = carve_whole_texts(texts, strata, fraction, self.seed)
                return ds.select(keep), ds.select(held)
            if self.task_type != "multiclass":  # seeded, stratified on split_targets
                keep, held = stratified_split(self._split_targets(ds), fraction, self.seed)
                return ds.select(keep), ds.select(held)
            ds = ds.cast_column("labels", ClassLabel(names=self.label_names))
            parts = ds.train_test_split(
                test_size=fraction, seed=self.seed, stratify_by_column="labels"
            )
            return parts["train"], parts["test"]

        if "test" not in raw and self.test_fraction and not ("val" in raw and self.folds):
            train, raw["test"] = carve(train, self.test_fraction)
        if self.folds:
            # Cross-validation folds the training data; a val file becomes the test split
            # (when there is no test file), so every fold is tested on the same held-out data.
            # multi-label: iterative stratification on the label sets
            targets = fold_targets(self.task_type, column_values(train, "labels"))
            train_idx, val_idx = fold_split(targets, self.folds, self.fold, self.seed)
            if "val" in raw:
                raw.setdefault("test", raw["val"])
            train, raw["val"] = train.select(train_idx), train.select(val_idx)
        elif "val" not in raw:
            train, raw["val"] = carve(train, self.val_fraction)
        raw["train"] = train
        if "test" not in raw:
            log.warning(
                "data: no test file and data.test_fraction=%s: the val split, which picks the "
                "best checkpoint, is reported as test (optimistic); set data.test_file or "
                "data.test_fraction",
                self.test_fraction,
            )
            raw["test"] = raw["val"]
        return raw

    def _split_targets(self, ds: Any) -> list[Any]:
        """What held-out splits and folds are stratified on (src/data/splits.py)."""
        from src.data.splits import split_strata

        return split_strata(self.task_type, column_values(ds, "labels"))

    def _tokenize(self, ds: Any, keep_texts: bool = False) -> Any:
        """Token ids truncated to max_length, their `length`, and `n_tokens` (untruncated);
        `keep_texts`: the text column(s) too (held-out splits: the error analysis shows them)."""
        cols = self.text_columns
        tok, max_length = self.tokenizer, self.max_length

        def encode(batch: dict[str, list]) -> dict[str, Any]:
            texts = [batch[c] for c in cols]
            # Untruncated first (the report needs the full lengths); only the few rows that
            # overflow are encoded again with truncation, so the ids equal one truncating pass.
            enc = tok(*texts, truncation=False, verbose=False)
            enc = {k: list(v) for k, v in enc.items()}
            enc["n_tokens"] = [len(ids) for ids in enc["input_ids"]]
            long = [i for i, n in enumerate(enc["n_tokens"]) if n > max_length]
            if long:
                cut = tok(
                    *[[t[i] for i in long] for t in texts], truncation=True, max_length=max_length
                )
                for key, values in cut.items():
                    for i, v in zip(long, values, strict=True):
                        enc[key][i] = v
            enc["length"] = [len(ids) for ids in enc["input_ids"]]
            return enc

        keep = {"labels", *(cols if keep_texts else ())}
        return ds.map(
            encode,
            batched=True,
            remove_columns=[c for c in ds.column_names if c not in keep],
            desc="tokenize",
        )

    # ------------------------------------------------------------------ loaders

    def _collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        for f in features:
            for name in ("length", *self.text_columns):
                f.pop(name, None)
        return self.tokenizer.pad(features, return_tensors="pt")

    def train_dataloader(self) -> DataLoader:
        ds = self.splits["train"]
        make_sampler = None
        if self.group_by_length == "megabatch":
            from transformers.trainer_pt_utils import LengthGroupedSampler

            # Random megabatches of 50 batches, sorted by length inside: little padding, and
            # the order still changes every epoch (seeded).
            make_sampler = functools.partial(
                LengthGroupedSampler, self.batch_size, lengths=column_values(ds, "length")
            )
        elif self.group_by_length == "sorted":
            make_sampler = functools.partial(
                NoisySortedBatchSampler, self.batch_size, column_values(ds, "length")
            )

        # Epoch-seeded and resumable: a run killed mid-epoch resumes on the same batches.
        return resumable_train_loader(
            ds,
            self.batch_size,
            self.seed,
            make_sampler,
            collate_fn=self._collate,
            num_workers=self.num_workers,
        )

    def _eval_order(self, split: str) -> list[int]:
        """The order an eval loader serves `split` in: by length, far less padding (metrics do
        not depend on the order)."""
        lengths = column_values(self.splits[split], "length")
        return sorted(range(len(lengths)), key=lengths.__getitem__)

    def examples(self, split: str) -> dict[str, list[str]]:
        """The text column(s) of held-out `split`, in the order its loader serves them."""
        ds = self.splits[split]
        if not all(c in ds.column_names for c in self.text_columns):
            return {}
        order = self._eval_order(split)
        return {c: [str(v[i]) for i in order] for c, v in columns(ds, self.text_columns).items()}

    def _eval_loader(self, split: str) -> DataLoader:
        ds = self.splits[split]
        return DataLoader(
            ds.select(self._eval_order(split)),
            batch_size=self.eval_batch_size,
            collate_fn=self._collate,
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")
