"""A run dir holds one run: starting a new run in the dir of an earlier one would overwrite its
metrics.json, data_report.json and .hydra/, mix two runs in TensorBoard and leave `last.ckpt`
as the old run's (so `resume=true` would later resume the wrong run)."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback as HydraCallback

from src.errors import ConfigError, exit_on_user_error

log = logging.getLogger(__name__)

# What a run leaves in its dir (cross-validation: one fold_<k>/ per fold).
RUN_OUTPUTS = ("metrics.json", "data_report.json", "checkpoints", "tensorboard", "lr_find.png")


def earlier_run(run_dir: Path) -> list[Path]:
    """The outputs of an earlier run found in `run_dir`."""
    if not run_dir.is_dir():
        return []
    found = [run_dir / name for name in RUN_OUTPUTS if (run_dir / name).exists()]
    return found + sorted(p for p in run_dir.glob("fold_*") if p.is_dir())


def guard_run_dir(run_dir: Path, resume: bool, ckpt_path: Any, overwrite: bool) -> None:
    """Refuse to start a new run in the dir of an earlier one, unless it is resumed
    (`resume=true`, `ckpt_path=...`) or replaced on purpose (`overwrite=true`)."""
    found = earlier_run(run_dir)
    if not found or resume or ckpt_path not in (None, ""):
        return
    if overwrite:
        for path in found:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        log.warning(
            "overwrite=true: removed the earlier run's %s", ", ".join(p.name for p in found)
        )
        return
    raise ConfigError(
        f"hydra.run.dir={str(run_dir)!r} already holds a run "
        f"({', '.join(p.name for p in found)}): continue it with resume=true, replace it with "
        "overwrite=true, or choose another hydra.run.dir"
    )


class GuardRunDir(HydraCallback):
    """Hydra callback: the check above, before Hydra writes `.hydra/` or the log into the dir."""

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        from omegaconf import OmegaConf

        if "resume" not in config:  # not a training run (eval, predict, export write elsewhere)
            return
        if any(
            os.environ.get(v, "0") != "0"
            for v in ("LOCAL_RANK", "NODE_RANK", "RANK", "SLURM_PROCID")
        ):
            return  # a DDP rank > 0 (Lightning, torchrun or srun starts it in rank 0's run dir)
        try:
            run_dir = Path(str(OmegaConf.select(config, "hydra.run.dir")))
        except Exception:  # unresolvable interpolation: Hydra reports it itself
            return
        with exit_on_user_error():
            guard_run_dir(
                run_dir,
                bool(config.get("resume")),
                config.get("ckpt_path"),
                bool(config.get("overwrite")),
            )
