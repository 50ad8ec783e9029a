"""`callbacks.cpu_threads` (src/cpu_threads.py): torch threads given up to processes that share the
cores, and taken back when the cores are free."""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import pytest
import torch

from src.cpu_threads import LoadAwareThreads, _idle, _waited, next_threads, read_load
from src.errors import ConfigError


class _Trainer:
    def __init__(self, device: str) -> None:
        self.strategy = type("Strategy", (), {"root_device": torch.device(device)})()


def test_threads_waiting_for_cores_give_threads_up() -> None:
    assert next_threads(2, 2, waiting=1.3, idle=0.0) == 1
    assert next_threads(16, 16, waiting=7.6, idle=0.0) == 8  # a run beside it on 16 cores
    assert next_threads(2, 2, waiting=0.6, idle=0.0) == 1
    assert next_threads(1, 2, waiting=3.0, idle=0.0) == 1  # never below one


def test_idle_cores_are_taken_back_up_to_the_starting_count() -> None:
    assert next_threads(1, 2, waiting=0.0, idle=0.9) == 2
    assert next_threads(8, 16, waiting=0.0, idle=7.8) == 16
    assert next_threads(14, 16, waiting=0.0, idle=5.0) == 16
    assert next_threads(2, 2, waiting=0.0, idle=1.0) == 2  # never above the starting count


def test_a_run_alone_or_settled_keeps_its_count() -> None:
    assert next_threads(2, 2, waiting=0.1, idle=0.3) == 2  # alone, a little noise
    assert next_threads(1, 2, waiting=0.2, idle=0.1) == 1  # two runs at their share each


def test_proc_files_are_read_as_seconds(tmp_path: Path) -> None:
    tasks = tmp_path / "task"
    for tid, wait_ns in (("11", 1_500_000_000), ("12", 500_000_000)):
        (tasks / tid).mkdir(parents=True)
        (tasks / tid / "schedstat").write_text(f"999 {wait_ns} 7\n")
    (tasks / "13").mkdir()  # a thread that ended before its schedstat was read
    assert _waited(tasks) == pytest.approx(2.0)
    stat = tmp_path / "stat"
    stat.write_text(
        "cpu  100 0 50 9000 30 0 0 0 0 0\n"
        "cpu0 50 0 25 4000 10 0 0 0 0 0\n"
        "cpu1 50 0 25 5000 20 0 0 0 0 0\n"
        "intr 12345\n"
    )
    ticks = os.sysconf("SC_CLK_TCK")
    assert _idle({1}, stat) == pytest.approx(5020 / ticks)
    assert _idle({0, 1}, stat) == pytest.approx(9030 / ticks)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_busy_thread_beside_the_run_shows_as_waiting() -> None:
    """On this machine's real /proc: more busy threads than cores make them wait for a core."""
    stop = time.monotonic() + 1.0

    def spin() -> None:
        while time.monotonic() < stop:
            pass

    before = read_load()
    # busy processes (threads would share one GIL), twice as many as cores
    procs = [mp.get_context("fork").Process(target=spin) for _ in range(2 * os.cpu_count())]
    for p in procs:
        p.start()
    spin()
    for p in procs:
        p.join()
    after = read_load()
    # this process's thread ran beside 2x the cores of busy processes: it waited for a core
    assert (after.waited - before.waited) / (after.at - before.at) > 0.2


def test_the_callback_restores_the_starting_count_at_the_end() -> None:
    start = torch.get_num_threads()
    cb = LoadAwareThreads(every_n_seconds=0.01)
    cb.setup(_Trainer("cpu"), None, "fit")  # type: ignore[arg-type]
    torch.set_num_threads(1)  # as a decision during training would
    cb.teardown(_Trainer("cpu"), None, "fit")  # type: ignore[arg-type]
    assert torch.get_num_threads() == start


def test_a_bad_interval_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"callbacks.cpu_threads.every_n_seconds=0 is invalid"):
        LoadAwareThreads(every_n_seconds=0)


def test_the_callback_acts_on_what_proc_says(monkeypatch: pytest.MonkeyPatch) -> None:
    import src.cpu_threads as cpu_threads

    loads = iter(
        [
            cpu_threads.Load(at=0.0, waited=0.0, idle=0.0),
            cpu_threads.Load(at=2.0, waited=2.0, idle=0.0),  # one thread waited, all along
            cpu_threads.Load(at=4.0, waited=2.1, idle=0.1),  # settled
            cpu_threads.Load(at=6.0, waited=2.1, idle=2.0),  # the other run ended
        ]
    )
    monkeypatch.setattr(cpu_threads, "read_load", lambda: next(loads))
    monkeypatch.setattr(cpu_threads.time, "monotonic", lambda: 10.0)  # every batch checks
    threads = [2]
    monkeypatch.setattr(cpu_threads.torch, "get_num_threads", lambda: threads[-1])
    monkeypatch.setattr(cpu_threads.torch, "set_num_threads", lambda n: threads.append(n))
    cb = LoadAwareThreads()
    cb.setup(_Trainer("cpu"), None, "fit")  # type: ignore[arg-type]
    for _ in range(3):
        cb.on_train_batch_end()
    assert threads[1:] == [1, 2]  # one given up, nothing while settled, taken back


def test_the_callback_leaves_a_gpu_run_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    import src.cpu_threads as cpu_threads

    monkeypatch.setattr(cpu_threads, "read_load", lambda: pytest.fail("read /proc on a GPU run"))
    cb = LoadAwareThreads()
    cb.setup(_Trainer("meta"), None, "fit")  # type: ignore[arg-type]
    cb.on_train_batch_end()
    cb.teardown(_Trainer("meta"), None, "fit")  # type: ignore[arg-type]
