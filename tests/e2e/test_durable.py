"""Durable acceptance end to end: with `async` only `wait=false` requests wait for the broker's fsync, with
`all` every request; an API asked for it on a broker that cannot confirm writes refuses to start."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis as redis_sync

from mlapi.models.spec import read_bundled
from mlapi.servers import RedisServer, free_port
from mlapi.settings import Settings
from tests.conftest import REGISTRY, StackFactory

pytestmark = pytest.mark.e2e
EXAMPLE = read_bundled(REGISTRY)["diabetes-risk"][0].example


def waitaof_calls(settings: Settings) -> int:
    with redis_sync.Redis.from_url(settings.require_redis_url()) as client:
        stats = client.info("commandstats").get("cmdstat_waitaof", {"calls": 0, "failed_calls": 0})
    assert stats["failed_calls"] == 0
    return int(stats["calls"])


def test_durable_acceptance_waits_for_the_fsync_of_the_requests_it_covers(
    stack_factory: StackFactory, settings: Settings
) -> None:
    every = stack_factory(MLAPI_API__DURABLE_ACCEPT="all")
    every.start_api()
    every.start_worker("--model", "diabetes-risk")
    every.wait_ready()
    accepting = stack_factory(MLAPI_API__DURABLE_ACCEPT="async")  # a second API on the same workers
    accepting.start_api()
    accepting.wait_ready()
    for url, covered in ((every.url, 2), (accepting.url, 1)):
        with httpx.Client(base_url=url, timeout=30) as client:
            before = waitaof_calls(settings)
            assert client.post("/predict", params={"wait": "false"}, json=EXAMPLE).status_code == 202
            assert client.post("/predict", json=EXAMPLE).status_code == 200
            assert waitaof_calls(settings) == before + covered, url


@pytest.fixture
def without_aof(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", free_port(), appendonly=False).start()
    yield server
    server.stop()


def test_an_api_refuses_to_start_on_a_broker_that_cannot_confirm_writes(
    stack_factory: StackFactory, without_aof: RedisServer
) -> None:
    stack = stack_factory(MLAPI_REDIS_URL=without_aof.url, MLAPI_API__DURABLE_ACCEPT="async")
    api = stack.spawn("api", "api", "--port", str(stack.api_port))
    assert api.wait(30) != 0
    log = stack.logs()
    assert "MLAPI_API__DURABLE_ACCEPT=async needs a broker that confirms writes to disk" in log
    assert "start it with --appendonly yes" in log and "MLAPI_API__DURABLE_ACCEPT=off" in log
