"""A trained run read back from its checkpoint alone: `read_run` (the checkpoint, its config and
labels, no model built), `load_run` (the fine-tuned Classifier in eval mode with its tokenizer or
image preprocessing), for src.eval, src.predict, src.export, src.ensemble and model.init_from.

Nothing here imports the training pipeline (src.pipeline) or its config checks, so those can use
it without an import circle; torch and the model code are imported where they are used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from src.errors import ConfigError

if TYPE_CHECKING:
    from src.models.classifier import Classifier


@dataclass
class SavedRun:
    """A checkpoint as read (torch.load only: no model built yet)."""

    ckpt: dict[str, Any]
    run_cfg: DictConfig  # the training run's resolved config
    label_names: list[str]


@dataclass
class LoadedRun:
    """A fine-tuned classifier with what it needs to read raw inputs."""

    module: Classifier  # in eval mode
    run_cfg: DictConfig  # the training run's resolved config
    label_names: list[str]
    processor: Any  # the tokenizer (text) or ImagePreprocessing (images)

    @property
    def modality(self) -> str:
        return str(self.run_cfg.model.modality)

    @property
    def max_length(self) -> int:
        """The token limit the run trained with: predict and the hf export truncate to it."""
        return int(self.run_cfg.data.get("max_length") or 512)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint, read with weights_only=True (no arbitrary code on load)."""
    import torch

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


def read_run(path: str | Path) -> SavedRun:
    """The checkpoint, its run config and label names."""
    ckpt = load_checkpoint(path)
    run_cfg = OmegaConf.create(ckpt["hyper_parameters"]["config"])
    return SavedRun(ckpt, run_cfg, [str(n) for n in ckpt["hyper_parameters"]["label_names"]])


def load_run(checkpoint: str | Path | SavedRun, processor: Any = None) -> LoadedRun:
    """The checkpoint's Classifier (no pretrained download), its tokenizer or preprocessing
    (`processor` when given), its config and label names. `checkpoint`: a path, or a SavedRun
    already read (and its run_cfg perhaps pointed at other data: `relocate_data`)."""
    from src.models.networks import build_processor

    saved = checkpoint if isinstance(checkpoint, SavedRun) else read_run(checkpoint)
    module = module_from_checkpoint(saved.ckpt, saved.run_cfg, saved.label_names).eval()
    if processor is None:
        processor = build_processor(saved.run_cfg.model)
    return LoadedRun(module, saved.run_cfg, saved.label_names, processor)


def module_from_checkpoint(
    ckpt: dict[str, Any], run_cfg: DictConfig, label_names: list[str]
) -> Classifier:
    """The fine-tuned Classifier, built from the stored config (no pretrained weights fetched)."""
    from src.finetune import prepare_network
    from src.models.classifier import Classifier
    from src.models.networks import build_network

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
