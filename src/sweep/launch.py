"""How a trial process starts: `cold` (a fresh `python -m src.train`) or `warm` (a child forked
from a multiprocessing forkserver that has already imported torch, Lightning, transformers, ...).

Either way each trial is its own process, in its own session (the sweeper kills its whole process
group), writing to its own log, with its own environment (`CUDA_VISIBLE_DEVICES`,
`OMP_NUM_THREADS`, the study's variables): a crash, segfault, NaN or OOM ends that trial only.
A warm child runs the same entry point as the cold command (`runpy` of `src.train` as
`__main__`, the same argv), so Hydra composes the same config and Lightning's DDP launcher
re-runs `python -m src.train <overrides>` for ranks > 0 as it does for a cold trial.

CUDA is never initialised in the forkserver: it only imports (with PyTorch's NVML-based
availability check, which does not initialise the driver), and every child checks that the CUDA
driver is not loaded before it applies its own `CUDA_VISIBLE_DEVICES`; if it is, the trial fails
with an error that says to use `hydra.sweeper.trial_start=cold`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

TRIAL_STARTS = ("warm", "cold")
# Imported once in the forkserver; what `python -m src.train` would import before its first step.
PRELOAD_MODULE = "src.sweep.preload"


class TrialProcess(Protocol):
    pid: int

    def wait(self, timeout: float | None = None) -> int:
        """The exit status (negative: killed by that signal); `subprocess.TimeoutExpired` if it
        is still running after `timeout` seconds."""


def cold_start(
    argv: Sequence[str], env: dict[str, str], cwd: Path, log_file: Any, prefix: Sequence[str] = ()
) -> subprocess.Popen:
    """`python -m src.train <argv>` as a new process in a new session; `prefix`: the launcher
    that starts it (`srun ...` for a trial of several SLURM tasks)."""
    return subprocess.Popen(
        [*prefix, sys.executable, "-m", "src.train", *argv],
        cwd=cwd,
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def kill_group(proc: TrialProcess) -> None:
    """The trial process and whatever it started (DDP ranks): they share its process group."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(proc.pid, signal.SIGKILL)  # a warm child killed before its setsid()


class WarmProcess:
    """A forked trial process with Popen's `pid` and `wait(timeout)`."""

    def __init__(self, process: Any) -> None:
        self._process = process
        self.pid: int = process.pid

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        code = self._process.exitcode
        if code is None:
            raise subprocess.TimeoutExpired("warm trial", timeout or 0.0)
        return int(code)


class WarmStarter:
    """The forkserver of one sweep command. Started once (in the background, so its imports
    overlap the sweeper's own start-up); restarted by multiprocessing if it ever dies."""

    def __init__(self) -> None:
        import multiprocessing

        self._ctx = multiprocessing.get_context("forkserver")
        self._ctx.set_forkserver_preload([PRELOAD_MODULE])
        self._lock = threading.Lock()

    def start_server(self) -> None:
        from multiprocessing import forkserver

        # PyTorch's CUDA availability check through NVML: importing Lightning must not
        # initialise the CUDA driver in the server (children could not use CUDA after the fork).
        # Set for the server's start only: it inherits the environment; the sweeper keeps its own.
        key = "PYTORCH_NVML_BASED_CUDA_CHECK"
        previous = os.environ.get(key)
        os.environ[key] = "1"
        try:
            forkserver.ensure_running()
        finally:
            if previous is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = previous

    def start(self, argv: Sequence[str], env: dict[str, str], cwd: Path, log_path: Path):
        with self._lock:  # Process.start from several worker threads at once
            process = self._ctx.Process(
                target=_child_main,
                args=(list(argv), dict(env), str(cwd), str(log_path)),
                name="ftlab-trial",
                daemon=False,
            )
            process.start()
        return WarmProcess(process)


def cuda_driver_loaded() -> bool:
    """Whether this process has the CUDA driver library mapped (it is loaded when CUDA starts)."""
    try:
        return "libcuda.so" in Path("/proc/self/maps").read_text()
    except OSError:
        return False


def _child_main(argv: list[str], env: dict[str, str], cwd: str, log_path: str) -> None:
    """The forked trial: own session, log, environment, cwd; then `src.train` as `__main__`."""
    import runpy
    from multiprocessing import forkserver

    os.setsid()  # its own process group, which the sweeper kills as a whole
    # A forkserver child inherits the "forkserver" start method, so its DataLoader workers would
    # start a second forkserver that imports torch again (~11 s for a mobilenet_v2 trial):
    # back to the platform's default, the one a cold `python -m src.train` uses.
    import multiprocessing

    multiprocessing.set_start_method(None, force=True)
    # Let the forkserver exit when the sweeper dies (it waits for every holder of this pipe);
    # then the parent-death signal set in src/sweep/trial.py ends this trial too.
    server = forkserver._forkserver
    if server._forkserver_alive_fd is not None:
        with contextlib.suppress(OSError):
            os.close(server._forkserver_alive_fd)
        server._forkserver_alive_fd = None
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    from src.sweep.trial_env import ENV_PARENT_PID

    os.environ[ENV_PARENT_PID] = str(os.getppid())  # the forkserver: its death ends this trial
    if cuda_driver_loaded():
        print(
            "error: the CUDA driver was loaded before the fork, so CUDA_VISIBLE_DEVICES cannot "
            "take effect in a warm trial; use hydra.sweeper.trial_start=cold",
            file=sys.stderr,
            flush=True,
        )
        os._exit(2)
    threads = env.get("OMP_NUM_THREADS")
    if threads and threads.isdigit() and "torch" in sys.modules:
        # The OpenMP runtime read OMP_NUM_THREADS when the server imported torch.
        sys.modules["torch"].set_num_threads(int(threads))
    main_file = Path(cwd) / "src" / "train.py"
    sys.argv = [str(main_file), *argv]
    # Run as `python -m src.train` does: a fresh __main__ from the module's code.
    sys.modules.pop("src.train", None)
    try:
        runpy.run_module("src.train", run_name="__main__", alter_sys=True)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
