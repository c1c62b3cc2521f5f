"""The worker on real servers: rows committed before acknowledgement, idempotent redelivery, dead letters,
one stream per model version."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from mlapi import queue
from mlapi.contract import Job, Row, Value, decode_replies
from mlapi.runtimes import Runtime
from mlapi.runtimes.sklearn import SklearnModel
from mlapi.settings import WorkerSettings
from mlapi.storage.registry import RegistryRepository
from mlapi.storage.repository import PredictionRepository
from mlapi.worker import Worker
from mlapi.worker.host import ModelHost
from tests.conftest import entries
from tests.unit.test_batching import Counting, regressor

pytestmark = pytest.mark.integration
MODEL = "diabetes-risk"
KEY: queue.Key = (MODEL, 1)
REPLIES = queue.reply_stream("worker-test")
STORED = "id::text, model_version, task, status, prediction, value, error"


def make_job(model: Runtime, rows: int = 1, key: queue.Key = KEY, **change: Value) -> Job:
    features = {**model.spec.example, **change}
    return Job(
        id=uuid.uuid4().hex,
        model=key[0],
        version=key[1],
        rows=[Row(id=str(uuid.uuid4()), features=features) for _ in range(rows)],
        reply_to=REPLIES,
        created_at=datetime.now(UTC),
    )


async def worker(
    redis: Redis,
    repository: PredictionRepository,
    models: Mapping[queue.Key, Runtime],
    name: str = "w1",
    **settings: int,
) -> Worker:
    """A worker holding the given runtimes, as its host holds them once loaded from the registry."""
    config = WorkerSettings(**{"block_ms": 50, "visibility_timeout_ms": 200, **settings})
    host = ModelHost(redis, RegistryRepository(repository.engine), name, sorted({m for m, _ in models}))
    host.loaded.update(models)
    await queue.ensure_groups(redis, [queue.request_stream(*k) for k in models])
    return Worker(config, redis, repository, host)


async def rows(engine: AsyncEngine) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        result = await conn.execute(sa.text(f"SELECT {STORED} FROM predictions ORDER BY id"))
        return [dict(r) for r in result.mappings()]


async def replies(redis: Redis) -> list[dict[str, Any]]:
    return [
        {"id": r.id, "error": r.error, "results": r.results}
        for _, f in await entries(redis, REPLIES)
        for r in decode_replies(f[queue.FIELD])
    ]


async def test_a_job_is_stored_answered_and_acknowledged(
    redis: Redis, repository: PredictionRepository, engine: AsyncEngine, diabetes: SklearnModel
) -> None:
    w = await worker(redis, repository, {KEY: diabetes})
    job = make_job(diabetes, rows=2)
    await queue.enqueue(redis, job, track=True)
    assert await w.step() == 1
    stored = await rows(engine)
    assert sorted(r["id"] for r in stored) == sorted(r.id for r in job.rows)
    assert {r["status"] for r in stored} == {"done"}
    [reply] = await replies(redis)
    assert reply["id"] == job.id and reply["error"] is None
    assert await queue.queued(redis, job.rows[0].id) is None  # the history row answers for it now
    assert await redis.xpending(queue.request_stream(*KEY), queue.GROUP) == {
        "pending": 0, "min": None, "max": None, "consumers": []
    }  # fmt: skip


async def test_waiting_jobs_are_predicted_in_one_batch(
    redis: Redis, repository: PredictionRepository, engine: AsyncEngine, diabetes: SklearnModel
) -> None:
    counting = Counting(diabetes)
    w = await worker(redis, repository, {KEY: counting}, batch_size=64)
    for _ in range(10):
        await queue.enqueue(redis, make_job(diabetes), track=False)
    assert await w.step() == 10
    assert counting.calls == [10]
    assert len(await rows(engine)) == 10
    assert len(await entries(redis, REPLIES)) == 1  # the batch's answers to one API travel together
    assert len(await replies(redis)) == 10


async def test_nothing_is_acknowledged_when_the_database_write_fails(
    redis: Redis, repository: PredictionRepository, engine: AsyncEngine, diabetes: SklearnModel
) -> None:
    w = await worker(redis, repository, {KEY: diabetes})
    await queue.enqueue(redis, make_job(diabetes), track=False)
    async with engine.begin() as conn:
        await conn.execute(sa.text("ALTER TABLE predictions RENAME TO predictions_away"))
    try:
        with pytest.raises(sa.exc.ProgrammingError):
            await w.step()
        assert (await redis.xpending(queue.request_stream(*KEY), queue.GROUP))["pending"] == 1
        assert await replies(redis) == []
    finally:
        async with engine.begin() as conn:
            await conn.execute(sa.text("ALTER TABLE predictions_away RENAME TO predictions"))
    await asyncio.sleep(0.25)  # past the visibility timeout: the entry is reclaimed and completed
    w._last_claim = 0.0
    assert await w.step() == 1
    assert [r["status"] for r in await rows(engine)] == ["done"]


async def test_a_redelivered_job_is_stored_once(
    redis: Redis, repository: PredictionRepository, engine: AsyncEngine, diabetes: SklearnModel
) -> None:
    """A worker that committed but died before acknowledging: the job comes again and adds no row."""
    job = make_job(diabetes, rows=3)
    await queue.ensure_groups(redis, [queue.request_stream(*KEY)])
    await queue.enqueue(redis, job, track=False)
    [delivery] = await queue.read_new(redis, "crashed", [KEY], 10, 100)
    first = await worker(redis, repository, {KEY: diabetes}, "crashed")
    outcome = first.planner.plan([delivery], datetime.now(UTC))
    await repository.add(outcome.rows)  # committed, then the process died: no reply, no ack
    await asyncio.sleep(0.25)
    second = await worker(redis, repository, {KEY: diabetes}, "survivor")
    assert await second.step() == 1
    stored = await rows(engine)
    assert len(stored) == 3 and {r["status"] for r in stored} == {"done"}
    assert len(await replies(redis)) == 1


async def test_a_poison_job_is_dead_lettered_and_the_worker_goes_on(
    redis: Redis, repository: PredictionRepository, engine: AsyncEngine, diabetes: SklearnModel
) -> None:
    w = await worker(redis, repository, {KEY: Counting(diabetes, poison_bmi=13.0)})
    bad, good = make_job(diabetes, bmi=13.0), make_job(diabetes)
    await queue.enqueue(redis, bad, track=False)
    await redis.xadd(queue.request_stream(*KEY), {queue.FIELD: b"\xff\xfe garbage"})
    await queue.enqueue(redis, good, track=False)
    assert await w.step() == 3
    stored = {r["id"]: r for r in await rows(engine)}
    assert stored[bad.rows[0].id]["status"] == "failed"
    assert "poisoned row" in str(stored[bad.rows[0].id]["error"])
    assert stored[good.rows[0].id]["status"] == "done"
    dead = await entries(redis, queue.dead_letter_stream(MODEL))
    assert len(dead) == 2
    by_id = {r["id"]: r for r in await replies(redis)}
    assert by_id[bad.id]["error"] is not None and by_id[good.id]["error"] is None
    assert (await redis.xpending(queue.request_stream(*KEY), queue.GROUP))["pending"] == 0


async def test_a_job_that_keeps_killing_workers_is_dead_lettered(
    redis: Redis, repository: PredictionRepository, engine: AsyncEngine, diabetes: SklearnModel
) -> None:
    job = make_job(diabetes)
    await queue.ensure_groups(redis, [queue.request_stream(*KEY)])
    await queue.enqueue(redis, job, track=False)
    await queue.read_new(redis, "victim-0", [KEY], 10, 100)
    for n in range(1, 3):  # every consumer that takes it "dies" without acknowledging
        await asyncio.sleep(0.25)
        _, [again] = await queue.claim_stale(redis, f"victim-{n}", KEY, 200, 10)
        assert again.deliveries == n + 1
    await asyncio.sleep(0.25)
    w = await worker(redis, repository, {KEY: diabetes}, "survivor", max_deliveries=3)
    assert await w.step() == 1
    [row] = await rows(engine)
    assert row["status"] == "failed" and "delivered 4 times" in str(row["error"])
    assert len(await entries(redis, queue.dead_letter_stream(MODEL))) == 1


async def test_run_stops_on_the_event_and_leaves_the_group(
    redis: Redis, repository: PredictionRepository, diabetes: SklearnModel
) -> None:
    w = await worker(redis, repository, {KEY: diabetes})
    stop = asyncio.Event()
    task = asyncio.create_task(w.run(stop))
    await queue.enqueue(redis, make_job(diabetes), track=False)
    assert await redis.xread({REPLIES: "0"}, block=5000)  # answered by the running worker
    assert len(await queue.live_workers(redis, queue.workers_key(*KEY), 1000)) == 1
    stop.set()
    await asyncio.wait_for(task, 2)
    assert len(await queue.live_workers(redis, queue.workers_key(*KEY), 1000)) == 0
    assert await redis.xinfo_consumers(queue.request_stream(*KEY), queue.GROUP) == []


async def test_one_worker_serves_several_versions_each_from_its_stream(
    redis: Redis, repository: PredictionRepository, engine: AsyncEngine, diabetes: SklearnModel
) -> None:
    v1, v2 = Counting(diabetes), Counting(diabetes)
    w = await worker(redis, repository, {KEY: v1, (MODEL, 2): v2})
    first, second = make_job(diabetes, rows=2, key=KEY), make_job(diabetes, rows=3, key=(MODEL, 2))
    await queue.enqueue(redis, first, track=False)
    await queue.enqueue(redis, second, track=False)
    assert await w.step() == 2
    assert v1.calls == [2] and v2.calls == [3]
    version = {r["id"]: r["model_version"] for r in await rows(engine)}
    assert {version[r.id] for r in first.rows} == {"1"} and {version[r.id] for r in second.rows} == {"2"}
    assert {r["id"] for r in await replies(redis)} == {first.id, second.id}
    for key in (KEY, (MODEL, 2)):
        assert (await redis.xpending(queue.request_stream(*key), queue.GROUP))["pending"] == 0


async def test_a_worker_serves_the_versions_the_registry_holds(
    redis: Redis, repository: PredictionRepository, engine: AsyncEngine
) -> None:
    """Loaded as `mlapi worker` loads them: the seeded registry's artifacts, through the runtime."""
    registry = RegistryRepository(engine)
    host = ModelHost(redis, registry, "w1", [MODEL])
    snapshot = await registry.snapshot()
    await host.apply(snapshot)
    w = Worker(WorkerSettings(block_ms=50), redis, repository, host)
    default = snapshot[MODEL].default_version
    assert default is not None
    assert set(host.loaded) == {(MODEL, v) for v in snapshot[MODEL].versions}  # this worker serves one model
    assert host.failed == {}
    runtime = host.loaded[(MODEL, default)]
    job = make_job(runtime, key=(MODEL, default))
    await queue.enqueue(redis, job, track=False)
    assert await w.step() == 1
    [row] = await rows(engine)
    assert row["status"] == "done" and row["model_version"] == str(default) and row["task"] == "classification"
    [reply] = await replies(redis)
    assert reply["results"][0].label in runtime.spec.labels


async def test_a_regressors_value_is_stored_and_answered(
    redis: Redis, repository: PredictionRepository, engine: AsyncEngine
) -> None:
    model = regressor()
    key = (model.spec.name, model.spec.version)
    w = await worker(redis, repository, {key: model})
    job = make_job(model, key=key)
    await queue.enqueue(redis, job, track=False)
    assert await w.step() == 1
    [row] = await rows(engine)
    [expected] = model.predict([model.spec.example])
    assert isinstance(expected.prediction, float)
    assert row["task"] == "regression" and row["status"] == "done"
    assert row["prediction"] is None and row["value"] == pytest.approx(expected.prediction)
    [reply] = await replies(redis)
    [result] = reply["results"]
    assert result.prediction == pytest.approx(expected.prediction) and result.label is None
