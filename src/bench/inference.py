"""`python -m src.bench --sections inference`: how fast a fine-tuned model answers, per runtime.

One MiniLM checkpoint, fine-tuned here on an SST-2 slice (`model.pooling=pooler`, so that
transformers' own class computes the same network), is served four ways on the 872 SST-2 dev
sentences, tokenization included in every timing:

  checkpoint   `src.predict`'s path: the Lightning checkpoint (`load_run`), ftlab's tokenization
  hf_pipeline  the `format=hf` export through transformers' `pipeline("text-classification")`
  onnx         the `format=onnx` export in ONNX Runtime (fp32)
  onnx_int8    the same with `quantize=int8` (ONNX Runtime dynamic quantization)

Batch 32: samples/s over the whole dev set, and the dev accuracy. Batch 1: p50/p95 latency of
single sentences. Contestants alternate within each repetition; medians over repetitions.
"""

from __future__ import annotations

import csv
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

CONTESTANTS = ("checkpoint", "hf_pipeline", "onnx", "onnx_int8")
TRAIN_OVERRIDES = [
    "task=sentiment",
    "model=bert",
    "model.pooling=pooler",  # the HF export must compute what the checkpoint computes
    "data.limit_train=4000",
    "optimizer.lr=1e-4",
    "trainer.max_epochs=1",
]
SINGLE = 100  # sentences timed one by one per repetition


def dev_sentences(data_dir: Path) -> tuple[list[str], list[int]]:
    with (data_dir / "sst2" / "dev.tsv").open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [r["sentence"] for r in rows], [int(r["label"]) for r in rows]


Predictor = Callable[[Sequence[str]], torch.Tensor]  # sentences -> logits (or scores)


def checkpoint_predictor(ckpt: Path) -> Predictor:
    from src.predict import text_batches
    from src.saved_run import load_run

    model = load_run(ckpt)
    module = model.module.eval()

    def predict(texts: Sequence[str]) -> torch.Tensor:
        with torch.inference_mode():
            return torch.cat(
                [
                    module(batch).float()
                    for batch in text_batches(
                        model.processor, texts, None, model.max_length, len(texts)
                    )
                ]
            )

    return predict


def hf_pipeline_predictor(export_dir: Path) -> Predictor:
    from transformers import pipeline

    from src.export import PIPELINE_KWARGS

    classify = pipeline("text-classification", model=str(export_dir), top_k=None, device="cpu")
    labels = [classify.model.config.id2label[i] for i in range(classify.model.config.num_labels)]

    def predict(texts: Sequence[str]) -> torch.Tensor:
        out = classify(list(texts), batch_size=len(texts), **PIPELINE_KWARGS)
        return torch.tensor(
            [[{s["label"]: s["score"] for s in row}[n] for n in labels] for row in out]
        )

    return predict


def onnx_predictor(export_dir: Path, file_name: str, max_length: int) -> Predictor:
    import onnxruntime as ort
    from transformers import AutoTokenizer

    session = ort.InferenceSession(str(export_dir / file_name), providers=["CPUExecutionProvider"])
    wanted = [i.name for i in session.get_inputs()]
    tokenizer = AutoTokenizer.from_pretrained(export_dir)

    def predict(texts: Sequence[str]) -> torch.Tensor:
        enc = tokenizer(
            list(texts), truncation=True, max_length=max_length, padding=True, return_tensors="np"
        )
        return torch.from_numpy(session.run(["logits"], {k: enc[k] for k in wanted})[0])

    return predict


def time_batches(predict: Predictor, texts: list[str], batch: int) -> tuple[float, torch.Tensor]:
    """(samples/s over all texts, their outputs)."""
    start = time.perf_counter()
    outs = [predict(texts[i : i + batch]) for i in range(0, len(texts), batch)]
    return len(texts) / (time.perf_counter() - start), torch.cat(outs)


def time_single(predict: Predictor, texts: list[str]) -> list[float]:
    """Latency in ms of each text alone."""
    times = []
    for text in texts:
        start = time.perf_counter()
        predict([text])
        times.append((time.perf_counter() - start) * 1000)
    return times


def percentile(values: list[float], q: float) -> float:
    return float(torch.quantile(torch.tensor(values, dtype=torch.float64), q).item())


def bench_inference(work: Path, reps: int) -> dict[str, Any]:
    from hydra import compose, initialize_config_dir

    from src.bench.record import ROOT
    from src.bench.runs import ftlab_run, log, stats
    from src.export import QUANTIZED, export

    log("inference: fine-tuning the checkpoint to serve")
    ftlab_run(TRAIN_OVERRIDES, work, "inference_train")
    (ckpt,) = sorted(work.glob("inference_train_*/checkpoints/last.ckpt"))
    exports = work / "exports"
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        for fmt, extra in (("hf", []), ("onnx", ["quantize=int8"])):
            out = exports / fmt
            export(compose("export", [f"ckpt_path={ckpt}", f"format={fmt}", f"out={out}", *extra]))
        data_dir = Path(str(compose("train", TRAIN_OVERRIDES).paths.data_dir))
    texts, labels = dev_sentences(data_dir)
    max_length = 128
    predictors: dict[str, Predictor] = {
        "checkpoint": checkpoint_predictor(ckpt),
        "hf_pipeline": hf_pipeline_predictor(exports / "hf"),
        "onnx": onnx_predictor(exports / "onnx", "model.onnx", max_length),
        "onnx_int8": onnx_predictor(exports / "onnx", QUANTIZED["int8"], max_length),
    }
    truth = torch.tensor(labels)
    throughput: dict[str, list[float]] = {k: [] for k in CONTESTANTS}
    p50: dict[str, list[float]] = {k: [] for k in CONTESTANTS}
    p95: dict[str, list[float]] = {k: [] for k in CONTESTANTS}
    accuracy: dict[str, float] = {}
    predictions: dict[str, torch.Tensor] = {}
    for name in CONTESTANTS:  # warm-up: first calls allocate, load kernels, fill caches
        predictors[name](texts[:32])
    for rep in range(reps):
        order = CONTESTANTS if rep % 2 == 0 else CONTESTANTS[::-1]
        for name in order:
            rate, out = time_batches(predictors[name], texts, 32)
            throughput[name].append(rate)
            predictions[name] = out.argmax(-1)
            accuracy[name] = float((predictions[name] == truth).float().mean().item())
            single = time_single(predictors[name], texts[rep * SINGLE : (rep + 1) * SINGLE])
            p50[name].append(percentile(single, 0.5))
            p95[name].append(percentile(single, 0.95))
        log(
            f"inference rep {rep + 1}/{reps}: "
            + "  ".join(f"{k} {throughput[k][-1]:.0f}/s" for k in CONTESTANTS)
        )
    base = statistics.median(throughput["checkpoint"])
    return {
        "train_overrides": TRAIN_OVERRIDES,
        "dev_sentences": len(texts),
        "threads": torch.get_num_threads(),
        "batch32_samples_per_s": {k: stats(v) for k, v in throughput.items()},
        "batch1_p50_ms": {k: stats(v) for k, v in p50.items()},
        "batch1_p95_ms": {k: stats(v) for k, v in p95.items()},
        "dev_acc": accuracy,
        "same_predictions_as_checkpoint": {
            k: float((predictions[k] == predictions["checkpoint"]).float().mean().item())
            for k in CONTESTANTS
        },
        "ratio_batch32_over_checkpoint": {
            k: statistics.median(v) / base for k, v in throughput.items()
        },
    }


def markdown(r: dict[str, Any], fmt: Callable) -> list[str]:
    lines = [
        "## Inference: the checkpoint, the HF export, ONNX Runtime fp32 and int8",
        "",
        f"MiniLM fine-tuned here (`{' '.join(r['train_overrides'])}`), served on the "
        f"{r['dev_sentences']} SST-2 dev sentences, tokenization included, {r['threads']} "
        "threads. Batch 32: samples/s over the dev set. Batch 1: latency of single sentences. "
        "`checkpoint` is `src.predict`'s path. Goal: int8 ONNX ≥ 2× the checkpoint's batch-32 "
        "throughput at ≤ 1 pt accuracy loss.",
        "",
        "| runtime | batch 32 samples/s | × checkpoint | batch 1 p50 (ms) | batch 1 p95 (ms) "
        "| dev accuracy | same predictions as checkpoint |",
        "|---|---|---|---|---|---|---|",
    ]
    for k in CONTESTANTS:
        lines.append(
            f"| {k} | {fmt(r['batch32_samples_per_s'][k], 1)} | "
            f"**{r['ratio_batch32_over_checkpoint'][k]:.2f}** | {fmt(r['batch1_p50_ms'][k], 1)} | "
            f"{fmt(r['batch1_p95_ms'][k], 1)} | {r['dev_acc'][k]:.4f} | "
            f"{r['same_predictions_as_checkpoint'][k]:.4f} |"
        )
    lines.append("")
    return lines
