"""The system under test as separate processes: its own Valkey and PostgreSQL, one API and two workers, each
process started again whenever it exits, as compose or Kubernetes would."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from redis.exceptions import RedisError, ResponseError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from mlapi import queue
from mlapi.contract import decode_job
from mlapi.servers import PostgresServer, RedisServer, free_port
from mlapi.settings import Settings, WorkerSettings
from mlapi.storage.migrate import migrate
from mlapi.storage.registry import RegistryRepository
from tests.chaos import faults

REPO = Path(__file__).resolve().parents[2]
WORKERS = 2
REQUEST_TIMEOUT_S = 10.0
VISIBILITY_TIMEOUT_MS = 5000
PREDICT_TIMEOUT_S = 5.0
LIVENESS_MS = WorkerSettings().liveness_ms
QUICK_CRASH_S = 1.0
"""A process that exits sooner than this after its start is started again only after a pause (a crash loop)."""


async def until(condition: Callable[[], Awaitable[bool]], timeout_s: float, interval_s: float = 0.2) -> bool:
    """Whether an outside state is reached within `timeout_s`, looked at every `interval_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        if await condition():
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval_s)


@dataclass(frozen=True)
class Exit:
    service: str
    pid: int
    code: int
    at: float
    """time.monotonic() when the harness saw it."""


class Service:
    """One supervised `mlapi` process: started again whenever it exits; each run logs to a file of its own."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.log_dir = log_dir
        self.process: asyncio.subprocess.Process | None = None
        self.exits: list[Exit] = []
        self.started_at = 0.0
        """time.monotonic() when the current process started."""
        self._runs = 0
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name=f"supervise-{self.name}")

    async def _supervise(self) -> None:
        pause = 0.0
        while not self._stopping:
            self._runs += 1
            with (self.log_dir / f"{self.name}.{self._runs}.log").open("wb") as log:
                process = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "mlapi", *self.args, env=self.env, stdout=log, stderr=log
                )
            self.process, self.started_at = process, time.monotonic()
            code = await process.wait()
            if self._stopping:
                return
            self.exits.append(Exit(self.name, process.pid, code, time.monotonic()))
            pause = min(5.0, max(0.5, pause * 2)) if time.monotonic() - self.started_at < QUICK_CRASH_S else 0.0
            await asyncio.sleep(pause)  # a crash loop's back-off, as Kubernetes' CrashLoopBackOff

    @property
    def pid(self) -> int | None:
        """The running process's id, or None between an exit and the next start."""
        p = self.process
        return p.pid if p is not None and p.returncode is None else None

    def kill(self, sig: int = signal.SIGKILL) -> bool:
        """Signal the running process; False when none is running."""
        if self.pid is None:
            return False
        assert self.process is not None
        self.process.send_signal(sig)
        return True

    async def stop(self) -> None:
        self._stopping = True
        if self.kill(signal.SIGTERM):
            assert self.process is not None
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.kill(signal.SIGKILL)
                await self.process.wait()
        if self._task is not None:
            await self._task


class System:
    """Valkey, PostgreSQL, the API (`MLAPI_FAULT_INJECTION=1`) and the workers, each on a free port, with
    their data and logs under `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.log_dir = root / "logs"
        self.log_dir.mkdir(parents=True)
        self.redis_server = RedisServer(root / "redis", free_port())
        self.postgres = PostgresServer(root / "postgres", free_port())
        api_port = free_port()
        self.url = f"http://127.0.0.1:{api_port}"
        self.settings = Settings(redis_url=self.redis_server.url, database_url=self.postgres.url)
        # Clients that connect on first use; the engine opens a new connection each time, since the database
        # goes away and comes back during the run.
        self.engine = create_async_engine(self.settings.require_database_url(), poolclass=NullPool)
        self.redis = queue.connect(self.redis_server.url, read_timeout_s=2)
        self.keys: list[queue.Key] = []
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLAPI_")}
        env.update(
            PYTHONPATH=str(REPO),  # so that workers import the fault runtime, `tests.chaos.faults`
            MLAPI_REDIS_URL=self.redis_server.url,
            MLAPI_DATABASE_URL=self.postgres.url,
            MLAPI_LOG_LEVEL="INFO",
            MLAPI_API__REQUEST_TIMEOUT_S=str(REQUEST_TIMEOUT_S),
            MLAPI_API__GRPC_PORT="0",
            MLAPI_API__AUTH="off",
            MLAPI_WORKER__VISIBILITY_TIMEOUT_MS=str(VISIBILITY_TIMEOUT_MS),
            MLAPI_WORKER__PREDICT_TIMEOUT_S=str(PREDICT_TIMEOUT_S),
            MLAPI_WORKER__RUNTIME_PLUGINS=json.dumps({faults.RUNTIME: "tests.chaos.faults"}),
        )
        api_env = {**env, "MLAPI_FAULT_INJECTION": "1"}
        self.api = Service("api", ["api", "--port", str(api_port)], api_env, self.log_dir)
        self.workers = [Service(f"worker-{i}", ["worker"], env, self.log_dir) for i in range(WORKERS)]

    @property
    def services(self) -> list[Service]:
        return [self.api, *self.workers]

    def exits_since(self, at: float) -> list[Exit]:
        return sorted((e for s in self.services for e in s.exits if e.at >= at), key=lambda e: e.at)

    async def start(self) -> None:
        """The servers, the schema with the bundled models and the fault model, then the processes."""
        await asyncio.to_thread(self.redis_server.start)
        await asyncio.to_thread(self.postgres.start)
        await asyncio.to_thread(migrate, self.settings.require_database_url(), self.settings.bundled_models_dir)
        registry = RegistryRepository(self.engine)
        await registry.add_version(faults.MODEL, faults.SPEC, faults.ARTIFACT, promote=True)
        self.keys = [(m.name, v) for m in (await registry.snapshot()).values() for v in m.versions]
        for service in self.services:
            service.start()

    async def stop(self) -> None:
        for service in self.services:
            await service.stop()
        await self.redis.aclose()
        await self.engine.dispose()
        await asyncio.to_thread(self.redis_server.stop)
        await asyncio.to_thread(self.postgres.stop)

    # ---- the outside view ----------------------------------------------------------------------------------

    async def readiness(self) -> tuple[int | None, dict[str, Any]]:
        """`/readyz`'s status and body; None when the API does not answer."""
        try:
            async with httpx.AsyncClient(timeout=2) as client:
                response = await client.get(f"{self.url}/readyz")
            return response.status_code, response.json()
        except (httpx.HTTPError, ValueError):
            return None, {}

    async def ready(self) -> bool:
        return (await self.readiness())[0] == 200

    async def fully_served(self) -> bool:
        """Ready, with every worker live for every version."""
        status, body = await self.readiness()
        live = body.get("workers", {})
        return status == 200 and all(live.get(name, {}).get(str(v)) == WORKERS for name, v in self.keys)

    async def serving(self) -> list[Service]:
        """The workers whose running process has a fresh heartbeat: it has loaded its models and serves."""
        try:
            live = set(await queue.live_workers(self.redis, queue.ALL_WORKERS, LIVENESS_MS))
        except (RedisError, OSError):
            return []
        # A worker's consumer name is its host name and pid (`mlapi.worker.consumer_name`).
        return [w for w in self.workers if w.pid is not None and f"{socket.gethostname()}-{w.pid}" in live]

    async def drained(self) -> bool:
        """Nothing undelivered or unacknowledged on any version's stream: every accepted request has been stored
        and acknowledged. Read from the broker itself rather than through `queue.stats`, which is under test
        (and whose lag Redis may report as unknown)."""
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in self.keys:
                    pipe.xinfo_stream(queue.request_stream(*key))
                    pipe.xinfo_groups(queue.request_stream(*key))
                answers = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError):
            return False
        for stream, groups in zip(answers[::2], answers[1::2], strict=True):
            if isinstance(stream, ResponseError) and "no such key" in str(stream):
                continue  # a version no worker has loaded yet and nobody sent anything to
            if isinstance(stream, Exception) or isinstance(groups, Exception):
                return False
            group = next((g for g in groups if _text(g["name"]) == queue.GROUP), None)
            if group is None or group["pending"] or _id(stream["last-generated-id"]) > _id(group["last-delivered-id"]):
                return False
        return True

    async def dead_lettered(self, model: str) -> set[str]:
        """The prediction ids of the model's dead-lettered messages."""
        entries: list[tuple[bytes, dict[bytes, bytes]]] = await self.redis.xrange(  # type: ignore[assignment]
            queue.dead_letter_stream(model)
        )
        return {row.id for _id, fields in entries for row in decode_job(fields[b"raw:" + queue.FIELD]).rows}

    @contextlib.asynccontextmanager
    async def workers_frozen(self) -> AsyncIterator[None]:
        """Every worker stopped (SIGSTOP) for the time of the block, then continued: what is queued meanwhile is
        read together, in one batch, by the first worker to read again."""
        for worker in self.workers:
            worker.kill(signal.SIGSTOP)
        try:
            yield
        finally:
            for worker in self.workers:
                worker.kill(signal.SIGCONT)

    async def holder(self, key: queue.Key, prediction_id: str) -> tuple[str, str] | None:
        """The entry id of the queued message holding `prediction_id`, and the consumer it is delivered to; None
        while it is not delivered."""
        stream = queue.request_stream(*key)
        entries: list[tuple[bytes, dict[bytes, bytes]]] = await self.redis.xrange(stream)  # type: ignore[assignment]
        for entry_id, fields in entries:
            if any(row.id == prediction_id for row in decode_job(fields[queue.FIELD]).rows):
                pending = await self.redis.xpending_range(stream, queue.GROUP, entry_id, entry_id, 1)
                consumer = pending[0]["consumer"] if pending else None
                return (_text(entry_id), _text(consumer)) if isinstance(consumer, bytes | str) else None
        return None

    async def held_by(self, consumer: str) -> int:
        """How many entries, over every version, a consumer holds unacknowledged."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in self.keys:
                pipe.xpending_range(queue.request_stream(*key), queue.GROUP, "-", "+", 1000, consumername=consumer)
            return sum(len(p) for p in await pipe.execute(raise_on_error=False) if isinstance(p, list))

    async def metrics(self) -> str | None:
        try:
            async with httpx.AsyncClient(timeout=2) as client:
                response = await client.get(f"{self.url}/metrics")
            return response.text if response.status_code == 200 else None
        except httpx.HTTPError:
            return None

    # ---- faults on the servers -------------------------------------------------------------------------------

    async def stop_broker(self, sig: int) -> None:
        """Stop the broker with a signal (SIGTERM: it writes its append-only file first; SIGKILL: it cannot)."""
        process = self.redis_server.process
        assert process is not None
        process.send_signal(sig)
        await asyncio.to_thread(process.wait)

    async def start_broker(self) -> None:
        """The broker again, on the same port and data directory."""
        await asyncio.to_thread(self.redis_server.start)

    async def stop_database(self) -> None:
        """`pg_ctl stop -m immediate`: the server ends at once, without a checkpoint, as a crash would."""
        pgdata = str(self.postgres.data_dir / "pgdata")
        await asyncio.to_thread(self.postgres._run, "pg_ctl", "-D", pgdata, "-m", "immediate", "-w", "stop")

    async def start_database(self) -> None:
        await asyncio.to_thread(self.postgres.start)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _id(entry_id: bytes | str) -> tuple[int, int]:
    """A stream entry id, ordered as the broker orders them."""
    ms, _, seq = _text(entry_id).partition("-")
    return int(ms), int(seq or 0)
