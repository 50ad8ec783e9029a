"""Every config file composes, and the run contract's keys are where sweeps expect them."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import src  # noqa: F401
from src.checks import check_train_config
from src.errors import ConfigError

CONF = Path(__file__).resolve().parent.parent / "conf"
TEXT_TASKS = ["sentiment", "text_csv"]
TEXT_MODELS = ["bert", "distilbert", "roberta", "deberta_v2"]
IMAGE_TASKS = ["hymenoptera", "image_folder"]
IMAGE_MODELS = [
    "resnet18",
    "resnet50",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "vit_b_16",
]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_train(*overrides: str):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=False)


@pytest.mark.parametrize(
    "task,model",
    [(t, m) for t in TEXT_TASKS for m in TEXT_MODELS]
    + [(t, m) for t in IMAGE_TASKS for m in IMAGE_MODELS],
)
def test_task_model_pairs_compose_and_pass_checks(task: str, model: str) -> None:
    cfg = compose_train(
        f"task={task}",
        f"model={model}",
        "data.train_file=x.csv"
        if task == "text_csv"
        else "data.root=/x"
        if task == "image_folder"
        else "seed=1",
    )
    check_train_config(cfg)
    for key in (
        "optimizer.lr",
        "data.batch_size",
        "trainer.max_epochs",
        "paths.data_dir",
        "monitor",
    ):
        assert OmegaConf.select(cfg, key) is not None, key


@pytest.mark.parametrize(
    "group", ["trainer", "scheduler", "finetune", "optimizer", "callbacks", "logger", "paths"]
)
def test_every_group_option_composes(group: str) -> None:
    for option in options(group):
        cfg = compose_train(f"{group}={option}")
        assert cfg[group] is not None


def test_every_yaml_file_is_a_known_group() -> None:
    groups = {
        "task",
        "model",
        "finetune",
        "optimizer",
        "scheduler",
        "trainer",
        "callbacks",
        "logger",
        "paths",
        "hydra",
        "hparams_search",
        "experiment",
    }
    for path in CONF.rglob("*.yaml"):
        rel = path.relative_to(CONF)
        assert len(rel.parts) == 1 or rel.parts[0] in groups, rel


def test_data_dir_follows_env(monkeypatch) -> None:
    monkeypatch.setenv("FTLAB_DATA_DIR", "/somewhere/data")
    cfg = compose_train()
    assert cfg.paths.data_dir == "/somewhere/data"
    assert cfg.data.train_file == "/somewhere/data/sst2/train.tsv"


@pytest.mark.parametrize(
    "override,needle",
    [
        ("optimizer.lr=0", "optimizer.lr=0"),
        ("optimizer.lr=-1e-3", "optimizer.lr=-0.001"),
        ("data.batch_size=0", "data.batch_size=0"),
        ("trainer.max_epochs=0", "trainer.max_epochs=0"),
        ("data.val_fraction=1.5", "data.val_fraction=1.5"),
        ("monitor=val/accuracy", "monitor='val/accuracy'"),
        ("model=resnet18", "image model but task=sentiment is a text task"),
    ],
)
def test_bad_values_fail_early_with_the_value_named(override: str, needle: str) -> None:
    cfg = compose_train(override)
    with pytest.raises(ConfigError) as e:
        check_train_config(cfg)
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_checkpoint_callbacks_instantiate_and_the_moved_step_key_names_its_new_place(
    tmp_path: Path,
) -> None:
    """The best-by-monitor callback, the per-epoch last.ckpt and the optional mid-epoch one are
    three ModelCheckpoints (Lightning's takes epochs or steps, not both); the old place of
    every_n_train_steps is an error that names the new one."""
    from hydra.utils import instantiate

    cfg = compose_train(
        "callbacks.step_checkpoint.every_n_train_steps=5", f"paths.output_dir={tmp_path}"
    )
    made = {k: instantiate(v) for k, v in cfg.callbacks.items() if "checkpoint" in k}
    assert made["model_checkpoint"].monitor == "val/acc" and not made["model_checkpoint"].save_last
    assert made["model_checkpoint"].every_n_epochs == 1
    assert made["last_checkpoint"].every_n_epochs == 1 and made["last_checkpoint"].monitor is None
    assert made["step_checkpoint"]._every_n_train_steps == 5
    assert made["step_checkpoint"].every_n_epochs == 0
    assert {m.filename for k, m in made.items() if k != "model_checkpoint"} == {"last"}
    with pytest.raises(ConfigError, match="callbacks.step_checkpoint.every_n_train_steps=200"):
        check_train_config(compose_train("callbacks.model_checkpoint.every_n_train_steps=200"))
