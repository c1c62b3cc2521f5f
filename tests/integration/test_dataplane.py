"""The API's core against real Valkey and PostgreSQL: what it admits."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from mlapi import queue
from mlapi.api.dataplane import DataPlane, Unavailable
from mlapi.api.dispatcher import ReplyDispatcher
from mlapi.api.metrics import Metrics
from mlapi.faults import Faults
from mlapi.settings import Settings
from mlapi.storage.registry import RegistryRepository
from mlapi.storage.repository import PredictionRepository

pytestmark = pytest.mark.integration


async def test_a_version_a_worker_has_just_loaded_is_admitted_at_once(
    settings: Settings, redis: Redis, engine: AsyncEngine
) -> None:
    registry = RegistryRepository(engine)
    dispatcher = ReplyDispatcher(settings.require_redis_url(), 200, Faults(enabled=False), lambda task: None)
    dp = DataPlane(settings, redis, PredictionRepository(engine), registry, dispatcher, Metrics(), engine)
    await dp.apply(await registry.snapshot())
    key: queue.Key = ("diabetes-risk", 1)
    await redis.delete(queue.workers_key(*key))
    with pytest.raises(Unavailable, match="no live worker"):
        await dp.admit(key)

    await queue.heartbeat(redis, "just-loaded", [key], ["sklearn"])  # well within the count's lifetime
    await dp.admit(key)
    assert await dp.live(key) == 1
