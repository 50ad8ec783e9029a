"""Config checks that run before any heavy work: one clear line per bad value."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from src.errors import ConfigError

MONITORED = ("val/acc", "val/f1", "val/loss", "val/precision", "val/recall")

# The keys each data module takes (its __init__ parameters but `processor`), so a mistyped
# `+data.max_len=...` fails here instead of being ignored; tests/test_checks.py keeps these
# equal to the signatures.
DATA_KEYS: dict[str, tuple[str, ...]] = {
    "src.data.text.TextDataModule": (
        "train_file",
        "test_file",
        "val_file",
        "hub",
        "text_column",
        "text_pair_column",
        "label_column",
        "label_names",
        "label_columns",
        "task_type",
        "val_fraction",
        "test_fraction",
        "carve_whole_texts",
        "strip_html",
        "delimiter",
        "header",
        "column_names",
        "quoting",
        "limit_train",
        "max_length",
        "batch_size",
        "eval_batch_size",
        "group_by_length",
        "num_workers",
        "cache_dir",
        "seed",
        "folds",
        "fold",
    ),  # fmt: skip
    "src.data.image.ImageDataModule": (
        "root",
        "train_dir",
        "val_dir",
        "test_dir",
        "val_fraction",
        "test_fraction",
        "batch_size",
        "eval_batch_size",
        "augment",
        "color_jitter",
        "mixup_alpha",
        "cutmix_alpha",
        "num_workers",
        "cache_images",
        "seed",
        "folds",
        "fold",
    ),  # fmt: skip
    "src.data.image_csv.ImageCsvDataModule": (
        "train_file",
        "root",
        "val_file",
        "test_file",
        "image_column",
        "label_column",
        "label_columns",
        "label_names",
        "task_type",
        "delimiter",
        "header",
        "column_names",
        "quoting",
        "val_fraction",
        "test_fraction",
        "batch_size",
        "eval_batch_size",
        "augment",
        "color_jitter",
        "mixup_alpha",
        "cutmix_alpha",
        "num_workers",
        "cache_images",
        "seed",
        "folds",
        "fold",
    ),  # fmt: skip
}


def _positive(value: object, key: str, kind: type = float, minimum: float = 0.0) -> None:
    try:
        ok = kind(value) > minimum if kind is float else kind(value) >= minimum
        ok = ok and not isinstance(value, bool) and float(value) == kind(value)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        bound = f"> {minimum:g}" if kind is float else f">= {minimum:g}"
        raise ConfigError(f"{key}={value!r} is invalid: must be a {kind.__name__} {bound}")


def check_train_config(cfg: DictConfig) -> None:
    """Validate the composed config (values only; files are checked by the data modules)."""
    for key in ("task", "model", "data", "optimizer", "trainer"):
        if key not in cfg or cfg[key] is None:
            raise ConfigError(f"config has no {key!r} section; pick one with {key}=NAME")
    if cfg.model.modality != cfg.task.modality:
        raise ConfigError(
            f"model={cfg.model.name} is a {cfg.model.modality} model but task={cfg.task.name} is "
            f"a {cfg.task.modality} task; pick a {cfg.task.modality} model"
        )
    check_data_keys(cfg.data)
    if isinstance(cfg.get("seed"), bool) or not isinstance(cfg.get("seed"), int):
        raise ConfigError(f"seed={cfg.get('seed')!r} is invalid: must be an int")
    _positive(cfg.optimizer.lr, "optimizer.lr")
    _positive(cfg.optimizer.get("weight_decay", 0.0), "optimizer.weight_decay", minimum=-1e-12)
    _positive(cfg.data.batch_size, "data.batch_size", int, 1)
    _positive(cfg.data.get("eval_batch_size", 1), "data.eval_batch_size", int, 1)
    check_epochs(cfg.trainer)
    steps = OmegaConf.select(cfg, "callbacks.model_checkpoint.every_n_train_steps")
    if steps is not None:  # before: best + last.ckpt every N steps, and no best per validation
        raise ConfigError(
            f"callbacks.model_checkpoint.every_n_train_steps={steps!r}: mid-epoch saves of "
            f"last.ckpt are now callbacks.step_checkpoint.every_n_train_steps={steps!r}; the best "
            "checkpoint is chosen after each validation"
        )
    if (cfg.get("finetune") or {}).get("strategy") == "phases":
        from src.phases import check_phases_run  # no torch: cheap

        check_phases_run(cfg)
    for key in ("val_fraction", "test_fraction"):
        value = cfg.data.get(key)
        if value is None and key == "test_fraction":
            continue
        if key in cfg.data and not _fraction(value):
            raise ConfigError(f"data.{key}={value!r} is invalid: must be a float in (0, 1)")
    if cfg.data.get("delimiter") is not None:
        from src.data.preflight import parse_delimiter

        parse_delimiter(cfg.data.delimiter)
    if cfg.data.get("quoting") is not None:
        from src.data.preflight import parse_quoting

        parse_quoting(cfg.data.quoting)
    if cfg.data.get("group_by_length") not in (True, False, None):
        from src.data.length_grouping import length_grouping  # only for a string: imports torch

        length_grouping(cfg.data.group_by_length)
    if cfg.data.get("limit_train") is not None:
        _positive(cfg.data.limit_train, "data.limit_train", int, 2)
    if cfg.data.get("max_length") is not None:
        _positive(cfg.data.max_length, "data.max_length", int, 2)
    smoothing = cfg.get("loss", {}).get("label_smoothing", 0.0)
    if not 0.0 <= float(smoothing) < 1.0:
        raise ConfigError(f"loss.label_smoothing={smoothing} must be in [0, 1)")
    check_class_weights(cfg.get("loss", {}).get("class_weights"))
    from src.tasks import check_task_config, spec_of, task_type

    check_task_config(cfg)
    monitored = spec_of(cfg).monitored  # multiclass: MONITORED
    if cfg.monitor not in monitored:
        raise ConfigError(
            f"monitor={cfg.monitor!r}; valid for task.type={spec_of(cfg).name}: "
            f"{', '.join(monitored)}"
        )
    if cfg.mode not in ("min", "max"):
        raise ConfigError(f"mode={cfg.mode!r}; valid: min, max")
    check_scheduler(cfg.get("scheduler"), monitored)
    from src.compile import compile_arguments  # no torch

    compile_arguments(cfg.get("compile"))
    from src.allocator import check_allocator  # no torch

    check_allocator(cfg.get("allocator"))
    cpu_threads_every = OmegaConf.select(cfg, "callbacks.cpu_threads.every_n_seconds")
    if cpu_threads_every is not None:
        _positive(cpu_threads_every, "callbacks.cpu_threads.every_n_seconds")
    if cfg.task.modality == "image":
        from src.data.augment import check_augment_config  # torchvision only for a list

        check_augment_config(cfg.data, task_type(cfg))
    check_model_pooling(cfg.model)
    from src.init_from import check_init_from  # no torch: cheap

    check_init_from(cfg)
    if cfg.model.family == "hf" and OmegaConf.is_missing(cfg.model, "pretrained"):
        raise ConfigError("model.pretrained is not set; give a hub id or a local model dir")
    if cfg.model.family == "hf" and cfg.data.get("max_length") is not None:
        check_max_length(int(cfg.data.max_length), cfg.model.pretrained)
    check_accelerator(cfg.trainer)


def _fraction(value: object) -> bool:
    try:
        return not isinstance(value, bool) and 0 < float(value) < 1
    except (TypeError, ValueError):
        return False


def check_data_keys(data: DictConfig) -> None:
    """Every data key is set and is one the task's data module takes."""
    for key in data:
        if OmegaConf.is_missing(data, key):
            raise ConfigError(f"data.{key} is not set; give it on the command line: data.{key}=...")
    valid = DATA_KEYS.get(str(data.get("_target_")))
    if valid is None:
        return  # a data module of the user's own: its constructor checks its arguments
    unknown = [k for k in data if k != "_target_" and k not in valid]
    if unknown:
        raise ConfigError(
            f"data.{unknown[0]} is not a setting of this task's data; valid: {', '.join(valid)}"
        )


def check_model_pooling(model: DictConfig) -> None:
    """model.pooling: auto | cls | mean | pooler, for text encoders only."""
    from src.models.pooling import check_pooling  # no torch: cheap

    pooling = model.get("pooling")
    if model.family == "hf":
        check_pooling(pooling)
    elif pooling is not None:
        raise ConfigError(
            f"model.pooling={pooling!r} applies to text encoders (model=bert); "
            f"model={model.get('name')} pools as its architecture does"
        )


PLATEAU_KEYS = ("name", "monitor", "mode", "factor", "patience", "threshold", "cooldown", "min_lr")


def check_scheduler(sched: DictConfig | None, monitored: tuple[str, ...]) -> None:
    """scheduler.name is a known schedule; plateau's settings are values it can work with."""
    from src.phases import SCHEDULES  # = src.optim.SCHEDULES, without torch

    if not sched:
        return
    name = sched.get("name")
    if name not in SCHEDULES:
        raise ConfigError(f"scheduler.name={name!r}; valid: {', '.join(SCHEDULES)}")
    if name != "plateau":
        return
    unknown = [k for k in sched if k not in PLATEAU_KEYS]
    if unknown:
        raise ConfigError(
            f"scheduler.{unknown[0]} is not a setting of scheduler=plateau (it has no warmup); "
            f"valid: {', '.join(PLATEAU_KEYS[1:])}"
        )
    if sched.get("monitor") not in monitored:
        raise ConfigError(
            f"scheduler.monitor={sched.get('monitor')!r}; valid: {', '.join(monitored)}"
        )
    if sched.get("mode") not in ("min", "max"):
        raise ConfigError(f"scheduler.mode={sched.get('mode')!r}; valid: min, max")
    factor = sched.get("factor", 0.1)
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 < factor < 1:
        raise ConfigError(f"scheduler.factor={factor!r} is invalid: must be a float in (0, 1)")
    for key in ("patience", "cooldown"):
        _positive(sched.get(key, 0), f"scheduler.{key}", int, 0)
    for key in ("threshold", "min_lr"):
        _positive(sched.get(key, 0.0), f"scheduler.{key}", minimum=-1e-300)


def check_epochs(trainer: DictConfig) -> None:
    """max_epochs >= 1; -1 (no epoch limit) only with a max_steps limit."""
    epochs, steps = trainer.get("max_epochs"), trainer.get("max_steps")
    if epochs == -1 and isinstance(steps, int) and steps > 0:
        return
    if epochs is not None:
        if epochs == -1:
            raise ConfigError(
                "trainer.max_epochs=-1 (no epoch limit) needs trainer.max_steps=N > 0: the LR "
                "schedule must know where training ends"
            )
        _positive(epochs, "trainer.max_epochs", int, 1)


def check_accelerator(trainer: DictConfig) -> None:
    """A GPU accelerator asked for on a machine where torch sees none."""
    accelerator = str(trainer.get("accelerator", "auto")).lower()
    if accelerator not in ("gpu", "cuda"):
        return
    import torch  # not Lightning: about 1 s

    if not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator={accelerator} but torch sees no CUDA GPU here "
            "(CUDA_VISIBLE_DEVICES, driver); use trainer.accelerator=auto or cpu"
        )


def model_position_limit(pretrained: str) -> tuple[int, str] | None:
    """The longest input (in tokens) a local or packaged HF model takes, and where that is said:
    the tokenizer's model_max_length, else config.json's max_position_embeddings (RoBERTa-style
    models reserve 2 positions for padding offsets)."""
    import json
    from pathlib import Path

    from src.assets import packaged_hf_model

    root = packaged_hf_model(str(pretrained)) or Path(str(pretrained)).expanduser()
    config_file = root / "config.json"
    if not config_file.is_file():
        return None  # a hub id not available here: loading the model reports it
    tok_file = root / "tokenizer_config.json"
    if tok_file.is_file():
        limit = json.loads(tok_file.read_text()).get("model_max_length")
        if isinstance(limit, int) and 0 < limit < 1_000_000:
            return limit, f"model_max_length in {tok_file.name}"
    config = json.loads(config_file.read_text())
    positions = config.get("max_position_embeddings")
    if not isinstance(positions, int):
        return None
    offset = 2 if config.get("model_type") in ("roberta", "xlm-roberta", "camembert") else 0
    return positions - offset, f"max_position_embeddings in {config_file.name}"


def check_max_length(max_length: int, pretrained: str) -> None:
    found = model_position_limit(pretrained)
    if found and max_length > found[0]:
        raise ConfigError(
            f"data.max_length={max_length} is above what model {pretrained} takes: at most "
            f"{found[0]} tokens ({found[1]}); use data.max_length<={found[0]}"
        )


def check_class_weights(value: object) -> None:
    """loss.class_weights: null, `balanced`, or a list of positive numbers (length: per data)."""
    valid = "valid: null, balanced, or a list of positive floats, one per class"
    if value is None or value == "balanced":
        return
    if isinstance(value, str) or not OmegaConf.is_list(value) and not isinstance(value, list):
        raise ConfigError(f"loss.class_weights={value!r} is invalid; {valid}")
    weights = list(value)
    for w in weights:
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not w > 0:
            shown = OmegaConf.to_container(value) if OmegaConf.is_list(value) else weights
            raise ConfigError(f"loss.class_weights={shown} is invalid: {w!r} is not > 0; {valid}")


def reject_unknown_keys(cfg: DictConfig, config_name: str, why: str = "") -> None:
    """Keys added with `+key=...` that the entry point's own config file does not declare: they
    would be silently ignored, so they are an error naming the valid keys."""
    from src import PROJECT_ROOT

    declared = OmegaConf.to_container(
        OmegaConf.load(PROJECT_ROOT / "conf" / f"{config_name}.yaml"), resolve=False
    )
    given = OmegaConf.to_container(cfg, resolve=False)
    groups = {"paths", "hydra", "defaults"}  # composed from their own groups

    def walk(node: dict, known: dict, prefix: str) -> None:
        for key, value in node.items():
            if prefix == "" and key in groups:
                continue
            name = f"{prefix}{key}"
            if key not in known:
                while isinstance(value, dict) and len(value) == 1:  # +data.test_file=...
                    key, value = next(iter(value.items()))
                    name = f"{name}.{key}"
                valid = ", ".join(f"{prefix}{k}" for k in known if k not in groups)
                raise ConfigError(f"{name} is not a setting of this command{why}; valid: {valid}")
            if isinstance(value, dict) and isinstance(known[key], dict):
                walk(value, known[key], f"{name}.")

    walk(given, declared, "")
