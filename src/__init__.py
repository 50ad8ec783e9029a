"""ftlab: fine-tuning of pretrained text and image classifiers from Hydra configs."""

from pathlib import Path

from omegaconf import OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# `${ftlab_root:}` in conf/paths: the checkout's root, wherever the command is run from.
OmegaConf.register_new_resolver("ftlab_root", lambda: str(PROJECT_ROOT), replace=True)
