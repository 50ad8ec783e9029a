"""`python -m src.eval ckpt_path=PATH`: test a fine-tuned checkpoint on its task's test split."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

import src  # noqa: F401  (registers the ${ftlab_root:} resolver)
from src.errors import ConfigError, exit_on_user_error
from src.pipeline import (
    build_eval_trainer,
    checkpoint_datamodule,
    load_run,
    read_run,
    relocate_data,
)
from src.results import print_summary, write_metrics
from src.tasks import metric_keys

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    from src.checks import reject_unknown_keys
    from src.models.networks import build_processor

    # e.g. +data.test_file=...: src.eval tests on the checkpoint's own task data only
    reject_unknown_keys(cfg, "eval", " (src.eval tests on the data of the checkpoint's run)")
    saved = read_run(cfg.ckpt_path)
    run_cfg = saved.run_cfg
    relocate_data(run_cfg, cfg.get("data_dir"))
    if cfg.get("batch_size"):
        run_cfg.data.eval_batch_size = int(cfg.batch_size)
    processor = build_processor(run_cfg.model)
    datamodule = checkpoint_datamodule(run_cfg, saved.label_names, processor)
    module = load_run(saved, processor).module
    trainer = build_eval_trainer(cfg.trainer, cfg.paths.output_dir)
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
