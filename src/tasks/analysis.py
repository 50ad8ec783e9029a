"""Error analysis of a test epoch, per task type: calibration, a report per class (label, target)
and the examples the model got wrong. The task objects (src/tasks/objectives.py) call these with
their own predictions; src/analysis.py collects the epoch and writes the files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from torchmetrics.functional.classification import (
    binary_calibration_error,
    multiclass_calibration_error,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
    multilabel_f1_score,
    multilabel_precision,
    multilabel_recall,
)

# Equal-width confidence bins of the expected calibration error (torchmetrics' default).
ECE_BINS = 15
REPORT_COLUMNS = ["precision", "recall", "f1", "support"]


@dataclass
class Analysis:
    """What a test epoch shows beyond its metrics."""

    metrics: dict[str, float] = field(default_factory=dict)  # unprefixed, e.g. {"ece": 0.04}
    per_class: pd.DataFrame | None = None  # a row per class / label / target (+ averages)
    # the misclassified examples (regression: every example), most confident (largest error)
    # first; the index is the example's position in the epoch
    errors: pd.DataFrame | None = None


def prob_columns(names: Sequence[str], probs: torch.Tensor) -> dict[str, Any]:
    return {f"prob_{n}": probs[:, i].tolist() for i, n in enumerate(names)}


def most_confident_first(frame: pd.DataFrame, by: str) -> pd.DataFrame:
    """Sorted by `by`, largest first; ties keep the epoch order."""
    return frame.sort_values(by, ascending=False, kind="stable")


# --------------------------------------------------------------------------- multiclass


def multiclass_analysis(probs: torch.Tensor, targets: torch.Tensor, names: list[str]) -> Analysis:
    k = len(names)
    preds, targets = probs.argmax(-1), targets.long()
    ece = multiclass_calibration_error(probs, targets, k, n_bins=ECE_BINS, norm="l1")
    scores = {
        "precision": multiclass_precision,
        "recall": multiclass_recall,
        "f1": multiclass_f1_score,
    }
    per_class = pd.DataFrame(
        {m: fn(preds, targets, k, average="none").tolist() for m, fn in scores.items()},
        index=pd.Index(names, name="class"),
    )
    per_class["support"] = torch.bincount(targets, minlength=k).tolist()
    rows = {  # macro: as the run's test/precision, test/recall, test/f1
        f"{average} avg": [float(fn(preds, targets, k, average=average)) for fn in scores.values()]
        for average in ("macro", "weighted")
    }
    per_class = with_averages(per_class, rows, len(targets))
    wrong = (preds != targets).nonzero().flatten()
    errors = pd.DataFrame(
        {
            "true": [names[i] for i in targets[wrong].tolist()],
            "predicted": [names[i] for i in preds[wrong].tolist()],
            "confidence": probs[wrong, preds[wrong]].tolist(),  # the predicted class's probability
            **prob_columns(names, probs[wrong]),
        },
        index=pd.Index(wrong.tolist(), name="position"),
    )
    return Analysis({"ece": float(ece)}, per_class, most_confident_first(errors, "confidence"))


def with_averages(per_class: pd.DataFrame, rows: dict[str, list[float]], n: int) -> pd.DataFrame:
    """The per-class table with average rows (precision, recall, f1; support: all examples)."""
    averages = pd.DataFrame(
        [[*values, n] for values in rows.values()], index=list(rows), columns=REPORT_COLUMNS
    )
    return pd.concat([per_class[REPORT_COLUMNS], averages]).rename_axis(per_class.index.name)


# --------------------------------------------------------------------------- multi-label


def multilabel_analysis(
    probs: torch.Tensor, targets: torch.Tensor, preds: torch.Tensor, names: list[str]
) -> Analysis:
    """`preds`: the decisions at the task's thresholds. An example is an error when any label's
    decision is wrong; its confidence is that of its most confident wrong decision."""
    k = len(names)
    truth, preds = targets > 0.5, preds.bool()
    # every (example, label) decision is a binary prediction of its probability
    ece = binary_calibration_error(probs.flatten(), truth.long().flatten(), n_bins=ECE_BINS)
    scores = {
        "precision": multilabel_precision,
        "recall": multilabel_recall,
        "f1": multilabel_f1_score,
    }
    as_int, labels = preds.long(), truth.long()  # int predictions: taken as decided, no threshold
    per_label = pd.DataFrame(
        {m: fn(as_int, labels, k, average="none").tolist() for m, fn in scores.items()},
        index=pd.Index(names, name="label"),
    )
    per_label["support"] = labels.sum(0).tolist()
    rows = {
        f"{average} avg": [float(fn(as_int, labels, k, average=average)) for fn in scores.values()]
        for average in ("micro", "macro", "weighted")
    }
    per_label = with_averages(per_label, rows, len(targets))
    wrong_decisions = preds != truth
    wrong = wrong_decisions.any(-1).nonzero().flatten()
    decision_conf = torch.where(preds, probs, 1 - probs)
    confidence = (decision_conf * wrong_decisions).amax(-1)

    def joined(mask: torch.Tensor) -> list[str]:
        return [
            ",".join(n for n, on in zip(names, row, strict=True) if on) for row in mask.tolist()
        ]

    errors = pd.DataFrame(
        {
            "true": joined(truth[wrong]),
            "predicted": joined(preds[wrong]),
            "confidence": confidence[wrong].tolist(),
            **prob_columns(names, probs[wrong]),
        },
        index=pd.Index(wrong.tolist(), name="position"),
    )
    return Analysis({"ece": float(ece)}, per_label, most_confident_first(errors, "confidence"))


# --------------------------------------------------------------------------- regression


def regression_analysis(preds: torch.Tensor, targets: torch.Tensor, names: list[str]) -> Analysis:
    """No classes: the residuals (prediction - target) per target, and every example, largest
    absolute error first (several targets: their mean absolute error)."""
    preds = preds.float().reshape(len(preds), -1).cpu()
    targets = targets.float().reshape(len(preds), -1).cpu()
    residual = pd.DataFrame((preds - targets).numpy(), columns=names)
    per_target = pd.DataFrame(
        {
            "n": residual.count(),
            "mae": residual.abs().mean(),
            "rmse": residual.pow(2).mean().pow(0.5),
            "bias": residual.mean(),  # mean residual: > 0 predicts too high
            "residual_std": residual.std(ddof=0),
            "max_abs_error": residual.abs().max(),
        }
    ).rename_axis("target")
    single = len(names) == 1
    columns: dict[str, Any] = {}
    for i, n in enumerate(names):
        suffix = "" if single else f"_{n}"
        columns[f"target{suffix}"] = targets[:, i].tolist()
        columns[f"predicted{suffix}"] = preds[:, i].tolist()
        columns[f"residual{suffix}"] = residual[n].tolist()
    errors = pd.DataFrame(columns).rename_axis("position")
    errors["abs_error"] = residual.abs().mean(axis=1).to_numpy()
    return Analysis({}, per_target, most_confident_first(errors, "abs_error"))
