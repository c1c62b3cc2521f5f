"""Following events on a Redis stream: a process's view of the model registry, and of API keys, kept current."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable

from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from mlapi import queue
from mlapi.storage.registry import RegistryRepository, Snapshot
from mlapi.supervise import Supervised

log = logging.getLogger("mlapi.watch")

BLOCK_MS = 1000
"""One blocking read of the event stream; bounds how long a shutdown waits for the watcher."""
MAX_BACKOFF_S = 5.0
TASK = "registry-watch"
KEY_TASK = "key-watch"


class EventWatch:
    """Calls `react` whenever events arrive on `stream`, and at least every `refresh_s` (the backstop for an
    event missed while the broker was away).

    A stream rather than pub/sub, which redis-py's cluster client lacks.
    """

    def __init__(
        self,
        task: str,
        redis_url: str,
        stream: str,
        refresh_s: float,
        react: Callable[[], Awaitable[None]],
        on_restart: Callable[[str], None] | None = None,
    ) -> None:
        self.stream = stream
        self.refresh_s = refresh_s
        self.react = react
        self._redis = queue.connect(redis_url, read_timeout_s=BLOCK_MS / 1000 + 5)
        self._follower = Supervised(task, self._follow, on_restart)
        self._what = task.replace("-", " ")  # "registry watch", as the logs say
        self._last_event = "0-0"

    async def start(self, react: bool = False) -> None:
        """Follow the stream from now on, in the background; with `react`, react once first (its failure, such
        as PostgreSQL being away, fails the start)."""
        with contextlib.suppress(RedisError):  # without the broker, the periodic reaction still works
            self._last_event = await queue.last_event_id(self._redis, self.stream)
        if react:
            await self.react()
        self._follower.start()

    async def stop(self) -> None:
        """Let a blocking read finish rather than cancel it (redis-py under uvloop can hang on a cancelled read)."""
        await self._follower.stop(BLOCK_MS / 1000 + 5)
        await self._redis.aclose()

    async def _follow(self, stopping: asyncio.Event) -> None:
        """Outages are waited out here; any other error (a bug in a reaction) ends the run, and the supervisor
        logs it and runs it again: the next event or refresh tries again."""
        last_read = time.monotonic()
        backoff = 0.0
        while not stopping.is_set():
            try:
                self._last_event, events = await queue.wait_for_events(
                    self._redis, self._last_event, BLOCK_MS, self.stream
                )
                if events or time.monotonic() - last_read >= self.refresh_s:
                    last_read = time.monotonic()
                    await self.react()
                backoff = 0.0
            except (RedisError, SQLAlchemyError, OSError) as e:
                backoff = min(MAX_BACKOFF_S, max(0.2, backoff * 2))
                log.warning("%s: %s: %s; retrying in %.1f s", self._what, type(e).__name__, e, backoff)
                with contextlib.suppress(TimeoutError):  # reconnect backoff; the event read blocks on the broker
                    await asyncio.wait_for(stopping.wait(), backoff)


class RegistryWatch(EventWatch):
    """Calls `on_change` with the registry's snapshot at start and whenever it changes."""

    def __init__(
        self,
        redis_url: str,
        repository: RegistryRepository,
        refresh_s: float,
        on_change: Callable[[Snapshot], Awaitable[None]],
        on_restart: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(TASK, redis_url, queue.REGISTRY_EVENTS, refresh_s, self.refresh, on_restart)
        self.repository = repository
        self.on_change = on_change
        self.snapshot: Snapshot = {}

    async def start(self, react: bool = True) -> None:
        """Read the registry once (failing if PostgreSQL is away), then follow it in the background."""
        await super().start(react)

    async def refresh(self) -> None:
        snapshot = await self.repository.snapshot()
        if snapshot != self.snapshot:
            await self.on_change(snapshot)  # if it fails, the next refresh tries again
            self.snapshot = snapshot


def key_watch(
    redis_url: str, forget: Callable[[], Awaitable[None]], on_restart: Callable[[str], None] | None = None
) -> EventWatch:
    """Calls `forget` whenever an API key is created or revoked (the cache's own expiry is the backstop)."""
    return EventWatch(KEY_TASK, redis_url, queue.KEY_EVENTS, math.inf, forget, on_restart)
