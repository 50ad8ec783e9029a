"""The pieces of a run that are not the training loop: callbacks, loggers, results on disk."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from omegaconf import DictConfig, OmegaConf

from src.errors import FtlabError

log = logging.getLogger(__name__)

# The names of the run contract for multiclass tasks: metrics.json always has these keys (other
# task types declare theirs in src/tasks).
VAL_KEYS = ("val/loss", "val/acc", "val/precision", "val/recall", "val/f1")
TEST_KEYS = ("test/loss", "test/acc", "test/precision", "test/recall", "test/f1")


def instantiate_callbacks(cfg: DictConfig | None) -> list[Callback]:
    """Each non-null entry with a `_target_` becomes a callback."""
    if not cfg:
        return []
    return [instantiate(c) for c in cfg.values() if c is not None and "_target_" in c]


def instantiate_loggers(cfg: DictConfig | None) -> list[Logger]:
    if not cfg:
        return []
    return [instantiate(c) for c in cfg.values() if c is not None and "_target_" in c]


def cpu_has_fast_bf16() -> bool:
    """AMX or AVX512-BF16: bf16 matmuls run natively (about 1.7x fp32 for MiniLM here)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(precision: Any, accelerator: str) -> Any:
    """`auto`: bf16-mixed where the hardware does bf16 fast, else full fp32."""
    if precision != "auto":
        return precision
    use_gpu = accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available()
    if use_gpu:
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_has_fast_bf16() else "32-true"


class BestValMetrics(Callback):
    """Keeps every val/* metric of the epoch that scored best on `monitor` (as checkpointing)."""

    def __init__(self, monitor: str, mode: str) -> None:
        self.monitor, self.mode = monitor, mode
        self.best: dict[str, float] = {}

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        current = metrics.get(self.monitor)
        if current is None:
            return
        previous = self.best.get(self.monitor)
        better = previous is None or (
            current > previous if self.mode == "max" else current < previous
        )
        if better:
            self.best = {**metrics, "epoch": trainer.current_epoch, "step": trainer.global_step}

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = state_dict.get("best", {})


def checkpoint_callback(trainer: L.Trainer) -> ModelCheckpoint | None:
    return next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write-then-rename, so a killed run never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def log_final_results(
    loggers: list[Logger],
    cfg: DictConfig,
    metrics: dict[str, Any],
    confusion: Any,
    labels: list[str],
) -> None:
    """hparams + final metrics (the HParams tab), and the test confusion matrix as an image."""
    numeric = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and "/" in k}
    hparams = flat_hparams(cfg)
    for lg in loggers:
        if isinstance(lg, TensorBoardLogger):
            lg.log_hyperparams(hparams, metrics={f"hp/{k}": v for k, v in numeric.items()})
            if confusion is not None:
                lg.experiment.add_figure(
                    "test/confusion_matrix", confusion_figure(confusion, labels)
                )
            lg.finalize("success")


def flat_hparams(cfg: DictConfig) -> dict[str, Any]:
    """The config keys worth comparing across runs, flattened to `a.b.c: value`."""
    keep = (
        "task",
        "model",
        "data",
        "optimizer",
        "scheduler",
        "finetune",
        "trainer",
        "loss",
        "seed",
    )
    container = OmegaConf.to_container(cfg, resolve=True)
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                if not str(k).startswith("_"):
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            flat[prefix] = value if isinstance(value, (int, float, str, bool)) else str(value)

    for key in keep:
        if key in container:
            walk(key, container[key])
    return flat


def confusion_figure(confusion: torch.Tensor, labels: list[str]) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(labels)
    fig, ax = plt.subplots(figsize=(2 + 0.6 * n, 2 + 0.6 * n))
    ax.imshow(confusion.numpy(), cmap="Blues")
    ax.set_xticks(range(n), labels, rotation=45, ha="right")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, int(confusion[i, j]), ha="center", va="center")
    fig.tight_layout()
    return fig


def print_summary(metrics: dict[str, Any], keys: tuple[str, ...] = VAL_KEYS + TEST_KEYS) -> None:
    """One line of the run's metrics (`keys`: the task type's, src/tasks)."""
    shown = [k for k in keys if metrics.get(k) is not None]
    line = "  ".join(f"{k}={metrics[k]:.4f}" for k in shown)
    print(f"ftlab: {line}", file=sys.stderr, flush=True)


class ExactResume(Callback):
    """What Lightning does not restore by itself, so that a resumed run continues exactly:

    - the global torch / numpy / Python RNG states (dropout, augmentations): saved in every
      checkpoint, restored when training starts after the resume — after model building
      (which draws random numbers) and before the first batch is fetched;
    - the train loader's position in its epoch (`ResumableDataLoader.state_dict`): Lightning
      saves it, but restores it only into a loader built after the checkpoint is loaded, and
      `estimated_stepping_batches` (the LR schedule's length) builds the loader before that.
    """

    def __init__(self) -> None:
        self._rng: dict[str, Any] | None = None
        self._loader_states: list[dict[str, Any]] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"rng": rng_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._rng = state_dict.get("rng")

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        fit_loop = checkpoint.get("loops", {}).get("fit_loop", {})
        self._loader_states = fit_loop.get("state_dict", {}).get("combined_loader") or None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Not on_train_epoch_start: Lightning skips that hook when it resumes mid-epoch.
        if self._loader_states:
            loaders = trainer.train_dataloader
            if isinstance(loaders, dict):
                loaders = list(loaders.values())
            flat = list(loaders) if isinstance(loaders, (list, tuple)) else [loaders]
            stateful = [dl for dl in flat if callable(getattr(dl, "load_state_dict", None))]
            if len(stateful) == len(self._loader_states):  # the same loaders as when saved
                for loader, state in zip(stateful, self._loader_states, strict=True):
                    loader.load_state_dict(state)
            self._loader_states = None
        if self._rng is not None:
            set_rng_states(self._rng)
            self._rng = None


def rng_states() -> dict[str, Any]:
    """The global RNG states as tensors, lists and numbers: loadable with weights_only=True
    (numpy's state holds an ndarray, which a weights_only load refuses)."""
    import random

    import numpy as np

    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [
            str(name),
            torch.from_numpy(keys.astype(np.int64)),
            int(pos),
            int(has_gauss),
            float(gauss),
        ],
        "python": [version, list(internal), py_gauss],
    }


def set_rng_states(states: dict[str, Any]) -> None:
    import random

    import numpy as np

    torch.set_rng_state(states["torch"])
    if states.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    name, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, py_gauss = states["python"]
    random.setstate((version, tuple(internal), py_gauss))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Local checkpoints written to a temp file in the same folder, fsynced, then renamed.

    Lightning's own save writes through an fsspec transaction whose temp file lives in the
    system temp dir; when that is another filesystem than the run dir, the final move is a copy,
    and a kill during it leaves a truncated `last.ckpt`. A rename within one folder is atomic:
    a reader sees the old checkpoint or the new one, never a part.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None
    ) -> None:
        if "://" in str(path) and not str(path).startswith("file://"):
            return super().save_checkpoint(checkpoint, path, storage_options)  # remote: fsspec
        target = Path(str(path).removeprefix("file://"))
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
        try:
            with tmp.open("wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)


def check_resume_checkpoint(path: str, module: L.LightningModule) -> None:
    """A checkpoint to resume from must be readable and hold weights of this very network.

    Read with mmap (cheap even for large files) and weights_only; checked before Lightning loads
    it, which would otherwise fail deep inside fit with a traceback.
    """
    from src.errors import ConfigError

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # zip/pickle errors of a truncated or foreign file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"ckpt_path={path!r} is not a readable checkpoint (truncated, or not written by torch.save): {first}"
        ) from e
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or "global_step" not in ckpt:
        raise ConfigError(
            f"ckpt_path={path!r} is not a Lightning training checkpoint (no state_dict / global_step)"
        )
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}
    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(found.keys() - expected.keys())
    reshaped = sorted(k for k in expected.keys() & found.keys() if expected[k] != found[k])
    if missing or unexpected or reshaped:
        example = (
            f"{reshaped[0]} is {list(found[reshaped[0]])} there, {list(expected[reshaped[0]])} here"
            if reshaped
            else f"e.g. {(missing or unexpected)[0]}"
        )
        hint = "the model and task config of the run that wrote it"
        if unexpected and not missing and not reshaped and all(".pooler." in k for k in unexpected):
            # a run from before model.pooling existed (MiniLM: auto now means mean, no pooler)
            hint = "model.pooling=pooler: the run that wrote it pooled by BERT's pooler"
        raise ConfigError(
            f"ckpt_path={path!r} holds the weights of another model ({len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(reshaped)} of another shape; {example}); resume with "
            f"{hint}"
        )


class NonFiniteLossError(FtlabError):
    """The loss went NaN/inf: the run diverged."""


class FiniteLossCheck(Callback):
    """Fail the run when the training loss stops being finite.

    Looks at the loss every `every_n_steps` steps only (each look is a device->host sync), and at
    every validation at `val/loss`, which Lightning has already synced.
    """

    def __init__(self, every_n_steps: int = 25) -> None:
        self.every_n_steps = every_n_steps

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if trainer.global_step % self.every_n_steps:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None and not math.isfinite(float(loss)):
            raise NonFiniteLossError(
                f"train/loss is {float(loss)} at epoch {trainer.current_epoch} step {trainer.global_step}: the run diverged (try a lower optimizer.lr)"
            )

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get("val/loss")
        if not trainer.sanity_checking and value is not None and not math.isfinite(float(value)):
            raise NonFiniteLossError(
                f"val/loss is {float(value)} after epoch {trainer.current_epoch}: the run diverged (try a lower optimizer.lr)"
            )
