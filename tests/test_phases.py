"""finetune=phases: each phase's groups train, at its LRs and schedule, from its first step; a run
stopped or SIGKILLed mid-phase resumes exactly; bad phase lists are one-line errors."""

from __future__ import annotations

import signal
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from omegaconf import OmegaConf

from src.errors import ConfigError
from src.finetune import check_finetune_config, finetune_callbacks, prepare_network
from src.phases import check_phases_run
from tests.conftest import ROOT, read_metrics, run_cli
from tests.test_finetune import (
    BERT_TOP_DOWN,
    RESNET_TOP_DOWN,
    BatchNormModes,
    ImageData,
    Probe,
    Snapshot,
    StopAfter,
    TokenData,
    bert,
    classifier,
    cnn,
    fit,
    multiplier,
    scalars,
    top,
)
from tests.test_resume import STEPS_PER_EPOCH, read_trace, resume_args

STEPS = 3  # TokenData: 24 examples / batch 8

PHASES = [
    {"trainable": [], "epochs": 1, "lr": 1e-2, "schedule": "constant", "warmup": 0},
    {"trainable": ["pooler", "layer1"], "epochs": 1, "lr": 1e-3, "lr_decay": 0.5,
     "schedule": "linear", "warmup": 1},
    {"trainable": "all", "epochs": 2, "lr": 1e-4, "lr_decay": 0.5, "schedule": "one_cycle",
     "warmup": 2},
]  # fmt: skip


def phases_cfg(phases=PHASES, **values):
    return OmegaConf.create({"strategy": "phases", "lr_decay": 1.0, "phases": phases, **values})


class AdamSteps(Callback):
    """Adam's step count of the head's weight and of the pooler's, at every epoch start."""

    def __init__(self) -> None:
        self.at: dict[int, tuple[float | None, float | None]] = {}

    def on_train_epoch_start(self, trainer, module) -> None:
        state = trainer.optimizers[0].state
        head = next(iter(module.network.head_parameters()))
        pooler = next(p for n, p in module.network.named_parameters() if ".pooler." in n)
        self.at[trainer.current_epoch] = tuple(
            float(state[p]["step"]) if p in state else None for p in (head, pooler)
        )


def test_phases_set_groups_and_lrs_at_their_steps(tiny_bert, tmp_path) -> None:
    cfg = phases_cfg()
    module = classifier(prepare_network(bert(tiny_bert), cfg))
    probe, adam = Probe(), AdamSteps()
    fit(module, TokenData(), [*finetune_callbacks(cfg), probe, adam], tmp_path, epochs=4)

    expected = [top([], 0), top(BERT_TOP_DOWN, 2), top(BERT_TOP_DOWN, 4), top(BERT_TOP_DOWN, 4)]
    for epoch, groups in enumerate(expected):
        assert probe.trainable[epoch] == groups, epoch
        assert probe.optimized[epoch] == groups, epoch  # exactly the trainable groups
    assert sorted(probe.lrs) == list(range(4 * STEPS))
    depth = {"head": 0, **{name: d for d, name in enumerate(BERT_TOP_DOWN, start=1)}}
    for step, lrs in probe.lrs.items():
        index = min(step // STEPS, 2)
        phase = PHASES[index]
        first = (0, STEPS, 2 * STEPS)[index]
        total = STEPS * phase["epochs"]
        groups = probe.trainable[min(step // STEPS, 3)]
        assert set(lrs) == {n for g in groups for n in (g, f"{g}/no_decay")}, step
        m = multiplier(phase["schedule"], step - first, phase["warmup"], total)
        for name, lr in lrs.items():
            want = phase["lr"] * phase.get("lr_decay", 1.0) ** depth[name.split("/")[0]] * m
            assert lr == pytest.approx(want, rel=1e-6, abs=1e-12), (step, name)
    # the head's Adam state carries across phases; the pooler's starts with its first phase
    assert adam.at == {0: (None, None), 1: (3.0, None), 2: (6.0, 3.0), 3: (9.0, 6.0)}


def test_frozen_groups_stay_out_of_every_phase(tiny_bert, tmp_path) -> None:
    cfg = phases_cfg(
        [{"trainable": [], "epochs": 1, "lr": 1e-2}, {"trainable": "all", "epochs": 1}],
        frozen=["embeddings", "layer0"],
    )
    module = classifier(prepare_network(bert(tiny_bert), cfg))
    probe = Probe()
    fit(module, TokenData(), [*finetune_callbacks(cfg), probe], tmp_path, epochs=2)
    assert probe.trainable == {0: {"head"}, 1: top(BERT_TOP_DOWN, 2)}
    assert probe.lrs[0]["head"] == pytest.approx(1e-2)
    assert probe.lrs[STEPS]["head"] == pytest.approx(1e-2)  # no lr given: optimizer.lr (LR)


def test_cnn_phases_keep_frozen_batchnorm_in_eval(tmp_path) -> None:
    cfg = phases_cfg(
        [{"trainable": [], "epochs": 1, "lr": 1e-2}, {"trainable": ["layer4"], "epochs": 1}]
    )
    module = classifier(prepare_network(cnn("resnet18"), cfg))
    probe, modes = Probe(), BatchNormModes()
    fit(module, ImageData(), [*finetune_callbacks(cfg), probe, modes], tmp_path, epochs=2)
    assert probe.trainable == {0: {"head"}, 1: top(RESNET_TOP_DOWN, 1)}
    assert probe.optimized == probe.trainable
    assert len(modes.modes) == 4  # 16 images / batch 8, 2 epochs
    assert not any(any(step.values()) for step in modes.modes[:2])  # phase 1: all frozen
    for step in modes.modes[2:]:  # phase 2: only layer4's BatchNorm trains
        assert {n for n, training in step.items() if training} == {"layer4"}


def test_resume_mid_phase_restores_phase_optimizer_and_scheduler(tiny_bert, tmp_path) -> None:
    """Stopped after epoch 1, the middle of the 2-epoch last phase: the resumed run rebuilds that
    phase with its optimizer and scheduler state. (Same weights as uninterrupted: the SIGKILL
    test below, through the CLI, whose data loader and RNG states resume exactly.)"""
    cfg = phases_cfg(PHASES[:1] + [{**PHASES[2], "epochs": 2}])

    def run(*extra: Callback, ckpt_path: str | None = None, root: str = "run"):
        L.seed_everything(0, verbose=False)  # the same new head in every run
        module = classifier(
            prepare_network(bert(tiny_bert), cfg), 1.0, {"name": "linear", "warmup": 0}
        )
        probe, snap = Probe(), Snapshot()
        callbacks = [*finetune_callbacks(cfg), probe, snap, *extra]
        fit(module, TokenData(), callbacks, tmp_path / root, epochs=3, ckpt_path=ckpt_path)
        return module, probe, snap

    _, full_probe, _ = run(root="uninterrupted")
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)
    _, _, stopped = run(StopAfter(1), ckpt, root="stopped")
    last = tmp_path / "ckpt" / "last.ckpt"
    _, resumed_probe, snap = run(ckpt_path=str(last), root="resumed")

    saved, restored = stopped.at["end"], snap.at["start"]
    assert restored["global_step"] == saved["global_step"] == 2 * STEPS
    assert restored["requires_grad"] == saved["requires_grad"]
    assert restored["groups"] == saved["groups"]  # names, LRs, initial_lr, params, in order
    assert restored["scheduler"] == saved["scheduler"]
    for name, value in saved["exp_avg"].items():
        assert torch.equal(value, restored["exp_avg"][name]), name
    for step in range(2 * STEPS, 3 * STEPS):
        assert resumed_probe.lrs[step] == pytest.approx(full_probe.lrs[step], rel=1e-12), step


# --------------------------------------------------------------------------- bad phase lists

BAD = [
    ({"phases": []}, "finetune.phases=[] must be a non-empty list of phases"),
    ({"phases": [{"epochs": 1, "lr_decy": 0.8}]}, "finetune.phases[0].lr_decy is not a phase setting; valid: epochs, trainable"),
    ({"phases": [{"epochs": 0}]}, "finetune.phases[0].epochs=0 is invalid: must be an int >= 1"),
    ({"phases": [{"epochs": 1, "lr": -1}]}, "finetune.phases[0].lr=-1 is invalid: must be a number > 0"),
    ({"phases": [{"epochs": 1, "schedule": "step"}]}, "finetune.phases[0].schedule='step'; valid: constant, linear"),
    ({"phases": [{"epochs": 1, "trainable": "pooler"}]}, "finetune.phases[0].trainable='pooler' is invalid"),
    ({"phases": [{"epochs": 1, "trainable": []}]}, "no phase trains a layer group (every trainable is []): that is finetune=feature_extraction"),
    ({"phases": [{"epochs": 1}], "trainable": ["pooler"]}, "finetune.trainable does not apply to finetune=phases"),
    ({"phases": [{"epochs": 1}], "feature_cache": True}, "finetune.feature_cache=true needs finetune=feature_extraction"),
]  # fmt: skip


@pytest.mark.parametrize("values,message", BAD)
def test_bad_phase_list_is_one_line(values, message) -> None:
    with pytest.raises(ConfigError) as info:
        check_finetune_config(OmegaConf.create({"strategy": "phases", **values}), "text")
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "values,message",
    [
        (
            {"phases": [{"epochs": 1, "trainable": ["layr1"]}]},
            "finetune.phases[0].trainable has 'layr1', not a layer group of this model; "
            "valid: embeddings, layer0, layer1, pooler",
        ),
        (
            {"phases": [{"epochs": 1, "trainable": ["layer*"]}], "frozen": ["layer0"]},
            "finetune.phases[0].trainable and finetune.frozen both name layer0",
        ),
    ],
)
def test_phase_group_names_are_checked_against_the_model(tiny_bert, values, message) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        prepare_network(bert(tiny_bert), OmegaConf.create({"strategy": "phases", **values}))
    assert message in str(info.value)


def test_phase_epochs_must_sum_to_max_epochs() -> None:
    cfg = OmegaConf.create(
        {
            "finetune": OmegaConf.load(ROOT / "conf" / "finetune" / "phases.yaml"),
            "trainer": {"max_epochs": 1},
        }
    )
    with pytest.raises(ConfigError, match=r"last 1 \+ 2 = 3 epochs but trainer.max_epochs=1; "):
        check_phases_run(cfg)
    cfg.trainer.max_epochs = 3
    check_phases_run(cfg)


# --------------------------------------------------------------------------- the CLI, SIGKILLed

KILL_AT_STEP = 23  # 15 steps per epoch: the second phase (epochs 1-2), 8 steps into epoch 1


@pytest.fixture(scope="module")
def phase_runs(tiny_bert, tiny_text_data, tmp_path_factory) -> dict[str, Path]:
    """conf/finetune/phases.yaml (head 1 epoch at 1e-3, then all 2 epochs at 3e-5, lr_decay 0.8)
    uninterrupted, and SIGKILLed mid-phase then continued with resume=true."""
    root = tmp_path_factory.mktemp("phases")
    full, killed = root / "full", root / "killed"

    def args(run_dir: Path, trace: str, *extra: str) -> list[str]:
        phases = ("finetune=phases", "trainer.log_every_n_steps=1")
        return resume_args(tiny_bert, tiny_text_data, run_dir, root / trace, *phases, *extra)

    proc = run_cli("src.train", *args(full, "full.jsonl"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    kill = (
        "+callbacks.kill._target_=tests.test_resume.SigkillAtStep",
        f"+callbacks.kill.step={KILL_AT_STEP}",
    )
    proc = run_cli("src.train", *args(killed, "killed.jsonl", *kill))
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    proc = run_cli("src.train", *args(killed, "resumed.jsonl", "resume=true"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"full": full, "killed": killed, "root": root}


def test_cli_killed_mid_phase_resumes_exactly(phase_runs) -> None:
    root = phase_runs["root"]
    full, resumed = read_trace(root / "full.jsonl"), read_trace(root / "resumed.jsonl")
    assert min(resumed) == KILL_AT_STEP and max(resumed) == max(full) == 3 * STEPS_PER_EPOCH
    # the head alone (2 param groups: decay, no_decay) in phase 1, every group after it
    assert all(len(full[s]["lrs"]) == 2 for s in range(1, STEPS_PER_EPOCH))
    assert all(len(full[s]["lrs"]) == 10 for s in range(STEPS_PER_EPOCH + 1, max(full) + 1))
    for step in sorted(resumed):
        a, b = full[step], resumed[step]
        assert b["ids"] == a["ids"], f"step {step}: another batch than the uninterrupted run"
        assert b["lrs"] == pytest.approx(a["lrs"], rel=1e-12), f"step {step}: LRs differ"
        assert b["digest"] == pytest.approx(a["digest"], rel=1e-9, abs=1e-9), f"step {step}"
    a = torch.load(phase_runs["full"] / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(phase_runs["killed"] / "checkpoints" / "last.ckpt", weights_only=True)
    for name, tensor in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][name], tensor, rtol=1e-6, atol=1e-7, msg=name)
    m_full, m_resumed = read_metrics(phase_runs["full"]), read_metrics(phase_runs["killed"])
    for key in ("val/acc", "val/loss", "global_step"):
        assert m_resumed[key] == pytest.approx(m_full[key], rel=1e-5), key
    assert m_resumed["phases"] == m_full["phases"]


def test_cli_records_the_phases_and_their_lrs(phase_runs) -> None:
    phases = read_metrics(phase_runs["full"])["phases"]
    assert [(p["epochs"], p["first_step"], p["steps"]) for p in phases] == [
        ([0, 0], 0, STEPS_PER_EPOCH),
        ([1, 2], STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH),
    ]
    assert phases[0]["trainable"] == ["head"]
    assert phases[1]["trainable"] == ["embeddings", "layer0", "layer1", "pooler", "head"]
    assert [(p["lr"], p["lr_decay"], p["schedule"]) for p in phases] == [
        (1e-3, 1.0, "linear"),
        (3e-5, 0.8, "linear"),
    ]
    tags = scalars(phase_runs["full"])
    head = dict(tags["lr-AdamW/head"])
    first = {g: min(step for step, _ in tags[f"lr-AdamW/{g}"]) for g in BERT_TOP_DOWN}
    assert set(first.values()) == {STEPS_PER_EPOCH}  # every group joins with phase 2
    assert max(v for s, v in head.items() if s < STEPS_PER_EPOCH) == pytest.approx(1e-3)
    assert max(v for s, v in head.items() if s >= STEPS_PER_EPOCH) == pytest.approx(3e-5)
    for depth, g in enumerate(BERT_TOP_DOWN, start=1):
        for step, lr in tags[f"lr-AdamW/{g}"]:
            assert lr == pytest.approx(head[step] * 0.8**depth, rel=1e-5), (g, step)
