"""One run, built in one place: config -> data -> network -> module -> trainer.

`train` builds a run from its config, fits it, tests the best checkpoint and writes metrics.json
(src.train, each fold of src.cv, src.bench). A trained run rebuilt from its checkpoint alone
(`load_run`, for src.eval, src.predict, src.export, src.ensemble) is src/saved_run.py.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from src.checks import check_train_config
from src.data.workers import AUTO as AUTO_WORKERS
from src.data.workers import loader_workers, training_processes_per_node, usable_cores
from src.errors import ConfigError
from src.tasks import build_task, metric_keys, task_type

# Lightning, transformers and the rest are imported where they are used: `import lightning`
# alone takes about 8 s here, and a config mistake should be reported before paying for it.
if TYPE_CHECKING:
    import lightning as L


log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- a run from its config


def build_datamodule(cfg: DictConfig, stage: str | None, processor: Any = None) -> Any:
    """The task's data module (`cfg.data`) reading through the model's tokenizer or image
    preprocessing (`processor`, built from `cfg.model` when not given); set up for `stage`
    (fit, test), or not yet when None."""
    from hydra.utils import instantiate

    from src.models.networks import build_processor

    if processor is None:
        processor = build_processor(cfg.model)
    # `auto` settings resolved per training process on this node (one per device under DDP)
    processes = training_processes_per_node(cfg.get("trainer"))
    resolved: dict[str, Any] = {}
    if cfg.data.get("num_workers") == AUTO_WORKERS:
        resolved["num_workers"] = loader_workers(AUTO_WORKERS, processes)
        log.info(
            "data.num_workers=auto: %d loader workers (%d CPU cores for %d training process%s)",
            resolved["num_workers"],
            usable_cores(),
            processes,
            "" if processes == 1 else "es",
        )
    if cfg.data.get("cache_images") == "auto":  # each training process caches its own images
        from src.data.image_cache import AUTO, GIB, cache_budget

        resolved["cache_images"] = cache_budget(AUTO, processes) / GIB
    data_cfg = OmegaConf.merge(cfg.data, resolved) if resolved else cfg.data
    datamodule = instantiate(data_cfg, processor=processor, _recursive_=False)
    if stage is not None:
        datamodule.setup(stage)
    return datamodule


def build_data_and_module(cfg: DictConfig):
    """The data module (set up, so its labels are known) and the LightningModule for `cfg`."""
    from hydra.utils import instantiate

    from src.compile import compile_network
    from src.data.report import resolve_class_weights, resolve_pos_weight
    from src.finetune import prepare_network
    from src.models.classifier import Classifier
    from src.models.networks import build_network

    datamodule = build_datamodule(cfg, "fit")
    init_from = cfg.model.get("init_from")
    # with init_from, the pretrained weights would be overwritten at once: not loaded at all
    pretrained = not init_from
    if init_from and resumes_own_checkpoint(cfg):
        # a restarted sequential fine-tuning run: its own last.ckpt holds every weight
        log.info("resume=true: last.ckpt found, model.init_from=%s is not read again", init_from)
        init_from = None
    network = build_network(cfg.model, datamodule.label_names, pretrained_weights=pretrained)
    head_loaded = False
    if init_from:  # sequential fine-tuning: an earlier run's backbone (and head: same labels)
        from src.init_from import describe_model, init_network

        head_loaded = init_network(
            network,
            str(init_from),
            datamodule.label_names,
            task_type(cfg),
            describe_model(cfg.model),
        )
    network = prepare_network(network, cfg.get("finetune"))
    if compile_network(network, cfg.get("compile")):
        log.info("compile: the network's forward is compiled (torch.compile %s)", cfg.compile)
    train_report = datamodule.data_report["splits"]["train"]
    class_weights = None
    if task_type(cfg) == "multiclass":
        class_weights = resolve_class_weights(
            cfg.loss.get("class_weights"), train_report["class_counts"]
        )
    config = OmegaConf.to_container(cfg, resolve=True)
    if hasattr(network, "pooling"):  # what `auto` became: the checkpoint reloads with it
        config["model"]["pooling"] = network.pooling
    task = build_task(
        config,
        datamodule.label_names,
        label_smoothing=float(cfg.loss.label_smoothing),
        class_weights=class_weights,
        pos_weight=resolve_pos_weight(cfg.loss.get("pos_weight"), train_report),
        target_stats=train_report.get("target_stats"),
    )
    module = Classifier(
        network=network,
        label_names=datamodule.label_names,
        optimizer=instantiate(cfg.optimizer),
        scheduler=OmegaConf.to_container(cfg.scheduler, resolve=True)
        if cfg.get("scheduler")
        else None,
        lr_decay=float(cfg.finetune.get("lr_decay", 1.0)) if cfg.get("finetune") else 1.0,
        label_smoothing=float(cfg.loss.label_smoothing),
        class_weights=class_weights,
        config=config,
        task=task,
    )
    if not head_loaded:
        task.init_head(network, train_report)  # multi-label: output bias at the label priors
    return datamodule, module


def build_trainer(cfg: DictConfig, extra_callbacks: list | None = None) -> L.Trainer:
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import ProgressBar

    from src.callbacks import instantiate_callbacks, instantiate_loggers
    from src.checkpoints import AtomicCheckpointIO, ExactResume

    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_cfg["precision"] = resolve_precision(
        trainer_cfg.get("precision"), trainer_cfg.get("accelerator", "auto")
    )
    callbacks = instantiate_callbacks(cfg.get("callbacks")) + (extra_callbacks or [])
    callbacks.append(ExactResume())  # RNG states and the loader's position in checkpoints
    # callbacks.progress_bar=null: no progress output at all (not Lightning's default bar)
    if not any(isinstance(c, ProgressBar) for c in callbacks):
        trainer_cfg["enable_progress_bar"] = False
    try:
        return instantiate(
            trainer_cfg,
            callbacks=callbacks,
            logger=instantiate_loggers(cfg.get("logger")),
            plugins=[AtomicCheckpointIO()],  # a kill mid-save never leaves a truncated checkpoint
        )
    except InstantiationException as e:  # an unknown Trainer option or an invalid value
        cause = e.__cause__ or e
        raise ConfigError(f"trainer: {str(cause).strip().splitlines()[0]}") from e


def build_eval_trainer(trainer: DictConfig, output_dir: str) -> L.Trainer:
    """A Trainer that only tests or validates: no logger, no checkpoints, a progress bar."""
    import lightning as L

    from src.progress import progress_bar

    return L.Trainer(
        accelerator=trainer.accelerator,
        devices=trainer.devices,
        precision=resolve_precision(trainer.precision, trainer.accelerator),
        logger=False,
        default_root_dir=output_dir,
        callbacks=[progress_bar()],  # Rich on a terminal, plain lines in a log
    )


def own_last_checkpoint(cfg: DictConfig) -> Path:
    """This run dir's checkpoints/last.ckpt (it may not exist yet)."""
    return Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"


def resumes_own_checkpoint(cfg: DictConfig) -> bool:
    """Whether this run will continue its own run dir's last.ckpt (resume=true and it exists)."""
    return bool(cfg.get("resume")) and own_last_checkpoint(cfg).is_file()


def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """The checkpoint to resume from. `ckpt_path=last` means this run dir's checkpoints/last.ckpt
    and fails when there is none; `resume=true` takes it when it exists and starts fresh when not
    (the same command both starts and resumes a preemptible job)."""
    path = cfg.get("ckpt_path")
    last = own_last_checkpoint(cfg)
    if cfg.get("resume"):
        if path not in (None, "", "last"):
            raise ConfigError(
                f"resume=true and ckpt_path={path!r} disagree: resume=true continues this run "
                "dir's last.ckpt; give one or the other"
            )
        if not last.is_file():
            log.info("resume=true: no %s yet; starting from scratch", last)
            return None
        path = "last"
    if path in (None, ""):
        return None
    if path == "last":
        path = str(last)
    if not Path(path).is_file():
        raise ConfigError(f"ckpt_path={cfg.ckpt_path!r}: no such checkpoint file ({path})")
    return path


def preflight_data(cfg: DictConfig) -> None:
    """The run's data files, checked with pandas before anything heavy: a table of images
    (task=image_csv), or text files (the text tasks); image folders are checked by their module."""
    data = cfg.data
    if str(data.get("_target_")) == "src.data.image_csv.ImageCsvDataModule":
        from src.data.image_table import read_image_table

        read_image_table(data)
    elif cfg.task.modality == "text":
        from src.data.preflight import preflight_text_data

        preflight_text_data(data)


def train(
    cfg: DictConfig, report_to_sweep: bool = True, extra_callbacks: list | None = None
) -> dict[str, Any]:
    """Fit and test; write metrics.json into the run dir; return the metrics.

    `report_to_sweep=False`: a cross-validation fold, whose per-epoch values the sweep's pruner
    must not see (src/cv.py reports the running CV mean instead). `extra_callbacks`: Lightning
    callbacks beside the config's (e.g. `make bench`'s plain loop, src/bench/overhead.py)."""
    started = time.time()
    check_train_config(cfg)  # before the heavy imports: a bad value is reported at once
    preflight_data(cfg)  # files, columns and labels (image tables: image files), pandas only
    import lightning as L

    from src.analysis import ErrorAnalysis
    from src.callbacks import BestValMetrics, checkpoint_callback
    from src.checkpoints import check_resume_checkpoint
    from src.data.report import publish_data_report
    from src.features import maybe_cache_features
    from src.finetune import check_finetune_config, finetune_callbacks
    from src.finetune_schedules import phase_results
    from src.results import print_summary, write_metrics
    from src.sweep.trial import sweep_callbacks
    from src.tensorboard_output import log_final_results
    from src.tuning import maybe_find_lr

    check_finetune_config(cfg.get("finetune"), cfg.model.modality)
    ckpt_path = resolve_ckpt_path(cfg)
    use_allocator(cfg)  # before the data and the network are allocated
    L.seed_everything(cfg.seed, workers=True)
    datamodule, module = build_data_and_module(cfg)
    if ckpt_path:
        check_resume_checkpoint(ckpt_path, module)
    datamodule = maybe_cache_features(cfg, datamodule, module)  # frozen backbone: features once

    best_val = BestValMetrics(cfg.monitor, cfg.mode)
    analysis = ErrorAnalysis(cfg.paths.output_dir)  # the test: per_class.csv, errors.csv
    trainer = build_trainer(
        cfg,
        extra_callbacks=[
            best_val,
            analysis,
            *finetune_callbacks(cfg.get("finetune")),
            *(sweep_callbacks(cfg) if report_to_sweep else []),
            *(extra_callbacks or []),
        ],
    )
    if trainer.is_global_zero:  # <run dir>/data_report.json and TensorBoard's text tab
        publish_data_report(datamodule.data_report, cfg.paths.output_dir, trainer.loggers)
    maybe_find_lr(cfg, trainer, module, datamodule, resuming=ckpt_path is not None)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)

    last_train_loss = module.last_train_loss
    checkpoint = checkpoint_callback(trainer)
    best_path = checkpoint.best_model_path if checkpoint and checkpoint.best_model_path else None
    test_metrics: dict[str, float] = {}
    if cfg.get("test"):
        results = trainer.test(module, datamodule=datamodule, ckpt_path=best_path, verbose=False)
        test_metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}

    # the run contract: multiclass val|test/{loss,acc,precision,recall,f1}; see src/tasks
    metrics: dict[str, Any] = {k: best_val.best.get(k) for k in metric_keys(cfg, "val")}
    metrics.update({k: test_metrics.get(k) for k in metric_keys(cfg, "test")})
    metrics.update(analysis.metrics)  # test/ece (classification types)
    metrics.update(
        {
            "train/loss": last_train_loss,
            "monitor": cfg.monitor,
            "monitor_value": best_val.best.get(cfg.monitor),
            "best_epoch": best_val.best.get("epoch"),
            "best_ckpt_path": best_path,
            "last_ckpt_path": _existing(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"),
            "epochs": trainer.current_epoch,
            "global_step": trainer.global_step,
            "precision": str(trainer.precision),
            "wall_time_s": round(time.time() - started, 1),
        }
    )
    metrics.update(module.task.extras())  # multi-label: the thresholds used, per-label F1
    metrics.update(phase_results(trainer))  # finetune=phases: each phase as it ran
    if trainer.is_global_zero:
        write_metrics(cfg.paths.output_dir, metrics)
        confusion = getattr(module, "confusion_matrix", None)
        log_final_results(trainer.loggers, cfg, metrics, confusion, datamodule.label_names)
        print_summary(metrics, metric_keys(cfg, "val") + metric_keys(cfg, "test"))
    return metrics


def _existing(path: Path) -> str | None:
    return str(path) if path.is_file() else None


# --------------------------------------------------------------------------- a run from its checkpoint


def checkpoint_datamodule(
    run_cfg: DictConfig, label_names: list[str], processor: Any, where: str = ""
) -> Any:
    """The run's data module, set up for testing, with the checkpoint's classes (`where`: the
    checkpoint, named in the error)."""
    datamodule = build_datamodule(run_cfg, "test", processor)
    if datamodule.label_names != label_names:
        raise ConfigError(
            f"{where + ': ' if where else ''}the data's classes {datamodule.label_names} differ "
            f"from the checkpoint's {label_names}"
        )
    return datamodule


# --------------------------------------------------------------------------- precision


def cpu_has_fast_bf16() -> bool:
    """AMX or AVX512-BF16: bf16 matmuls run natively (about 1.7x fp32 for MiniLM here)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def use_allocator(cfg: DictConfig) -> None:
    """`allocator` (src/allocator.py): keep freed memory for the next step on CPU runs."""
    from src.allocator import apply_allocator, resolve_allocator

    choice = resolve_allocator(cfg.get("allocator"), trains_on_gpu(cfg.trainer.accelerator))
    if apply_allocator(choice):
        log.info("allocator: keep (freed memory stays in the process for the next step)")


def trains_on_gpu(accelerator: str) -> bool:
    """Whether `trainer.accelerator` puts the run on a CUDA GPU here."""
    import torch

    return accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available()


def resolve_precision(precision: Any, accelerator: str) -> Any:
    """`auto`: bf16-mixed where the hardware does bf16 fast, else full fp32."""
    if precision != "auto":
        return precision
    import torch

    if trains_on_gpu(accelerator):
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_has_fast_bf16() else "32-true"
