"""ftlab: fine-tuning of pretrained text and image classifiers from Hydra configs."""

import os
from pathlib import Path

from omegaconf import OmegaConf

# torch's CPU threads are OpenMP (libgomp) threads, which by default spin 300,000 times at every
# barrier before they sleep: fastest alone, but two runs sharing the cores spin against each other
# and collapse (experiments/bench/contention: 205 samples/s alone, 7.5 each of two). A short spin
# keeps most of the solo speed and half the machine each when shared. Set before torch is imported
# (libgomp reads it once); OMP_WAIT_POLICY or GOMP_SPINCOUNT of the user's own take precedence.
GOMP_SPINCOUNT = "3000"
GOMP_SPINCOUNT_SET = "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ
if GOMP_SPINCOUNT_SET:
    os.environ["GOMP_SPINCOUNT"] = GOMP_SPINCOUNT

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# `${ftlab_root:}` in conf/paths: the checkout's root, wherever the command is run from.
OmegaConf.register_new_resolver("ftlab_root", lambda: str(PROJECT_ROOT), replace=True)


def has_gpu() -> bool:
    """Whether an NVIDIA GPU is visible, without importing torch (config composition must stay
    fast): the driver lists one and CUDA_VISIBLE_DEVICES does not hide them all."""
    import os

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    return any(Path("/proc/driver/nvidia/gpus").glob("*"))


# `${ftlab_cpu_or_gpu:4000,null}`: the first value on a machine without a GPU, the second with
# one (e.g. a sweep that searches a slice on a CPU and the whole training set on a GPU).
OmegaConf.register_new_resolver(
    "ftlab_cpu_or_gpu", lambda cpu, gpu: gpu if has_gpu() else cpu, replace=True
)
