"""Where an image training step goes on this CPU (issue 14, item 2): reading a JPEG, decoding it
(PIL, as ftlab's ImageFolder does, vs `torchvision.io.decode_jpeg`), the training transforms,
and the mobilenet_v2 step itself; then the train loader alone with 0, 1 and 2 workers.

    .venv/bin/python -m experiments.bench.image_path [NAME]   # from the project root; writes NAME.json
                                                              # here (default image_path)

The hymenoptera training images (245) and `make bench`'s image case (`task=hymenoptera
model=mobilenet_v2`, batch 32, the run's precision and fused AdamW). Data stages run in this
process with one torch thread, as one DataLoader worker does; the step with the default threads.
Medians of REPS passes; ms per image.
"""

from __future__ import annotations

import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from src.bench.plain import _autocast
from src.bench.runs import setup_baseline
from src.data.image import build_transforms

REPS, STEPS, WARMUP = 3, 8, 2


def per_image_ms(fn, items) -> float:
    t = time.perf_counter()
    for item in items:
        fn(item)
    return (time.perf_counter() - t) * 1000 / len(items)


def data_stages(paths: list[Path], pre, color_jitter: float) -> dict[str, float]:
    train_tf = build_transforms(pre, True, color_jitter)
    raw = [p.read_bytes() for p in paths]
    pil = [Image.open(io.BytesIO(b)).convert("RGB") for b in raw]
    tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in raw]
    decoded = [decode_jpeg(t, mode=ImageReadMode.RGB) for t in tensors]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in one DataLoader worker
    try:
        return {
            "read_file": per_image_ms(lambda p: p.read_bytes(), paths),
            "decode_pil": per_image_ms(lambda b: Image.open(io.BytesIO(b)).convert("RGB"), raw),
            "decode_jpeg_torchvision": per_image_ms(
                lambda t: decode_jpeg(t, mode=ImageReadMode.RGB), tensors
            ),
            "train_transform_on_pil": per_image_ms(train_tf, pil),
            "train_transform_on_tensor": per_image_ms(train_tf, decoded),
        }
    finally:
        torch.set_num_threads(threads)


def step_ms(network, cfg, precision: str, images: torch.Tensor, labels: torch.Tensor) -> float:
    from hydra.utils import instantiate

    optimizer = instantiate(cfg.optimizer)(network.parameters())
    network.train()
    times = []
    for i in range(STEPS):
        t = time.perf_counter()
        with _autocast(precision):
            logits = network({"pixel_values": images, "labels": labels})
        loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i >= WARMUP:
            times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000 / len(labels)


def loader_ms(dm, workers: int) -> float:
    """ms per image to iterate one training epoch (decode + transforms + collate), no model."""
    loader = torch.utils.data.DataLoader(
        dm.splits["train"], batch_size=32, shuffle=True, num_workers=workers
    )
    it = iter(loader)
    next(it)  # workers started, first batch out: not timed
    t, n = time.perf_counter(), 0
    for batch in it:
        n += len(batch["labels"])
    return (time.perf_counter() - t) * 1000 / n


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cfg, dm, network, precision = setup_baseline(
            ["task=hymenoptera", "model=mobilenet_v2", "optimizer.lr=1e-3"], Path(tmp)
        )
    root = Path(cfg.data.root) / cfg.data.train_dir
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    batch = next(iter(torch.utils.data.DataLoader(dm.splits["train"], batch_size=32)))
    stages, steps, loaders = [], [], {w: [] for w in (0, 1, 2)}
    for rep in range(REPS):
        stages.append(data_stages(paths, dm.pre, float(cfg.data.color_jitter)))
        steps.append(step_ms(network, cfg, precision, batch["pixel_values"], batch["labels"]))
        for w in loaders:
            loaders[w].append(loader_ms(dm, w))
        print(f"rep {rep + 1}/{REPS}: {stages[-1]} step {steps[-1]:.1f} ms/img", flush=True)
    out = {
        "images": len(paths),
        "precision": precision,
        "torch_threads": torch.get_num_threads(),
        "ms_per_image": {
            **{k: statistics.median(s[k] for s in stages) for k in stages[0]},
            "train_step_batch32": statistics.median(steps),
        },
        "loader_ms_per_image": {f"workers_{w}": statistics.median(v) for w, v in loaders.items()},
        "runs": {"stages": stages, "steps": steps, "loaders": loaders},
    }
    name = sys.argv[1] if len(sys.argv) > 1 else "image_path"
    Path(__file__).with_name(f"{name}.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: out[k] for k in ("ms_per_image", "loader_ms_per_image")}, indent=2))


if __name__ == "__main__":
    main()
