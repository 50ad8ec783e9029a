"""`python -m src.ensemble ckpt_paths=[a,b,c]`: average class probabilities of several checkpoints.

Or the K best trials of a sweep: `python -m src.ensemble study.storage=logs/sweeps/NAME top_k=K`.

Each member is rebuilt from its own checkpoint (its own tokenizer or preprocessing), run on the
task's test (or val) split at its own training run's precision (bf16 autocast where that run
used bf16-mixed, as its test did; `precision=32-true` scores every member in fp32), and its
probabilities aligned by example. The ensemble predicts the
argmax of the mean probability. metrics.json holds the ensemble's and every member's acc, F1
(macro, as in training) and loss (NLL); predictions.csv the per-example ensemble probabilities.
"""

from __future__ import annotations

import glob
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig

import src  # noqa: F401  (registers the ${ftlab_root:} resolver)
from src.errors import ConfigError, ensure_writable_dir, exit_on_user_error
from src.results import write_metrics

log = logging.getLogger(__name__)


@dataclass
class MemberOutput:
    ckpt_path: str
    probs: torch.Tensor  # (N, C) float32, in the split's own example order
    labels: torch.Tensor  # (N,)
    label_names: list[str]
    task: str
    precision: str  # what it was scored at


PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")
AUTOCAST = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}  # else fp32


def member_precision(override: Any, run_cfg: DictConfig, device: torch.device) -> str:
    """The precision a member is scored at: `override`, else its training run's own (`auto`
    resolved for `device` as training resolves it), as the run's own test ran."""
    from src.pipeline import resolve_precision

    if override is not None:
        return str(override)
    accelerator = "cuda" if device.type == "cuda" else "cpu"
    return str(resolve_precision(run_cfg.trainer.get("precision", "auto"), accelerator))


def member_paths(cfg: DictConfig) -> list[Path]:
    """Checkpoint files from ckpt_paths, run_dirs (each run's best checkpoint) and ckpt_glob."""
    paths = [Path(str(p)).expanduser() for p in cfg.get("ckpt_paths") or []]
    run_dirs = list(cfg.get("run_dirs") or [])
    study = cfg.get("study") or {}
    if study.get("storage"):
        from src.sweep.study import top_trial_run_dirs

        run_dirs += top_trial_run_dirs(str(study.storage), study.get("name"), cfg.get("top_k"))
    for run_dir in run_dirs:
        metrics_file = Path(str(run_dir)).expanduser() / "metrics.json"
        if not metrics_file.is_file():
            raise ConfigError(f"run_dirs: {run_dir} has no metrics.json (not a finished ftlab run)")
        metrics = json.loads(metrics_file.read_text())
        # A cross-validation run (cv.folds=K) contributes each fold's best checkpoint.
        runs = metrics.get("folds", [metrics])
        for run in runs:
            best = run.get("best_ckpt_path")
            if not best:
                raise ConfigError(f"run_dirs: {run_dir} has no best checkpoint in its metrics.json")
            paths.append(Path(best))
    if cfg.get("ckpt_glob"):
        found = sorted(Path(p) for p in glob.glob(str(Path(str(cfg.ckpt_glob)).expanduser())))
        if not found:
            raise ConfigError(f"ckpt_glob={cfg.ckpt_glob!r} matches no file")
        paths += found
    if len(paths) < 1:
        raise ConfigError(
            "no members: give ckpt_paths=[a.ckpt,b.ckpt], run_dirs=[...], ckpt_glob=... or "
            "study.storage=<sweep dir or optuna.db> top_k=K"
        )
    for p in paths:
        if not p.is_file():
            raise ConfigError(f"member checkpoint {p}: no such file")
    resolved = [p.resolve() for p in paths]
    if len(set(resolved)) != len(resolved):
        raise ConfigError(
            "the same checkpoint is listed twice; each member must be a different file"
        )
    return paths


@torch.inference_mode()
def member_output(path: Path, cfg: DictConfig, device: torch.device) -> MemberOutput:
    """One member's class probabilities on the split, in the split's own order."""
    from src.pipeline import checkpoint_datamodule
    from src.saved_run import load_run, relocate_data

    model = load_run(path)
    if model.module.task.name != "multiclass":
        raise ConfigError(
            f"{path}: an ensemble averages class probabilities; task.type="
            f"{model.module.task.name} checkpoints are not supported by src.ensemble yet"
        )
    relocate_data(model.run_cfg, cfg.get("data_dir"))
    datamodule = checkpoint_datamodule(model.run_cfg, model.label_names, model.processor, str(path))
    ds = datamodule.splits[cfg.split]
    batch_size = int(cfg.batch_size or model.run_cfg.data.eval_batch_size)
    if model.modality == "text":
        # Sorted by length (little padding), scattered back to the split's order below.
        from src.data.text_rows import column_values

        lengths = column_values(ds, "length")
        order = sorted(range(len(ds)), key=lengths.__getitem__)
        loader = torch.utils.data.DataLoader(
            ds.select(order), batch_size=batch_size, collate_fn=datamodule._collate
        )
    else:
        order = list(range(len(ds)))
        loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=0)
    module = model.module.to(device)
    precision = member_precision(cfg.get("precision"), model.run_cfg, device)
    dtype = AUTOCAST.get(precision)
    probs, labels = [], []
    for batch in loader:
        labels.append(batch.pop("labels"))
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = module({k: v.to(device) for k, v in batch.items()})
        probs.append(torch.softmax(logits.float(), dim=-1).cpu())
    index = torch.tensor(order)
    aligned_probs = torch.empty(len(ds), len(model.label_names))
    aligned_labels = torch.empty(len(ds), dtype=torch.long)
    aligned_probs[index] = torch.cat(probs)
    aligned_labels[index] = torch.cat(labels)
    return MemberOutput(
        str(path),
        aligned_probs,
        aligned_labels,
        model.label_names,
        str(model.run_cfg.task.name),
        precision,
    )


def scores(probs: torch.Tensor, labels: torch.Tensor, prefix: str) -> dict[str, float]:
    """acc (micro), F1 (macro, as torchmetrics in training), loss (NLL of the probabilities)."""
    from torchmetrics.functional.classification import multiclass_f1_score

    num_classes = probs.shape[1]
    preds = probs.argmax(dim=-1)
    nll = torch.nn.functional.nll_loss(probs.clamp_min(1e-12).log(), labels)
    return {
        f"{prefix}acc": float((preds == labels).float().mean()),
        f"{prefix}f1": float(multiclass_f1_score(preds, labels, num_classes, average="macro")),
        f"{prefix}loss": float(nll),
    }


def check_compatible(members: list[MemberOutput]) -> None:
    first = members[0]
    for m in members[1:]:
        if m.label_names != first.label_names:
            raise ConfigError(
                f"{m.ckpt_path} has classes {m.label_names}, {first.ckpt_path} has {first.label_names}"
            )
        if m.labels.shape != first.labels.shape or not torch.equal(m.labels, first.labels):
            raise ConfigError(
                f"{m.ckpt_path} (task {m.task}) was tested on other data than {first.ckpt_path} "
                f"(task {first.task}): members must share the test split"
            )


def ensemble(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate every member and their probability average; write metrics.json + predictions.csv."""
    from src.predict import resolve_device

    if cfg.split not in ("test", "val"):
        raise ConfigError(f"split={cfg.split!r}; valid: test, val")
    if cfg.get("precision") is not None and str(cfg.precision) not in PRECISIONS:
        raise ConfigError(
            f"precision={cfg.precision!r}; valid: null (each member at its training run's "
            f"precision), {', '.join(PRECISIONS)}"
        )
    paths = member_paths(cfg)
    out_dir = Path(cfg.paths.output_dir)
    ensure_writable_dir(out_dir, "hydra.run.dir")
    device = resolve_device(str(cfg.device))
    members = []
    for i, path in enumerate(paths):
        log.info("member %d/%d: %s", i + 1, len(paths), path)
        members.append(member_output(path, cfg, device))
    check_compatible(members)
    labels = members[0].labels
    mean_probs = torch.stack([m.probs for m in members]).mean(dim=0)
    split = cfg.split
    metrics: dict[str, Any] = {
        "split": split,
        "n_members": len(members),
        "label_names": members[0].label_names,
    }
    metrics.update(scores(mean_probs, labels, f"ensemble/{split}/"))
    for i, m in enumerate(members):
        metrics[f"member{i}/ckpt_path"] = str(Path(m.ckpt_path).resolve())
        metrics[f"member{i}/precision"] = m.precision
        metrics.update(scores(m.probs, labels, f"member{i}/{split}/"))
    for key in ("acc", "f1"):
        values = [metrics[f"member{i}/{split}/{key}"] for i in range(len(members))]
        metrics[f"members_mean/{split}/{key}"] = sum(values) / len(values)
    write_metrics(out_dir, metrics)
    _write_predictions(out_dir / "predictions.csv", mean_probs, labels, members)
    line = "  ".join(
        f"{who}: acc={metrics[f'{who}/{split}/acc']:.4f} f1={metrics[f'{who}/{split}/f1']:.4f}"
        for who in ["ensemble", *(f"member{i}" for i in range(len(members)))]
    )
    print(f"ftlab: {line}", file=sys.stderr, flush=True)
    return metrics


def _write_predictions(
    path: Path, mean_probs: torch.Tensor, labels: torch.Tensor, members: list[MemberOutput]
) -> None:
    import csv

    names = members[0].label_names
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                "index",
                "label",
                "predicted",
                *(f"prob_{n}" for n in names),
                *(f"member{i}" for i in range(len(members))),
            ]
        )
        member_preds = [m.probs.argmax(-1).tolist() for m in members]
        for i, row in enumerate(mean_probs.tolist()):
            writer.writerow(
                [
                    i,
                    names[int(labels[i])],
                    names[int(mean_probs[i].argmax())],
                    *(f"{p:.6f}" for p in row),
                    *(names[mp[i]] for mp in member_preds),
                ]
            )


@hydra.main(version_base="1.3", config_path="../conf", config_name="ensemble")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        ensemble(cfg)


if __name__ == "__main__":
    main()
