"""The HTTP API: `create_app(settings)` opens the clients in the lifespan and mounts one router per area."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi_offline import FastAPIOffline
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from mlapi import queue
from mlapi.api import openapi
from mlapi.api.access import Keys, RateLimits
from mlapi.api.dataplane import DataPlane
from mlapi.api.dispatcher import READER, ReplyDispatcher
from mlapi.api.errors import add_error_handlers
from mlapi.api.limits import BodyLimit
from mlapi.api.metrics import Metrics
from mlapi.api.quality import QualityPlane
from mlapi.api.routes import history, meta, models, predict, quality
from mlapi.faults import Faults
from mlapi.oip import rest as oip_rest
from mlapi.settings import Settings
from mlapi.storage.keys import KeyRepository
from mlapi.storage.quality import QualityRepository
from mlapi.storage.registry import RegistryRepository
from mlapi.storage.repository import PredictionRepository, engine_for
from mlapi.watch import KEY_TASK, TASK, EventWatch, RegistryWatch, key_watch

log = logging.getLogger("mlapi.api")

PROBE_TIMEOUT_S = 2.0
"""Readiness's database check: connecting, then its query, each within this."""


def create_app(settings: Settings) -> FastAPI:
    redis_url, database_url = settings.require_redis_url(), settings.require_database_url()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, DataPlane | QualityPlane]]:
        redis = queue.connect(redis_url)
        engine = engine_for(database_url)
        registry = RegistryRepository(engine)
        metrics = Metrics()
        metrics.max_backlog.set(settings.api.max_backlog)
        for task in (READER, TASK, KEY_TASK):
            metrics.task_restarts.labels(task)  # every task's series exists from the start, at 0

        def restarted(task: str) -> None:
            metrics.task_restarts.labels(task).inc()

        faults = Faults.from_environment()
        dispatcher = ReplyDispatcher(redis_url, settings.api.reply_block_ms, faults, restarted)
        # Readiness connects afresh each time, with the driver's own timeouts: no pooled connection a cancelled
        # check or an outage left behind, and no queue behind a pool busy with history reads, decides it.
        timeouts = {"timeout": PROBE_TIMEOUT_S, "command_timeout": PROBE_TIMEOUT_S}
        probe = create_async_engine(database_url, poolclass=NullPool, connect_args=timeouts)
        keys, rate_limits, keys_watch = None, None, None
        if settings.api.auth == "required":
            keys, rate_limits = Keys(KeyRepository(engine), settings.api.key_cache_s), RateLimits(redis)
            keys_watch = key_watch(redis_url, keys.forget, restarted)
        dp = DataPlane(
            settings, redis, PredictionRepository(engine), registry, dispatcher, metrics, probe, keys, rate_limits
        )
        dp.listeners.append(lambda: openapi.reset(app))
        watch = RegistryWatch(redis_url, registry, settings.registry_refresh_s, dp.apply, restarted)
        dp.refresh = watch.refresh
        watches: list[EventWatch] = [watch, *([keys_watch] if keys_watch else [])]
        app.state.dataplane = dp  # for the OpenAPI document, which has no request
        grpc_server = None
        try:
            await _check_durability(redis, settings.api.durable_accept)
            faults.install()
            dispatcher.start()
            for w in watches:
                await w.start()
            if settings.api.grpc_port:
                # Imported only to serve: its messages go into protobuf's default pool, which tritonclient.grpc
                # fills with the same names, so a process (a test run) importing the app can still use that client.
                from mlapi.oip import server as oip_server

                grpc_server = await oip_server.start(dp, settings.api.host, settings.api.grpc_port)
            yield {"dataplane": dp, "quality": QualityPlane(dp, QualityRepository(engine))}
        finally:
            if grpc_server is not None:
                await grpc_server.stop(oip_server.STOP_GRACE_S)
            faults.uninstall()
            for w in watches:
                await w.stop()
            await dispatcher.stop()
            await redis.aclose()
            await engine.dispose()
            await probe.dispose()

    app = FastAPIOffline(  # Swagger UI and ReDoc served from the package, not a CDN: /docs works offline
        title="mlapi",
        version="0.2.0",
        description="Predictions from models served by workers behind Redis Streams; every prediction is stored. "
        "Models and their versions are added, promoted and removed at run time.",
        lifespan=lifespan,
    )
    # quality before history: `/predictions/stats` is not a prediction's id
    for router in (predict.router, models.router, quality.router, history.router, meta.router, oip_rest.router):
        app.include_router(router)
    openapi.install(app)
    add_error_handlers(app)
    if settings.api.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.api.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Content-Type", "Authorization", "X-API-Key", "Idempotency-Key"])  # fmt: skip
    app.add_middleware(
        BodyLimit, max_bytes=settings.api.max_body_bytes, max_upload_bytes=settings.api.max_artifact_bytes
    )
    return app


async def _check_durability(redis: Redis, durable_accept: str) -> None:
    """Refuse to start with durable acceptance on a broker that cannot confirm writes to disk. An unreachable
    broker is not refused: every durable enqueue then fails with the server's own reason until it can."""
    if durable_accept == "off":
        return
    try:
        problem = await queue.durability_problem(redis)
    except RedisError as e:
        log.warning("cannot check that the broker supports MLAPI_API__DURABLE_ACCEPT=%s now: %s", durable_accept, e)
        return
    if problem:
        raise SystemExit(
            f"MLAPI_API__DURABLE_ACCEPT={durable_accept} needs a broker that confirms writes to disk (WAITAOF: "
            f"Redis >= 7.2 or Valkey, with appendonly yes), but {problem}. Fix the broker, or set "
            "MLAPI_API__DURABLE_ACCEPT=off to accept requests without waiting for the disk."
        )
