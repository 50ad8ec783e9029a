"""`make bench`'s REPORT.md: the results of `python -m src.bench` as markdown tables."""

from __future__ import annotations

from typing import Any


def fmt(s: dict[str, Any], digits: int = 2) -> str:
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}–{s['max']:.{digits}f})"


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        "# ftlab benchmark",
        "",
        f"Measured by `make bench` on {m['date']}, commit `{m['commit']}`: {m['cpu']}, "
        f"{m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), lightning "
        f"{m['lightning']}, transformers {m['transformers']}. "
        + (
            f"GPU: {m['gpu']}."
            if m["gpu"]
            else "**No GPU**: this task was not lent one, so there is no GPU column "
            "(bf16-mixed / torch.compile on GPU are unmeasured)."
        ),
        "",
        "Every number is the median of the repetitions in this one run, with the range "
        "(min–max) in brackets; ratios are computed per repetition, contestants alternating. "
        f"Repetitions: {results['reps']}. Reproduce: `make bench` (or `python -m src.bench "
        "--sections overhead hf ...`). Raw numbers: `results.json`.",
        "",
    ]
    if "overhead" in results:
        lines += [
            "## Framework overhead: ftlab's Lightning loop vs a minimal PyTorch loop",
            "",
            "Same network (ftlab's builder, same pretrained weights), same tokenized data and "
            "length-grouped sampler / same image transforms and workers, batch 32, same precision, "
            "the same optimizer update (the run's fused AdamW over its per-layer-group param "
            "groups), linear warmup, grad clipping 1.0; ftlab with its default callbacks "
            "(progress bar, LR monitor, checkpointing, early stopping). The two loops train in "
            "turns in one process, a plain step after every ftlab step, each timed on a clock "
            "that stops while the other runs (src/bench/overhead.py): both see the same machine "
            "load. Samples/s over the same steps of both (warm-up and the steps after an epoch "
            "boundary excluded). Goal: ratio ≥ 0.97.",
            "",
            "| case | precision | ftlab samples/s | plain loop samples/s | ftlab / plain |",
            "|---|---|---|---|---|",
        ]
        for name, r in results["overhead"].items():
            lines.append(
                f"| {name} (`{' '.join(r['overrides'][:2])}`, {r['timed_steps']} timed steps) | "
                f"{r['precision']} | {fmt(r['ftlab_samples_per_s'], 1)} | "
                f"{fmt(r['plain_samples_per_s'], 1)} | **{fmt(r['ratio_ftlab_over_plain'], 3)}** |"
            )
        lines.append("")
    if "hf" in results:
        from src.bench.hf import markdown as hf_markdown

        lines += hf_markdown(results["hf"], fmt)
    if "cache" in results:
        r = results["cache"]
        same = r["metrics_cached_vs_recomputed"]
        lines += [
            "## Feature extraction: the frozen-feature cache",
            "",
            "mobilenet_v2 on hymenoptera, `finetune=feature_extraction data.augment=false`, "
            "3 epochs; `finetune.feature_cache=auto` (cached) vs `false` (backbone recomputed "
            "every epoch). Goal: epoch 2+ ≤ 0.1 of recomputing, same metrics.",
            "",
            "| | epoch 2+ time (s) | whole run (s) |",
            "|---|---|---|",
        ]
        for key in ("recomputed", "cached"):
            lines.append(
                f"| {key} | {fmt(r['epoch2plus_s'][key], 3)} | {fmt(r['run_total_s'][key], 1)} |"
            )
        lines += [
            "",
            f"Ratio cached / recomputed (epoch 2+): "
            f"**{fmt(r['ratio_epoch2plus_cached_over_recomputed'], 4)}**.",
            "",
            "| metric | cached | recomputed |",
            "|---|---|---|",
            *(f"| {k} | {a} | {b} |" for k, (a, b) in same.items()),
            "",
        ]
    if "startup" in results:
        r = results["startup"]
        lines += [
            "## Start-up",
            "",
            f"`{r['command']}`, launch to the end of the first training step.",
            "",
            "| | seconds |",
            "|---|---|",
            f"| first step, cold tokenization cache (tokenizes 67k sentences) | "
            f"{r['first_step_s_cold_cache']:.1f} |",
            f"| first step, warm tokenization cache | {fmt(r['first_step_s_warm_cache'], 1)} |",
            f"| data setup alone, warm cache (in-process) | {fmt(r['data_setup_s_warm_cache'], 2)} |",
            "",
        ]
    if "memory_bytes" in results:
        gib = 1024**3
        lines += [
            "## Peak memory (RSS)",
            "",
            "Peak RSS of the main process and peak PSS of the whole process tree (the main "
            "process and its DataLoader workers; PSS counts shared pages once), sampled every "
            "50 ms.",
            "",
            "| run | main process RSS (GiB) | process tree PSS (GiB) |",
            "|---|---|---|",
        ]
        for name, v in results["memory_bytes"].items():
            lines.append(f"| {name} | {v['main'] / gib:.2f} | {v['tree'] / gib:.2f} |")
        lines.append("")
    if "inference" in results:
        from src.bench.inference import markdown as inference_markdown

        lines += inference_markdown(results["inference"], fmt)
    if "contention" in results:
        from src.bench.contention import markdown as contention_markdown

        lines += contention_markdown(results["contention"], fmt)
    return "\n".join(lines)
