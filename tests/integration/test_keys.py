"""API keys on a real PostgreSQL and rate limits on a real Valkey: stored hashed, looked up, revoked, cached,
and counted in one window shared by every client."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from mlapi import queue
from mlapi.api.access import Caller, Keys, RateLimited, RateLimits, Unauthenticated
from mlapi.settings import Settings
from mlapi.storage.keys import KeyRefused, KeyRepository, digest
from mlapi.storage.tables import api_keys

pytestmark = pytest.mark.integration


@pytest.fixture
async def repository(engine: AsyncEngine) -> KeyRepository:
    async with engine.begin() as conn:
        await conn.execute(sa.delete(api_keys))
    return KeyRepository(engine)


async def test_a_key_is_stored_as_its_digest_and_names_are_never_reused(
    repository: KeyRepository, engine: AsyncEngine
) -> None:
    key = await repository.create("alice", models=["iris"], rate="10/s")
    async with engine.connect() as conn:
        stored = (await conn.execute(sa.select(api_keys))).mappings().one()
    assert stored["sha256"] == digest(key) and key not in str(dict(stored))
    found = await repository.use(digest(key))
    assert found is not None and (found.name, found.models, found.rate, found.admin) == (
        "alice",
        ("iris",),
        "10/s",
        False,
    )
    assert found.last_used_at is not None
    assert await repository.use(digest(key + "x")) is None
    await repository.revoke("alice")
    assert await repository.use(digest(key)) is None
    with pytest.raises(KeyRefused, match="never reused"):
        await repository.create("alice")
    with pytest.raises(KeyRefused, match="no key"):
        await repository.revoke("nobody")


async def test_the_admin_key_from_a_secret_is_created_then_kept_or_changed(repository: KeyRepository) -> None:
    secret = "s" * 40
    assert await repository.ensure("admin", secret)
    assert not await repository.ensure("admin", secret)  # unchanged: nothing to do
    await repository.revoke("admin")
    assert await repository.ensure("admin", secret)  # a redeploy with the secret brings it back
    assert await repository.ensure("admin", "t" * 40)  # a rotated secret replaces the old one
    assert await repository.use(digest(secret)) is None
    found = await repository.use(digest("t" * 40))
    assert found is not None and found.admin
    with pytest.raises(KeyRefused, match="32"):
        await repository.ensure("admin", "short")


async def test_lookups_are_cached_until_forgotten(repository: KeyRepository) -> None:
    key = await repository.create("cached")
    keys = Keys(repository, ttl_s=3600)
    first, *others = await asyncio.gather(*(keys.caller(key) for _ in range(20)))  # one lookup for all of them
    assert first == Caller(name="cached", admin=False) and all(o == first for o in others)
    await repository.revoke("cached")
    assert await keys.caller(key) == first  # still cached: the event is what makes it immediate
    await keys.forget()
    with pytest.raises(Unauthenticated, match="unknown or revoked"):
        await keys.caller(key)
    with pytest.raises(Unauthenticated, match="required"):
        await keys.caller(None)


async def test_a_rate_limit_is_one_window_for_every_client(two_clients: list[Redis]) -> None:
    limits = [RateLimits(client) for client in two_clients]  # as two API processes would
    caller = Caller(name="limited", admin=False, rate="5/m")
    outcomes = await asyncio.gather(*(limits[i % 2].hit(caller) for i in range(12)), return_exceptions=True)
    refused = [o for o in outcomes if isinstance(o, RateLimited)]
    assert len(refused) == 7 and outcomes.count(None) == 5
    assert all(1 <= r.retry_after_s <= 60 for r in refused)
    await limits[0].hit(Caller(name="other", admin=False, rate="5/m"))  # another key has its own window
    await limits[0].hit(Caller(name="free", admin=False))  # no rate: never counted
    started = time.monotonic()
    second = Caller(name="per-second", admin=False, rate="1/s")
    await limits[0].hit(second)
    with pytest.raises(RateLimited):
        await limits[1].hit(second)
    assert time.monotonic() - started < 1


@pytest.fixture
async def two_clients(redis: Redis, settings: Settings) -> AsyncIterator[list[Redis]]:
    """Two clients of the emptied server, each with its own pool."""
    clients = [queue.connect(settings.require_redis_url()) for _ in range(2)]
    yield clients
    for client in clients:
        await client.aclose()
