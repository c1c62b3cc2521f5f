"""The model worker: consume -> batch -> predict -> persist -> answer -> acknowledge."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from mlapi import queue
from mlapi.settings import Settings, WorkerSettings
from mlapi.storage.repository import PredictionRepository
from mlapi.worker.batching import Planner, Predictor

log = logging.getLogger("mlapi.worker")

MAX_BACKOFF_S = 5.0


class Worker:
    def __init__(
        self,
        settings: WorkerSettings,
        redis: Redis,
        repository: PredictionRepository,
        models: Mapping[str, Predictor],
        consumer: str | None = None,
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.repository = repository
        self.models = dict(models)
        self.planner = Planner(models, settings.max_deliveries)
        self.consumer = consumer or settings.consumer or f"{socket.gethostname()}-{os.getpid()}"
        self._claim_cursor = dict.fromkeys(self.models, "0-0")
        self._last_claim = 0.0
        self._last_trim = time.monotonic()
        self._last_beat = 0.0
        self._backoff = 0.0

    async def start(self) -> None:
        await queue.ensure_groups(self.redis, self.models)

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set; the batch in hand is finished and acknowledged first."""
        await self.start()
        log.info("worker %s serving %s", self.consumer, ", ".join(self.models))
        while not stop.is_set():
            try:
                await self.step()
                self._backoff = 0.0
            except (RedisError, SQLAlchemyError, OSError) as e:
                # The broker or the database is away: nothing was acknowledged, so nothing is lost.
                self._backoff = min(MAX_BACKOFF_S, max(0.1, self._backoff * 2))
                log.warning("%s: %s; retrying in %.1f s", type(e).__name__, e, self._backoff)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._backoff)
        await self.leave()

    async def step(self) -> int:
        """Reclaim or read one batch and process it; returns the number of entries handled."""
        if time.monotonic() - self._last_beat >= self.settings.liveness_ms / 3000:
            self._last_beat = time.monotonic()
            await queue.heartbeat(self.redis, self.consumer, self.models)
        deliveries = await self._reclaim_due()
        if not deliveries:
            deliveries = await queue.read_new(
                self.redis, self.consumer, list(self.models), self.settings.batch_size, self.settings.block_ms
            )
        if deliveries:
            await self.process(deliveries)
        if time.monotonic() - self._last_trim >= self.settings.trim_interval_s:
            self._last_trim = time.monotonic()
            for model in self.models:
                await queue.trim_acknowledged(self.redis, model)
        return len(deliveries)

    async def _reclaim_due(self) -> list[queue.Delivery]:
        if time.monotonic() - self._last_claim < self.settings.visibility_timeout_ms / 2000:
            return []
        self._last_claim = time.monotonic()
        claimed: list[queue.Delivery] = []
        for model in self.models:
            self._claim_cursor[model], found = await queue.claim_stale(
                self.redis, self.consumer, model, self.settings.visibility_timeout_ms,
                self.settings.batch_size, self._claim_cursor[model],
            )  # fmt: skip
            claimed += found
            await queue.prune_consumers(self.redis, model, 100 * self.settings.visibility_timeout_ms)
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
        replies = [(a.job.reply_to, a.reply(self.planner.version(a.job.model), now, store_ms)) for a in outcome.answers]
        await queue.finish(self.redis, outcome.acks, replies, outcome.dead)
        for delivery, error in outcome.dead:
            log.error("dead-lettered %s entry %s: %s", delivery.model, delivery.entry_id, error)

    async def leave(self) -> None:
        """Stop counting as live; leave the groups where this consumer holds nothing."""
        await queue.heartbeat(self.redis, self.consumer, self.models, alive=False)
        for model in self.models:
            stream = queue.request_stream(model)
            pending = await self.redis.xpending_range(stream, queue.GROUP, "-", "+", 1, consumername=self.consumer)
            if not pending:
                await self.redis.xgroup_delconsumer(stream, queue.GROUP, self.consumer)


async def run_worker(settings: Settings) -> None:
    """`mlapi worker`: load the models, then serve until SIGTERM or SIGINT."""
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    from mlapi.models.runtime import LoadedModel
    from mlapi.models.spec import read_registry
    from mlapi.storage.repository import engine_for

    names = settings.worker.models or list(read_registry(settings.models_dir))
    models = {name: LoadedModel.load(settings.models_dir / name) for name in names}
    # One OpenMP thread per worker: processes are the unit of parallelism here, and a predict of a few rows
    # spread over every core waits at OpenMP barriers whenever another process holds a core.
    threadpool_limits(1)
    redis = queue.connect(settings.require_redis_url(), read_timeout_s=settings.worker.block_ms / 1000 + 5)
    engine = engine_for(settings.require_database_url())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await Worker(settings.worker, redis, PredictionRepository(engine), models).run(stop)
    finally:
        await redis.aclose()
        await engine.dispose()
    log.info("worker stopped")
