"""The HTTP API: `create_app(settings)` opens the clients in the lifespan and mounts one router per area."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi_offline import FastAPIOffline

from mlapi import queue
from mlapi.api import openapi
from mlapi.api.dataplane import DataPlane
from mlapi.api.dispatcher import ReplyDispatcher
from mlapi.api.errors import add_error_handlers
from mlapi.api.limits import BodyLimit
from mlapi.api.metrics import Metrics
from mlapi.api.routes import history, meta, models, predict
from mlapi.settings import Settings
from mlapi.storage.registry import RegistryRepository
from mlapi.storage.repository import PredictionRepository, engine_for
from mlapi.watch import RegistryWatch


def create_app(settings: Settings) -> FastAPI:
    redis_url, database_url = settings.require_redis_url(), settings.require_database_url()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, DataPlane]]:
        redis = queue.connect(redis_url)
        engine = engine_for(database_url)
        registry = RegistryRepository(engine)
        dispatcher = ReplyDispatcher(redis_url, settings.api.reply_block_ms)
        dp = DataPlane(settings, redis, PredictionRepository(engine), registry, dispatcher, Metrics())
        dp.listeners.append(lambda: openapi.reset(app))
        watch = RegistryWatch(redis_url, registry, settings.registry_refresh_s, dp.apply)
        dp.refresh = watch.refresh
        app.state.dataplane = dp  # for the OpenAPI document, which has no request
        dispatcher.start()
        try:
            await watch.start()
            yield {"dataplane": dp}
        finally:
            await watch.stop()
            await dispatcher.stop()
            await redis.aclose()
            await engine.dispose()

    app = FastAPIOffline(  # Swagger UI and ReDoc served from the package, not a CDN: /docs works offline
        title="mlapi",
        version="0.2.0",
        description="Predictions from models served by workers behind Redis Streams; every prediction is stored. "
        "Models and their versions are added, promoted and removed at run time.",
        lifespan=lifespan,
    )
    for router in (predict.router, models.router, history.router, meta.router):
        app.include_router(router)
    openapi.install(app)
    add_error_handlers(app)
    if settings.api.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.api.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Content-Type"])  # fmt: skip
    app.add_middleware(
        BodyLimit, max_bytes=settings.api.max_body_bytes, max_upload_bytes=settings.api.max_artifact_bytes
    )
    return app
