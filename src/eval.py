"""`python -m src.eval ckpt_path=PATH`: test a fine-tuned checkpoint on its task's test split."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

import src  # noqa: F401  (registers the ${ftlab_root:} resolver)
from src.errors import ConfigError, exit_on_user_error
from src.finetune import prepare_network
from src.models.classifier import Classifier
from src.models.networks import build_network, build_processor
from src.pipeline import resolve_precision
from src.progress import progress_bar
from src.results import print_summary, write_metrics
from src.tasks import metric_keys

log = logging.getLogger(__name__)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint, read with weights_only=True (no arbitrary code on load)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"ckpt_path={str(path)!r}: no such file")
    try:
        ckpt = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConfigError(f"ckpt_path={str(path)!r} is not a readable checkpoint: {e}") from e
    config = ckpt.get("hyper_parameters", {}).get("config") if isinstance(ckpt, dict) else None
    if not config:
        raise ConfigError(
            f"ckpt_path={str(path)!r} was not written by ftlab (no run config inside)"
        )
    return ckpt


def module_from_checkpoint(
    ckpt: dict[str, Any], run_cfg: DictConfig, label_names: list[str]
) -> Classifier:
    """The fine-tuned Classifier, built from the stored config (no pretrained weights fetched)."""
    network = build_network(run_cfg.model, label_names, pretrained_weights=False)
    network = prepare_network(network, run_cfg.get("finetune"))  # e.g. LoRA adapters
    module = Classifier(
        network=network,
        label_names=label_names,
        optimizer=None,
        config=ckpt["hyper_parameters"]["config"],
    )
    try:
        module.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as e:
        raise ConfigError(
            f"checkpoint weights do not fit model {run_cfg.model.name}: {_first_detail(str(e))}"
        ) from e
    return module


def _first_detail(message: str) -> str:
    """The first specific line of torch's load_state_dict error (the first one is a heading)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return lines[1] if len(lines) > 1 and lines[0].startswith("Error(s) in loading") else lines[0]


def relocate_data(run_cfg: DictConfig, data_dir: str | None) -> None:
    """Point the stored data paths at `data_dir` instead of the training run's data dir."""
    old = run_cfg.paths.data_dir
    if not data_dir or old == data_dir:
        return
    for key, value in run_cfg.data.items():
        if isinstance(value, str) and value.startswith(old):
            run_cfg.data[key] = data_dir + value[len(old) :]


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    from src.checks import reject_unknown_keys

    # e.g. +data.test_file=...: src.eval tests on the checkpoint's own task data only
    reject_unknown_keys(cfg, "eval", " (src.eval tests on the data of the checkpoint's run)")
    ckpt = load_checkpoint(cfg.ckpt_path)
    run_cfg = OmegaConf.create(ckpt["hyper_parameters"]["config"])
    relocate_data(run_cfg, cfg.get("data_dir"))
    if cfg.get("batch_size"):
        run_cfg.data.eval_batch_size = int(cfg.batch_size)
    label_names = list(ckpt["hyper_parameters"]["label_names"])

    from hydra.utils import instantiate

    datamodule = instantiate(
        run_cfg.data, processor=build_processor(run_cfg.model), _recursive_=False
    )
    datamodule.setup("test")
    if datamodule.label_names != label_names:
        raise ConfigError(
            f"the data's classes {datamodule.label_names} differ from the checkpoint's {label_names}"
        )
    module = module_from_checkpoint(ckpt, run_cfg, label_names)
    precision = resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator)
    trainer = L.Trainer(
        accelerator=cfg.trainer.accelerator,
        devices=cfg.trainer.devices,
        precision=precision,
        logger=False,
        default_root_dir=cfg.paths.output_dir,
        callbacks=[progress_bar()],  # Rich on a terminal, plain lines in a log
    )
    if cfg.split == "val":
        results = trainer.validate(module, datamodule=datamodule, verbose=False)
    elif cfg.split == "test":
        results = trainer.test(module, datamodule=datamodule, verbose=False)
    else:
        raise ConfigError(f"split={cfg.split!r}; valid: test, val")
    keys = metric_keys(run_cfg, cfg.split)
    metrics: dict[str, Any] = {k: float(results[0][k]) for k in keys if k in results[0]}
    metrics["ckpt_path"] = str(Path(cfg.ckpt_path).expanduser().resolve())
    metrics.update(module.task.extras())
    write_metrics(cfg.paths.output_dir, metrics)
    print_summary(metrics, keys)
    return metrics


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        evaluate(cfg)


if __name__ == "__main__":
    main()
