"""User-facing errors: each one is a single line naming the bad value and what would be valid."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator


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
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
