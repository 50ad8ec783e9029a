"""`python -m src.predict ckpt_path=PATH input=...`: label new text or images with a checkpoint.

Writes a CSV: the input, the predicted label name and one probability column per class. The
model is rebuilt from the checkpoint alone (config, weights, label names): no training data and
no pretrained download are needed.
"""

from __future__ import annotations

import csv
import logging
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

import src  # noqa: F401  (registers the ${ftlab_root:} resolver)
from src.errors import ConfigError, DataError, ensure_writable_dir, exit_on_user_error

log = logging.getLogger(__name__)

TEXT_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl")


@dataclass
class LoadedModel:
    """A fine-tuned classifier with what it needs to read raw inputs."""

    module: Any  # src.models.classifier.Classifier, in eval mode
    run_cfg: DictConfig  # the training run's resolved config
    label_names: list[str]
    processor: Any  # the tokenizer (text) or ImagePreprocessing (images)

    @property
    def modality(self) -> str:
        return str(self.run_cfg.model.modality)


def load_model(ckpt_path: str | Path) -> LoadedModel:
    """The checkpoint's Classifier (no pretrained download), tokenizer or preprocessing, labels."""
    from src.eval import load_checkpoint, module_from_checkpoint
    from src.models.networks import build_processor

    ckpt = load_checkpoint(ckpt_path)
    run_cfg = OmegaConf.create(ckpt["hyper_parameters"]["config"])
    label_names = [str(n) for n in ckpt["hyper_parameters"]["label_names"]]
    module = module_from_checkpoint(ckpt, run_cfg, label_names).eval()
    return LoadedModel(module, run_cfg, label_names, build_processor(run_cfg.model))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ConfigError(f"device={name!r}; valid: auto, cpu, cuda, cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but no CUDA GPU is available; use device=cpu")
    return torch.device(name)


# --------------------------------------------------------------------------- text inputs


def read_text_table(
    path: Path, column: str, pair_column: str | None
) -> tuple[list[str], list[str] | None]:
    """The text (and second text) column of a csv / tsv / json / jsonl file, as strings."""
    import pandas as pd

    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        elif suffix == ".tsv":  # GLUE-style: no quoting (as the training reader)
            frame = pd.read_csv(
                path, sep="\t", dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE
            )
        else:
            frame = pd.read_json(path, lines=suffix == ".jsonl", dtype=False)
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from e
    except Exception as e:  # empty file, parse errors
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"cannot parse {path} as {suffix[1:]}: {first}") from e
    for col in (column, pair_column):
        if col and col not in frame.columns:
            raise DataError(
                f"column {col!r} not in {path}; columns found: "
                f"{', '.join(map(str, frame.columns))} (set text_column=NAME)"
            )
    if len(frame) == 0:
        raise DataError(f"{path} has no rows to predict")

    def strings(col: str) -> list[str]:
        return ["" if v is None else str(v) for v in frame[col].tolist()]

    return strings(column), strings(pair_column) if pair_column else None


def text_inputs(cfg: DictConfig, run_cfg: DictConfig) -> tuple[list[str], list[str] | None]:
    """`input` as one sentence, a list of sentences, or a table file."""
    pair_column = cfg.get("text_pair_column") or run_cfg.data.get("text_pair_column")
    value = cfg.input
    if isinstance(value, ListConfig):
        texts = [str(v) for v in value]
        if pair_column:
            raise ConfigError("this model classifies text pairs: give input=FILE with both columns")
        return texts, None
    path = Path(str(value)).expanduser()
    if path.is_file():
        if path.suffix.lower() not in TEXT_SUFFIXES:
            raise DataError(
                f"cannot read {path}: suffix {path.suffix!r}; valid: {', '.join(TEXT_SUFFIXES)}"
            )
        return read_text_table(path, str(cfg.text_column), pair_column)
    if path.suffix.lower() in TEXT_SUFFIXES or path.is_dir():
        raise DataError(
            f"input={str(value)!r}: no such file (a text model reads a sentence or a table file)"
        )
    if pair_column:
        raise ConfigError("this model classifies text pairs: give input=FILE with both columns")
    return [str(value)], None


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


# --------------------------------------------------------------------------- image inputs


def image_files(value: str) -> list[Path]:
    """An image file, or every image under a folder (sorted)."""
    from src.data.image import is_image_file

    path = Path(value).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and is_image_file(str(p)))
        if not files:
            raise DataError(f"input={value!r}: no image files in this folder")
        return files
    if path.is_file():
        if not is_image_file(str(path)):
            raise DataError(f"input={value!r} is not an image file (by its suffix)")
        return [path]
    raise DataError(f"input={value!r}: no such file or folder")


class ImageFiles(torch.utils.data.Dataset):
    """Image files with the model's eval transform (resize, centre crop, normalise)."""

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
    from src.data.image import build_transforms

    transform = build_transforms(pre, augment=False, color_jitter=0.0)
    return torch.utils.data.DataLoader(
        ImageFiles(files, transform), batch_size=batch_size, num_workers=num_workers
    )


# --------------------------------------------------------------------------- inference


@torch.inference_mode()
def predict_probs(
    module: torch.nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    device: torch.device,
    total: int,
) -> torch.Tensor:
    """Softmax class probabilities (float32, on the CPU), one row per input, with a progress bar."""
    from rich.console import Console
    from rich.progress import track

    module.to(device)
    out = []
    console = Console(stderr=True)
    for batch in track(
        batches, total=total, description="predict", console=console, transient=True
    ):
        batch = {k: v.to(device) for k, v in batch.items()}
        out.append(torch.softmax(module(batch).float(), dim=-1).cpu())
    return torch.cat(out)


def write_predictions(
    path: Path,
    inputs: Sequence[str],
    probs: torch.Tensor,
    label_names: Sequence[str],
    pairs: Sequence[str] | None = None,
) -> None:
    """CSV: input, [input_pair,] predicted, prob_<label> per class; written then renamed."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    header = ["input", *(["input_pair"] if pairs is not None else []), "predicted"]
    header += [f"prob_{name}" for name in label_names]
    predicted = probs.argmax(dim=-1).tolist()
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for i, row in enumerate(probs.tolist()):
            pair = [pairs[i]] if pairs is not None else []
            writer.writerow(
                [inputs[i], *pair, label_names[predicted[i]], *(f"{p:.6f}" for p in row)]
            )
    os.replace(tmp, path)


def output_path(cfg: DictConfig) -> Path:
    out = (
        Path(str(cfg.out)).expanduser()
        if cfg.get("out")
        else Path(cfg.paths.output_dir) / "predictions.csv"
    )
    if out.is_dir() or not out.suffix:  # a folder (existing or not): the CSV goes inside
        out = out / "predictions.csv"
    ensure_writable_dir(out.parent, "out")
    return out


def check_predict_config(cfg: DictConfig) -> None:
    if OmegaConf.is_missing(cfg, "input") or cfg.input in (None, ""):
        raise ConfigError("input is not set: give input='a sentence', input=FILE or input=FOLDER")
    for key in ("batch_size",):
        value = cfg.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key}={value!r} is invalid: must be an int >= 1")
    if (
        isinstance(cfg.num_workers, bool)
        or not isinstance(cfg.num_workers, int)
        or cfg.num_workers < 0
    ):
        raise ConfigError(f"num_workers={cfg.num_workers!r} is invalid: must be an int >= 0")


def predict(cfg: DictConfig) -> Path:
    """Predict every input; return the CSV's path."""
    check_predict_config(cfg)
    out = output_path(cfg)  # before loading anything: an unwritable path fails at once
    device = resolve_device(str(cfg.device))
    model = load_model(cfg.ckpt_path)
    batch_size = int(cfg.batch_size)
    pairs = None
    if model.modality == "text":
        texts, pairs = text_inputs(cfg, model.run_cfg)
        max_length = int(model.run_cfg.data.get("max_length") or 512)
        batches = text_batches(model.processor, texts, pairs, max_length, batch_size)
        inputs = texts
    else:
        if isinstance(cfg.input, ListConfig):
            raise ConfigError("an image model takes input=FILE or input=FOLDER")
        files = image_files(str(cfg.input))
        batches = image_batches(model.processor, files, batch_size, int(cfg.num_workers))
        inputs = [str(f) for f in files]
    total = -(-len(inputs) // batch_size)
    probs = predict_probs(model.module, batches, device, total)
    write_predictions(out, inputs, probs, model.label_names, pairs)
    counts = {n: int((probs.argmax(-1) == i).sum()) for i, n in enumerate(model.label_names)}
    print(f"ftlab: {len(inputs)} predictions -> {out}  {counts}", file=sys.stderr, flush=True)
    return out


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        predict(cfg)


if __name__ == "__main__":
    main()
