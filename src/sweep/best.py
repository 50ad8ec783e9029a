"""The best trial, handed back: `best.yaml`, a config `python -m src.train` runs to reproduce it.

A trial is `python -m src.train <sweep overrides> <trial params>`. best.yaml holds the best trial's
overrides as a primary config that includes `train` (conf/train.yaml) and applies them on top:
group choices (`task=text_csv`) become `override` entries of its defaults list, values
(`optimizer.lr=3e-4`, `hydra.searchpath=[...]`) its own keys, which come last (`_self_`) as
command-line overrides would. So

    python -m src.train --config-dir logs/sweeps/sentiment --config-name best [more overrides]

composes the same job config as the trial did (tested: same metrics on CPU in fp32), in a new run
dir, and takes further overrides (e.g. `data.limit_train=null` to refit on all the data). The
same run as plain overrides is in optimization_results.yaml (`best_trial.command`).
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import OverrideType
from omegaconf import OmegaConf

from src import PROJECT_ROOT
from src.atomic import write_text_atomic

OVERLAY_NAME = "best.yaml"


def display_path(path: Path | str) -> str:
    """`path` relative to the project root when inside it (commands run from there), else as is."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(PROJECT_ROOT.resolve()))
    except ValueError:
        return str(p)


def train_command(overrides: Sequence[str]) -> str:
    """The trial as one copy-paste command line (RUN mode: a search config would make it sweep)."""
    return shlex.join(["python", "-m", "src.train", *overrides, "hydra.mode=RUN"])


def overlay_command(sweep_dir: Path) -> str:
    return shlex.join(
        [
            "python",
            "-m",
            "src.train",
            "--config-dir",
            display_path(sweep_dir),
            "--config-name",
            Path(OVERLAY_NAME).stem,
        ]
    )


def overlay(overrides: Sequence[str], config_groups: Iterable[str]) -> dict[str, Any] | None:
    """The overrides as a primary config over conf/train.yaml; None when one cannot be written
    as config (a deletion `~key`): the command line in optimization_results.yaml still can."""
    groups = set(config_groups)
    defaults: list[Any] = ["train"]
    body = OmegaConf.create({})
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    for o in parsed:
        if o.type == OverrideType.DEL or o.is_sweep_override():
            return None
        key = o.key_or_group
        if key in groups:
            name = f"{key}@{o.package}" if o.package else key
            value = o.value()
            if o.type == OverrideType.ADD:
                defaults.append({name: value})  # a group the defaults list does not have
            else:
                defaults.append({f"override {name}": value})
            continue
        OmegaConf.update(body, key, o.value(), merge=False, force_add=True)
    defaults.append("_self_")
    config = OmegaConf.to_container(body, resolve=False)
    assert isinstance(config, dict)
    # The search configs set hydra.mode=MULTIRUN (`-m` implied); the overlay is one run.
    config.setdefault("hydra", {})["mode"] = "RUN"
    return {"defaults": defaults, **config}


def write_overlay(
    path: Path,
    overrides: Sequence[str],
    config_groups: Iterable[str],
    header: Sequence[str],
) -> bool:
    """Write best.yaml (atomically); False when the overrides cannot be a config."""
    config = overlay(overrides, config_groups)
    if config is None:
        path.unlink(missing_ok=True)
        return False
    text = "".join(f"# {line}\n" for line in header) + yaml.safe_dump(
        config, sort_keys=False, default_flow_style=False
    )
    write_text_atomic(path, text)
    return True
