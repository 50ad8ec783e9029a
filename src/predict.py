"""`python -m src.predict ckpt_path=PATH text=... | input=FILE|FOLDER`: label new text or images.

Writes a CSV: the input (for a table file: all of its columns, in their order), the predicted label
name and one probability column per class. The model is rebuilt from the checkpoint alone
(config, weights, label names): no training data and no pretrained download are needed.

The input (src/predict_input.py) and the output path are checked before torch is imported and the
checkpoint read, so a mistyped path or column fails in about a second, not after the model has
loaded.
"""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from omegaconf import DictConfig, OmegaConf

import src  # noqa: F401  (registers the ${ftlab_root:} resolver)
from src.errors import ConfigError, ensure_writable_dir, exit_on_user_error, require_int
from src.predict_input import PredictInput, cell, check_columns, read_input

if TYPE_CHECKING:
    import torch


def resolve_device(name: str) -> torch.device:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ConfigError(f"device={name!r}; valid: auto, cpu, cuda, cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but no CUDA GPU is available; use device=cpu")
    return torch.device(name)


def output_path(cfg: DictConfig, source: PredictInput | None = None) -> Path:
    """The CSV to write: writable, and not the input itself."""
    out = (
        Path(str(cfg.out)).expanduser()
        if cfg.get("out")
        else Path(cfg.paths.output_dir) / "predictions.csv"
    )
    if out.is_dir() or not out.suffix:  # a folder (existing or not): the CSV goes inside
        out = out / "predictions.csv"
    if source is not None and source.path is not None and source.path.is_file():
        same = out.exists() and os.path.samefile(out, source.path)
        if same or out.resolve() == source.path.resolve():
            raise ConfigError(
                f"out={str(out)!r} is the input file: the predictions would overwrite it; "
                f"give another out=, e.g. out={str(out.with_name(out.stem + '_predictions.csv'))!r}"
            )
    ensure_writable_dir(out.parent, "out")
    return out


def check_predict_config(cfg: DictConfig) -> None:
    if OmegaConf.is_missing(cfg, "ckpt_path") or not cfg.ckpt_path:
        raise ConfigError("ckpt_path is not set: give ckpt_path=PATH/TO/best.ckpt")
    if not Path(str(cfg.ckpt_path)).expanduser().is_file():
        raise ConfigError(f"ckpt_path={str(cfg.ckpt_path)!r}: no such file")
    require_int(cfg.get("batch_size"), "batch_size", 1)
    require_int(cfg.num_workers, "num_workers", 0)


def check_fits_model(source: PredictInput, cfg: DictConfig, run_cfg: DictConfig) -> str | None:
    """The input against the checkpoint's modality and text columns; the pair column, if any."""
    modality = str(run_cfg.model.modality)
    if modality != source.modality:
        wanted = (
            "text='a sentence' or input=FILE (csv/tsv/json/jsonl)"
            if modality == "text"
            else "input=IMAGE or input=FOLDER"
        )
        raise ConfigError(
            f"{source.describe()} is {source.modality} input, but this checkpoint holds "
            f"{'an image' if modality == 'image' else 'a text'} model ({run_cfg.model.name}): "
            f"give {wanted}"
        )
    pair_column = cfg.get("text_pair_column") or run_cfg.data.get("text_pair_column")
    if modality != "text" or not pair_column:
        return None
    if source.kind != "table":
        raise ConfigError("this model classifies text pairs: give input=FILE with both columns")
    check_columns(source.frame, source.path, [str(cfg.text_column), str(pair_column)])
    return str(pair_column)


# --------------------------------------------------------------------------- batches


def text_batches(
    tokenizer: Any,
    texts: Sequence[str],
    pairs: Sequence[str] | None,
    max_length: int,
    batch_size: int,
) -> Iterator[dict[str, torch.Tensor]]:
    """Tokenized as in training (truncation to the run's max_length), padded per batch."""
    for start in range(0, len(texts), batch_size):
        args = [list(texts[start : start + batch_size])]
        if pairs is not None:
            args.append(list(pairs[start : start + batch_size]))
        yield dict(
            tokenizer(
                *args, truncation=True, max_length=max_length, padding=True, return_tensors="pt"
            )
        )


class ImageFiles:
    """Image files with the model's eval transform (resize, centre crop, normalise): a map-style
    dataset for torch's DataLoader."""

    def __init__(self, files: Sequence[Path], transform: Any) -> None:
        self.files, self.transform = list(files), transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        from src.data.image import rgb_loader

        return {"pixel_values": self.transform(rgb_loader(str(self.files[i])))}


def image_batches(
    pre: Any, files: Sequence[Path], batch_size: int, num_workers: int
) -> Iterable[dict]:
    import torch

    from src.data.image import build_transforms

    transform = build_transforms(pre, augment=False, color_jitter=0.0)
    return torch.utils.data.DataLoader(
        ImageFiles(files, transform), batch_size=batch_size, num_workers=num_workers
    )


# --------------------------------------------------------------------------- inference


def predict_probs(
    module: torch.nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    device: torch.device,
    total: int,
) -> torch.Tensor:
    """Softmax class probabilities (float32, on the CPU), one row per input, with a progress bar."""
    import torch

    return torch.softmax(predict_logits(module, batches, device, total), dim=-1)


def predict_logits(
    module: torch.nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    device: torch.device,
    total: int,
) -> torch.Tensor:
    """The network's outputs (float32, on the CPU), one row per input, with a progress bar."""
    import torch
    from rich.console import Console
    from rich.progress import track

    module.to(device)
    out = []
    console = Console(stderr=True)
    with torch.inference_mode():
        for batch in track(
            batches, total=total, description="predict", console=console, transient=True
        ):
            batch = {k: v.to(device) for k, v in batch.items()}
            out.append(module(batch).float().cpu())
    return torch.cat(out)


def prediction_columns(taken: Sequence[str], label_names: Sequence[str]) -> list[str]:
    """predicted, prob_<label>...; with a _1, _2, ... suffix where the input has those names."""
    names = ["predicted", *(f"prob_{n}" for n in label_names)]
    suffix, n = "", 0
    while any(name + suffix in taken for name in names):
        n += 1
        suffix = f"_{n}"
    return [name + suffix for name in names]


def input_columns(source: PredictInput) -> dict[str, list[str]]:
    """What the output repeats of the input: a table's columns, else the sentences / file paths."""
    if source.kind == "table":
        return {c: [cell(v) for v in source.frame[c].tolist()] for c in source.frame.columns}
    if source.kind == "images":
        return {"input": [str(f) for f in source.files]}
    return {"input": source.texts}


def write_predictions(
    path: Path,
    columns: dict[str, list[str]],
    probs: torch.Tensor,
    label_names: Sequence[str],
) -> list[str]:
    """CSV: `columns`, then predicted and prob_<label> per class; written then renamed. Returns
    the names of the added columns."""
    added = prediction_columns(list(columns), label_names)
    predicted = probs.argmax(dim=-1).tolist()
    rows = [
        [label_names[predicted[i]], *(f"{p:.6f}" for p in row)]
        for i, row in enumerate(probs.tolist())
    ]
    write_csv(path, columns, added, rows)
    return added


def write_task_predictions(
    path: Path, columns: dict[str, list[str]], task: Any, logits: torch.Tensor
) -> list[str]:
    """CSV of a multi-label task (`predicted`: the labels at or above their decision thresholds,
    comma-separated; prob_<label> each) or a regression task (`predicted`, or predicted_<target>
    per target, on the targets' scale); written then renamed. Returns the added columns."""
    out = task.postprocess(logits)
    names = task.label_names
    if task.name == "multilabel":
        added = prediction_columns(list(columns), names)
        chosen = out["preds"].tolist()
        values = [
            [
                ",".join(n for n, on in zip(names, row, strict=True) if on),
                *(f"{p:.6f}" for p in probs),
            ]
            for row, probs in zip(chosen, out["probs"].tolist(), strict=True)
        ]
    else:
        wanted = ["predicted"] if len(names) == 1 else [f"predicted_{n}" for n in names]
        suffix, k = "", 0
        while any(w + suffix in columns for w in wanted):
            k += 1
            suffix = f"_{k}"
        added = [w + suffix for w in wanted]
        values = [
            [f"{v:.6f}" for v in row] for row in out["preds"].reshape(len(logits), -1).tolist()
        ]
    write_csv(path, columns, added, values)
    return added


def write_csv(
    path: Path, columns: dict[str, list[str]], added: list[str], rows: list[list[str]]
) -> None:
    """The input's `columns`, then the `added` prediction columns of `rows`; written then renamed."""
    from src.atomic import atomic_path

    kept = list(columns.values())
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow([*columns, *added])
        for i, row in enumerate(rows):
            writer.writerow([*(c[i] for c in kept), *row])


def predict(cfg: DictConfig) -> Path:
    """Predict every input; return the CSV's path."""
    # Everything about the input and the output first: no torch import, no checkpoint read.
    check_predict_config(cfg)
    source = read_input(cfg)
    out = output_path(cfg, source)
    device = resolve_device(str(cfg.device))
    from src.saved_run import load_run, read_run

    saved = read_run(cfg.ckpt_path)
    pair_column = check_fits_model(source, cfg, saved.run_cfg)
    model = load_run(saved)
    del saved
    batch_size = int(cfg.batch_size)
    if source.kind == "images":
        n = len(source.files)
        batches = image_batches(model.processor, source.files, batch_size, int(cfg.num_workers))
    else:
        if source.kind == "table":
            texts = [cell(v) for v in source.frame[str(cfg.text_column)].tolist()]
            pairs = [cell(v) for v in source.frame[pair_column].tolist()] if pair_column else None
        else:
            texts, pairs = source.texts, None
        n = len(texts)
        batches = text_batches(model.processor, texts, pairs, model.max_length, batch_size)
    logits = predict_logits(model.module, batches, device, -(-n // batch_size))
    columns = input_columns(source)
    task = model.module.task
    if task.name != "multiclass":  # multi-label sets or regression scores (src/tasks)
        write_task_predictions(out, columns, task, logits)
        print(f"ftlab: {n} predictions -> {out}", file=sys.stderr, flush=True)
        return out
    probs = logits.softmax(dim=-1)
    added = write_predictions(out, columns, probs, model.label_names)
    if added[0] != "predicted":
        print(
            f"ftlab: the input already has predicted / prob_* columns; the new ones are "
            f"{', '.join(added)}",
            file=sys.stderr,
            flush=True,
        )
    counts = {name: 0 for name in model.label_names}
    for i in probs.argmax(-1).tolist():
        counts[model.label_names[i]] += 1
    print(f"ftlab: {n} predictions -> {out}  {counts}", file=sys.stderr, flush=True)
    return out


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        predict(cfg)


if __name__ == "__main__":
    main()
