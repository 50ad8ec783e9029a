"""`compile`: torch.compile of the network a run trains. A compiled run trains the same model as an
uncompiled one (same seed: the same losses and metrics up to kernel rounding), its checkpoint
keeps the plain weight names, and a bad value is named before anything heavy runs."""

from __future__ import annotations

import logging

import pytest
import torch
from hydra import compose, initialize_config_dir

import src  # noqa: F401  (resolvers)
from src.compile import compile_arguments
from src.errors import ConfigError
from tests.conftest import ROOT, tiny_text_overrides


def text_cfg(tiny_bert, data, out, *extra: str):
    overrides = [
        *tiny_text_overrides(tiny_bert, data),
        "trainer.accelerator=cpu",
        "trainer.max_epochs=2",
        "trainer.enable_model_summary=false",
        "callbacks.progress_bar=null",
        "callbacks.early_stopping=null",
        "callbacks.lr_monitor=null",
        "~logger",
        f"paths.output_dir={out}",
        f"paths.cache_dir={out / 'cache'}",
        *extra,
    ]
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=overrides)


@pytest.mark.slow  # inductor compiles a forward and a backward: ~1 min on 2 cores
def test_a_compiled_run_trains_the_same_model(tiny_bert, tiny_text_data, tmp_path, caplog):
    from src.pipeline import train

    plain = train(text_cfg(tiny_bert, tiny_text_data, tmp_path / "plain"), report_to_sweep=False)
    with caplog.at_level(logging.INFO, logger="src.pipeline"):
        # inductor's own dropout RNG would draw other masks: eager's, for a like-for-like check
        cfg = text_cfg(
            tiny_bert,
            tiny_text_data,
            tmp_path / "compiled",
            "compile={dynamic:true,options:{fallback_random:true}}",
        )
        compiled = train(cfg, report_to_sweep=False)
    assert "compile: the network's forward is compiled" in caplog.text
    assert compiled["global_step"] == plain["global_step"] > 0
    for key in ("train/loss", "val/loss", "test/loss"):
        assert compiled[key] == pytest.approx(plain[key], rel=1e-3, abs=1e-4), key
    assert compiled["test/acc"] == plain["test/acc"]
    ckpt = torch.load(
        tmp_path / "compiled" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
    )
    assert not [k for k in ckpt["state_dict"] if "_orig_mod" in k]


@pytest.mark.parametrize(
    "value,message",
    [
        ("yes", r"compile='yes' is invalid: false, true, or a mapping"),
        ({"modee": "default"}, r"compile\.modee is not an argument of torch\.compile; valid: "),
        ({"mode": "fast"}, r"compile\.mode='fast' is invalid; valid: default, reduce-overhead"),
    ],
)
def test_a_bad_compile_value_is_named(value, message) -> None:
    with pytest.raises(ConfigError, match=message):
        compile_arguments(value)


def test_compile_values() -> None:
    assert compile_arguments(False) is None and compile_arguments(None) is None
    assert compile_arguments(True) == {}
    assert compile_arguments({"mode": "max-autotune", "dynamic": True}) == {
        "mode": "max-autotune",
        "dynamic": True,
    }


def test_the_train_config_check_names_a_bad_compile(tmp_path) -> None:
    from src.checks import check_train_config

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["compile={backend:inductor,speed:2}"])
    with pytest.raises(ConfigError, match=r"compile\.speed is not an argument"):
        check_train_config(cfg)
