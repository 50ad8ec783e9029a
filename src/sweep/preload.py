"""Imported once by the warm-start forkserver (src/sweep/launch.py): what a trial imports before
its first training step, so that each forked trial starts with it all in memory.

Only imports: nothing here may start threads, run a torch op (OpenMP is not fork-safe once its
thread pool exists) or touch CUDA. A module that fails to import is skipped; the trial then
imports it itself and reports the error as a cold trial would.
"""

from __future__ import annotations

import importlib

MODULES = (
    "torch",
    "lightning",
    "lightning.pytorch",
    "transformers",
    "torchmetrics",
    "datasets",
    "optuna",
    "sqlalchemy",
    "tensorboard",
    "hydra",
    # Not src.train itself: each child runs it as __main__ (multiprocessing first runs the
    # sweeper's main module as __mp_main__, and runpy warns when the module is already loaded).
    "src.checks",
    "src.console",
    "src.run_dir",
    "src.analysis",
    "src.init_from",
    "src.data.labels",
    "src.errors",
    "src.cv",
    "src.callbacks",
    "src.checkpoints",
    "src.results",
    "src.tensorboard_output",
    "src.pipeline",
    "src.finetune",
    "src.finetune_schedules",
    "src.features",
    "src.tuning",
    "src.data.text",
    "src.data.image",
    "src.data.report",
    "src.models.classifier",
    "src.models.networks",
    "src.sweep.trial",
    "src.sweep.study",
    "lightning.pytorch.loggers.tensorboard",
    "lightning.pytorch.callbacks.progress.rich_progress",
    "torch.utils.tensorboard",
    "transformers.models.bert.modeling_bert",
    "transformers.optimization",  # src.optim's schedules (it imports peft: ~0.1 s)
)

loaded: list[str] = []
failed: dict[str, str] = {}
for _name in MODULES:
    try:
        importlib.import_module(_name)
        loaded.append(_name)
    except Exception as e:  # noqa: BLE001  (a broken module must not kill the forkserver)
        failed[_name] = f"{type(e).__name__}: {e}"

try:  # Hydra's plugin scan (config sources, sweepers, launchers), done once here.
    from hydra.core.plugins import Plugins

    Plugins.instance()
except Exception as e:  # noqa: BLE001
    failed["hydra.core.plugins"] = f"{type(e).__name__}: {e}"

try:  # transformers' table of checkpoint renamings: ~1,000 regexes that a process compiles on its
    # first from_pretrained (0.2-0.4 s of every warm MiniLM trial), then caches. Pure Python.
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping

    get_checkpoint_conversion_mapping("bert")
except Exception as e:  # noqa: BLE001
    failed["transformers.conversion_mapping"] = f"{type(e).__name__}: {e}"
