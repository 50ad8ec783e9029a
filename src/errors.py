"""User-facing errors: each one is a single line naming the bad value and what would be valid."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback as HydraCallback


class FtlabError(Exception):
    """A problem with the user's input or environment, reported as one line, no traceback."""


class ConfigError(FtlabError):
    """A config value that cannot work (checked before any heavy work)."""


class DataError(FtlabError):
    """Missing or malformed data: paths, columns, labels."""


class ModelUnavailableError(FtlabError):
    """Pretrained weights that cannot be found locally nor downloaded."""


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Turn an FtlabError into `error: <message>` on stderr and exit status 2."""
    try:
        yield
    except FtlabError as e:
        print(f"error: {one_line(str(e))}", file=sys.stderr, flush=True)
        sys.exit(2)


def one_line(message: str) -> str:
    """The message itself, also when a DataLoader worker re-raised it wrapped in its traceback."""
    if "Original Traceback" in message:  # torch's ExceptionWrapper: the last line is the error
        last = message.strip().splitlines()[-1]
        return last.split(": ", 1)[1] if last.startswith("src.errors.") else last
    return message


class CheckOutputDir(HydraCallback):
    """Hydra callback: an output dir that cannot be created or written fails before the run, as
    one line (Hydra itself would die creating it, with a traceback)."""

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        self._check(config, "hydra.run.dir")

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        self._check(config, "hydra.sweep.dir")

    @staticmethod
    def _check(config: Any, key: str) -> None:
        from omegaconf import OmegaConf

        try:
            path = Path(str(OmegaConf.select(config, key)))
        except Exception:  # unresolvable interpolation: Hydra reports it itself
            return
        with exit_on_user_error():
            ensure_writable_dir(path, key)


def ensure_writable_dir(path: Path, key: str) -> None:
    """Create `path` and write a probe file there, so an unwritable dir fails now, not after hours."""
    blocking = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise ConfigError(
            f"{key}={str(path)!r} is not writable: {blocking} is a file, not a folder"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".ftlab-write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise ConfigError(f"{key}={str(path)!r} is not writable: {reason}") from e


def require_int(value: Any, key: str, minimum: int, note: str = "") -> int:
    """`value` when it is an int >= `minimum` (a bool is not), else the one-line ConfigError
    `<key>=<value> is invalid: must be an int >= <minimum><note>`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key}={value!r} is invalid: must be an int >= {minimum}{note}")
    return value
