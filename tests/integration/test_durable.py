"""Durable acceptance on real servers: an enqueue with `durable_ms` returns only once the broker confirmed
its fsync (WAITAOF), fails as not durable when it cannot be confirmed, and servers that cannot are named."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from mlapi import queue
from mlapi.servers import RedisServer, free_port
from tests.conftest import entries, job

pytestmark = pytest.mark.integration
KEY: queue.Key = ("diabetes-risk", 1)


async def waitaof_calls(redis: Redis) -> tuple[int, int]:
    """WAITAOF commands the server ran, and how many of those failed."""
    stats = (await redis.info("commandstats")).get("cmdstat_waitaof", {"calls": 0, "failed_calls": 0})
    return int(stats["calls"]), int(stats["failed_calls"])


@pytest.fixture
def own_server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    """A server of the test's own, with or without its append-only file (`indirect` parameter)."""
    server = RedisServer(tmp_path / "redis", free_port(), appendonly=getattr(request, "param", True)).start()
    yield server
    server.stop()


@pytest.fixture
async def own(own_server: RedisServer) -> AsyncIterator[Redis]:
    client = queue.connect(own_server.url)
    yield client
    await client.aclose()


async def test_a_durable_enqueue_returns_once_the_broker_confirmed_its_fsync(redis: Redis) -> None:
    assert await queue.durability_problem(redis) is None  # the session's server: Valkey with its AOF
    calls, failed = await waitaof_calls(redis)
    await queue.enqueue(redis, job(1), track=True, durable_ms=2000)
    assert await waitaof_calls(redis) == (calls + 1, failed)  # one WAITAOF, answered with a local fsync
    assert len(await entries(redis, queue.request_stream(*KEY))) == 1
    assert await queue.queued(redis, "00000000-0000-0000-0000-000000000001") is not None
    await queue.enqueue(redis, job(2), track=False, durable_ms=2000)  # a waiting request's enqueue, `all`
    await queue.enqueue(redis, job(3), track=True)  # durable acceptance off: no WAITAOF
    assert await waitaof_calls(redis) == (calls + 2, failed)
    assert len(await entries(redis, queue.request_stream(*KEY))) == 3


async def test_an_enqueue_whose_fsync_is_not_confirmed_in_time_is_not_durable(own: Redis) -> None:
    await own.config_set("appendfsync", "no")  # the broker never fsyncs itself: WAITAOF can only time out
    assert "appendfsync no" in (await queue.durability_problem(own) or "")
    with pytest.raises(queue.NotDurable, match="did not confirm the write to disk within 300 ms"):
        await queue.enqueue(own, job(1), track=True, durable_ms=300)
    # Not confirmed is not lost: the entry is queued and may still be served.
    assert len(await entries(own, queue.request_stream(*KEY))) == 1


@pytest.mark.parametrize("own_server", [False], indirect=True)
async def test_a_broker_without_its_append_only_file_cannot_be_durable(own: Redis) -> None:
    assert "--appendonly yes" in (await queue.durability_problem(own) or "")
    with pytest.raises(queue.NotDurable, match="appendonly is disabled"):
        await queue.enqueue(own, job(1), track=False, durable_ms=300)
