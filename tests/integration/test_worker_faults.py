"""The worker's reliability rules on real servers: a database outage counts no delivery, entries of a dead
worker are retried one per batch, a predict that never returns ends the process."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from mlapi import queue
from mlapi.runtimes.sklearn import SklearnModel
from mlapi.servers import PostgresServer, free_port
from mlapi.settings import PACKAGE_DIR
from mlapi.storage.migrate import migrate
from mlapi.storage.repository import PredictionRepository, engine_for
from tests.integration.test_worker import KEY, make_job, replies, rows, worker
from tests.unit.test_batching import Counting

pytestmark = pytest.mark.integration
VISIBILITY_MS = 300


@pytest.fixture(scope="module")
def own_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """A PostgreSQL of this module's own, to stop and start again."""
    server = PostgresServer(tmp_path_factory.mktemp("outage-pg"), free_port()).start()
    migrate(server.url.replace("postgresql://", "postgresql+asyncpg://"), PACKAGE_DIR / "models" / "registry")
    yield server
    server.stop()


@pytest.fixture
async def own_repository(own_postgres: PostgresServer) -> AsyncIterator[PredictionRepository]:
    engine = engine_for(own_postgres.url.replace("postgresql://", "postgresql+asyncpg://"))
    yield PredictionRepository(engine)
    await engine.dispose()


def pg_ctl(server: PostgresServer, *args: str) -> None:
    server._run("pg_ctl", "-D", str(server.data_dir / "pgdata"), *args)


async def pending_entries(redis: Redis) -> list[dict[str, object]]:
    found = await redis.xpending_range(queue.request_stream(*KEY), queue.GROUP, "-", "+", 100)
    return [{"consumer": queue._text(p["consumer"]), "times_delivered": p["times_delivered"]} for p in found]  # type: ignore[arg-type]


async def test_a_database_outage_holds_the_batch_and_counts_no_delivery(
    redis: Redis, own_postgres: PostgresServer, own_repository: PredictionRepository, diabetes: SklearnModel
) -> None:
    holder = await worker(redis, own_repository, {KEY: diabetes}, "holder", visibility_timeout_ms=VISIBILITY_MS)
    other = await worker(redis, own_repository, {KEY: diabetes}, "other", visibility_timeout_ms=VISIBILITY_MS)
    pg_ctl(own_postgres, "-m", "immediate", "-w", "stop")
    stop = asyncio.Event()
    job = make_job(diabetes, rows=2)
    await queue.enqueue(redis, job, track=False)
    running = [asyncio.create_task(holder.run(stop))]
    try:
        deadline = asyncio.get_running_loop().time() + 10
        while not await pending_entries(redis):
            assert asyncio.get_running_loop().time() < deadline, "the holder never took the job"
            await asyncio.sleep(0.05)
        running.append(asyncio.create_task(other.run(stop)))  # would reclaim the batch if the holder let go
        await asyncio.sleep(10 * VISIBILITY_MS / 1000)  # the outage: ten visibility timeouts long
        assert await pending_entries(redis) == [{"consumer": "holder", "times_delivered": 1}]
        assert await replies(redis) == []
        await asyncio.to_thread(  # not blocking the loop the workers run on
            pg_ctl, own_postgres, "-w", "start",
            "-o", f"-p {own_postgres.port} -h 127.0.0.1 -c unix_socket_directories=''",
            "-l", str(own_postgres.data_dir / "server.log"),
        )  # fmt: skip
        assert await redis.xread({queue.reply_stream("worker-test"): "0"}, block=15_000)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*running), 15)
    stored = await rows(own_repository.engine)
    assert sorted(r["id"] for r in stored if r["status"] == "done") == sorted(r.id for r in job.rows)
    assert await redis.xlen(queue.dead_letter_stream(KEY[0])) == 0
    assert [r["error"] for r in await replies(redis)] == [None]


async def test_entries_of_a_dead_worker_are_retried_one_per_batch(
    redis: Redis, repository: PredictionRepository, diabetes: SklearnModel
) -> None:
    await queue.ensure_groups(redis, [queue.request_stream(*KEY)])
    jobs = [make_job(diabetes) for _ in range(3)]
    for job in jobs:
        await queue.enqueue(redis, job, track=False)
    assert len(await queue.read_new(redis, "died", [KEY], 10, 100)) == 3  # then the process died
    await asyncio.sleep(VISIBILITY_MS / 1000 + 0.05)  # the entries become reclaimable
    counting = Counting(diabetes)
    survivor = await worker(redis, repository, {KEY: counting}, "survivor", visibility_timeout_ms=VISIBILITY_MS)
    handled = [await survivor.step() for _ in range(3)]
    assert handled == [1, 1, 1] and counting.calls == [1, 1, 1]
    assert sorted(r["id"] for r in await replies(redis)) == sorted(j.id for j in jobs)
    assert await pending_entries(redis) == []


def test_a_predict_that_never_returns_ends_the_process(tmp_path: Path) -> None:
    """The watchdog fires even while a native call holds the GIL (PyDLL keeps it), and names where it hung."""
    script = textwrap.dedent(
        """
        import asyncio, ctypes
        from mlapi.settings import WorkerSettings
        from mlapi.worker import Worker

        async def main():
            worker = Worker.__new__(Worker)
            worker.settings = WorkerSettings(predict_timeout_s=1)
            stop = asyncio.Event()
            watchdog = asyncio.create_task(worker._watchdog(stop))
            await asyncio.sleep(0.1)  # armed
            ctypes.PyDLL(None).sleep(60)  # a predict that hangs holding the GIL

        asyncio.run(main())
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "Timeout (0:00:01)!" in result.stderr and "in main" in result.stderr
