"""Checkpoints on disk: written atomically, checked before a resume, and carrying what a resumed
run needs to continue exactly (RNG states, the train loader's position)."""

from __future__ import annotations

import os
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO

from src.atomic import atomic_path
from src.errors import ConfigError


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
        with atomic_path(str(path).removeprefix("file://")) as tmp, tmp.open("wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())


def weight_mismatch(
    expected: dict[str, tuple], found: dict[str, tuple]
) -> tuple[list[str], list[str], list[str], str]:
    """Parameter names -> shapes, ours vs a checkpoint's: (missing, unexpected, of another shape,
    one example for a message). All three lists empty: the weights fit."""
    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(found.keys() - expected.keys())
    reshaped = sorted(k for k in expected.keys() & found.keys() if expected[k] != found[k])
    if reshaped:
        example = (
            f"{reshaped[0]} is {list(found[reshaped[0]])} there, {list(expected[reshaped[0]])} here"
        )
    else:
        example = f"e.g. {(missing or unexpected)[0]}" if missing or unexpected else ""
    return missing, unexpected, reshaped, example


def check_resume_checkpoint(path: str, module: L.LightningModule) -> None:
    """A checkpoint to resume from must be readable and hold weights of this very network.

    Read with mmap (cheap even for large files) and weights_only; checked before Lightning loads
    it, which would otherwise fail deep inside fit with a traceback.
    """
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
    missing, unexpected, reshaped, example = weight_mismatch(expected, found)
    if missing or unexpected or reshaped:
        hint = "the model and task config of the run that wrote it"
        if unexpected and not missing and not reshaped and all(".pooler." in k for k in unexpected):
            # a run from before model.pooling existed (MiniLM: auto now means mean, no pooler)
            hint = "model.pooling=pooler: the run that wrote it pooled by BERT's pooler"
        raise ConfigError(
            f"ckpt_path={path!r} holds the weights of another model ({len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(reshaped)} of another shape; {example}); resume with "
            f"{hint}"
        )
