"""What a run prints: each log line once, no tips or noise that needs no action.

`ConsoleSetup` is a Hydra callback (conf/hydra/default.yaml), so every entry point —
src.train, src.eval, src.predict, src.export, src.ensemble — goes through it after Hydra has
configured logging (console + `<run dir>/<job>.log`) and before the task runs:

- Lightning, `datasets` and `transformers` each attach their own console handler to their
  logger; Lightning's also propagates to Hydra's root handlers, so its INFO lines were printed
  twice. Their own handlers are removed and their records propagate to the root: printed once,
  and written to the run's log file. Lightning and the others are imported lazily (a config
  mistake is reported before `import lightning` costs seconds), so this also runs right after
  such a package is first imported.
- Dropped: Lightning's litlogger / litmodels tips, its `srun` hint, deprecation and future
  warnings raised inside libraries (those attributed to ftlab's own code stay), the `datasets`
  ERROR line that repeats what ftlab's one-line error says, and the ONNX exporter's INFO lines.
- Not on a terminal (a file, CI, a batch job): the Hugging Face progress bars (tokenizing,
  caching, loading weights) are off, as their carriage-return frames are noise in a log; the
  training progress is printed as plain lines instead (`src.progress`).

Only logging, warnings and env settings here: importing this module must stay cheap.
`PYTHONWARNINGS` / `-W` (any warning option) keeps every warning filter as the user set it.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any

from hydra.experimental.callback import Callback as HydraCallback

# Top-level packages that attach their own console handler to their logger when imported.
OWN_HANDLER_PACKAGES = (
    "lightning",
    "lightning_fabric",
    "pytorch_lightning",
    "datasets",
    "transformers",
)
# The loggers those handlers sit on.
OWN_HANDLER_LOGGERS = (
    "lightning",
    "lightning.pytorch",
    "lightning.fabric",
    "lightning_fabric",
    "pytorch_lightning",
    "datasets",
    "transformers",
)
# Where Lightning's rank_zero_info lines (its tips among them) are logged.
LIGHTNING_INFO_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "pytorch_lightning.utilities.rank_zero",
    "lightning_fabric.utilities.rank_zero",
)
# `datasets` builders log the reader's error, then raise it; ftlab reports it as one line.
DATASETS_READER_LOGGERS = (
    "datasets.packaged_modules.csv.csv",
    "datasets.packaged_modules.json.json",
)
DATASETS_READER_ERRORS = (
    "Failed to read file",
    "Failed to load JSON from file",
    "Failed to convert pandas DataFrame",
)
# The ONNX exporter's optimizer passes log ~100 INFO lines per export.
ONNX_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx")
# Warnings that need no action, by message (regex matched at the start) and category.
NO_ACTION_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    # Lightning's PossibleUserWarning (a UserWarning) on any machine with SLURM installed
    (r"The `srun` command is available on your system but is not used", UserWarning),
    # the model summary under bf16-mixed: a size estimate, nothing to change
    (r"Precision .* is not supported by the model summary", UserWarning),
    # torch.onnx: inputs sharing the batch / sequence dims (intended)
    (r"# The axis name: .* will not be used, since it shares", UserWarning),
)
# Deprecations attributed to these modules are ftlab's own and stay visible.
OWN_MODULES = r"(src|tests|hydra_plugins|__main__)(\.|$)"


def is_interactive() -> bool:
    """Both stdout and stderr are terminals (a redirected one would receive bar frames)."""
    return all(getattr(s, "isatty", lambda: False)() for s in (sys.stdout, sys.stderr))


class DropMessages(logging.Filter):
    """Drops records whose message starts with one of `prefixes`."""

    def __init__(self, *prefixes: str) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: let the handler report it
            return True
        return not message.lstrip().startswith(self.prefixes)


_DROP_TIPS = DropMessages("💡 Tip:")
_DROP_READER_ERRORS = DropMessages(*DATASETS_READER_ERRORS)


def route_library_logs_to_root() -> None:
    """Remove the console handlers Lightning / datasets / transformers attached to their loggers
    and let their records propagate to the root's (Hydra's console and file) handlers.

    Only when the root has handlers: without them (e.g. `hydra/job_logging=disabled`) the
    libraries' own handlers are the only way their lines show, so they are left alone."""
    if not logging.getLogger().handlers:
        return
    for name in OWN_HANDLER_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            # Exactly StreamHandler (not a FileHandler a user configured on purpose).
            if type(handler) is logging.StreamHandler:
                logger.removeHandler(handler)
        logger.propagate = True


def silence_noise() -> None:
    """Logger filters and levels, warning filters: the lines that need no action go."""
    for name in LIGHTNING_INFO_LOGGERS:
        logger = logging.getLogger(name)
        if _DROP_TIPS not in logger.filters:
            logger.addFilter(_DROP_TIPS)
    for name in DATASETS_READER_LOGGERS:
        logger = logging.getLogger(name)
        if _DROP_READER_ERRORS not in logger.filters:
            logger.addFilter(_DROP_READER_ERRORS)
    for name in ONNX_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    if sys.warnoptions:  # -W / PYTHONWARNINGS: the user decides what shows
        return
    for message, category in NO_ACTION_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for category in (DeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category)  # raised inside a library
        warnings.filterwarnings("default", category=category, module=OWN_MODULES)  # ftlab's


def quiet_progress_bars() -> None:
    """Off the terminal: no Hugging Face progress bars (env for later imports, calls for done ones)."""
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def setup_console() -> None:
    """All of the above, now and again after each watched package's first import."""
    silence_noise()
    if not is_interactive():
        quiet_progress_bars()
    route_library_logs_to_root()
    pending = [name for name in OWN_HANDLER_PACKAGES if name not in sys.modules]
    if pending:
        _AfterImport.install(pending, route_library_logs_to_root)


class ConsoleSetup(HydraCallback):
    """Hydra callback: `setup_console()` once logging is configured, before the task runs."""

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        setup_console()


class _AfterImport(importlib.abc.MetaPathFinder):
    """Calls `callback` right after one of `names` (top-level packages) is first imported.

    A spec lookup alone (`importlib.util.find_spec`, as availability checks do) loads nothing,
    so a name stays watched until its module has really been executed."""

    _installed: _AfterImport | None = None

    def __init__(self, names: list[str], callback: Callable[[], None]) -> None:
        self.names, self.callback = set(names), callback
        self._looking: set[str] = set()

    @classmethod
    def install(cls, names: list[str], callback: Callable[[], None]) -> None:
        if cls._installed is not None and cls._installed in sys.meta_path:
            cls._installed.names.update(names)
            return
        cls._installed = cls(names, callback)
        sys.meta_path.insert(0, cls._installed)

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in self.names or fullname in self._looking:
            return None
        self._looking.add(fullname)  # the lookup below goes through the other finders
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._looking.discard(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _ThenCall(spec.loader, lambda: self._imported(fullname))
        return spec

    def _imported(self, fullname: str) -> None:
        self.names.discard(fullname)
        self.callback()


class _ThenCall(importlib.abc.Loader):
    """Wraps a loader for one import: runs it, puts it back in place, then calls `callback`."""

    def __init__(self, loader: Any, callback: Callable[[], None]) -> None:
        self.loader, self.callback = loader, callback

    def __getattr__(self, name: str) -> Any:  # get_resource_reader, is_package, ...
        return getattr(self.loader, name)

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        module.__loader__ = self.loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        self.callback()
