"""Outages: no broker, no workers. Clear errors at once, never a hang."""

from __future__ import annotations

import httpx
import pytest
from redis.asyncio import Redis

from mlapi.servers import free_port
from tests.conftest import ORIGINAL_CLIENT_SAMPLE, StackFactory

pytestmark = pytest.mark.e2e


def test_an_unreachable_broker_gets_503_at_once(stack_factory: StackFactory) -> None:
    stack = stack_factory(MLAPI_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", MLAPI_API__REQUEST_TIMEOUT_S="60")
    stack.start_api()
    with httpx.Client(base_url=stack.url, timeout=10) as client:  # far below the 60 s request timeout
        response = client.post("/predict", json=ORIGINAL_CLIENT_SAMPLE)
        assert response.status_code == 503
        assert "broker" in response.json()["detail"]
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert any(r.startswith("redis unreachable") for r in ready.json()["reasons"])
        assert client.get("/healthz").status_code == 200


async def test_without_workers_readyz_says_so(stack_factory: StackFactory, redis: Redis) -> None:
    stack = stack_factory()  # `redis` emptied the broker: no consumer of an earlier test is left
    stack.start_api()
    with httpx.Client(base_url=stack.url, timeout=10) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["reasons"] == ["no live worker for diabetes-risk"]
