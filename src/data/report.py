"""The data preparation report: what each split holds before training, as `data_report.json`.

Per split: examples and class counts. Across splits: what was dropped (empty texts, unreadable
images), exact duplicates inside train and shared between train and val / test (leakage), the
train class imbalance, and for text the token lengths and how many examples `max_length` cuts.
The data modules build it (`TextDataModule.data_report`, `ImageDataModule.data_report`); a run
writes it into its dir and the TensorBoard text tab.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from src.errors import ConfigError

log = logging.getLogger(__name__)

# max/min train class count at or above which the report warns (and suggests class weights).
IMBALANCE_WARNING_RATIO = 3.0
PERCENTILES = (50, 90, 95, 99)
MAX_LISTED = 20
# Share of a split's texts cut by max_length above which the report warns (and suggests a value).
TRUNCATION_WARNING_SHARE = 0.02
# Validation splits smaller than this get a warning with the uncertainty of their accuracy.
SMALL_VAL_WARNING = 200  # dropped rows / paths listed by name; the counts are always complete


def split_summary(labels: Sequence[int], label_names: Sequence[str]) -> dict[str, Any]:
    """`n_examples` and `class_counts` (by label name, every class, zeros included)."""
    counts = Counter(labels)
    return {
        "n_examples": len(labels),
        "class_counts": {name: counts.get(i, 0) for i, name in enumerate(label_names)},
    }


def multilabel_summary(
    labels: Sequence[Sequence[float]], label_names: Sequence[str]
) -> dict[str, Any]:
    """`n_examples`, `class_counts` (examples carrying each label), the mean number of labels
    per example (`label_cardinality`) and how many carry none (`no_label`)."""
    counts = [int(sum(column)) for column in zip(*labels, strict=True)] if labels else []
    sizes = [int(sum(row)) for row in labels]
    return {
        "n_examples": len(labels),
        "class_counts": dict(zip(label_names, counts or [0] * len(label_names), strict=True)),
        "label_cardinality": round(sum(sizes) / len(sizes), 4) if sizes else 0.0,
        "no_label": sizes.count(0),
    }


def regression_summary(targets: Sequence[Any], label_names: Sequence[str]) -> dict[str, Any]:
    """`n_examples` and `target_stats`: mean / std / min / max of each target (in
    `label_names` order); the train split's mean and std standardise targets."""
    from src.data.labels import target_stats

    return {"n_examples": len(targets), "target_stats": target_stats(targets) if targets else {}}


def duplicate_summary(
    keys: dict[str, Sequence[Hashable]], labels: dict[str, Sequence[int]]
) -> dict[str, Any]:
    """Exact duplicates: inside train, and val / test examples whose key is also in train.

    `within_train`: train examples that repeat an earlier one; `within_train_conflicting`: of
    the distinct repeated keys, how many carry more than one label; `train_val` / `train_test`:
    val / test examples also found in train (leakage: they are scored on what was trained on).
    """
    train = keys["train"]
    seen: dict[Hashable, set[Any]] = {}
    for key, label in zip(train, labels["train"], strict=True):
        seen.setdefault(key, set()).add(tuple(label) if isinstance(label, list) else label)
    summary: dict[str, Any] = {
        "within_train": len(train) - len(seen),
        # a key with two labels occurs at least twice
        "within_train_conflicting": sum(1 for ls in seen.values() if len(ls) > 1),
    }
    for split in ("val", "test"):
        if split in keys:
            summary[f"train_{split}"] = sum(1 for key in keys[split] if key in seen)
    return summary


def length_summary(lengths: Sequence[int], max_length: int) -> dict[str, Any]:
    """Percentiles of the untruncated token counts, and how many exceed `max_length`."""
    arr = np.asarray(lengths)
    if arr.size == 0:
        return {"truncated": 0}
    stats: dict[str, Any] = {f"p{p}": float(np.percentile(arr, p)) for p in PERCENTILES}
    stats["max"] = int(arr.max())
    stats["truncated"] = int((arr > max_length).sum())
    return stats


def imbalance_summary(class_counts: dict[str, int]) -> dict[str, Any]:
    """max / min train class count; `warning` when at or above IMBALANCE_WARNING_RATIO."""
    most = max(class_counts, key=class_counts.__getitem__)
    least = min(class_counts, key=class_counts.__getitem__)
    ratio = class_counts[most] / class_counts[least] if class_counts[least] else float("inf")
    return {
        "ratio": round(ratio, 3) if np.isfinite(ratio) else None,  # None: a class has none
        "most_common": most,
        "least_common": least,
        "threshold": IMBALANCE_WARNING_RATIO,
        "warning": not ratio < IMBALANCE_WARNING_RATIO,
    }


def build_report(
    labels: dict[str, Sequence[int]],
    keys: dict[str, Sequence[Hashable]],
    label_names: Sequence[str],
    dropped: dict[str, dict[str, Any]],
    test_is_val: bool,
    task_type: str = "multiclass",
    **extra: Any,
) -> dict[str, Any]:
    """The report from the final splits' labels and duplicate keys (texts or content hashes).
    What a split's labels count depends on the task type; only multiclass has an imbalance
    verdict (it suggests class weights)."""
    summary = {"multilabel": multilabel_summary, "regression": regression_summary}.get(
        task_type, split_summary
    )
    splits = {split: summary(labels[split], label_names) for split in labels}
    imbalance = None
    if task_type == "multiclass":
        imbalance = imbalance_summary(splits["train"]["class_counts"])
    return {
        "splits": splits,
        "test_is_val": test_is_val,
        "dropped": dropped,
        "duplicates": duplicate_summary(keys, labels),
        "imbalance": imbalance,
        **({"task_type": task_type} if task_type != "multiclass" else {}),
        **extra,
    }


def warn_about(report: dict[str, Any]) -> None:
    """One log line per thing worth a look: drops, leakage, truncation, imbalance."""
    for split, dropped in report["dropped"].items():
        if dropped["count"]:
            listed = dropped.get("rows", dropped.get("paths", []))
            log.warning(
                "data: dropped %d %s example(s) (%s): %s%s",
                dropped["count"],
                split,
                dropped["reason"],
                ", ".join(map(str, listed)),
                ", ..." if dropped["count"] > len(listed) else "",
            )
    dup = report["duplicates"]
    for split in ("val", "test"):
        if dup.get(f"train_{split}"):
            log.warning(
                "data: %d %s example(s) also occur in train (exact duplicates, leakage)",
                dup[f"train_{split}"],
                split,
            )
    lengths = report.get("token_lengths", {})
    for split, stats in lengths.get("splits", {}).items():
        n = report["splits"].get(split, {}).get("n_examples") or 0
        if not stats.get("truncated") or not n:
            continue
        share = stats["truncated"] / n
        log.log(
            logging.WARNING if share > TRUNCATION_WARNING_SHARE else logging.INFO,
            "data: max_length=%d truncates %d of %d %s texts (%.0f%%, longest %d tokens); "
            "max_length=%d would keep 95%% whole",
            lengths["max_length"],
            stats["truncated"],
            n,
            split,
            100 * share,
            stats["max"],
            math.ceil(stats["p95"]),
        )
    markup = report.get("html") or {}
    if markup.get("texts_with_html") and not markup.get("stripped"):
        log.warning(
            "data: %d of %d training texts hold HTML tags or entities (e.g. %r), which cost "
            "tokens and mean nothing to the model; data.strip_html=true removes them",
            markup["texts_with_html"],
            markup["n_texts"],
            markup["example"],
        )
    n_val = report["splits"].get("val", {}).get("n_examples") or 0
    if 0 < n_val < SMALL_VAL_WARNING:
        log.warning(
            "data: the val split has only %d examples: an accuracy measured on it is uncertain "
            "by about +-%.0f points (95%% interval at 50%%), so it picks checkpoints and "
            "early-stops on noise; give more validation data (data.val_fraction, data.val_file)",
            n_val,
            100 * 1.96 * math.sqrt(0.25 / n_val),
        )
    imb = report["imbalance"]
    if imb and imb["warning"]:
        log.warning(
            "data: train classes are imbalanced: %r has %s x the examples of %r (warning at "
            ">= %g); consider loss.class_weights=balanced",
            imb["most_common"],
            imb["ratio"] if imb["ratio"] is not None else "inf",
            imb["least_common"],
            imb["threshold"],
        )


def resolve_pos_weight(value: Any, train: dict[str, Any]) -> list[float] | None:
    """`loss.pos_weight` of a multi-label task: None, or `balanced`: negatives / positives of
    each label in train (a label with no positive gets 1)."""
    if value is None:
        return None
    if value != "balanced":
        raise ConfigError(f"loss.pos_weight={value!r} is invalid; valid: null, balanced")
    n = train["n_examples"]
    return [(n - c) / c if c else 1.0 for c in train["class_counts"].values()]


def resolve_class_weights(value: Any, class_counts: dict[str, int]) -> list[float] | None:
    """`loss.class_weights`: None, `balanced` (n / (K * count_c) over train) or K floats > 0."""
    if value is None:
        return None
    k = len(class_counts)
    if isinstance(value, str):
        if value != "balanced":
            raise ConfigError(
                f"loss.class_weights={value!r} is invalid; valid: null, balanced, or a list "
                f"of {k} positive floats (one per class)"
            )
        n = sum(class_counts.values())
        empty = [name for name, c in class_counts.items() if c == 0]
        if empty:
            raise ConfigError(
                f"loss.class_weights=balanced: class(es) {empty} have no training examples; "
                "give explicit weights or null"
            )
        return [n / (k * c) for c in class_counts.values()]
    weights = list(value)
    if len(weights) != k:
        raise ConfigError(
            f"loss.class_weights={weights} has {len(weights)} values; the data has {k} classes "
            f"{list(class_counts)}: give {k} positive floats, balanced, or null"
        )
    return [float(w) for w in weights]


# ------------------------------------------------------------------ publishing


def report_markdown(report: dict[str, Any]) -> str:
    """The report as markdown tables, for TensorBoard's text tab."""
    splits = report["splits"]
    names = list(next(iter(splits.values())).get("class_counts", {}))
    lines = [
        "| split | examples | " + " | ".join(names) + " | dropped |",
        "|---|---:|" + "---:|" * len(names) + "---:|",
    ]
    for split, s in splits.items():
        counts = " | ".join(str(s["class_counts"][n]) for n in names) if names else "-"
        dropped = report["dropped"].get(split, {}).get("count", 0)
        lines.append(f"| {split} | {s['n_examples']} | {counts} | {dropped} |")
    if report.get("test_is_val"):
        lines.append("\n(no test data: the val split is reported as test)")
    dup = report["duplicates"]
    lines += [
        "",
        "| duplicates | count |",
        "|---|---:|",
        *(f"| {k} | {v} |" for k, v in dup.items()),
    ]
    lengths = report.get("token_lengths")
    if lengths:
        cols = [f"p{p}" for p in PERCENTILES] + ["max", "truncated"]
        lines += [
            "",
            f"token lengths (untruncated; max_length={lengths['max_length']})",
            "",
            "| split | " + " | ".join(cols) + " |",
            "|---|" + "---:|" * len(cols),
        ]
        for split, stats in lengths["splits"].items():
            lines.append(f"| {split} | " + " | ".join(str(stats.get(c, "")) for c in cols) + " |")
    imb = report["imbalance"]
    if imb:
        lines += [
            "",
            f"train imbalance: {imb['most_common']} / {imb['least_common']} = {imb['ratio']}"
            + (f" (**warning**: >= {imb['threshold']:g})" if imb["warning"] else ""),
        ]
    for split, s in splits.items():
        if s.get("target_stats"):
            lines.append(f"\n{split} targets: " + json.dumps(s["target_stats"]))
    return "\n".join(lines)


def publish_data_report(report: dict[str, Any] | None, run_dir: str | Path, loggers: list) -> None:
    """`<run dir>/data_report.json`, and the markdown version under `data/report` in TensorBoard."""
    if report is None:
        return
    from lightning.pytorch.loggers import TensorBoardLogger

    from src.atomic import write_json_atomic

    write_json_atomic(Path(run_dir) / "data_report.json", report)
    for lg in loggers:
        if isinstance(lg, TensorBoardLogger):
            lg.experiment.add_text("data/report", report_markdown(report))
