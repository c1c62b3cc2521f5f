"""A background task that outlives its own failures: run, and after any exception log it, count it, back off
and run again, until told to stop. Shared by the API and the worker."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger("mlapi.supervise")

FIRST_BACKOFF_S = 0.1
MAX_BACKOFF_S = 5.0
STABLE_AFTER_S = 30.0
"""A run this long counts as healthy: the next failure starts the backoff from the beginning again."""


class Supervised:
    """Runs `body(stopping)` until `stop()`.

    The body loops until `stopping` is set and then returns. If it raises (anything but a cancellation), the
    traceback is logged, `on_restart(name)` is called and the body runs again after a backoff that doubles
    from 0.1 s to 5 s, and starts over once a run lasted `stable_after_s`. A body that returns while not
    stopping is restarted the same way. `up` says whether the body is running now.
    """

    def __init__(
        self,
        name: str,
        body: Callable[[asyncio.Event], Awaitable[None]],
        on_restart: Callable[[str], None] | None = None,
        *,
        stable_after_s: float = STABLE_AFTER_S,
    ) -> None:
        self.name = name
        self.body = body
        self.on_restart = on_restart
        self.stable_after_s = stable_after_s
        self.restarts = 0
        self.up = False
        self.stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name=self.name)

    async def stop(self, grace_s: float) -> None:
        """Ask the body to return, and cancel it if it has not within `grace_s`."""
        self.stopping.set()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), grace_s)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _supervise(self) -> None:
        backoff = 0.0
        while not self.stopping.is_set():
            started = time.monotonic()
            self.up = True
            try:
                await self.body(self.stopping)
                if self.stopping.is_set():
                    return
                log.error("task %s returned while it should run on; restarting it", self.name)
            except Exception:
                log.exception("task %s failed; restarting it", self.name)
            finally:
                self.up = False
            self.restarts += 1
            if self.on_restart is not None:
                self.on_restart(self.name)
            stable = time.monotonic() - started >= self.stable_after_s
            backoff = FIRST_BACKOFF_S if stable else min(MAX_BACKOFF_S, max(FIRST_BACKOFF_S, backoff * 2))
            with contextlib.suppress(TimeoutError):  # a wait that ends early when told to stop, not a poll
                await asyncio.wait_for(self.stopping.wait(), backoff)
