"""Config checks that run before any heavy work: one clear line per bad value."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from src.errors import ConfigError

MONITORED = ("val/acc", "val/f1", "val/loss", "val/precision", "val/recall")


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
    _positive(cfg.optimizer.lr, "optimizer.lr")
    _positive(cfg.optimizer.get("weight_decay", 0.0), "optimizer.weight_decay", minimum=-1e-12)
    _positive(cfg.data.batch_size, "data.batch_size", int, 1)
    _positive(cfg.data.get("eval_batch_size", 1), "data.eval_batch_size", int, 1)
    if cfg.trainer.get("max_epochs") is not None and cfg.trainer.max_epochs != -1:
        _positive(cfg.trainer.max_epochs, "trainer.max_epochs", int, 1)
    if "val_fraction" in cfg.data and not 0 < float(cfg.data.val_fraction) < 1:
        raise ConfigError(f"data.val_fraction={cfg.data.val_fraction} must be in (0, 1)")
    if cfg.data.get("limit_train") is not None:
        _positive(cfg.data.limit_train, "data.limit_train", int, 2)
    if cfg.data.get("max_length") is not None:
        _positive(cfg.data.max_length, "data.max_length", int, 2)
    smoothing = cfg.get("loss", {}).get("label_smoothing", 0.0)
    if not 0.0 <= float(smoothing) < 1.0:
        raise ConfigError(f"loss.label_smoothing={smoothing} must be in [0, 1)")
    check_class_weights(cfg.get("loss", {}).get("class_weights"))
    if cfg.monitor not in MONITORED:
        raise ConfigError(f"monitor={cfg.monitor!r}; valid: {', '.join(MONITORED)}")
    if cfg.mode not in ("min", "max"):
        raise ConfigError(f"mode={cfg.mode!r}; valid: min, max")
    if cfg.model.family == "hf" and OmegaConf.is_missing(cfg.model, "pretrained"):
        raise ConfigError("model.pretrained is not set; give a hub id or a local model dir")


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
