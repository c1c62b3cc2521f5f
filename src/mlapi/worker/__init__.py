"""The model worker: consume -> batch -> predict -> persist -> answer -> acknowledge."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from mlapi import queue
from mlapi.settings import Settings, WorkerSettings
from mlapi.storage.repository import PredictionRepository
from mlapi.worker.batching import Planner
from mlapi.worker.host import ModelHost

log = logging.getLogger("mlapi.worker")

MAX_BACKOFF_S = 5.0


def consumer_name(settings: WorkerSettings) -> str:
    return settings.consumer or f"{socket.gethostname()}-{os.getpid()}"


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

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set; the batch in hand is finished and acknowledged first."""
        log.info("worker %s serving %s", self.consumer, ", ".join(f"{m} v{v}" for m, v in self.host.serving))
        while not stop.is_set():
            try:
                if await self.step() == 0 and not self.host.loaded:
                    await self._wait_for_models(stop)
                self._backoff = 0.0
            except (RedisError, SQLAlchemyError, OSError) as e:
                # The broker or the database is away: nothing was acknowledged, so nothing is lost.
                self._backoff = min(MAX_BACKOFF_S, max(0.1, self._backoff * 2))
                log.warning("%s: %s; retrying in %.1f s", type(e).__name__, e, self._backoff)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._backoff)
        await self.leave()

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
        deliveries = await self._reclaim_due(keys)
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

    async def _reclaim_due(self, keys: Sequence[queue.Key]) -> list[queue.Delivery]:
        if time.monotonic() - self._last_claim < self.settings.visibility_timeout_ms / 2000:
            return []
        self._last_claim = time.monotonic()
        claimed: list[queue.Delivery] = []
        for key in keys:
            self._claim_cursor[key], found = await queue.claim_stale(
                self.redis, self.consumer, key, self.settings.visibility_timeout_ms,
                self.settings.batch_size, self._claim_cursor.get(key, "0-0"),
            )  # fmt: skip
            claimed += found
            await queue.prune_consumers(self.redis, key, 100 * self.settings.visibility_timeout_ms)
        if claimed:
            log.warning("reclaimed %d entries held too long by other consumers", len(claimed))
        return claimed

    async def process(self, deliveries: Sequence[queue.Delivery]) -> None:
        """Predict, store, answer and acknowledge one batch; dead-letter what cannot succeed."""
        now = datetime.now(UTC)
        outcome = self.planner.plan(deliveries, now)
        started = time.perf_counter()
        await self.repository.add(outcome.rows)
        store_ms = (time.perf_counter() - started) * 1000
        replies = [(a.job.reply_to, a.reply(now, store_ms)) for a in outcome.answers]
        await queue.finish(self.redis, outcome.acks, replies, outcome.dead)
        for delivery, error in outcome.dead:
            log.error("dead-lettered %s v%d entry %s: %s", delivery.model, delivery.version, delivery.entry_id, error)

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
    try:
        await watch.start()
        validator = asyncio.create_task(host.validate_forever(validations, stop, settings.worker.block_ms))
        await Worker(settings.worker, redis, PredictionRepository(engine), host).run(stop)
        await validator
    finally:
        await watch.stop()
        await validations.aclose()
        await redis.aclose()
        await engine.dispose()
    log.info("worker stopped")
