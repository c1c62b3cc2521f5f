"""A process's view of the model registry, kept current: re-read on every change event, and periodically."""

from __future__ import annotations

import asyncio
import contextlib
import logging
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


class RegistryWatch:
    """Calls `on_change` with the registry's snapshot at start and whenever it changes.

    Changes arrive as events on a Redis stream (a stream rather than pub/sub, which redis-py's cluster
    client lacks); a re-read every `refresh_s` covers an event missed while the broker was away.
    """

    def __init__(
        self,
        redis_url: str,
        repository: RegistryRepository,
        refresh_s: float,
        on_change: Callable[[Snapshot], Awaitable[None]],
        on_restart: Callable[[str], None] | None = None,
    ) -> None:
        self.repository = repository
        self.refresh_s = refresh_s
        self.on_change = on_change
        self.snapshot: Snapshot = {}
        self._redis = queue.connect(redis_url, read_timeout_s=BLOCK_MS / 1000 + 5)
        self._follower = Supervised(TASK, self._follow, on_restart)
        self._last_event = "0-0"

    async def start(self) -> None:
        """Read the registry once (failing if PostgreSQL is away), then follow it in the background."""
        with contextlib.suppress(RedisError):  # without the broker, the periodic re-read still works
            self._last_event = await queue.last_event_id(self._redis)
        await self.refresh()
        self._follower.start()

    async def refresh(self) -> None:
        snapshot = await self.repository.snapshot()
        if snapshot != self.snapshot:
            await self.on_change(snapshot)  # if it fails, the next refresh tries again
            self.snapshot = snapshot

    async def stop(self) -> None:
        """Let a blocking read finish rather than cancel it (redis-py under uvloop can hang on a cancelled read)."""
        await self._follower.stop(BLOCK_MS / 1000 + 5)
        await self._redis.aclose()

    async def _follow(self, stopping: asyncio.Event) -> None:
        """Outages are waited out here; any other error (a bug in a reaction) ends the run, and the supervisor
        logs it and runs it again: the next change or refresh tries again."""
        last_read = time.monotonic()
        backoff = 0.0
        while not stopping.is_set():
            try:
                self._last_event, events = await queue.wait_for_events(self._redis, self._last_event, BLOCK_MS)
                if events or time.monotonic() - last_read >= self.refresh_s:
                    last_read = time.monotonic()
                    await self.refresh()
                backoff = 0.0
            except (RedisError, SQLAlchemyError, OSError) as e:
                backoff = min(MAX_BACKOFF_S, max(0.2, backoff * 2))
                log.warning("registry watch: %s: %s; retrying in %.1f s", type(e).__name__, e, backoff)
                with contextlib.suppress(TimeoutError):  # reconnect backoff; the event read blocks on the broker
                    await asyncio.wait_for(stopping.wait(), backoff)
