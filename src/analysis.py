"""Error analysis of every test: `test/ece` (calibration), `per_class.csv` / `per_class.json`
(precision, recall, F1, support per class, with averages) and `errors.csv` (the misclassified
examples, most confident first) in the run dir. What each task type reports is its task object's
`analyse` (src/tasks/analysis.py); this callback collects the epoch and writes the files.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import Subset

from src.atomic import atomic_path, write_json_atomic
from src.tasks.objectives import EpochOutputs

log = logging.getLogger(__name__)

PER_CLASS_CSV, PER_CLASS_JSON, ERRORS_CSV = "per_class.csv", "per_class.json", "errors.csv"


class ErrorAnalysis(Callback):
    """Collects each test batch's logits (what `Classifier.test_step` returns) and labels; at the
    epoch's end logs `test/ece` (also in `metrics`, for metrics.json) and writes the files into
    `output_dir`."""

    def __init__(self, output_dir: str | Path, split: str = "test") -> None:
        self.output_dir, self.split = Path(output_dir), split
        self.metrics: dict[str, float] = {}
        self.outputs = EpochOutputs()

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.outputs.reset()
        self.metrics = {}

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if isinstance(outputs, torch.Tensor):
            self.outputs.update(outputs, batch["labels"])

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.outputs.update_called:
            return
        logits, targets = (t.cpu() for t in self.outputs.compute())  # all processes' batches
        self.outputs.reset()
        analysis = pl_module.task.analyse(logits, targets)
        self.metrics = {f"{self.split}/{k}": v for k, v in analysis.metrics.items()}
        for key, value in self.metrics.items():  # the same on every process: no sync
            pl_module.log(key, value)
        if not trainer.is_global_zero:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if analysis.per_class is not None:
            write_per_class(self.output_dir, analysis.per_class)
        if analysis.errors is None:
            return
        if trainer.world_size > 1:  # the gathered order is not the loader's: no example to name
            log.info(
                "error analysis: %s not written under %d processes (src.eval writes it)",
                ERRORS_CSV,
                trainer.world_size,
            )
            return
        examples = example_columns(trainer.datamodule, self.split, len(logits))
        write_errors(self.output_dir / ERRORS_CSV, analysis.errors, examples)


def write_per_class(run_dir: Path, per_class: pd.DataFrame) -> None:
    with atomic_path(run_dir / PER_CLASS_CSV) as tmp:
        per_class.to_csv(tmp)
    write_json_atomic(run_dir / PER_CLASS_JSON, per_class.to_dict(orient="index"))


def write_errors(path: Path, errors: pd.DataFrame, examples: dict[str, list[str]]) -> None:
    """errors.csv: the examples (text column(s) or image path), then the task's columns."""
    positions = errors.index.tolist()
    named = {
        (name if name not in errors.columns else f"input_{name}"): [values[i] for i in positions]
        for name, values in examples.items()
    }
    table = pd.concat([pd.DataFrame(named, index=errors.index), errors], axis=1)
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)


def example_columns(datamodule: Any, split: str, n: int) -> dict[str, list[str]]:
    """What names each example of `split`, in loader order: the text column(s) (text data
    modules answer `examples`), or the image file paths; {} when unknown or not `n` long."""
    if datamodule is None:
        return {}
    if hasattr(datamodule, "examples"):
        found = datamodule.examples(split)
    else:
        found = image_paths(getattr(datamodule, "splits", None) or {}, split)
    if any(len(values) != n for values in found.values()):
        log.info("error analysis: the %s examples are not the tested ones: not named", split)
        return {}
    return found


def image_paths(splits: dict[str, Any], split: str) -> dict[str, list[str]]:
    """The files of an image split: batches wrap an ImageFolder / table of rows (or a Subset of
    one), each with its (path, label) `samples`; served in order."""
    ds = getattr(splits.get(split), "base", None)
    indices = None
    if isinstance(ds, Subset):
        indices, ds = list(ds.indices), ds.dataset
    samples = getattr(ds, "samples", None)
    if samples is None:
        return {}
    chosen = range(len(samples)) if indices is None else indices
    return {"image": [str(samples[i][0]) for i in chosen]}
