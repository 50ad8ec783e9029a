"""A callback that sweep tests put into trials (`+callbacks.fault=...`) to make one crash as a
real trial can, or to record what the trial process saw (its CUDA_VISIBLE_DEVICES)."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
from pathlib import Path

from lightning.pytorch.callbacks import Callback


class Fault(Callback):
    """mode: exit (os._exit(1)), segv (SIGSEGV to itself), ok (records its environment)."""

    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode

    def on_train_start(self, trainer, pl_module) -> None:
        if self.mode == "exit":
            os._exit(1)
        if self.mode == "segv":
            os.kill(os.getpid(), signal.SIGSEGV)
        import torch

        seen = {
            "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "cuda_initialized": torch.cuda.is_initialized(),
            "pid": os.getpid(),
            "ppid": os.getppid(),
            "warm": "src.sweep.preload" in sys.modules,
            # what its DataLoader workers start with (not a second forkserver in a warm trial)
            "start_method": multiprocessing.get_start_method(),
        }
        (Path(trainer.default_root_dir) / "fault_seen.json").write_text(json.dumps(seen))
