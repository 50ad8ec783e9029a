"""Faults: a run SIGKILLed mid-epoch resumes exactly; checkpoints are written atomically.
(An unwritable run dir is a case of tests/test_bad_input.py.)

The kill and the trace are real callbacks injected through the CLI (`+callbacks.NAME._target_=`),
so the run under test is the real `python -m src.train`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from tests.conftest import QUIET, ROOT, read_metrics, run_cli, tiny_text_overrides

STEPS_PER_EPOCH = 15  # 120 training sentences (160, a quarter carved for val) / batch 8
KILL_AT_STEP = 23  # in the second epoch, 8 steps in


class SigkillAtStep(Callback):
    """Kills its own process with SIGKILL (no cleanup, no handlers) once `step` optimizer steps ran.

    Callbacks run before ModelCheckpoint, so the step-`step` checkpoint is never written: the
    resume starts from step `step - 1`'s last.ckpt and redoes the lost step.
    """

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class WeightTrace(Callback):
    """Appends, after every optimizer step: the step, a float64 digest of every weight, the
    learning rates and the batch's token ids (one JSON line each)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        with torch.no_grad():
            params = [p.detach().double() for p in pl_module.parameters()]
            digest = [
                float(sum(p.sum() for p in params)),
                float(sum((p * p).sum() for p in params)),
            ]
        record = {
            "step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "batch_idx": batch_idx,
            "digest": digest,
            "lrs": [g["lr"] for g in trainer.optimizers[0].param_groups],
            "ids": int(batch["input_ids"].sum()) * 1000 + int(batch["input_ids"].shape[0]),
        }
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def read_trace(path: Path) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, path.read_text().splitlines())}


def resume_args(tiny_bert: Path, data: Path, run_dir: Path, trace: Path, *extra: str) -> list[str]:
    return [
        "task=text_csv",
        f"model.pretrained={tiny_bert}",
        f"data.train_file={data / 'train.csv'}",
        "data.val_fraction=0.25",
        "data.batch_size=8",
        "data.max_length=64",  # the tiny BERT's position limit
        "data.test_fraction=null",  # the test file is val: STEPS_PER_EPOCH counts 120 examples
        "optimizer.lr=3e-3",
        "scheduler=linear_warmup",  # a schedule whose state matters: the LR changes every step
        "trainer.max_epochs=3",
        "trainer.precision=32-true",
        "trainer.accelerator=cpu",
        "test=false",
        "callbacks.early_stopping=null",
        "callbacks.step_checkpoint.every_n_train_steps=1",
        "+callbacks.trace._target_=tests.test_resume.WeightTrace",
        f"+callbacks.trace.path={trace}",
        f"paths.cache_dir={run_dir.parent / 'cache'}",
        f"hydra.run.dir={run_dir}",
        *QUIET,
        *extra,
    ]


@pytest.fixture(scope="module")
def runs(tiny_bert, tiny_text_data, tmp_path_factory) -> dict[str, Path]:
    """An uninterrupted run, and the same run SIGKILLed mid-epoch then resumed with ckpt_path=last."""
    root = tmp_path_factory.mktemp("resume")
    full, killed = root / "full", root / "killed"
    proc = run_cli("src.train", *resume_args(tiny_bert, tiny_text_data, full, root / "full.jsonl"))
    assert proc.returncode == 0, proc.stderr[-3000:]

    kill = [
        "+callbacks.kill._target_=tests.test_resume.SigkillAtStep",
        f"+callbacks.kill.step={KILL_AT_STEP}",
    ]
    proc = run_cli(
        "src.train", *resume_args(tiny_bert, tiny_text_data, killed, root / "killed.jsonl", *kill)
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert not (killed / "metrics.json").exists()
    ckpt = torch.load(killed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == KILL_AT_STEP - 1  # mid-epoch: the kill came before step 23's save

    proc = run_cli(
        "src.train",
        *resume_args(tiny_bert, tiny_text_data, killed, root / "resumed.jsonl", "ckpt_path=last"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"full": full, "killed": killed, "root": root}


def test_resumed_run_follows_the_uninterrupted_trajectory(runs) -> None:
    root = runs["root"]
    full, killed, resumed = (read_trace(root / f"{n}.jsonl") for n in ("full", "killed", "resumed"))
    assert sorted(full) == list(range(1, 3 * STEPS_PER_EPOCH + 1))
    assert max(killed) == KILL_AT_STEP
    # The resume starts at the step after the checkpoint, in the middle of epoch 1.
    assert min(resumed) == KILL_AT_STEP and sorted(resumed) == list(
        range(KILL_AT_STEP, 3 * STEPS_PER_EPOCH + 1)
    )
    assert (
        resumed[KILL_AT_STEP]["epoch"] == 1
        and resumed[KILL_AT_STEP]["batch_idx"] == KILL_AT_STEP - 1 - STEPS_PER_EPOCH
    )
    for step in sorted(resumed):
        a, b = full[step], resumed[step]
        assert b["ids"] == a["ids"], f"step {step}: another batch than the uninterrupted run"
        assert b["lrs"] == pytest.approx(a["lrs"], rel=1e-12), (
            f"step {step}: scheduler state differs"
        )
        assert b["digest"] == pytest.approx(a["digest"], rel=1e-9, abs=1e-9), (
            f"step {step}: weights differ"
        )
    for step in range(1, KILL_AT_STEP + 1):  # and before the kill, the two runs were the same run
        assert killed[step]["digest"] == full[step]["digest"]


def test_resumed_run_ends_with_the_same_weights_optimizer_and_metrics(runs) -> None:
    a = torch.load(
        runs["full"] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )
    b = torch.load(
        runs["killed"] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )
    assert a["global_step"] == b["global_step"] == 3 * STEPS_PER_EPOCH
    assert a["epoch"] == b["epoch"]
    for name, tensor in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][name], tensor, rtol=1e-6, atol=1e-7, msg=name)
    exp_a = a["optimizer_states"][0]["state"]
    exp_b = b["optimizer_states"][0]["state"]
    for key in exp_a:
        torch.testing.assert_close(
            exp_b[key]["exp_avg_sq"], exp_a[key]["exp_avg_sq"], rtol=1e-5, atol=1e-10
        )
    assert a["lr_schedulers"][0]["last_epoch"] == b["lr_schedulers"][0]["last_epoch"]
    full, resumed = read_metrics(runs["full"]), read_metrics(runs["killed"])
    assert resumed["global_step"] == full["global_step"]
    for key in ("val/acc", "val/loss", "val/f1"):
        assert resumed[key] == pytest.approx(full[key], rel=1e-5), key


def test_a_kill_after_epochs_without_improvement_resumes_from_the_last_epoch(
    tiny_bert: Path, tiny_text_data: Path, tmp_path: Path
) -> None:
    """last.ckpt follows every epoch, not only the ones that improved the monitor: Lightning 2.6
    writes `save_last` copies only beside a new top-k checkpoint, so a run whose val/acc stalled
    after epoch 0 resumed from epoch 0 and trained the lost epochs again. An LR too small to move
    the weights keeps val/acc tied from epoch 0 on; the kill comes 5 steps into epoch 2."""
    run_dir = tmp_path / "run"
    proc = run_cli(
        "src.train",
        *tiny_text_overrides(tiny_bert, tiny_text_data),
        "optimizer.lr=1e-12",
        "scheduler=constant",
        "trainer.max_epochs=3",
        "test=false",
        "callbacks.early_stopping=null",
        "+callbacks.kill._target_=tests.test_resume.SigkillAtStep",
        f"+callbacks.kill.step={2 * STEPS_PER_EPOCH + 5}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={run_dir}",
        *QUIET,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    ckpts = run_dir / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("*.ckpt")) == ["epoch00-step15.ckpt", "last.ckpt"]
    last = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 2 * STEPS_PER_EPOCH and last["epoch"] == 1


# --------------------------------------------------------------------------- atomic checkpoints

KILL_MID_SAVE = """
import os, signal, sys, torch
from src.checkpoints import AtomicCheckpointIO

real_save = torch.save
def save_half_then_die(obj, f, *a, **k):
    real_save(obj, f, *a, **k)
    f.flush()
    f.truncate(f.tell() // 2)   # half the bytes are on disk ...
    os.kill(os.getpid(), signal.SIGKILL)  # ... when the process is killed
torch.save = save_half_then_die
AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.full((1000,), 2.0)}}, sys.argv[1])
"""


def test_kill_during_checkpoint_save_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    from src.checkpoints import AtomicCheckpointIO

    last = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(1000)}}, last)
    proc = subprocess.run(
        [sys.executable, "-c", KILL_MID_SAVE, str(last)], cwd=ROOT, capture_output=True, timeout=120
    )
    assert proc.returncode == -signal.SIGKILL
    # The kill hit the temp file; last.ckpt is still the whole previous checkpoint.
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    torch.testing.assert_close(ckpt["state_dict"]["w"], torch.ones(1000))
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, last)
    assert torch.load(last, weights_only=True)["state_dict"]["w"].shape == (3,)
