"""model.init_from: a new run from an earlier run's checkpoint or hf export. The backbone always
loads, the head when the labels match; optimizer and step start fresh; bad input is one line."""

from __future__ import annotations

import logging
import shutil
from functools import partial
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from lightning.pytorch.callbacks import Callback

import src  # noqa: F401  (the ${ftlab_root:} resolver)
from src.checks import check_train_config
from src.errors import ConfigError
from src.init_from import head_keys
from src.pipeline import build_data_and_module, train
from src.saved_run import load_run
from tests.conftest import ROOT, tiny_text_overrides


def compose_run(tiny_bert: Path, data: Path, out: Path, *extra: str):
    overrides = [
        *tiny_text_overrides(tiny_bert, data),
        "trainer.accelerator=cpu",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=1",
        "trainer.enable_model_summary=false",
        "callbacks.progress_bar=null",
        "callbacks.early_stopping=null",
        "~logger",
        "callbacks.lr_monitor=null",
        "test=false",
        "optimizer.lr=5e-3",
        f"paths.output_dir={out}",
        f"paths.cache_dir={out.parent / 'cache'}",
        *extra,
    ]
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=overrides)


def labelled_data(root: Path, source: Path, names: list[str]) -> Path:
    """The tiny sentences with label i % len(names) named `names`."""
    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        lines = (source / f"{split}.csv").read_text().splitlines()
        rows = [lines[0]] + [
            f"{line.rsplit(',', 1)[0]},{names[i % len(names)]}" for i, line in enumerate(lines[1:])
        ]
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def source(tiny_bert, tiny_text_data, tmp_path_factory) -> dict:
    """A trained run (3 steps from the tiny BERT) and its network's weights."""
    out = tmp_path_factory.mktemp("init_from") / "source"
    metrics = train(compose_run(tiny_bert, tiny_text_data, out), report_to_sweep=False)
    ckpt = metrics["last_ckpt_path"]
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    network = {k.removeprefix("network."): v for k, v in state.items() if k.startswith("network.")}
    return {"ckpt": ckpt, "network": network, "root": out.parent}


def split(network) -> tuple[dict, dict]:
    """(backbone, head) weights of a network."""
    head = head_keys(network)
    state = network.state_dict()
    return (
        {k: v for k, v in state.items() if k not in head},
        {k: v for k, v in state.items() if k in head},
    )


def assert_same(ours: dict, theirs: dict) -> None:
    assert ours.keys() <= theirs.keys()
    for key, value in ours.items():
        assert torch.equal(value, theirs[key]), key


class StartProbe(Callback):
    """The run's step, epoch, optimizer state and head weights when training starts."""

    seen: dict = {}

    def on_train_start(self, trainer, module) -> None:
        _, head = split(module.network)
        StartProbe.seen = {
            "step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "optimizer_state": len(trainer.optimizers[0].state),
            "head": {k: v.clone() for k, v in head.items()},
        }


def test_matching_labels_load_backbone_and_head_and_start_fresh(
    source, tiny_bert, tiny_text_data, caplog
) -> None:
    out = source["root"] / "same_labels"
    cfg = compose_run(
        tiny_bert,
        tiny_text_data,
        out,
        f"model.init_from={source['ckpt']}",
        "+callbacks.probe._target_=tests.test_init_from.StartProbe",
    )
    with caplog.at_level(logging.INFO, logger="src.init_from"):
        metrics = train(cfg, report_to_sweep=False)
    assert f"init_from: backbone + head from {source['ckpt']} (labels match)" in caplog.text
    seen = StartProbe.seen
    assert seen["step"] == 0 and seen["epoch"] == 0 and seen["optimizer_state"] == 0  # not resumed
    assert seen["head"] and all(
        torch.equal(v, source["network"][k]) for k, v in seen["head"].items()
    )
    assert metrics["global_step"] == 3  # its own 3 steps from 0, not the source's 3 more


@pytest.mark.parametrize(
    "names,outputs",
    [(["neg", "pos"], 2), (["a", "b", "c"], 3)],
    ids=["other_names", "other_count"],
)
def test_other_labels_get_a_new_head(
    source, tiny_bert, tiny_text_data, names, outputs, caplog
) -> None:
    data = labelled_data(source["root"] / f"data_{len(names)}", tiny_text_data, names)
    cfg = compose_run(
        tiny_bert, data, source["root"] / "other", f"model.init_from={source['ckpt']}"
    )
    with caplog.at_level(logging.INFO, logger="src.init_from"):
        _, module = build_data_and_module(cfg)
    assert f"new head: labels {names} differ from {source['ckpt']}'s ['0', '1']" in caplog.text
    backbone, head = split(module.network)
    assert_same(backbone, source["network"])
    assert module.network.model.classifier.out_features == outputs
    assert not any(torch.equal(v, source["network"][k]) for k, v in head.items() if v.ndim == 2)


def test_hf_export_dir_loads_like_its_checkpoint(source, tiny_bert, tiny_text_data, caplog) -> None:
    from src.export import export

    out = source["root"] / "hf"
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        export(compose("export", [f"ckpt_path={source['ckpt']}", "format=hf", f"out={out}"]))
    cfg = compose_run(tiny_bert, tiny_text_data, source["root"] / "x", f"model.init_from={out}")
    with caplog.at_level(logging.INFO, logger="src.init_from"):
        _, module = build_data_and_module(cfg)
    assert "(labels match)" in caplog.text
    assert_same(module.network.state_dict(), source["network"])


def test_lora_checkpoint_starts_from_its_merged_weights(source, tiny_bert, tiny_text_data) -> None:
    out = source["root"] / "lora"
    lora = train(
        compose_run(tiny_bert, tiny_text_data, out, "finetune=lora", "optimizer.lr=5e-2"),
        report_to_sweep=False,
    )
    cfg = compose_run(
        tiny_bert,
        tiny_text_data,
        out.parent / "after_lora",
        f"model.init_from={lora['last_ckpt_path']}",
    )
    _, module = build_data_and_module(cfg)
    assert not any("lora" in k for k in module.network.state_dict())
    before = load_run(lora["last_ckpt_path"]).module.network.eval()
    batch = {
        "input_ids": torch.tensor([[2, 5, 9, 13, 3], [2, 20, 7, 3, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]),
    }
    with torch.no_grad():
        torch.testing.assert_close(module.network.eval()(batch), before(batch))


# --------------------------------------------------------------------------- bad input


def test_missing_path_is_one_line(source, tiny_bert, tiny_text_data) -> None:
    cfg = compose_run(
        tiny_bert, tiny_text_data, source["root"] / "y", "model.init_from=/no/such.ckpt"
    )
    with pytest.raises(ConfigError, match=r"^model.init_from='/no/such.ckpt': no such file"):
        check_train_config(cfg)


def test_init_from_with_a_checkpoint_to_resume_is_refused(source, tiny_bert, tiny_text_data):
    cfg = compose_run(
        tiny_bert,
        tiny_text_data,
        source["root"] / "y",
        f"model.init_from={source['ckpt']}",
        "ckpt_path=last",
    )
    with pytest.raises(ConfigError, match="and ckpt_path='last' disagree"):
        check_train_config(cfg)


def test_init_from_with_resume_starts_from_the_source_then_resumes_its_own_run(
    source, tiny_bert, tiny_text_data, caplog
) -> None:
    """One command for a preemptible sequential fine-tuning job: the first start initialises
    from init_from (no last.ckpt yet), a restart continues its own last.ckpt at its step."""
    out = source["root"] / "init_then_resume"
    run = partial(
        compose_run,
        tiny_bert,
        tiny_text_data,
        out,
        f"model.init_from={source['ckpt']}",
        "resume=true",
        "+callbacks.probe._target_=tests.test_init_from.StartProbe",
    )
    check_train_config(run())
    with caplog.at_level(logging.INFO):
        first = train(run(), report_to_sweep=False)
    assert "init_from: backbone + head from" in caplog.text
    assert StartProbe.seen["step"] == 0 and first["global_step"] == 3
    caplog.clear()
    with caplog.at_level(logging.INFO):
        second = train(run("trainer.max_epochs=2"), report_to_sweep=False)
    assert "last.ckpt found, model.init_from=" in caplog.text
    assert "init_from: backbone" not in caplog.text
    assert StartProbe.seen["step"] == 3 and second["global_step"] == 6


def test_checkpoint_of_another_architecture_names_the_mismatch(
    source, tiny_bert, tiny_text_data, tmp_path
) -> None:
    from transformers import BertConfig, BertModel

    deeper = tmp_path / "deeper_bert"
    shutil.copytree(tiny_bert, deeper)
    config = BertConfig.from_pretrained(tiny_bert)
    config.num_hidden_layers = 3
    BertModel(config).save_pretrained(deeper)
    cfg = compose_run(deeper, tiny_text_data, tmp_path / "run", f"model.init_from={source['ckpt']}")
    with pytest.raises(
        ConfigError,
        match=r"holds the weights of another model: bert \(.*\) there, bert \(.*deeper_bert\) here \(16 missing",
    ):
        build_data_and_module(cfg)
