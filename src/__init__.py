"""ftlab: fine-tuning of pretrained text and image classifiers from Hydra configs."""

from pathlib import Path

from omegaconf import OmegaConf

# torch's CPU threads are OpenMP (libgomp) threads, which spin at every barrier before they sleep:
# fastest alone, and ftlab leaves that spin as it is. Where another process shares the cores, a
# training run gives threads up instead (callbacks.cpu_threads, src/cpu_threads.py).

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
