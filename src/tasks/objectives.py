"""The torch half of the task types: loss, metrics, logits -> predictions, decision thresholds.

Each task is an nn.Module owned by the Classifier (`module.task`), so its buffers move with the
model and the persistent ones (multi-label thresholds, regression target mean / std) are saved in
the checkpoint. The multiclass task keeps no persistent state: its checkpoints are unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)
from torchmetrics.utilities import dim_zero_cat

from src.tasks import SPECS, TaskSpec
from src.tasks.analysis import (
    Analysis,
    multiclass_analysis,
    multilabel_analysis,
    regression_analysis,
)

# Candidate decision thresholds of the multi-label search: 0.05, 0.10, ..., 0.95.
THRESHOLD_GRID = tuple(round(0.05 * i, 2) for i in range(1, 20))
# A label with fewer positives than this in val keeps the global threshold: tuning it alone
# would fit noise.
MIN_POSITIVES_PER_LABEL = 5


class Task(nn.Module):
    """Base: one label vector / class id / target per example, `len(label_names)` outputs."""

    spec: TaskSpec

    def __init__(self, label_names: Sequence[str]) -> None:
        super().__init__()
        self.label_names = [str(n) for n in label_names]

    @property
    def name(self) -> str:
        return self.spec.name

    def num_outputs(self) -> int:
        return len(self.label_names)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def metrics(self, prefix: str) -> Metric | MetricCollection:
        """A fresh stateful metric for one split's epoch."""
        return EpochOutputs()

    def update(self, metrics: Any, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Add a batch to `metrics`; returns the batch's predictions."""
        raise NotImplementedError

    def compute(self, metrics: Any, prefix: str, tune: bool = False) -> dict[str, torch.Tensor]:
        """The epoch's values under `<prefix><name>`; `tune`: choose decision settings on them
        first (validation)."""
        raise NotImplementedError

    def confusion_metric(self) -> Metric | None:
        return None

    def init_head(self, network: nn.Module, train: Mapping[str, Any]) -> None:
        """Set the new output layer's starting point from the train split's report (no random
        numbers drawn: runs stay reproducible)."""

    def postprocess(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """What a prediction is: `preds` (and `probs` for the classification types)."""
        raise NotImplementedError

    def extras(self) -> dict[str, Any]:
        """What metrics.json records of the task besides the metrics (thresholds, ...)."""
        return {}

    def figures(self, metrics: Any, prefix: str) -> dict[str, Any]:
        """What TensorBoard shows of a computed epoch besides the scalars: tag -> matplotlib
        figure (the caller logs and closes them)."""
        return {}

    def analyse(self, logits: torch.Tensor, targets: torch.Tensor) -> Analysis:
        """The error analysis of a test epoch's `logits` and `targets` (src/tasks/analysis.py):
        calibration, a report per class, the examples it got wrong."""
        raise NotImplementedError


class EpochOutputs(Metric):
    """Every batch's outputs and targets of an epoch (gathered across processes)."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("outputs", default=[], dist_reduce_fx="cat")
        self.add_state("targets", default=[], dist_reduce_fx="cat")

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        self.outputs.append(outputs.detach().float())
        self.targets.append(targets.detach().float())

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        return dim_zero_cat(self.outputs), dim_zero_cat(self.targets)


def output_layer(network: nn.Module) -> nn.Linear | None:
    """The network's last Linear layer (the head's output layer)."""
    return next((m for m in reversed(list(network.modules())) if isinstance(m, nn.Linear)), None)


# --------------------------------------------------------------------------- multiclass


def classification_metrics(num_classes: int, prefix: str) -> MetricCollection:
    """acc (micro), precision / recall / F1 (macro over classes)."""
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(num_classes, average="micro"),
            "precision": MulticlassPrecision(num_classes, average="macro"),
            "recall": MulticlassRecall(num_classes, average="macro"),
            "f1": MulticlassF1Score(num_classes, average="macro"),
        },
        prefix=prefix,
    )


class Multiclass(Task):
    """One class of K per example: cross-entropy (label smoothing, class weights), argmax."""

    spec = SPECS["multiclass"]

    def __init__(
        self,
        label_names: Sequence[str],
        label_smoothing: float = 0.0,
        class_weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__(label_names)
        self.label_smoothing = label_smoothing
        weights = torch.tensor(class_weights, dtype=torch.float) if class_weights else None
        self.register_buffer("class_weights", weights, persistent=False)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            logits.float(), labels, weight=self.class_weights, label_smoothing=self.label_smoothing
        )

    def metrics(self, prefix: str) -> MetricCollection:
        return classification_metrics(self.num_outputs(), prefix)

    def update(self, metrics: Any, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        preds = logits.argmax(dim=-1)
        metrics.update(preds, labels)
        return preds

    def compute(self, metrics: Any, prefix: str, tune: bool = False) -> dict[str, torch.Tensor]:
        return metrics.compute()

    def confusion_metric(self) -> Metric:
        return MulticlassConfusionMatrix(self.num_outputs())

    def postprocess(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        probs = logits.float().softmax(dim=-1)
        return {"preds": probs.argmax(dim=-1), "probs": probs}

    def analyse(self, logits: torch.Tensor, targets: torch.Tensor) -> Analysis:
        probs = self.postprocess(logits)["probs"]
        return multiclass_analysis(probs, targets, self.label_names)


# --------------------------------------------------------------------------- multi-label


def f1_per_label(probs: torch.Tensor, targets: torch.Tensor, thresholds: Any) -> torch.Tensor:
    """F1 of each label at `thresholds` (a float or one per label); 0 where it is undefined."""
    preds = probs >= torch.as_tensor(thresholds, dtype=probs.dtype, device=probs.device)
    truth = targets > 0.5
    tp = (preds & truth).sum(0).float()
    fp = (preds & ~truth).sum(0).float()
    fn = (~preds & truth).sum(0).float()
    denom = 2 * tp + fp + fn
    return torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.zeros_like(tp))


def multilabel_scores(
    probs: torch.Tensor, targets: torch.Tensor, thresholds: torch.Tensor
) -> dict[str, torch.Tensor]:
    """f1_macro, f1_micro, map (and per-label F1) of sigmoid outputs at `thresholds`.

    Macro F1 and mAP average over the labels that occur (in the targets, or for F1 also in the
    predictions): a label absent from a small split and never predicted is not scored as 0."""
    from torchmetrics.functional.classification import multilabel_average_precision

    preds = probs >= thresholds.to(probs)
    truth = targets > 0.5
    tp = (preds & truth).sum(0).float()
    fp = (preds & ~truth).sum(0).float()
    fn = (~preds & truth).sum(0).float()
    per_label = f1_per_label(probs, targets, thresholds.to(probs))
    scored = (tp + fp + fn) > 0
    f1_macro = per_label[scored].mean() if scored.any() else probs.new_tensor(0.0)
    denom = 2 * tp.sum() + fp.sum() + fn.sum()
    f1_micro = 2 * tp.sum() / denom if denom > 0 else probs.new_tensor(0.0)
    present = truth.any(0)  # AP is undefined for a label without positives
    if present.any():
        ap = multilabel_average_precision(
            probs[:, present],
            truth[:, present].long(),
            num_labels=int(present.sum()),
            average=None,
            thresholds=None,
        )
        mean_ap = ap.reshape(-1).nan_to_num(0.0).mean()
    else:
        mean_ap = probs.new_tensor(0.0)
    return {"f1_macro": f1_macro, "f1_micro": f1_micro, "map": mean_ap, "f1_per_label": per_label}


def tune_thresholds(
    probs: torch.Tensor, targets: torch.Tensor, grid: Sequence[float] = THRESHOLD_GRID
) -> tuple[float, torch.Tensor]:
    """(global, per-label) thresholds maximising macro F1 and each label's F1 on these outputs.

    Labels with fewer than MIN_POSITIVES_PER_LABEL positives keep the global one; ties go to the
    lower threshold."""
    scores = torch.stack([f1_per_label(probs, targets, t) for t in grid])  # [thresholds, labels]
    values = torch.tensor(grid, dtype=torch.float)
    scored = (targets > 0.5).any(0)
    macro = scores[:, scored].mean(1) if scored.any() else scores.mean(1)
    best_global = float(values[int(macro.argmax())])
    per_label = values[scores.argmax(0).cpu()]
    few = (targets > 0.5).sum(0).cpu() < MIN_POSITIVES_PER_LABEL
    per_label[few] = best_global
    return best_global, per_label


class Multilabel(Task):
    """Any subset of K labels per example: BCE with logits (optional pos_weight), sigmoid, and
    decision thresholds tuned on validation (`thresholds`: per_label | global | a fixed float),
    kept in the checkpoint and used at test and prediction time."""

    spec = SPECS["multilabel"]

    def __init__(
        self,
        label_names: Sequence[str],
        pos_weight: Sequence[float] | None = None,
        thresholds: str | float = "per_label",
    ) -> None:
        super().__init__(label_names)
        self.mode = thresholds if thresholds in ("per_label", "global") else float(thresholds)
        start = 0.5 if isinstance(self.mode, str) else self.mode
        weight = torch.tensor(pos_weight, dtype=torch.float) if pos_weight else None
        self.register_buffer("pos_weight", weight, persistent=False)
        self.register_buffer("thresholds", torch.full((len(self.label_names),), start))
        self.register_buffer("global_threshold", torch.tensor(start))
        self.test_f1_per_label: dict[str, float] = {}

    def init_head(self, network: nn.Module, train: Mapping[str, Any]) -> None:
        """Output bias = logit of each label's train frequency: the sigmoid starts at the priors,
        so the first steps learn from the text instead of the label frequencies (with a pooled
        output that barely varies between inputs at the start, as MiniLM's, they otherwise end
        at the priors and stay there)."""
        head = output_layer(network)
        counts, n = list(train["class_counts"].values()), max(int(train["n_examples"]), 1)
        if head is None or head.bias is None or len(counts) != head.bias.numel():
            return
        prior = torch.tensor(counts, dtype=torch.float).div(n).clamp(1e-4, 1 - 1e-4)
        with torch.no_grad():
            head.bias.copy_(torch.logit(prior).to(head.bias))

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(
            logits.float(), labels.float(), pos_weight=self.pos_weight
        )

    def update(self, metrics: Any, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        probs = torch.sigmoid(logits.float())
        metrics.update(probs, labels)
        return probs >= self.thresholds

    def compute(self, metrics: Any, prefix: str, tune: bool = False) -> dict[str, torch.Tensor]:
        probs, targets = metrics.compute()
        if tune and isinstance(self.mode, str) and len(probs):
            best_global, per_label = tune_thresholds(probs, targets)
            self.global_threshold.fill_(best_global)
            if self.mode == "global":
                self.thresholds.fill_(best_global)
            else:
                self.thresholds.copy_(per_label.to(self.thresholds))
        scores = multilabel_scores(probs, targets, self.thresholds)
        per_label = scores.pop("f1_per_label")
        if prefix.startswith("test"):
            self.test_f1_per_label = {
                n: round(float(v), 4) for n, v in zip(self.label_names, per_label, strict=True)
            }
        values = {f"{prefix}{k}": v for k, v in scores.items()}
        values[f"{prefix}threshold"] = self.global_threshold.clone()
        return values

    def postprocess(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        probs = torch.sigmoid(logits.float())
        return {"preds": probs >= self.thresholds, "probs": probs}

    def analyse(self, logits: torch.Tensor, targets: torch.Tensor) -> Analysis:
        out = self.postprocess(logits)
        return multilabel_analysis(out["probs"], targets, out["preds"], self.label_names)

    def extras(self) -> dict[str, Any]:
        return {
            "thresholds": {
                "mode": self.mode,
                "global": round(float(self.global_threshold), 4),
                "per_label": {
                    n: round(float(t), 4)
                    for n, t in zip(self.label_names, self.thresholds, strict=True)
                },
            },
            "test/f1_per_label": self.test_f1_per_label,
        }


# --------------------------------------------------------------------------- regression


def regression_scores(preds: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """rmse, mae, r2, pearson, spearman; averaged over outputs when there are several. A
    correlation that is undefined (constant predictions) counts as 0."""
    from torchmetrics.functional import pearson_corrcoef, r2_score, spearman_corrcoef

    preds, targets = preds.float().reshape(len(preds), -1), targets.float().reshape(len(preds), -1)
    err = preds - targets
    single = preds.shape[1] == 1
    p, t = (preds[:, 0], targets[:, 0]) if single else (preds, targets)
    # a correlation needs two examples and predictions that vary (else torchmetrics warns)
    enough = len(preds) >= 2 and bool((preds.std(0) > 0).all())
    zero = preds.new_tensor(0.0)
    return {
        "rmse": err.pow(2).mean(0).sqrt().mean(),
        "mae": err.abs().mean(),
        "r2": r2_score(p, t) if len(preds) >= 2 else zero,
        "pearson": pearson_corrcoef(p, t).nan_to_num(0.0).mean() if enough else zero,
        "spearman": spearman_corrcoef(p, t).nan_to_num(0.0).mean() if enough else zero,
    }


class Regression(Task):
    """A number per output: MSE (or Huber with `huber_delta`) on targets standardised with the
    train mean / std when `standardize` (the network learns z-scores; predictions are mapped
    back, and metrics are on the original scale)."""

    spec = SPECS["regression"]

    def __init__(
        self,
        label_names: Sequence[str],
        huber_delta: float | None = None,
        standardize: bool = False,
        target_stats: Mapping[str, Sequence[float]] | None = None,
    ) -> None:
        super().__init__(label_names)
        self.huber_delta = None if huber_delta is None else float(huber_delta)
        k = len(self.label_names)
        mean, std = torch.zeros(k), torch.ones(k)
        if standardize and target_stats:
            mean = torch.tensor(list(target_stats["mean"]), dtype=torch.float)
            std = torch.tensor(list(target_stats["std"]), dtype=torch.float).clamp_min(1e-6)
        self.register_buffer("target_mean", mean)
        self.register_buffer("target_std", std)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        z = (labels.float().reshape(logits.shape) - self.target_mean) / self.target_std
        if self.huber_delta is not None:
            return F.huber_loss(logits, z, delta=self.huber_delta)
        return F.mse_loss(logits, z)

    def update(self, metrics: Any, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        preds = self.postprocess(logits)["preds"]
        metrics.update(preds, labels.float().reshape(preds.shape))
        return preds

    def compute(self, metrics: Any, prefix: str, tune: bool = False) -> dict[str, torch.Tensor]:
        preds, targets = metrics.compute()
        return {f"{prefix}{k}": v for k, v in regression_scores(preds, targets).items()}

    def postprocess(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"preds": logits.float() * self.target_std + self.target_mean}

    def analyse(self, logits: torch.Tensor, targets: torch.Tensor) -> Analysis:
        return regression_analysis(self.postprocess(logits)["preds"], targets, self.label_names)

    def figures(self, metrics: Any, prefix: str) -> dict[str, Any]:
        preds, targets = metrics.compute()
        if not len(preds):
            return {}
        return {f"{prefix}pred_vs_target": scatter_figure(preds, targets, self.label_names)}


# At most this many points per scatter (evenly spaced over the split): the figure stays cheap
# for any split size and shows the same shape.
MAX_SCATTER_POINTS = 5000


def scatter_figure(preds: torch.Tensor, targets: torch.Tensor, names: Sequence[str]) -> Any:
    """Prediction against target, one panel per output, with the y = x line and Pearson r."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    preds = preds.float().reshape(len(preds), -1).cpu()
    targets = targets.float().reshape(len(targets), -1).cpu()
    keep = torch.linspace(0, len(preds) - 1, min(len(preds), MAX_SCATTER_POINTS)).long()
    k = preds.shape[1]
    cols = min(k, 4)
    rows = -(-k // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 4 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= k:
            ax.set_visible(False)
            continue
        p, t = preds[:, i], targets[:, i]
        r = float(regression_scores(p, t)["pearson"])
        ax.scatter(t[keep].numpy(), p[keep].numpy(), s=6, alpha=0.4)
        low = float(torch.minimum(p.min(), t.min()))
        high = float(torch.maximum(p.max(), t.max()))
        ax.plot([low, high], [low, high], color="grey", linewidth=1)
        ax.set_xlabel(f"target ({names[i]})" if k > 1 else "target")
        ax.set_ylabel("prediction")
        ax.set_title(f"n={len(p)}  pearson={r:.3f}")
    fig.tight_layout()
    return fig
