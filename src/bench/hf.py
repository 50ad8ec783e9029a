"""make bench's `hf` section: ftlab's text epoch against transformers' Trainer at its best.

Each repetition trains ftlab (as it ships) and HF Trainer (dynamic padding + group_by_length) in
turns, a step each, each in a thread of its own (src/bench/turns.py), who goes first alternating
with the repetitions: both see the same machine, so their ratio does not move with its speed.
Optional: HF's run_glue way (every example padded to 128), alone after the pair
(`--reps-padded N`; 2.3 min a run here).
"""

from __future__ import annotations

import statistics
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from src.bench.plain import hf_accuracy, hf_trainer, hf_trainer_run
from src.bench.runs import ftlab_run, log, setup_baseline, stats
from src.bench.timing import StepLog
from src.bench.turns import LightningTurn, Turns, hf_turn

OVERRIDES = [
    "task=sentiment",
    "model=bert",
    "model.pooling=pooler",  # HF Trainer trains transformers' own class: the same pooling
    "data.limit_train=2100",  # 2,058 train sentences after the 2% validation carve
    "optimizer.lr=1e-4",
    "data.batch_size=32",
    "trainer.max_epochs=1",
]
# ftlab as it ships (`sorted` length grouping). Measured before and left out since (each one a
# pair of its own would add ~1.3 min): HF's megabatch grouping (`data.group_by_length=megabatch`),
# 0.92-0.97 of HF at its best; the embeddings frozen (finetune.frozen=[embeddings], another
# recipe), 0.831 / 0.896 (experiments/bench/README.md, session 10).
VARIANTS: dict[str, list[str]] = {"ftlab": []}


def hf_settings(cfg: Any, precision: str, padded: bool, out_dir: Path) -> dict[str, Any]:
    """HF Trainer's settings for the ftlab config `cfg`: the same recipe."""
    return {
        "pad_to_128": padded,
        "lr": float(cfg.optimizer.lr),
        "weight_decay": float(cfg.optimizer.weight_decay),
        "batch_size": int(cfg.data.batch_size),
        "epochs": 1,
        "precision": precision,
        "seed": int(cfg.seed),
        "out_dir": str(out_dir),
    }


@dataclass
class Pair:
    """What one in-turns pair measured."""

    ftlab_steps: StepLog
    ftlab_metrics: dict[str, Any]
    hf_steps: StepLog
    hf_acc: float
    train_size: int
    order: list[int]  # which loop did each step: 0 ftlab, 1 HF


def in_turns(
    overrides: list[str],
    work: Path,
    tag: str,
    ftlab_first: bool = True,
    ftlab: Callable[..., Any] = ftlab_run,
) -> Pair:
    """ftlab (`overrides`) and HF Trainer at its best (the same config's data and weights)
    trained in turns, each in a thread of its own (the same kind of thread for both: neither
    has the main thread's malloc arena), `ftlab_first` or HF first. `ftlab(overrides, work, tag,
    callbacks=)` makes the ftlab run."""
    cfg, dm, network, precision = setup_baseline(overrides, work)
    turns = Turns(2)
    i_ftlab, i_hf = (0, 1) if ftlab_first else (1, 0)
    ftlab_turn = LightningTurn(turns, i_ftlab)
    hf_steps = StepLog(clock=turns.clock(i_hf))
    settings = hf_settings(cfg, precision, False, work / f"{tag}_hf")
    # built here, before the threads start: its set_seed runs before ftlab's seed_everything
    trainer, _ = hf_trainer(
        network.model,
        dm.tokenizer,
        dm.splits["train"],
        steps=hf_steps,
        callbacks=[hf_turn(turns, i_hf)],
        **settings,
    )
    outcome: dict[str, Any] = {}

    def run(name: str, index: int, body: Callable[[], Any]) -> threading.Thread:
        def target() -> None:
            try:
                outcome[name] = body()
            except BaseException as e:  # noqa: BLE001  (raised again in the calling thread)
                outcome[f"{name}_error"] = e
            finally:
                turns.finish(index)  # the other loop goes on alone

        return threading.Thread(target=target, name=f"bench-{name}", daemon=True)

    def train_hf() -> float:
        trainer.train()  # its last step ends its turns (HFTurn.on_train_end)
        return hf_accuracy(trainer, dm.splits["test"], dm.tokenizer, False)

    threads = [
        run("hf", i_hf, train_hf),
        run("ftlab", i_ftlab, lambda: ftlab(overrides, work, f"{tag}_ftlab", [ftlab_turn])[1]),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()  # daemon threads: on Ctrl-C they end with the process
    if "hf_error" in outcome:  # when HF fails first, ftlab's error is only the broken turns
        raise RuntimeError("HF Trainer failed in its turn-taking thread") from outcome["hf_error"]
    if "ftlab_error" in outcome:
        raise RuntimeError("the ftlab run failed in its turn-taking thread") from outcome[
            "ftlab_error"
        ]
    return Pair(
        ftlab_turn.steps,
        outcome["ftlab"],
        hf_steps,
        outcome["hf"],
        len(dm.splits["train"]),
        [0 if i == i_ftlab else 1 for i in turns.order],
    )


def bench_hf(work: Path, reps: int, reps_padded: int) -> dict[str, Any]:
    epochs: dict[str, list[float]] = {k: [] for k in (*VARIANTS, "hf_best", "hf_run_glue")}
    accuracy: dict[str, list[float]] = {k: [] for k in epochs}
    pair_ratios: dict[str, list[float]] = {k: [] for k in VARIANTS}
    n_train = None
    for rep in range(reps):
        # a seed per repetition, the same for both of a pair: the accuracies are 3 seeds'
        seeded = [*OVERRIDES, f"seed={42 + rep}"]
        for key, extra in VARIANTS.items():
            log(f"hf rep {rep + 1}/{reps}: {key} and hf_best in turns")
            # who goes first alternates with the repetitions
            pair = in_turns([*seeded, *extra], work, f"hf_{key}", ftlab_first=rep % 2 == 0)
            ftlab_s, hf_s = pair.ftlab_steps.epoch_times()[0], pair.hf_steps.epoch_times()[0]
            epochs[key].append(ftlab_s)
            accuracy[key].append(pair.ftlab_metrics["test/acc"])
            epochs["hf_best"].append(hf_s)
            accuracy["hf_best"].append(pair.hf_acc)
            n_train = pair.train_size
            pair_ratios[key].append(ftlab_s / hf_s)
            log(f"  {key} {ftlab_s:.1f}s  hf_best {hf_s:.1f}s  ({ftlab_s / hf_s:.3f})")
        if rep < reps_padded:
            log(f"hf rep {rep + 1}/{reps}: hf_run_glue (alone)")
            cfg, dm, network, precision = setup_baseline(seeded, work)
            steps, acc = hf_trainer_run(
                network.model,
                dm.tokenizer,
                dm.splits["train"],
                dm.splits["test"],
                **hf_settings(cfg, precision, True, work / "hf_run_glue"),
            )
            epochs["hf_run_glue"].append(steps.epoch_times()[0])
            accuracy["hf_run_glue"].append(acc)
    ratios: dict[str, Any] = {
        f"ratio_epoch_{key}_over_hf_best": statistics.median(v) for key, v in pair_ratios.items()
    }
    ratios.update(
        {
            f"ratio_epoch_{key}_over_hf_run_glue": statistics.median(epochs[key])
            / statistics.median(epochs["hf_run_glue"])
            for key in VARIANTS
            if epochs["hf_run_glue"]
        }
    )
    return {
        "overrides": OVERRIDES,
        "seeds": [42 + rep for rep in range(reps)],
        "in_turns": True,
        "train_sentences": n_train,
        "epoch_s": {k: stats(v) for k, v in epochs.items() if v},
        "dev_acc": {k: stats(v) for k, v in accuracy.items() if v},
        "dev_acc_per_seed": {k: v for k, v in accuracy.items() if v},
        "ratio_epoch_over_hf_best_per_rep": {k: stats(v) for k, v in pair_ratios.items()},
        **ratios,
    }


def markdown(r: dict[str, Any], fmt: Callable) -> list[str]:
    lines = [
        "## Text pipeline vs transformers' Trainer",
        "",
        f"MiniLM on {r['train_sentences']} SST-2 training sentences, 1 epoch, batch 32, "
        "lr 1e-4, linear warmup 6%, weight decay 0.01, bf16 autocast where ftlab uses it; "
        "dev accuracy on the 872 SST-2 dev sentences. `best` is HF Trainer with dynamic padding "
        "+ `group_by_length`; `ftlab` is the default (`data.group_by_length=sorted`).",
    ]
    lines.append(
        "Each repetition trains ftlab and HF at its best in turns, a step each, each in a "
        "thread of its own (src/bench/turns.py; who goes first alternates), each timed on a "
        "clock that stops while the other runs: the ratio of a repetition is measured on one "
        "machine state. "
        "`run_glue` (every example padded to 128) runs alone, only with `--reps-padded N`."
    )
    lines += [
        "Repetition i uses seed 42 + i for both, so the accuracies are those of different seeds. "
        "Goals: ftlab epoch ≤ 0.2 × run_glue and ≤ 0.9 × best, at the same dev accuracy "
        "(±1 pt).",
        "",
        "| contestant | epoch time (s) | dev accuracy |",
        "|---|---|---|",
    ]
    for key, epoch in r["epoch_s"].items():
        lines.append(f"| {key} | {fmt(epoch)} | {fmt(r['dev_acc'][key], 4)} |")
    per_rep = r.get("ratio_epoch_over_hf_best_per_rep", {})
    parts = []
    for name, value in r.items():
        if not name.startswith("ratio_epoch_") or not isinstance(value, float):
            continue
        key, base = name.removeprefix("ratio_epoch_").split("_over_")
        spread = ""
        if base == "hf_best" and key in per_rep:  # the pairs' own ratios: their range
            spread = f" ({per_rep[key]['min']:.3f}–{per_rep[key]['max']:.3f})"
        parts.append(f"{key} / {base.removeprefix('hf_')} = **{value:.3f}**{spread}")
    lines += ["", f"Epoch-time ratios (medians): {', '.join(parts)}.", ""]
    return lines
