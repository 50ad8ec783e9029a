"""`python -m src.export ckpt_path=PATH format=hf|onnx|torchscript out=DIR`: a standalone model.

- hf: transformers `save_pretrained` (model, tokenizer, id2label/label2id), for text models, so
  `transformers.pipeline("text-classification", model=DIR)` loads it as is. Only for runs that
  pool as the architecture's head does: a model.pooling=mean run (all-MiniLM-L6-v2 with
  pooling=auto) is refused, since transformers' class would pool otherwise.
- onnx: `torch.onnx.export`, dynamic batch (and sequence) axes; inputs named as the batch keys.
- torchscript: `torch.jit.trace` of the network; inputs in `export.json`'s `input_names` order.
- onnx with `quantize=int8`: also `model.int8.onnx`, ONNX Runtime's dynamic quantization (int8
  weights of MatMul/Gemm, activations quantized per batch at run time): smaller and faster on CPU,
  its logits approximate the checkpoint's (export.json records by how much on the check batch).

onnx/torchscript exports also hold the tokenizer (text) or `preprocessing.json` (images).
A text export's tokenizer carries the run's truncation: `model_max_length` is the run's
`data.max_length`, so `tokenizer(texts, truncation=True)` (and
`pipeline(..., truncation=True)`) cuts texts as ftlab does. transformers' text-classification
pipeline does not truncate unless asked: without `truncation=True`, a text longer than the
model's positions (512 for BERT) fails there.
After export, the saved model is loaded back and its logits compared with the checkpoint's; for
text, on a text longer than max_length too, tokenized by the export's own tokenizer.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig

import src  # noqa: F401  (registers the ${ftlab_root:} resolver)
from src.errors import ConfigError, ensure_writable_dir, exit_on_user_error
from src.saved_run import LoadedRun, load_run

log = logging.getLogger(__name__)

FORMATS = ("hf", "onnx", "torchscript")
FILE_NAMES = {"onnx": "model.onnx", "torchscript": "model.pt"}
QUANTIZED = {"int8": "model.int8.onnx"}  # quantize= -> the file it writes beside model.onnx
SAMPLE_TEXTS = ["a short example", "a second, somewhat longer example sentence to classify"]
# What a user passes to transformers' pipeline so that it truncates as ftlab does.
PIPELINE_KWARGS = {"truncation": True}


class TensorInputs(torch.nn.Module):
    """The network with positional tensor inputs (what ONNX and tracing need) -> logits."""

    def __init__(self, network: torch.nn.Module, input_names: list[str]) -> None:
        super().__init__()
        self.network, self.input_names = network, input_names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.network(dict(zip(self.input_names, tensors, strict=True)))


def sample_batch(model: LoadedRun, n: int = 2) -> dict[str, torch.Tensor]:
    """A batch in the network's input format: tokenized sentences, or random normalised images."""
    if model.modality == "text":
        texts = (SAMPLE_TEXTS * n)[:n]
        return dict(model.processor(texts, padding=True, truncation=True, return_tensors="pt"))
    size = model.processor.crop_size
    return {
        "pixel_values": torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))
    }


def dynamic_shapes(model: LoadedRun, input_names: list[str]) -> tuple[tuple[dict[int, Any], ...]]:
    """Any batch size (and, for text, any length up to the position embeddings) in the graph."""
    from torch.export import Dim

    batch = Dim("batch", min=1)
    if model.modality != "text":
        return (tuple({0: batch} for _ in input_names),)
    max_len = int(getattr(model.module.network.model.config, "max_position_embeddings", 512))
    sequence = Dim("sequence", min=1, max=max_len)
    # One entry per positional input of TensorInputs.forward (*tensors: one tuple).
    return (tuple({0: batch, 1: sequence} for _ in input_names),)


def set_truncation(model: LoadedRun) -> None:
    """The tokenizer truncates like ftlab when asked to (`truncation=True`, no max_length): at the
    run's max_length, on the tokenizer's truncation side; both saved in tokenizer_config.json."""
    tokenizer = model.processor
    tokenizer.model_max_length = model.max_length
    tokenizer.init_kwargs["model_max_length"] = tokenizer.model_max_length
    tokenizer.init_kwargs["truncation_side"] = tokenizer.truncation_side


# task.type -> the HF config's problem_type (pipeline(): sigmoid per label / raw scores)
PROBLEM_TYPES = {"multilabel": "multi_label_classification", "regression": "regression"}


def fold_target_scale(model: LoadedRun) -> None:
    """A regression trained on standardised targets: the output layer's weights and bias take
    the train mean / std, so every export outputs scores on the targets' own scale."""
    task = model.module.task
    if task.name != "regression" or (
        bool((task.target_std == 1).all()) and bool((task.target_mean == 0).all())
    ):
        return
    from src.tasks.objectives import output_layer

    head = output_layer(model.module.network)
    with torch.no_grad():
        head.weight.mul_(task.target_std[:, None])
        head.bias.mul_(task.target_std).add_(task.target_mean)
        task.target_std.fill_(1.0)
        task.target_mean.zero_()


def check_hf_pooling(model: LoadedRun) -> None:
    """transformers' model class pools as its own head does (BERT: the pooler); a run trained
    on another pooling (model.pooling=mean, ...) cannot be saved as that class without changing
    its predictions, so it is refused before anything is written."""
    network = model.module.network
    if network.own_pooling:
        return
    arch = type(network.model).__name__
    raise ConfigError(
        f"format=hf cannot reproduce model.pooling={network.pooling}: transformers' {arch} "
        "classifies from its own pooling, so the export would predict differently; use "
        "format=onnx or format=torchscript (they run ftlab's network, pooling included)"
    )


def export_hf(model: LoadedRun, out: Path) -> None:
    hf_model = model.module.network.model
    # id2label/label2id were set when the network was built from the run's label names.
    hf_model.config.id2label = dict(enumerate(model.label_names))
    hf_model.config.label2id = {n: i for i, n in enumerate(model.label_names)}
    if model.module.task.name in PROBLEM_TYPES:
        hf_model.config.problem_type = PROBLEM_TYPES[model.module.task.name]
    hf_model.save_pretrained(out)
    model.processor.save_pretrained(out)


def export_onnx(model: LoadedRun, out: Path, batch: dict[str, torch.Tensor], opset: int) -> None:
    names = list(batch)
    wrapper = TensorInputs(model.module.network, names).eval()
    # torch.export-based exporter (the default since torch 2.9; the TorchScript-based one is
    # deprecated): the graph is captured once, with symbolic batch / sequence dimensions.
    torch.onnx.export(
        wrapper,
        tuple(batch.values()),
        str(out / FILE_NAMES["onnx"]),
        input_names=names,
        output_names=["logits"],
        dynamic_shapes=dynamic_shapes(model, names),
        opset_version=opset,
        dynamo=True,
        # One self-contained file unless the weights pass protobuf's 2 GB limit.
        external_data=sum(p.numel() * p.element_size() for p in wrapper.parameters()) > 1.8 * 2**30,
    )


def quantize_onnx(out: Path, quantize: str) -> Path:
    """`model.onnx` -> `model.int8.onnx` by ONNX Runtime's dynamic quantization (weights int8,
    activations quantized per batch): the usual choice for transformer encoders on CPU."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    target = out / QUANTIZED[quantize]
    prepared = out / "model.preprocessed.onnx"
    try:
        # shape inference + graph optimisation first, as onnxruntime's quantization guide advises
        quant_pre_process(str(out / FILE_NAMES["onnx"]), str(prepared), skip_symbolic_shape=True)
        quantize_dynamic(str(prepared), str(target), weight_type=QuantType.QInt8)
    finally:
        prepared.unlink(missing_ok=True)
    return target


def export_torchscript(model: LoadedRun, out: Path, batch: dict[str, torch.Tensor]) -> None:
    wrapper = TensorInputs(model.module.network, list(batch)).eval()
    traced = torch.jit.trace(wrapper, tuple(batch.values()), strict=False, check_trace=False)
    torch.jit.save(traced, str(out / FILE_NAMES["torchscript"]))


def save_preprocessing(model: LoadedRun, out: Path) -> None:
    """What a user of an onnx/torchscript file needs to feed it."""
    if model.modality == "text":
        model.processor.save_pretrained(out)
    else:
        (out / "preprocessing.json").write_text(
            json.dumps(asdict(model.processor), indent=2) + "\n"
        )


def file_modes(folder: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*")}


def default_permissions(folder: Path, before: dict[Path, int]) -> None:
    """What the export wrote gets the modes `open()` / `mkdir` give (0666 / 0777 less the umask):
    safetensors writes model.safetensors as 0600, unreadable to anyone else sharing the export."""
    umask = os.umask(0)
    os.umask(umask)
    for path, mtime in file_modes(folder).items():
        if before.get(path) != mtime and not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


# --------------------------------------------------------------------------- load back and compare


def long_text(model: LoadedRun) -> str | None:
    """A text longer than the run's max_length (None where max_length exceeds the model's
    positions: such a run cannot take long texts at all)."""
    max_length = model.max_length
    positions = getattr(model.module.network.model.config, "max_position_embeddings", None)
    if positions is not None and max_length > positions:
        return None
    return " ".join(SAMPLE_TEXTS * max_length)


def check_batches(model: LoadedRun, fmt: str, out: Path) -> tuple[dict, dict]:
    """(checkpoint batch, export batch): for text, ftlab's tokenization at the run's max_length
    and the exported tokenizer's own `truncation=True`, of texts including a long one."""
    if model.modality != "text":
        batch = sample_batch(model, n=3)
        return batch, batch
    from transformers import AutoTokenizer

    texts = [*SAMPLE_TEXTS, "another"]
    if (text := long_text(model)) is not None:
        texts.append(text)
    ours = dict(
        model.processor(
            texts,
            truncation=True,
            max_length=model.max_length,
            padding=True,
            return_tensors="pt",
        )
    )
    exported = AutoTokenizer.from_pretrained(out)
    theirs = dict(exported(texts, truncation=True, padding=True, return_tensors="pt"))
    if theirs["input_ids"].shape != ours["input_ids"].shape or not torch.equal(
        theirs["input_ids"], ours["input_ids"]
    ):
        raise ConfigError(
            f"the {fmt} export's tokenizer does not truncate like the checkpoint "
            f"(max_length={model.max_length}): {tuple(theirs['input_ids'].shape)} "
            f"vs {tuple(ours['input_ids'].shape)} token ids"
        )
    return ours, theirs if fmt == "hf" else ours


def exported_logits(
    fmt: str, out: Path, batch: dict[str, torch.Tensor], onnx_file: str = FILE_NAMES["onnx"]
) -> torch.Tensor:
    """Logits of the exported model, run by its own runtime where there is one."""
    if fmt == "hf":
        from transformers import AutoModelForSequenceClassification

        hf = AutoModelForSequenceClassification.from_pretrained(out).eval()
        with torch.inference_mode():
            return hf(**batch).logits.float()
    if fmt == "onnx":
        import onnxruntime as ort  # the reference runtime for ONNX files

        session = ort.InferenceSession(str(out / onnx_file), providers=["CPUExecutionProvider"])
        wanted = {i.name for i in session.get_inputs()}
        feeds = {k: v.numpy() for k, v in batch.items() if k in wanted}
        return torch.from_numpy(session.run(["logits"], feeds)[0]).float()
    traced = torch.jit.load(str(out / FILE_NAMES["torchscript"]))
    with torch.inference_mode():
        return traced(*batch.values()).float()


def checkpoint_logits(model: LoadedRun, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.inference_mode():
        return model.module(batch).float()


def export(cfg: DictConfig) -> dict[str, Any]:
    """Write the export; return what export.json records."""
    fmt = str(cfg.format)
    if fmt not in FORMATS:
        raise ConfigError(f"format={fmt!r}; valid: {', '.join(FORMATS)}")
    quantize = cfg.get("quantize")
    if quantize is not None and (quantize not in QUANTIZED or fmt != "onnx"):
        raise ConfigError(
            f"quantize={quantize!r} with format={fmt}; valid: null, or "
            f"{' | '.join(QUANTIZED)} with format=onnx"
        )
    out = Path(str(cfg.out)).expanduser() if cfg.get("out") else Path(cfg.paths.output_dir) / fmt
    ensure_writable_dir(out, "out")
    model = load_run(cfg.ckpt_path)
    if fmt == "hf" and model.run_cfg.model.family != "hf":
        raise ConfigError(
            f"format=hf needs a transformers text model; this checkpoint is {model.run_cfg.model.name} "
            "(use format=onnx or format=torchscript)"
        )
    if fmt == "hf":
        check_hf_pooling(model)
    fold_target_scale(model)
    batch = sample_batch(model)
    before = file_modes(out)
    if model.modality == "text":
        set_truncation(model)
    if fmt == "hf":
        export_hf(model, out)
    else:
        if fmt == "onnx":
            export_onnx(model, out, batch, int(cfg.opset))
            if quantize:
                quantize_onnx(out, quantize)
        else:
            export_torchscript(model, out, batch)
        save_preprocessing(model, out)
    default_permissions(out, before)
    info: dict[str, Any] = {
        "format": fmt,
        "ckpt_path": str(Path(cfg.ckpt_path).expanduser().resolve()),
        "model": str(model.run_cfg.model.name),
        "modality": model.modality,
        "label_names": model.label_names,
        "input_names": list(batch),
    }
    task = model.module.task
    if task.name != "multiclass":  # what the outputs are, and the decision thresholds
        info["task_type"] = task.name
        if "thresholds" in task.extras():
            info["thresholds"] = task.extras()["thresholds"]
    if model.modality == "text":
        info["pooling"] = model.module.network.pooling  # inside the onnx/torchscript graph
        info["max_length"] = model.max_length
        info["truncation_side"] = str(model.processor.truncation_side)
        if fmt == "hf":
            info["pipeline_kwargs"] = PIPELINE_KWARGS
    if cfg.check:
        # Another batch shape than the one traced/exported: dynamic axes must really be dynamic.
        ours, theirs = check_batches(model, fmt, out)
        diff = (
            (exported_logits(fmt, out, theirs) - checkpoint_logits(model, ours)).abs().max().item()
        )
        info["check_max_abs_diff"] = diff
        if not diff <= float(cfg.atol):
            raise ConfigError(
                f"the {fmt} export's logits differ from the checkpoint's by {diff:.3g} > atol={cfg.atol}"
            )
        if quantize:  # an approximation by design: recorded, not held to atol
            reference = checkpoint_logits(model, ours)
            approx = exported_logits(fmt, out, theirs, QUANTIZED[quantize])
            info["quantized"] = {
                "quantize": quantize,
                "file": QUANTIZED[quantize],
                "check_max_abs_diff": (approx - reference).abs().max().item(),
                "check_same_argmax": float(
                    (approx.argmax(-1) == reference.argmax(-1)).float().mean().item()
                ),
            }
    elif quantize:
        info["quantized"] = {"quantize": quantize, "file": QUANTIZED[quantize]}
    (out / "export.json").write_text(json.dumps(info, indent=2) + "\n")
    print(
        f"ftlab: {fmt} export -> {out}  (max |logit diff| {info.get('check_max_abs_diff', 'not checked')})",
        file=sys.stderr,
        flush=True,
    )
    if fmt == "hf" and model.modality == "text":
        print(
            f"ftlab: to predict as ftlab does (truncation at max_length={info['max_length']}): "
            f"pipeline('text-classification', model={str(out)!r}, truncation=True)",
            file=sys.stderr,
            flush=True,
        )
    return info


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        export(cfg)


if __name__ == "__main__":
    main()
