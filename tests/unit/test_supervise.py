"""Supervised background tasks, on a real event loop: failures are logged, counted and run again with backoff."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from mlapi.supervise import FIRST_BACKOFF_S, Supervised
from tests.conftest import until


class Body:
    """A task body that fails its first `failures` runs, then runs until told to stop; it records its starts."""

    def __init__(self, failures: int, *, returns: bool = False) -> None:
        self.failures = failures
        self.returns = returns
        self.starts: list[float] = []
        self.running = asyncio.Event()

    async def __call__(self, stopping: asyncio.Event) -> None:
        self.starts.append(time.monotonic())
        if len(self.starts) <= self.failures:
            if self.returns:
                return
            raise RuntimeError(f"failure {len(self.starts)}")
        self.running.set()
        await stopping.wait()


async def test_a_failing_task_is_logged_counted_and_run_again(caplog: pytest.LogCaptureFixture) -> None:
    body = Body(failures=3)
    counted: list[str] = []
    task = Supervised("reader", body, counted.append)
    task.start()
    await asyncio.wait_for(body.running.wait(), 5)
    assert task.up and task.restarts == 3 and counted == ["reader"] * 3
    gaps = [b - a for a, b in zip(body.starts, body.starts[1:], strict=False)]
    for gap, backoff in zip(gaps, (0.1, 0.2, 0.4), strict=True):  # doubling from 0.1 s
        assert gap >= backoff * 0.9
    failures = [r for r in caplog.records if r.levelno == logging.ERROR and "task reader failed" in r.getMessage()]
    assert len(failures) == 3 and failures[0].exc_info is not None  # with the traceback
    await task.stop(grace_s=1)
    assert not task.up and task.restarts == 3


async def test_a_task_that_returns_on_its_own_is_run_again() -> None:
    body = Body(failures=1, returns=True)
    task = Supervised("watch", body)
    task.start()
    await asyncio.wait_for(body.running.wait(), 5)
    assert task.restarts == 1 and len(body.starts) == 2
    await task.stop(grace_s=1)


async def test_a_long_healthy_run_starts_the_backoff_over() -> None:
    runs: list[float] = []

    async def body(stopping: asyncio.Event) -> None:
        runs.append(time.monotonic())
        if len(runs) in (1, 2, 3):  # fails at once: 0.1, then 0.2, then 0.4 s of backoff
            raise RuntimeError("at once")
        if len(runs) == 4:  # a healthy run, longer than stable_after_s, then a failure
            await asyncio.sleep(0.3)
            raise RuntimeError("after a healthy run")
        await stopping.wait()

    task = Supervised("t", body, stable_after_s=0.25)
    task.start()
    await until(lambda: len(runs) == 5)
    assert runs[4] - runs[3] < 0.3 + 0.8 * 0.9  # not the 0.8 s the doubling would have reached
    await task.stop(grace_s=1)


async def test_stop_ends_a_backoff_at_once() -> None:
    body = Body(failures=100)
    task = Supervised("t", body)
    task.start()
    await until(lambda: len(body.starts) == 4 and not task.up)  # the backoff is at 0.8 s now
    started = time.monotonic()
    await task.stop(grace_s=5)
    assert time.monotonic() - started < 0.5
    runs = len(body.starts)
    await asyncio.sleep(FIRST_BACKOFF_S * 2)
    assert len(body.starts) == runs  # stopped for good


async def test_a_task_that_ignores_stop_is_cancelled_after_the_grace() -> None:
    cancelled = asyncio.Event()

    async def stubborn(stopping: asyncio.Event) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    task = Supervised("t", stubborn)
    task.start()
    await until(lambda: task.up)
    started = time.monotonic()
    await task.stop(grace_s=0.2)
    assert cancelled.is_set() and 0.15 < time.monotonic() - started < 1
    assert task.restarts == 0 and not task.up
