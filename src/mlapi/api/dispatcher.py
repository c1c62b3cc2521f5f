"""Answers for this API process: one reader task resolves one future per job id."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable

import msgspec
from redis.exceptions import RedisError

from mlapi import queue
from mlapi.contract import Job, Reply, decode_replies
from mlapi.faults import Faults
from mlapi.supervise import Supervised

log = logging.getLogger("mlapi.api")

MAX_BACKOFF_S = 5.0
READER = "reply-reader"


class BrokerUnavailable(Exception):
    """Redis could not be reached; the ids are those of the predictions that may still complete."""

    def __init__(self, reason: str, ids: list[str] | None = None) -> None:
        super().__init__(reason)
        self.ids = ids or []


class PredictionTimeout(Exception):
    def __init__(self, ids: list[str]) -> None:
        super().__init__(f"no answer within the timeout for {', '.join(ids)}")
        self.ids = ids


class ReplyDispatcher:
    """Owns this process's reply stream and the futures of the jobs waiting on it."""

    def __init__(
        self,
        redis_url: str,
        block_ms: int,
        faults: Faults | None = None,
        on_restart: Callable[[str], None] | None = None,
    ) -> None:
        self.stream = queue.reply_stream(uuid.uuid4().hex)
        self.block_ms = block_ms
        self.faults = faults or Faults(enabled=False)
        self._redis = queue.connect(redis_url, read_timeout_s=block_ms / 1000 + 5)
        self._waiting: dict[str, asyncio.Future[Reply]] = {}
        self._last_id = "0-0"
        """The reader's position in the reply stream: kept across its restarts, so no reply is skipped."""
        self._reader = Supervised(READER, self._read, on_restart)

    def start(self) -> None:
        self._reader.start()

    @property
    def up(self) -> bool:
        """Whether the reader runs (not waiting out the backoff after a failure)."""
        return self._reader.up

    async def stop(self) -> None:
        """Let the reader finish its blocking read rather than cancel it: redis-py under uvloop can hang
        forever when a read in progress is cancelled."""
        await self._reader.stop(self.block_ms / 1000 + 2)
        self._fail_all(BrokerUnavailable("the API is shutting down"))
        await self._redis.aclose()

    @property
    def in_flight(self) -> int:
        return len(self._waiting)

    async def submit(self, sender: queue.Sender, job: Job, timeout_s: float, durable_ms: int | None = None) -> Reply:
        """Queue the job (on the broker's disk first, with `durable_ms`) and wait for its answer."""
        ids = [row.id for row in job.rows]
        return await self.call(job.id, sender.enqueue(job, durable_ms), timeout_s, ids)

    async def call(self, reply_id: str, send: Awaitable[None], timeout_s: float, ids: list[str]) -> Reply:
        """Send a message (a job, a validation) and wait for the reply with its id; the future exists before
        the message can be answered. `ids` are what a client is told on a timeout or a lost broker."""
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._waiting[reply_id] = future
        try:
            try:
                await send
            except queue.NotDurable as e:
                raise BrokerUnavailable(f"not accepted: {e}", ids) from e
            except RedisError as e:  # the message may have reached the broker before the connection broke
                raise BrokerUnavailable(f"broker unavailable, the request may not be queued: {e}", ids) from e
            try:
                return await asyncio.wait_for(future, timeout_s)
            except TimeoutError:
                raise PredictionTimeout(ids) from None
            except BrokerUnavailable as e:
                raise BrokerUnavailable(str(e), ids) from None
        finally:
            self._waiting.pop(reply_id, None)
            if future.done() and not future.cancelled():
                future.exception()  # a failure set while sending was raised another way: it is not "never retrieved"

    def _fail_all(self, error: Exception) -> None:
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(error)

    async def _read(self, stopping: asyncio.Event) -> None:
        """Resolve futures from the reply stream until stopping; an unexpected error ends it, and its
        supervisor runs it again from the same position (futures waiting meanwhile keep waiting)."""
        backoff = 0.0
        while not stopping.is_set():
            self.faults.check()
            try:
                response = await self._redis.xread({self.stream: self._last_id}, count=1000, block=self.block_ms)
                backoff = 0.0
            except RedisError as e:
                log.warning("reply stream unreadable: %s", e)
                self._fail_all(BrokerUnavailable(f"lost the broker while waiting: {e}"))
                backoff = min(MAX_BACKOFF_S, max(0.1, backoff * 2))
                with contextlib.suppress(TimeoutError):  # reconnect backoff, not a poll: reads block on the broker
                    await asyncio.wait_for(stopping.wait(), backoff)
                continue
            for _stream, entries in queue.stream_items(response):
                for entry_id, fields in entries:
                    self._last_id = entry_id.decode()  # before resolving: a reply that breaks the reader is skipped
                    self._resolve(fields)

    def _resolve(self, fields: dict[bytes, bytes]) -> None:
        try:
            replies = decode_replies(fields[queue.FIELD])
        except (KeyError, msgspec.DecodeError, msgspec.ValidationError) as e:
            log.error("malformed reply on %s: %s", self.stream, e)
            return
        for reply in replies:
            future = self._waiting.pop(reply.id, None)
            if future is not None and not future.done():
                future.set_result(reply)
