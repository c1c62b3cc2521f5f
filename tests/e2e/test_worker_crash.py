"""A worker killed with SIGKILL while hundreds of requests are in flight: nothing is lost or doubled."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Mapping

import httpx
import pytest
import sqlalchemy as sa

from mlapi.models.spec import read_bundled
from mlapi.settings import Settings
from mlapi.storage.repository import engine_for
from tests.conftest import REGISTRY, StackFactory

pytestmark = pytest.mark.e2e
REQUESTS = 300
EXAMPLE = read_bundled(REGISTRY)["diabetes-risk"][0].example


async def test_every_accepted_request_ends_with_exactly_one_row(
    stack_factory: StackFactory, settings: Settings
) -> None:
    stack = stack_factory(
        MLAPI_API__REQUEST_TIMEOUT_S="4",
        MLAPI_WORKER__VISIBILITY_TIMEOUT_MS="1500",
        MLAPI_WORKER__BATCH_SIZE="16",
    )
    stack.start_api()
    victim = stack.start_worker()
    stack.start_worker()
    stack.wait_ready()
    samples = [{**EXAMPLE, "age": 20 + (n % 60), "bmi": 18 + n % 20} for n in range(REQUESTS)]
    limits = httpx.Limits(max_connections=100)
    async with httpx.AsyncClient(base_url=stack.url, timeout=30, limits=limits) as client:

        async def send(sample: Mapping[str, object]) -> httpx.Response:
            return await client.post("/predict", json=sample)

        tasks = [asyncio.create_task(send(s)) for s in samples]
        while sum(t.done() for t in tasks) < REQUESTS // 5:  # kill once the work is well under way
            await asyncio.sleep(0.01)
        victim.send_signal(signal.SIGKILL)
        responses = await asyncio.gather(*tasks)

        statuses = [r.status_code for r in responses]
        assert set(statuses) <= {200, 504}, [r.text for r in responses if r.status_code not in (200, 504)]
        ids = [r.json()["id"] for r in responses]
        assert len(set(ids)) == REQUESTS

        async def all_done() -> bool:
            records = await asyncio.gather(*(client.get(f"/predictions/{i}") for i in ids))
            return all(r.json()["status"] == "done" for r in records)

        for _ in range(300):  # reclaim happens after the 1.5 s visibility timeout
            if await all_done():
                break
            await asyncio.sleep(0.1)
        assert await all_done(), stack.logs()
    assert victim.wait(5) == -signal.SIGKILL
    engine = engine_for(settings.require_database_url())
    try:
        async with engine.connect() as conn:
            counted = await conn.execute(
                sa.text("SELECT count(*), count(DISTINCT id) FROM predictions WHERE id = ANY(CAST(:ids AS uuid[]))"),
                {"ids": [uuid.UUID(i) for i in ids]},
            )
            assert tuple(counted.one()) == (REQUESTS, REQUESTS)
    finally:
        await engine.dispose()
