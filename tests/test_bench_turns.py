"""make bench's turn-taking (src/bench/turns.py): two loops in two threads, a step each in turn,
each timed on a clock that stops while it waits; and the hf section's pair built on it."""

from __future__ import annotations

import os
import threading
import time

import pytest

from src.bench.hf import in_turns
from src.bench.timing import StepLog
from src.bench.turns import Turns
from tests.conftest import QUIET, tiny_text_overrides

SLEEP = {0: 0.04, 1: 0.06}  # each loop's step, in seconds


def sleepy_loop(turns: Turns, i: int, n_steps: int, logs: dict[int, StepLog], fail_at=None):
    def run() -> None:
        steps = logs[i] = StepLog(clock=turns.clock(i))
        try:
            turns.begin(i)
            steps.epoch_start()
            for step in range(n_steps):
                if step == fail_at:
                    raise RuntimeError("this loop failed")
                time.sleep(SLEEP[i])
                steps.step_end(1)
                turns.step_done(i)
        except (RuntimeError, threading.BrokenBarrierError):
            pass
        finally:
            turns.finish(i)

    return threading.Thread(target=run, daemon=True)


def run_loops(turns: Turns, *loops: threading.Thread) -> None:
    for loop in loops:
        loop.start()
    for loop in loops:
        loop.join(timeout=30)
        assert not loop.is_alive(), "a loop never got its turn back"


def test_loops_alternate_and_each_clock_counts_only_its_own_steps() -> None:
    turns, logs = Turns(2), {}
    run_loops(turns, sleepy_loop(turns, 0, 5, logs), sleepy_loop(turns, 1, 5, logs))
    assert turns.order == [0, 1] * 5
    for i, log in logs.items():
        gaps = [b - a for a, b in zip(log.step_ends, log.step_ends[1:], strict=False)]
        assert len(gaps) == 4
        # its own step; with the other loop's step counted in, each gap would be >= 0.1 s
        assert all(SLEEP[i] <= gap < SLEEP[i] + 0.035 for gap in gaps), (i, gaps)


def test_the_longer_loop_goes_on_alone_after_the_other_finishes() -> None:
    turns, logs = Turns(2), {}
    run_loops(turns, sleepy_loop(turns, 0, 2, logs), sleepy_loop(turns, 1, 5, logs))
    assert turns.order == [0, 1, 0, 1, 1, 1, 1]
    assert len(logs[1].step_ends) == 5


def test_a_failing_loop_does_not_leave_the_other_waiting() -> None:
    turns, logs = Turns(2), {}
    run_loops(turns, sleepy_loop(turns, 0, 5, logs, fail_at=2), sleepy_loop(turns, 1, 5, logs))
    assert turns.order == [0, 1, 0, 1, 1, 1, 1]
    # one that fails before its first step: the other does not wait for it at the start
    turns, logs = Turns(2), {}
    run_loops(turns, sleepy_loop(turns, 0, 3, logs, fail_at=0), sleepy_loop(turns, 1, 3, logs))
    assert turns.order.count(1) == 3


@pytest.mark.parametrize("ftlab_first", [True, False])
def test_ftlab_and_hf_trainer_train_in_turns(
    tmp_path, tiny_bert, tiny_text_data, ftlab_first
) -> None:
    overrides = [
        *tiny_text_overrides(tiny_bert, tiny_text_data),
        *QUIET,
        "model.pooling=pooler",
        "data.batch_size=32",  # 120 training rows: 4 steps in the one epoch
        "trainer.max_epochs=1",
    ]
    pair = in_turns(overrides, tmp_path, "pair", ftlab_first=ftlab_first)
    assert pair.train_size == 120
    assert len(pair.ftlab_steps.step_ends) == len(pair.hf_steps.step_ends) == 4
    assert pair.order == ([0, 1] if ftlab_first else [1, 0]) * 4  # strictly in turns
    assert pair.ftlab_steps.epoch_times()[0] > 0 and pair.hf_steps.epoch_times()[0] > 0
    # every step's tokens, padding included: a batch pads to its longest row, up to max_length
    for steps in (pair.ftlab_steps, pair.hf_steps):
        assert len(steps.tokens) == 4
        assert all(32 <= t <= 32 * 64 for t in steps.tokens[:3]), steps.tokens
        assert steps.seconds_per_1k_tokens(warmup=0) > 0
    assert 0 <= pair.hf_acc <= 1 and 0 <= pair.ftlab_metrics["test/acc"] <= 1
    # the environment as users run HF Trainer: the C allocator's defaults, OpenMP's as given
    assert pair.hf_process == {
        "GOMP_SPINCOUNT": os.environ.get("GOMP_SPINCOUNT"),
        "allocator": "system",
    }


def test_an_hf_failure_in_its_process_is_raised_and_ftlab_is_not_left_waiting(
    tmp_path, tiny_bert, tiny_text_data
) -> None:
    overrides = [
        *tiny_text_overrides(tiny_bert, tiny_text_data),
        *QUIET,
        "data.batch_size=32",
        "trainer.max_epochs=1",
    ]
    # torch's AdamW refuses a negative lr when HF Trainer builds it, before its first step
    with pytest.raises(RuntimeError, match="HF Trainer failed in its process") as raised:
        in_turns(overrides, tmp_path, "pair", hf_options={"lr": -1.0})
    assert "Invalid learning rate: -1.0" in str(raised.value)


def test_an_ftlab_failure_is_raised_as_ftlab_s_and_hf_is_not_left_waiting(
    tmp_path, tiny_bert, tiny_text_data
) -> None:
    overrides = [
        *tiny_text_overrides(tiny_bert, tiny_text_data),
        *QUIET,
        "data.batch_size=32",
        "trainer.max_epochs=1",
    ]

    def failing_ftlab(*args, **kwargs):
        raise MemoryError("out of memory in ftlab's run")

    # HF's process then finds its turns broken; that is not the error to report
    with pytest.raises(RuntimeError, match="the ftlab run failed") as raised:
        in_turns(overrides, tmp_path, "pair", ftlab=failing_ftlab)
    assert isinstance(raised.value.__cause__, MemoryError)
