"""`model.init_from=PATH`: sequential fine-tuning, a new run that starts from an earlier one's weights.

PATH is an ftlab checkpoint (a Lightning .ckpt written by a training run) or a `format=hf`
export dir (src/export.py). The backbone is always loaded; the head too when the label set
matches (same task type, same label names in the same order), else the head is new, built for
this run's labels. Unlike a resume (`ckpt_path`, `resume=true`) nothing else carries over:
optimizer, LR schedule, epoch and step start fresh. A LoRA checkpoint's adapters are merged
into the weights they adapt, so the next run starts from what that run predicted with.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from src.errors import ConfigError

log = logging.getLogger(__name__)

# an HF config's problem_type -> ftlab's task.type (src/export.py writes the reverse)
HF_TASK_TYPES = {"multi_label_classification": "multilabel", "regression": "regression"}


def check_init_from(cfg: DictConfig) -> None:
    """Cheap checks (no torch): the path exists, and the run does not also resume a checkpoint
    (`ckpt_path`). With `resume=true` it may: the first start initialises from init_from, a
    restart (preemption, requeue) resumes its own last.ckpt (see `resumes_own_checkpoint`)."""
    path = cfg.model.get("init_from")
    if path in (None, ""):
        return
    key = f"model.init_from={str(path)!r}"
    if cfg.get("ckpt_path") not in (None, ""):
        raise ConfigError(
            f"{key} and ckpt_path={cfg.ckpt_path!r} disagree: ckpt_path resumes a run (optimizer, "
            "epoch and step included), init_from starts a new one from its weights; give one"
        )
    file = Path(str(path)).expanduser()
    if not file.exists():
        raise ConfigError(
            f"{key}: no such file or folder; give an ftlab checkpoint (.ckpt) or a format=hf "
            "export dir"
        )
    if file.is_dir() and not (file / "config.json").is_file():
        raise ConfigError(
            f"{key} is a folder without config.json: give an ftlab checkpoint (.ckpt) or a "
            "format=hf export dir"
        )


@dataclass
class InitSource:
    """The weights to start from, keyed as the network's own state_dict."""

    path: str
    state: dict[str, Any]
    label_names: list[str]
    task_type: str
    model: str  # what it is, for messages


def read_source(path: str) -> InitSource:
    """The network weights, label names and task type of a checkpoint or an hf export dir."""
    file = Path(str(path)).expanduser()
    if file.is_dir():
        return _read_hf_dir(str(path), file)
    return _read_checkpoint(str(path))


def _read_checkpoint(path: str) -> InitSource:
    from src.saved_run import load_checkpoint, module_from_checkpoint
    from src.tasks import task_type

    try:
        ckpt = load_checkpoint(path)
    except ConfigError as e:  # its messages name ckpt_path
        raise ConfigError(str(e).replace("ckpt_path=", "model.init_from=", 1)) from e
    params = ckpt["hyper_parameters"]
    run_cfg = OmegaConf.create(params["config"])
    labels = [str(n) for n in params["label_names"]]
    model = describe_model(run_cfg.model)
    if str((run_cfg.get("finetune") or {}).get("strategy")) == "lora":
        module = module_from_checkpoint(ckpt, run_cfg, labels)
        state = merged_lora_state(module.network)
    else:
        state = {
            k.removeprefix("network."): v
            for k, v in ckpt["state_dict"].items()
            if k.startswith("network.")
        }
    return InitSource(path, state, labels, task_type(run_cfg), model)


def merged_lora_state(network: Any) -> dict[str, Any]:
    """The network's weights with each LoRA adapter merged into the layer it adapts, keyed as
    the plain (adapter-free) network's."""
    from peft.tuners.lora import LoraLayer

    for module in network.modules():
        if isinstance(module, LoraLayer):
            module.merge()
    return {
        k.replace(".base_layer.", "."): v
        for k, v in network.state_dict().items()
        if ".lora_" not in k
    }


def _read_hf_dir(path: str, folder: Path) -> InitSource:
    import torch

    config = json.loads((folder / "config.json").read_text())
    id2label = config.get("id2label") or {}
    labels = [str(id2label[k]) for k in sorted(id2label, key=int)]
    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file

        weights = load_file(str(folder / "model.safetensors"))
    elif (folder / "pytorch_model.bin").is_file():
        weights = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise ConfigError(
            f"model.init_from={path!r} holds no weights (model.safetensors or pytorch_model.bin)"
        )
    task = HF_TASK_TYPES.get(str(config.get("problem_type")), "multiclass")
    model = str((config.get("architectures") or [config.get("model_type")])[0])
    # HFTextNetwork holds the transformers model as `model`
    return InitSource(path, {f"model.{k}": v for k, v in weights.items()}, labels, task, model)


def describe_model(model_cfg: Any) -> str:
    """`bert (DIR)`: the model's name and, for transformers, where its architecture came from."""
    name = str(model_cfg.get("name"))
    return f"{name} ({model_cfg.pretrained})" if model_cfg.get("family") == "hf" else name


def head_keys(network: Any) -> set[str]:
    """The state_dict keys of the network's head."""
    head = {id(m) for m in network.head_modules()}
    prefixes = [f"{name}." for name, m in network.named_modules() if id(m) in head]
    return {k for k in network.state_dict() if k.startswith(tuple(prefixes))}


def init_network(
    network: Any, path: str, label_names: list[str], task_type: str, model: str
) -> bool:
    """Load the backbone (and, when the label set matches, the head) of `path` into `network`;
    True when the head was loaded too. Logs which, in one line."""
    import torch

    from src.checkpoints import weight_mismatch

    source = read_source(path)
    own = network.state_dict()
    head = head_keys(network)
    found = {k: v for k, v in source.state.items() if hasattr(v, "shape")}
    # the source's head has the same names as ours (same architecture), whatever its size
    expected = {k: tuple(v.shape) for k, v in own.items() if k not in head}
    backbone = {k: tuple(v.shape) for k, v in found.items() if k not in head}
    missing, unexpected, reshaped, example = weight_mismatch(expected, backbone)
    if missing or unexpected or reshaped:
        hint = f"set model= (and model.pretrained) to the architecture of {source.model}"
        pooler = [k for k in missing + unexpected if ".pooler." in k]
        if pooler and len(pooler) == len(missing) + len(unexpected) and not reshaped:
            hint = (
                "the same model.pooling as the run that wrote it (pooler there, not here)"
                if unexpected
                else "the same model.pooling as the run that wrote it (it had no pooler)"
            )
        raise ConfigError(
            f"model.init_from={path!r} holds the weights of another model: {source.model} there, "
            f"{model} here ({len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(reshaped)} of another shape; {example}); use {hint}"
        )
    labels_match = source.task_type == task_type and source.label_names == list(label_names)
    head_fits = all(k in found and tuple(found[k].shape) == tuple(own[k].shape) for k in head)
    load_head = labels_match and head_fits
    with torch.no_grad():
        for key, value in own.items():
            if key in head and not load_head:
                continue
            value.copy_(found[key].to(dtype=value.dtype))
    if load_head:
        log.info("init_from: backbone + head from %s (labels match)", path)
    elif labels_match:
        log.info("init_from: backbone from %s; new head: its head has another shape", path)
    else:
        ours = list(label_names) if source.task_type == task_type else f"{task_type} {label_names}"
        theirs = (
            source.label_names
            if source.task_type == task_type
            else f"{source.task_type} {source.label_names}"
        )
        log.info(
            "init_from: backbone from %s; new head: labels %s differ from %s's %s",
            path,
            ours,
            path,
            theirs,
        )
    return load_head
