"""Task types (src/tasks): multiclass, multi-label and regression losses, metrics against
hand-computed values, threshold tuning, label reading, bad input and what TensorBoard shows.
Tiny runs through the CLI: tests/test_task_runs.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from src.data.labels import (
    encode_indicator_columns,
    encode_label_sets,
    encode_targets,
    multilabel_encoder,
    parse_label_set,
)
from src.errors import ConfigError, DataError
from src.tasks import SPECS, build_task, check_task_config, metric_keys
from src.tasks.objectives import (
    EpochOutputs,
    multilabel_scores,
    regression_scores,
    tune_thresholds,
)


def config(**task: object) -> dict:
    return {"task": {"name": "t", **task}, "loss": {}}


# --------------------------------------------------------------------------- names


def test_metric_keys_of_each_type_and_the_multiclass_contract() -> None:
    from src.checks import MONITORED
    from src.results import TEST_KEYS, VAL_KEYS

    assert metric_keys({}, "val") == VAL_KEYS  # no task.type: multiclass, the run contract
    assert metric_keys(config(type="multiclass"), "test") == TEST_KEYS
    assert SPECS["multiclass"].monitored == tuple(sorted(MONITORED))
    assert metric_keys(config(type="multilabel"), "test") == (
        "test/loss",
        "test/f1_macro",
        "test/f1_micro",
        "test/map",
    )
    assert metric_keys(config(type="regression"), "val") == (
        "val/loss",
        "val/rmse",
        "val/mae",
        "val/r2",
        "val/pearson",
        "val/spearman",
    )
    with pytest.raises(ConfigError, match="task.type='ranking' is invalid"):
        metric_keys(config(type="ranking"), "val")


# --------------------------------------------------------------------------- losses


def test_multiclass_loss_is_todays_cross_entropy() -> None:
    logits, labels = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    task = build_task(config(), ["a", "b", "c"], label_smoothing=0.1, class_weights=[1, 2, 3])
    expected = F.cross_entropy(
        logits, labels, weight=torch.tensor([1.0, 2.0, 3.0]), label_smoothing=0.1
    )
    assert torch.allclose(task.loss(logits, labels), expected)
    assert task.state_dict() == {}  # nothing new in multiclass checkpoints


def test_multilabel_loss_is_bce_with_optional_pos_weight() -> None:
    logits = torch.tensor([[2.0, -1.0], [0.0, 3.0]])
    labels = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    plain = build_task(config(type="multilabel"), ["x", "y"])
    # by hand: mean over the 4 cells of -[y log s(z) + (1-y) log(1-s(z))]
    s = torch.sigmoid(logits)
    by_hand = -(labels * s.log() + (1 - labels) * (1 - s).log()).mean()
    assert plain.loss(logits, labels).item() == pytest.approx(by_hand.item(), rel=1e-5)
    weighted = build_task(config(type="multilabel"), ["x", "y"], pos_weight=[3.0, 1.0])
    by_hand = -(torch.tensor([3.0, 1.0]) * labels * s.log() + (1 - labels) * (1 - s).log()).mean()
    assert weighted.loss(logits, labels).item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert set(plain.state_dict()) == {"thresholds", "global_threshold"}


def test_regression_loss_mse_huber_and_standardisation() -> None:
    logits = torch.tensor([[0.5], [-1.0], [2.0]])
    labels = torch.tensor([1.0, 2.0, 3.0])
    mse = build_task(config(type="regression"), ["score"])
    assert mse.loss(logits, labels).item() == pytest.approx(((0.5**2) + 9 + 1) / 3)
    huber = build_task({**config(type="regression"), "loss": {"huber_delta": 1.0}}, ["score"])
    # |e| = 0.5 (quadratic: 0.125), 3 (linear: 2.5), 1 (edge: 0.5)
    assert huber.loss(logits, labels).item() == pytest.approx((0.125 + 2.5 + 0.5) / 3)
    stats = {"mean": [2.0], "std": [0.5]}
    std = build_task(config(type="regression", standardize=True), ["score"], target_stats=stats)
    # the network's output is a z-score: target 3.0 is z = 2, so logit 2.0 has no loss
    assert std.loss(torch.tensor([[2.0]]), torch.tensor([3.0])).item() == pytest.approx(0.0)
    assert std.postprocess(torch.tensor([[2.0], [-1.0]]))["preds"].flatten().tolist() == [
        3.0,
        1.5,
    ]


def test_multilabel_head_starts_at_the_label_priors() -> None:
    network = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 3))
    task = build_task(config(type="multilabel"), ["a", "b", "c"])
    task.init_head(network, {"n_examples": 10, "class_counts": {"a": 5, "b": 1, "c": 0}})
    probs = torch.sigmoid(network[1].bias).tolist()
    assert probs == pytest.approx([0.5, 0.1, 1e-4], rel=1e-3)
    before = network[1].bias.clone()
    build_task(config(), ["a", "b", "c"]).init_head(network, {"n_examples": 1})
    assert torch.equal(network[1].bias, before)  # multiclass: the head as built


# --------------------------------------------------------------------------- metrics by hand


def test_multilabel_metrics_against_hand_computed_values() -> None:
    probs = torch.tensor([[0.9, 0.2, 0.6], [0.1, 0.8, 0.4], [0.7, 0.3, 0.2]])
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    scores = multilabel_scores(probs, targets, torch.full((3,), 0.5))
    # at 0.5: label 0 tp1 fp1 -> 2/3; label 1 tp1 -> 1; label 2 tp1 fn1 -> 2/3
    assert scores["f1_per_label"].tolist() == pytest.approx([2 / 3, 1.0, 2 / 3])
    assert scores["f1_macro"].item() == pytest.approx(7 / 9)
    assert scores["f1_micro"].item() == pytest.approx(6 / 8)  # tp 3, fp 1, fn 1
    # AP: labels 0 and 1 rank their positive first (1.0); label 2: pos, neg, pos -> (1 + 2/3) / 2
    assert scores["map"].item() == pytest.approx((1 + 1 + 5 / 6) / 3)
    # per-label thresholds are applied per column: 0.15 for label 2 catches its second positive
    per_label = multilabel_scores(probs, targets, torch.tensor([0.5, 0.5, 0.15]))
    assert per_label["f1_per_label"][2].item() == pytest.approx(2 * 2 / (2 * 2 + 1))


def test_regression_metrics_against_hand_computed_values() -> None:
    preds = torch.tensor([1.0, 2.0, 3.0, 4.0])
    targets = torch.tensor([1.0, 2.0, 3.0, 5.0])
    s = regression_scores(preds, targets)
    assert s["rmse"].item() == pytest.approx(0.5)  # one error of 1 in 4
    assert s["mae"].item() == pytest.approx(0.25)
    assert s["r2"].item() == pytest.approx(1 - 1 / 8.75)  # SS_tot about the mean 2.75
    pearson = torch.corrcoef(torch.stack([preds, targets]))[
        0, 1
    ].item()  # 0.9827: a perfect rank order, not a perfect line
    assert s["pearson"].item() == pytest.approx(pearson, rel=1e-5)
    assert s["spearman"].item() == pytest.approx(1.0)
    flat = regression_scores(torch.ones(4), targets)  # constant predictions: no correlation
    assert flat["pearson"].item() == 0.0


def test_epoch_metrics_through_the_task_objects() -> None:
    task = build_task(config(type="regression"), ["score"])
    metrics = task.metrics("val/")
    assert isinstance(metrics, EpochOutputs)
    task.update(metrics, torch.tensor([[1.0], [2.0]]), torch.tensor([1.0, 2.0]))
    task.update(metrics, torch.tensor([[3.0], [4.0]]), torch.tensor([3.0, 5.0]))
    values = task.compute(metrics, "val/")
    assert set(values) == {f"val/{m}" for m in SPECS["regression"].metrics}
    assert values["val/rmse"].item() == pytest.approx(0.5)


# --------------------------------------------------------------------------- thresholds


def test_thresholds_are_tuned_per_label_and_globally() -> None:
    # 100 examples, label 0 positive on the first 30, label 1 on the last 40; negatives spread
    # evenly below 0.29 (label 0) and 0.74 (label 1), positives above: each label's only
    # perfect grid threshold is 0.3 and 0.75.
    targets = torch.zeros(100, 2)
    targets[:30, 0], targets[60:, 1] = 1, 1
    probs = torch.empty(100, 2)
    probs[:30, 0], probs[30:, 0] = torch.linspace(0.31, 0.6, 30), torch.linspace(0.0, 0.29, 70)
    probs[60:, 1], probs[:60, 1] = torch.linspace(0.76, 0.99, 40), torch.linspace(0.0, 0.74, 60)
    best_global, per_label = tune_thresholds(probs, targets)
    assert per_label.tolist() == pytest.approx([0.3, 0.75])
    assert 0.3 <= best_global <= 0.75
    # a label with too few positives keeps the global threshold
    rare = targets.clone()
    rare[:, 1] = 0
    rare[:2, 1] = 1
    best_global, per_label = tune_thresholds(probs, rare)
    assert per_label[1].item() == pytest.approx(best_global)


def test_validation_tunes_the_checkpointed_thresholds_and_test_uses_them() -> None:
    task = build_task(config(type="multilabel"), ["x", "y"])
    val = task.metrics("val/")
    logits = torch.logit(torch.tensor([[0.35, 0.9], [0.1, 0.8], [0.32, 0.2], [0.05, 0.75]]))
    labels = torch.tensor([[1.0, 1.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    task.update(val, logits, labels)
    values = task.compute(val, "val/", tune=True)
    assert values["val/f1_macro"].item() == pytest.approx(1.0)  # 0.5 would miss label x
    assert float(task.global_threshold) <= 0.3
    test = task.metrics("test/")
    task.update(test, logits, labels)
    assert task.compute(test, "test/")["test/f1_macro"].item() == pytest.approx(1.0)
    assert "task.thresholds" not in task.state_dict()  # the task's own keys; the module prefixes
    assert torch.equal(task.state_dict()["thresholds"], task.thresholds)
    fixed = build_task(config(type="multilabel", thresholds=0.3), ["x", "y"])
    fixed.update(m := fixed.metrics("val/"), logits, labels)
    fixed.compute(m, "val/", tune=True)
    assert fixed.thresholds.tolist() == pytest.approx([0.3, 0.3])  # a fixed value stays
    assert fixed.postprocess(logits)["preds"][0].tolist() == [True, True]


# --------------------------------------------------------------------------- config checks


@pytest.mark.parametrize(
    "cfg, message",
    [
        (config(type="multiclass", thresholds=0.3), "task.thresholds is for task.type=multilabel"),
        (config(type="multilabel", thresholds=1.5), "task.thresholds=1.5 is invalid"),
        ({**config(type="regression"), "loss": {"class_weights": "balanced"}}, "class_weights"),
        ({**config(type="multilabel"), "loss": {"pos_weight": "auto"}}, "pos_weight='auto'"),
        ({**config(type="multiclass"), "loss": {"huber_delta": 1.0}}, "huber_delta is for"),
        (config(type="multiclass", standardize=True), "task.standardize is for"),
        ({**config(type="regression"), "loss": {"huber_delta": -1}}, "huber_delta=-1"),
        (
            {**config(type="regression"), "data": {"_target_": "x.TextDataModule"}},
            "needs data.task_type",
        ),
    ],
)
def test_task_config_mistakes(cfg: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        check_task_config(OmegaConf.create(cfg))


# --------------------------------------------------------------------------- label reading


def test_label_sets_ids_names_json_and_columns() -> None:
    assert parse_label_set("8,20") == [8, 20]
    assert parse_label_set("[8, 20]") == [8, 20]
    assert parse_label_set('["joy", "love"]') == ["joy", "love"]
    assert parse_label_set("[]") == []
    enc = multilabel_encoder(["0,2", "1"], ["joy", "love", "fear"], "f.tsv", "label")
    assert encode_label_sets(enc, "train", ["0,2", "love", "[]"], "f.tsv", "label") == [
        [1.0, 0.0, 1.0],
        [0.0, 1.0, 0.0],
        [0.0, 0.0, 0.0],
    ]
    with pytest.raises(DataError, match=r"label 3 at row 2 of f.tsv .* not one of the 3 labels"):
        encode_label_sets(enc, "val", ["1", "0,3"], "f.tsv", "label")
    with pytest.raises(DataError, match="missing labels"):
        encode_label_sets(enc, "val", [""], "f.tsv", "label")
    cols = {"joy": [1, 0], "love": ["1", "0"]}
    assert encode_indicator_columns("train", cols, "f.csv") == [[1.0, 1.0], [0.0, 0.0]]
    with pytest.raises(DataError, match=r"value 2 at row 2 of f.csv \(label column 'joy'\)"):
        encode_indicator_columns("train", {"joy": [1, 2]}, "f.csv")


def test_regression_targets_must_be_numbers() -> None:
    assert encode_targets("train", {"score": ["4.2", 1, " 0.5 "]}, "f.csv") == [4.2, 1.0, 0.5]
    assert encode_targets("train", {"a": [1, 2], "b": [3, 4]}, "f.csv") == [[1.0, 3.0], [2.0, 4.0]]
    with pytest.raises(
        DataError, match=r"target 'high' at row 2 of f.csv \(column 'score'\) is not a number"
    ):
        encode_targets("train", {"score": ["1.0", "high"]}, "f.csv")
    with pytest.raises(DataError, match="is not a number"):
        encode_targets("train", {"score": ["1.0", ""]}, "f.csv")


# --------------------------------------------------------------------------- TensorBoard


def test_regression_shows_predictions_against_targets() -> None:
    """One scatter panel per output (the y = x line beside the points); the classification
    types show nothing here (the multiclass confusion matrix is logged after the test)."""
    task = build_task(config(type="regression"), ["score", "other"])
    metrics = task.metrics("test/")
    logits = torch.tensor([[0.0, 1.0], [1.0, 3.0], [2.0, 2.0], [3.0, 5.0]])
    task.update(metrics, logits, logits + 0.5)
    metrics.compute()
    figures = task.figures(metrics, "test/")
    assert list(figures) == ["test/pred_vs_target"]
    panels = [ax for ax in figures["test/pred_vs_target"].axes if ax.get_visible()]
    assert len(panels) == 2
    points = panels[0].collections[0].get_offsets()
    assert points.tolist() == [[0.5, 0.0], [1.5, 1.0], [2.5, 2.0], [3.5, 3.0]]  # (target, pred)
    assert panels[1].get_xlabel() == "target (other)" and "pearson=" in panels[1].get_title()
    for name in ("multiclass", "multilabel"):
        other = build_task(config(type=name), ["a", "b"])
        outputs = other.metrics("val/")
        other.update(
            outputs, logits, torch.tensor([0, 1, 1, 0]) if name == "multiclass" else logits
        )
        assert other.figures(outputs, "val/") == {}


# --------------------------------------------------------------------------- folds


def test_multilabel_folds_spread_every_label_evenly() -> None:
    """Iterative stratification: each label's positives (the rare one's 5 too) are spread over
    the folds within one of each other; a random split of the same rows puts 0 and 2 of the rare
    label in two folds."""
    import random

    from src.data.splits import fold_split, multilabel_folds

    rng = random.Random(0)
    freqs = [0.5, 0.2, 0.1, 0.05, 0.025]
    labels = [[float(rng.random() < f) for f in freqs] for _ in range(200)]
    folds = multilabel_folds(labels, 5, seed=0)
    assert sorted(i for f in folds for i in f) == list(range(200))
    assert [len(f) for f in folds] == [40] * 5
    for j in range(len(freqs)):
        per_fold = [sum(labels[i][j] for i in f) for f in folds]
        assert max(per_fold) - min(per_fold) <= 1, (j, per_fold)
    assert sum(labels[i][4] for i in range(200)) == 5 and multilabel_folds(labels, 5, 0) == folds
    assert multilabel_folds(labels, 5, seed=1) != folds
    train, val = fold_split(labels, 5, 2, seed=0)  # label vectors: the multi-label folds
    assert val == folds[2] and sorted(train + val) == list(range(200))
    one = [[float(i % 4 == 0)] for i in range(40)]  # a single label: stratified on presence
    assert all(sum(one[i][0] for i in f) == 2 for f in multilabel_folds(one, 5, seed=0))
