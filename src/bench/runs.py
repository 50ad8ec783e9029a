"""How `make bench` makes its runs: an ftlab run in this process with a step timer, the same
config's data and network for a baseline, and the statistics every section reports."""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from src.bench.timing import StepLog

ROOT = Path(__file__).resolve().parents[2]


def compose(overrides: list[str], out_dir: Path, cache_dir: Path | None = None):
    """The composed train config, writing into `out_dir`, with the step timer attached."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import src  # noqa: F401  (resolvers)

    extra = [
        f"paths.output_dir={out_dir}",
        "+callbacks.step_timer._target_=src.bench.timing.StepTimer",
        f"+callbacks.step_timer.out={out_dir / 'steps.json'}",
    ]  # the default callbacks (progress bar included): ftlab as users run it
    if cache_dir is not None:
        extra.append(f"paths.cache_dir={cache_dir}")
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        return hydra_compose("train", overrides=[*overrides, *extra])


def ftlab_run(
    overrides: list[str], work: Path, tag: str, callbacks: list | None = None
) -> tuple[StepLog, dict[str, Any]]:
    """One real ftlab run (src.pipeline.train, in this process, with `callbacks` added to its
    own): its StepLog and metrics."""
    from src.pipeline import train

    out = work / f"{tag}_{time.monotonic_ns()}"
    metrics = train(compose(overrides, out), extra_callbacks=callbacks)
    return StepLog.from_dict(json.loads((out / "steps.json").read_text())), metrics


def setup_baseline(overrides: list[str], work: Path):
    """The same config's data module (set up) and a fresh network, built by ftlab's builders."""
    import lightning as L

    from src.models.networks import build_network
    from src.pipeline import build_datamodule, resolve_precision

    cfg = compose(overrides, work / "baseline")
    L.seed_everything(cfg.seed, verbose=False)
    dm = build_datamodule(cfg, "fit")
    network = build_network(cfg.model, dm.label_names)
    precision = resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator)
    return cfg, dm, network, str(precision)


def stats(values: list[float]) -> dict[str, Any]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "runs": values,
    }


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
