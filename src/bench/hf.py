"""make bench's `hf` section: ftlab's text epoch against transformers' Trainer at its best.

Each repetition trains ftlab (as it ships) and HF Trainer (dynamic padding + group_by_length) in
turns, a step each, each in a process of its own (src/bench/turns.py), who goes first
alternating with the repetitions: both see the same machine, so their ratio does not move with
its speed.
Optional: HF's run_glue way (every example padded to 128), alone after the pair
(`--reps-padded N`; 2.3 min a run here).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import statistics
import threading
import traceback
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
TOKEN_WARMUP = 3  # steps left out of the seconds per 1,000 tokens


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
    hf_process: dict[str, Any]  # the settings HF's process ran with


def in_turns(
    overrides: list[str],
    work: Path,
    tag: str,
    ftlab_first: bool = True,
    ftlab: Callable[..., Any] = ftlab_run,
    hf_options: dict[str, Any] | None = None,
) -> Pair:
    """ftlab (`overrides`) and HF Trainer at its best (the same config's data and weights, with
    `hf_options` over its settings) trained in turns, `ftlab_first` or HF first: ftlab in this
    process, HF Trainer in a process of its own (spawned: its allocator and its OpenMP spin are
    glibc's and libgomp's defaults, as when users run it; ftlab sets its allocator,
    src/allocator.py). `ftlab(overrides, work, tag, callbacks=)` makes the ftlab run."""
    ctx = multiprocessing.get_context("spawn")
    turns = Turns(2, ctx=ctx)
    i_ftlab, i_hf = (0, 1) if ftlab_first else (1, 0)
    ftlab_turn = LightningTurn(turns, i_ftlab)
    results = ctx.Queue()
    hf = ctx.Process(
        target=_hf_in_turns,
        args=(overrides, work, tag, turns, i_hf, hf_options or {}, results),
        name="bench-hf",
        daemon=True,
    )
    hf.start()
    ftlab_error: BaseException | None = None
    try:
        ftlab_metrics = ftlab(overrides, work, f"{tag}_ftlab", [ftlab_turn])[1]
    except BaseException as e:  # noqa: BLE001  (raised below, unless HF failed first)
        ftlab_error = e
    finally:
        turns.finish(i_ftlab)  # HF goes on alone
    outcome = _hf_outcome(hf, results)
    # whichever failed first: the other's error is then only the broken turns
    if ftlab_error is not None and not _broken_turns(ftlab_error):
        raise RuntimeError("the ftlab run failed in its turn") from ftlab_error
    if "error" in outcome:
        raise RuntimeError(f"HF Trainer failed in its process:\n{outcome['error']}")
    if ftlab_error is not None:
        raise RuntimeError("the ftlab run failed in its turn") from ftlab_error
    return Pair(
        ftlab_turn.steps,
        ftlab_metrics,
        StepLog.from_dict(outcome["steps"]),
        outcome["acc"],
        outcome["train_size"],
        [0 if i == i_ftlab else 1 for i in turns.order],
        outcome["settings"],
    )


def _hf_in_turns(
    overrides: list[str],
    work: Path,
    tag: str,
    turns: Turns,
    index: int,
    hf_options: dict[str, Any],
    results: Any,
) -> None:
    """HF Trainer's side of `in_turns`, in its own process: build the config's data and network
    as the parent would, train in turns, put its StepLog, dev accuracy and training-set size (or
    the traceback of what failed) on `results`."""
    try:
        cfg, dm, network, precision = setup_baseline(overrides, work)
        steps = StepLog(clock=turns.clock(index))
        settings = {**hf_settings(cfg, precision, False, work / f"{tag}_hf"), **hf_options}
        trainer, _ = hf_trainer(
            network.model,
            dm.tokenizer,
            dm.splits["train"],
            steps=steps,
            callbacks=[hf_turn(turns, index)],
            **settings,
        )
        trainer.train()  # its last step ends its turns (HFTurn.on_train_end)
        acc = hf_accuracy(trainer, dm.splits["test"], dm.tokenizer, False)
        from src.allocator import allocator_in_use

        results.put(
            {
                "steps": steps.as_dict(),
                "acc": acc,
                "train_size": len(dm.splits["train"]),
                "settings": {  # what its process ran with
                    "GOMP_SPINCOUNT": os.environ.get("GOMP_SPINCOUNT"),
                    "allocator": allocator_in_use(),
                },
            }
        )
    except BaseException:  # noqa: BLE001  (reported to the parent, which raises it)
        results.put({"error": traceback.format_exc()})
    finally:
        turns.finish(index)  # ftlab goes on alone


def _broken_turns(error: BaseException | None) -> bool:
    """Whether `error` is (or was raised from) the turns broken by the other loop's end."""
    while error is not None:
        if isinstance(error, threading.BrokenBarrierError):
            return True
        error = error.__cause__ or error.__context__
    return False


def _hf_outcome(process: Any, results: Any) -> dict[str, Any]:
    """What the HF process put on `results`; an error if it ended without a word."""
    outcome = None
    while outcome is None and process.is_alive():
        with contextlib.suppress(queue.Empty):
            outcome = results.get(timeout=1.0)
    if outcome is None:  # it ended: what it put just before may still be in the pipe
        try:
            outcome = results.get(timeout=1.0)
        except queue.Empty:
            outcome = {"error": f"its process ended with exit code {process.exitcode}"}
    process.join()
    return outcome


def bench_hf(work: Path, reps: int, reps_padded: int) -> dict[str, Any]:
    epochs: dict[str, list[float]] = {k: [] for k in (*VARIANTS, "hf_best", "hf_run_glue")}
    accuracy: dict[str, list[float]] = {k: [] for k in epochs}
    tokens: dict[str, list[float]] = {k: [] for k in (*VARIANTS, "hf_best")}
    per_1k: dict[str, list[float]] = {k: [] for k in tokens}  # seconds per 1,000 tokens
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
            for name, steps in ((key, pair.ftlab_steps), ("hf_best", pair.hf_steps)):
                tokens[name].append(sum(steps.tokens))
                per_1k[name].append(steps.seconds_per_1k_tokens(TOKEN_WARMUP))
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
        "ftlab_gomp_spincount": os.environ.get("GOMP_SPINCOUNT"),
        "train_sentences": n_train,
        "epoch_s": {k: stats(v) for k, v in epochs.items() if v},
        "dev_acc": {k: stats(v) for k, v in accuracy.items() if v},
        "dev_acc_per_seed": {k: v for k, v in accuracy.items() if v},
        # the epoch's tokens, padding included, and the seconds per 1,000 of them (steps after
        # the first TOKEN_WARMUP): epoch ratio = token ratio x per-token ratio, roughly
        "epoch_tokens": {k: stats(v) for k, v in tokens.items()},
        "s_per_1k_tokens": {k: stats(v) for k, v in per_1k.items()},
        "ratio_tokens_over_hf_best": {
            k: stats([a / b for a, b in zip(tokens[k], tokens["hf_best"], strict=True)])
            for k in VARIANTS
        },
        "ratio_s_per_1k_tokens_over_hf_best": {
            k: stats([a / b for a, b in zip(per_1k[k], per_1k["hf_best"], strict=True)])
            for k in VARIANTS
        },
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
        "process of its own (src/bench/turns.py; who goes first alternates), each timed on a "
        "clock that stops while the other runs: the ratio of a repetition is measured on one "
        "machine state. HF's process has glibc's allocator, as users run it; ftlab's sets its own "
        "(`allocator=auto`, src/allocator.py). Both have the environment's OpenMP spin "
        f"(GOMP_SPINCOUNT={r.get('ftlab_gomp_spincount') or 'unset, the default'}). "
        "`run_glue` (every example padded to 128) runs alone, only with `--reps-padded N`."
    )
    lines += [
        "Repetition i uses seed 42 + i for both, so the accuracies are those of different seeds. "
        "Goals: ftlab epoch ≤ 0.2 × run_glue and ≤ 0.9 × best, at the same dev accuracy "
        "(±1 pt).",
        "",
        "| contestant | epoch time (s) | dev accuracy | tokens an epoch (padding included) "
        "| s per 1,000 tokens |",
        "|---|---|---|---|---|",
    ]
    for key, epoch in r["epoch_s"].items():
        toks, per = r.get("epoch_tokens", {}).get(key), r.get("s_per_1k_tokens", {}).get(key)
        lines.append(
            f"| {key} | {fmt(epoch)} | {fmt(r['dev_acc'][key], 4)} | "
            f"{fmt(toks, 0) if toks else ''} | {fmt(per, 3) if per else ''} |"
        )
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
    lines += ["", f"Epoch-time ratios (medians): {', '.join(parts)}."]
    for key, tok in r.get("ratio_tokens_over_hf_best", {}).items():
        per = r["ratio_s_per_1k_tokens_over_hf_best"][key]
        lines.append(
            f"Split of {key} / best: tokens an epoch **{tok['median']:.3f}** "
            f"({tok['min']:.3f}–{tok['max']:.3f}) × seconds per token "
            f"**{per['median']:.3f}** ({per['min']:.3f}–{per['max']:.3f})."
        )
    lines.append("")
    return lines
