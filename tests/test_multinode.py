"""A sweep trial that spans two nodes: two `torchrun` agents (--nnodes=2, one process each) on
127.0.0.1, gloo on CPU, Lightning's TorchElasticEnvironment. Only global rank 0 reports to the
study, once per validation; a prune stops both nodes. (The same trial under SLURM, srun'd by a
worker job: tests/test_slurm.py.) Tiny BERT, 3 epochs; ~1-2 min."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import optuna

from src.sweep import trial_env
from tests.conftest import QUIET, ROOT, read_metrics, tiny_text_overrides
from tests.test_sweep import _env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _two_node_trial(
    tmp_path: Path, tiny_bert: Path, data: Path, name: str, pruner: dict
) -> tuple[optuna.trial.FrozenTrial, Path, list[str]]:
    """Ask a study for a trial, run it as 2 torchrun nodes x 1 process; the trial as recorded,
    its run dir and each node's output."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    trial = study.ask()
    env = {
        **_env(),
        "OMP_NUM_THREADS": "1",
        trial_env.ENV_STORAGE: storage,
        trial_env.ENV_STUDY: name,
        trial_env.ENV_TRIAL_ID: str(trial._trial_id),
        trial_env.ENV_TRIAL_NUMBER: str(trial.number),
        trial_env.ENV_PRUNER: json.dumps(pruner),
    }
    for key in ("SLURM_NTASKS", "SLURM_PROCID", "SLURM_JOB_ID"):  # not a SLURM task
        env.pop(key, None)
    run_dir = tmp_path / name
    port = _free_port()
    train = [
        "-m",
        "src.train",
        *tiny_text_overrides(tiny_bert, data),
        "trainer.max_epochs=3",
        "scheduler=constant",
        "trainer.accelerator=cpu",
        "trainer.strategy=ddp",
        "++trainer.num_nodes=2",  # not in conf/trainer: ++ adds it
        "trainer.devices=1",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={run_dir}",
        *QUIET,
    ]
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                "--nproc-per-node=1",
                f"--node-rank={rank}",
                "--master-addr=127.0.0.1",
                f"--master-port={port}",
                *train,
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    try:
        outs = [node.communicate(timeout=400)[0] for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    for node, out in zip(nodes, outs, strict=True):
        assert node.returncode == 0, out[-4000:]
    return study.trials[trial.number], run_dir, outs


def test_a_two_node_torchrun_trial_reports_once_per_step_from_global_rank_zero(
    tmp_path: Path, tiny_bert: Path, tiny_text_data: Path
) -> None:
    # asked at every step, never prunes (val/acc >= 0): one report per validation, steps 1..3
    never = {"_target_": "optuna.pruners.ThresholdPruner", "lower": 0.0}
    trial, run_dir, outs = _two_node_trial(tmp_path, tiny_bert, tiny_text_data, "full", never)
    assert sorted(trial.intermediate_values) == [1, 2, 3], trial.intermediate_values
    # both nodes ran a rank of one 2-process group, each under torchrun's environment
    for rank, out in enumerate(outs):
        assert f"GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/2" in out, out[-3000:]
    # and only global rank 0 (node 0) reported, once per validation
    assert [ln.split(" - ", 1)[-1] for ln in outs[0].splitlines() if "reported val/acc=" in ln] == [
        f"reported val/acc={trial.intermediate_values[k]:.4f} as step {k}" for k in (1, 2, 3)
    ], outs[0][-3000:]
    assert "reported val/acc=" not in outs[1], outs[1][-3000:]
    metrics = read_metrics(run_dir)
    assert metrics["epochs"] == 3 and metrics["monitor_value"] is not None
    assert not (run_dir / trial_env.PRUNED_MARKER).exists()

    # a prune at the second report (val/acc never reaches 1.01) stops both nodes there
    cut = {"_target_": "optuna.pruners.ThresholdPruner", "lower": 1.01, "n_warmup_steps": 2}
    trial, run_dir, _ = _two_node_trial(tmp_path, tiny_bert, tiny_text_data, "cut", cut)
    assert sorted(trial.intermediate_values) == [1, 2], trial.intermediate_values
    assert json.loads((run_dir / trial_env.PRUNED_MARKER).read_text())["step"] == 2
    assert read_metrics(run_dir)["epochs"] == 2  # neither node trained on, none hung
