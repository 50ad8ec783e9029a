"""`python -m src.eval ckpt_path=PATH`: test a fine-tuned checkpoint on its task's test split, or
on other labelled data (`data.test_file=...`, `data.root=...`); writes metrics.json and the error
analysis (per_class.csv, errors.csv: src/analysis.py) into the eval run dir."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

import src  # noqa: F401  (registers the ${ftlab_root:} resolver)
from src.errors import ConfigError, exit_on_user_error
from src.pipeline import build_eval_trainer, checkpoint_datamodule
from src.results import print_summary, write_metrics
from src.saved_run import load_run, read_run, relocate_data
from src.tasks import metric_keys

log = logging.getLogger(__name__)


def new_data(cfg: DictConfig) -> dict[str, Any]:
    """The eval config's data.* keys that are set: other labelled data to test on."""
    given = {k: v for k, v in (cfg.get("data") or {}).items() if v not in (None, "")}
    if given and cfg.split != "test":
        raise ConfigError(
            f"split={cfg.split!r} with data.{next(iter(given))}: other data is tested "
            "as the test split (split=test)"
        )
    return given


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    from src.analysis import ErrorAnalysis
    from src.checks import reject_unknown_keys
    from src.data.labelled import check_labelled_data, labelled_data_config, labelled_datamodule
    from src.models.networks import build_processor

    # e.g. +data.text_column=...: the data is read as the checkpoint's run read its own
    reject_unknown_keys(cfg, "eval", " (src.eval reads data as the checkpoint's run did)")
    if cfg.split not in ("test", "val"):
        raise ConfigError(f"split={cfg.split!r}; valid: test, val")
    given = new_data(cfg)
    saved = read_run(cfg.ckpt_path)
    run_cfg = saved.run_cfg
    relocate_data(run_cfg, cfg.get("data_dir"))
    data = None
    if given:  # checked with pandas before the model and the tokenizer load
        data = labelled_data_config(run_cfg, given)
        check_labelled_data(data, saved.label_names)
    if cfg.get("batch_size"):
        run_cfg.data.eval_batch_size = int(cfg.batch_size)
        if data is not None:
            data.eval_batch_size = int(cfg.batch_size)
    processor = build_processor(run_cfg.model)
    if data is not None:
        datamodule = labelled_datamodule(data, saved.label_names, processor)
    else:
        datamodule = checkpoint_datamodule(run_cfg, saved.label_names, processor)
    module = load_run(saved, processor).module
    trainer = build_eval_trainer(cfg.trainer, cfg.paths.output_dir)
    analysis = ErrorAnalysis(cfg.paths.output_dir)
    if cfg.split == "val":
        results = trainer.validate(module, datamodule=datamodule, verbose=False)
    else:
        trainer.callbacks.append(analysis)  # per_class.csv, errors.csv, test/ece
        results = trainer.test(module, datamodule=datamodule, verbose=False)
    keys = metric_keys(run_cfg, cfg.split)
    metrics: dict[str, Any] = {k: float(results[0][k]) for k in keys if k in results[0]}
    metrics.update(analysis.metrics)
    metrics["ckpt_path"] = str(Path(cfg.ckpt_path).expanduser().resolve())
    for key, value in given.items():
        metrics[f"data.{key}"] = str(Path(str(value)).expanduser().resolve())
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
