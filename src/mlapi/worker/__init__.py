"""The model worker: consume -> batch -> predict -> persist -> answer -> acknowledge."""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import logging
import os
import signal
import socket
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import SQLAlchemyError

from mlapi import queue, runtimes
from mlapi.settings import Settings, WorkerSettings
from mlapi.storage.repository import PredictionRepository, database_unreachable
from mlapi.supervise import Supervised
from mlapi.worker.batching import Outcome, Planner
from mlapi.worker.host import ModelHost

log = logging.getLogger("mlapi.worker")

MAX_BACKOFF_S = 5.0


def consumer_name(settings: WorkerSettings) -> str:
    return settings.consumer or f"{socket.gethostname()}-{os.getpid()}"


def _outage(e: Exception) -> bool:
    """Whether the broker or the database is away (hold the batch and retry), rather than refusing something."""
    if isinstance(e, RedisError):
        return isinstance(e, RedisConnectionError | RedisTimeoutError | ReadOnlyError)  # ConnectionError: LOADING too
    return database_unreachable(e)


class Worker:
    def __init__(
        self, settings: WorkerSettings, redis: Redis, repository: PredictionRepository, host: ModelHost
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.repository = repository
        self.host = host
        self.planner = Planner(host.loaded, settings.max_deliveries)
        self.consumer = host.consumer
        self._claim_cursor: dict[queue.Key, str] = {}
        self._last_claim = 0.0
        self._last_trim = time.monotonic()
        self._last_beat = 0.0
        self._backoff = 0.0
        self._own_pending = False
        """After a failed step: entries may have been delivered here by a read whose reply was lost."""
        self._stop = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set; the batch in hand is finished and acknowledged first."""
        log.info("worker %s serving %s", self.consumer, ", ".join(f"{m} v{v}" for m, v in self.host.serving))
        self._stop = stop
        watchdog = asyncio.create_task(self._watchdog(stop), name="predict-watchdog")
        while not stop.is_set():
            try:
                if await self.step() == 0 and not self.host.loaded:
                    await self._wait_for_models(stop)
                self._backoff = 0.0
            except (RedisError, SQLAlchemyError, OSError) as e:
                # The broker or the database is away: nothing was acknowledged, so nothing is lost.
                self._backoff = min(MAX_BACKOFF_S, max(0.1, self._backoff * 2))
                self._own_pending = True
                log.warning("%s: %s; retrying in %.1f s", type(e).__name__, e, self._backoff)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._backoff)
        await watchdog
        await self.leave()

    async def _watchdog(self, stop: asyncio.Event) -> None:
        """End this process when the event loop stays blocked for `predict_timeout_s`: only a predict that does
        not return blocks it that long, and a native call cannot be interrupted. faulthandler's timer is a C
        thread that needs no GIL; it prints every thread's traceback, then exits with code 1."""
        timeout = self.settings.predict_timeout_s
        while not stop.is_set():
            faulthandler.dump_traceback_later(timeout, exit=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), min(1.0, timeout / 4))
        faulthandler.cancel_dump_traceback_later()

    async def _wait_for_models(self, stop: asyncio.Event) -> None:
        """Nothing to serve yet: wait for the registry to give this worker a version, or for the stop."""
        self.host.changed.clear()
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self.host.changed.wait())]
        await asyncio.wait(waiters, timeout=self.settings.block_ms / 1000, return_when=asyncio.FIRST_COMPLETED)
        for w in waiters:
            w.cancel()

    async def step(self) -> int:
        """Reclaim or read one batch and process it; returns the number of entries handled."""
        keys = list(self.host.loaded)
        if time.monotonic() - self._last_beat >= self.settings.liveness_ms / 3000:
            self._last_beat = time.monotonic()
            await queue.heartbeat(self.redis, self.consumer, self.host.serving, self.host.runtimes)
        if not keys:
            return 0
        deliveries = await self._reclaim_own(keys) or await self._reclaim_due(keys)
        if not deliveries:
            deliveries = await queue.read_new(
                self.redis, self.consumer, keys, self.settings.batch_size, self.settings.block_ms
            )
        if deliveries:
            await self.process(deliveries)
        if time.monotonic() - self._last_trim >= self.settings.trim_interval_s:
            self._last_trim = time.monotonic()
            for key in keys:
                await queue.trim_acknowledged(self.redis, key)
            await self.host.unload_drained()
        return len(deliveries)

    async def _reclaim_own(self, keys: Sequence[queue.Key]) -> list[queue.Delivery]:
        """After a failed step, what this consumer was delivered and holds unacknowledged, a batch at a time
        until none is left, as a restarted consumer reads its pending list: the reply of a read cut off by a
        timeout or a pause is lost, but its entries are pending here and no one else takes them before the
        visibility timeout."""
        if not self._own_pending:
            return []
        found = await queue.read_own(self.redis, self.consumer, keys, self.settings.batch_size)
        self._own_pending = bool(found)
        if found:
            log.warning("took back %d entries delivered to this worker and not acknowledged", len(found))
        return found

    async def _reclaim_due(self, keys: Sequence[queue.Key]) -> list[queue.Delivery]:
        """One entry held too long by a dead or hung consumer, to be predicted alone: only a message that kills
        or hangs its worker then gains deliveries, not its batch-mates. Claims again at once while it finds
        some; not while this worker cannot reach the database or the broker."""
        if self._backoff or time.monotonic() - self._last_claim < self.settings.visibility_timeout_ms / 2000:
            return []
        for key in keys:
            cursor = self._claim_cursor.get(key, "0-0")
            while True:
                cursor, found = await queue.claim_stale(
                    self.redis, self.consumer, key, self.settings.visibility_timeout_ms, 1, cursor
                )
                if found or cursor == "0-0":
                    break
            self._claim_cursor[key] = cursor
            if found:
                log.warning("reclaimed %s v%d entry %s (delivery %d)", *key, found[0].entry_id, found[0].deliveries)
                return found
        self._last_claim = time.monotonic()
        for key in keys:
            await queue.prune_consumers(self.redis, key, 100 * self.settings.visibility_timeout_ms)
        return []

    async def process(self, deliveries: Sequence[queue.Delivery]) -> None:
        """Predict, store, answer and acknowledge one batch; dead-letter what cannot succeed."""
        now = datetime.now(UTC)
        outcome = self.planner.plan(deliveries, now)
        await self._commit(outcome, deliveries, now)
        for delivery, error in outcome.dead:
            log.error("dead-lettered %s v%d entry %s: %s", delivery.model, delivery.version, delivery.entry_id, error)

    async def _commit(self, outcome: Outcome, deliveries: Sequence[queue.Delivery], picked_up: datetime) -> None:
        """Store the rows, then answer and acknowledge. While the database or the broker is away, keep the batch
        and its outcome and retry (storing is idempotent), renewing the hold on its entries so that no other
        worker reclaims them: an outage never counts as a delivery. On stop, the entries stay pending."""
        backoff = 0.0
        held = asyncio.Event()
        renewing: asyncio.Task[None] | None = None
        try:
            while True:
                try:
                    started = time.perf_counter()
                    await self.repository.add(outcome.rows)
                    store_ms = (time.perf_counter() - started) * 1000
                    replies = [(a.job.reply_to, a.reply(picked_up, store_ms)) for a in outcome.answers]
                    await queue.finish(self.redis, outcome.acks, replies, outcome.dead)
                    return
                except (RedisError, SQLAlchemyError, OSError) as e:
                    if self._stop.is_set() or not _outage(e):
                        raise
                    renewing = renewing or asyncio.create_task(self._renew(deliveries, held))
                    backoff = min(MAX_BACKOFF_S, max(0.1, backoff * 2))
                    log.warning(
                        "holding %d entries: %s: %s; retrying in %.1f s", len(deliveries), type(e).__name__, e, backoff
                    )
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), backoff)
        finally:
            held.set()
            if renewing is not None:
                await renewing

    async def _renew(self, deliveries: Sequence[queue.Delivery], done: asyncio.Event) -> None:
        """Renew the hold on `deliveries` three times per visibility timeout until `done`, whatever each attempt
        takes (a connection attempt to a database that hangs can take seconds). It also beats for this worker,
        which is alive and will answer: the API keeps accepting its requests instead of refusing them with 503s."""
        while not done.is_set():
            with contextlib.suppress(RedisError, OSError):
                await queue.renew(self.redis, self.consumer, deliveries)
                await queue.heartbeat(self.redis, self.consumer, self.host.serving, self.host.runtimes)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), self.settings.visibility_timeout_ms / 3000)

    async def leave(self) -> None:
        """Stop counting as live; leave the groups where this consumer holds nothing."""
        await queue.heartbeat(self.redis, self.consumer, list(self.host.loaded), self.host.runtimes, alive=False)
        await queue.leave(self.redis, self.consumer)
        for key in list(self.host.loaded):
            stream = queue.request_stream(*key)
            pending = await self.redis.xpending_range(stream, queue.GROUP, "-", "+", 1, consumername=self.consumer)
            if not pending:
                await self.redis.xgroup_delconsumer(stream, queue.GROUP, self.consumer)


async def run_worker(settings: Settings) -> None:
    """`mlapi worker`: follow the registry, load its versions, then serve until SIGTERM or SIGINT."""
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    from mlapi.storage.registry import RegistryRepository
    from mlapi.storage.repository import engine_for
    from mlapi.watch import RegistryWatch

    # One OpenMP thread per worker: processes are the unit of parallelism here, and a predict of a few rows
    # spread over every core waits at OpenMP barriers whenever another process holds a core.
    threadpool_limits(1)
    for name, module in settings.worker.runtime_plugins.items():
        runtimes.register(name, module)
    redis_url = settings.require_redis_url()
    redis = queue.connect(redis_url, read_timeout_s=settings.worker.block_ms / 1000 + 5)
    validations = queue.connect(redis_url, read_timeout_s=settings.worker.block_ms / 1000 + 5)
    engine = engine_for(settings.require_database_url())
    registry = RegistryRepository(engine)
    host = ModelHost(redis, registry, consumer_name(settings.worker), settings.worker.models)
    watch = RegistryWatch(redis_url, registry, settings.registry_refresh_s, host.apply)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    block_ms = settings.worker.block_ms
    validator = Supervised("validator", lambda stopping: host.validate_forever(validations, stopping, block_ms))
    try:
        await watch.start()
        validator.start()
        await Worker(settings.worker, redis, PredictionRepository(engine), host).run(stop)
    finally:
        await validator.stop(block_ms / 1000 + 2)
        await watch.stop()
        await validations.aclose()
        await redis.aclose()
        await engine.dispose()
    log.info("worker stopped")
