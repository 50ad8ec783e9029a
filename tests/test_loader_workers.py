"""`data.num_workers=auto` (src/data/workers.py): image decoding workers from the CPU cores this
process may use, shared among the training processes of a node; a bad value named early."""

from __future__ import annotations

import logging

import pytest
from omegaconf import OmegaConf

from src.data.workers import (
    MAX_AUTO_WORKERS,
    loader_workers,
    training_processes_per_node,
    usable_cores,
)
from src.errors import ConfigError
from tests.conftest import ROOT


@pytest.mark.parametrize(
    ("cores", "processes", "workers"),
    [
        (1, 1, 1),  # one core: one worker, the loop and it take turns
        (2, 1, 2),  # this VM: the 2 that measured best here
        (4, 1, 3),  # one core left to the training loop
        (16, 1, MAX_AUTO_WORKERS),
        (64, 1, MAX_AUTO_WORKERS),
        (16, 4, 3),  # DDP on 4 GPUs: 4 cores each
        (64, 8, 7),
        (4, 8, 0),  # fewer cores than training processes: decode in the loop
    ],
)
def test_auto_shares_the_cores_among_the_training_processes(cores, processes, workers) -> None:
    assert loader_workers("auto", processes, cores=cores) == workers


def test_auto_reads_this_process_cpu_affinity(monkeypatch) -> None:
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5}, raising=False)
    assert usable_cores() == 6
    assert loader_workers("auto") == 5


@pytest.mark.parametrize("bad", [-1, 1.5, "four", True, None])
def test_a_bad_worker_count_is_named(bad) -> None:
    with pytest.raises(ConfigError, match=r"data.num_workers=.* must be auto or an int >= 0"):
        loader_workers(bad)


def test_numbers_pass_through() -> None:
    assert loader_workers(0) == 0 and loader_workers(6, processes_per_node=4) == 6


@pytest.mark.parametrize(
    ("trainer", "processes"),
    [
        ({"devices": 1}, 1),
        ({"devices": 4}, 4),
        ({"devices": [0, 2]}, 2),
        ({"devices": "auto", "accelerator": "cpu"}, 1),
        ({}, 1),
        (None, 1),
    ],
)
def test_training_processes_per_node_from_the_trainer_section(trainer, processes) -> None:
    cfg = OmegaConf.create(trainer) if trainer is not None else None
    assert training_processes_per_node(cfg) == processes


def test_image_tasks_default_to_auto_and_a_run_resolves_it(tiny_images, caplog) -> None:
    from hydra import compose, initialize_config_dir

    from src.pipeline import build_datamodule

    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        for task in ("image_folder", "image_csv"):
            cfg = compose("train", overrides=[f"task={task}", "model=resnet18"])
            assert cfg.data.num_workers == "auto", task
        cfg = compose(
            "train",
            overrides=[
                "task=image_folder",
                "model=resnet18",
                "model.weights=null",
                f"data.root={tiny_images}",
                "trainer.devices=2",
            ],
        )
    with caplog.at_level(logging.INFO, logger="src.pipeline"):
        datamodule = build_datamodule(cfg, None)
    assert datamodule.num_workers == loader_workers("auto", processes_per_node=2)
    assert "data.num_workers=auto: " in caplog.text and "for 2 training processes" in caplog.text


def test_a_sweep_running_trials_side_by_side_gives_each_its_share(tmp_path, monkeypatch) -> None:
    """N trials at once on one machine: each trial's `auto` takes 1/N of the cores, GPU or not."""
    from src.data.workers import ENV_CPU_SHARE
    from src.sweep.runner import Sweep
    from src.sweep.settings import SweepSettings
    from src.sweep.space import parse_params

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("src.sweep.runner.usable_cores", lambda: 16)

    def trial_env(n_workers: int, gpus: list[str]) -> dict[str, str]:
        settings = SweepSettings(
            n_trials=1,
            study_name=f"share{n_workers}",
            storage=f"sqlite:///{tmp_path / 'share.db'}",
            direction="maximize",
            monitor="val/acc",
            n_workers=n_workers,
        )
        space = parse_params({"optimizer.lr": "interval(0.1, 0.2)"})
        sweep = Sweep(settings, space, [], tmp_path)
        return sweep._trial_env(sweep.study.ask(), gpus)

    on_gpus = trial_env(4, ["1"])
    assert on_gpus[ENV_CPU_SHARE] == "4" and "OMP_NUM_THREADS" not in on_gpus
    on_cpu = trial_env(4, [])
    assert on_cpu[ENV_CPU_SHARE] == "4" and on_cpu["OMP_NUM_THREADS"] == "4"
    assert ENV_CPU_SHARE not in trial_env(1, [])
    # inside such a trial on the 16-core machine: 4 cores, so 3 loader workers (not 8)
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert loader_workers("auto") == 8
    monkeypatch.setenv(ENV_CPU_SHARE, on_gpus[ENV_CPU_SHARE])
    assert usable_cores() == 4 and loader_workers("auto") == 3
