"""Shared fixtures: a real Redis-compatible server and a real PostgreSQL for the session, and real processes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
import redis as redis_sync
import sqlalchemy as sa
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from mlapi import queue
from mlapi.contract import Job, Row, Value
from mlapi.servers import PostgresServer, RedisServer, free_port
from mlapi.settings import PACKAGE_DIR, Settings
from mlapi.storage.migrate import migrate
from mlapi.storage.repository import PredictionRepository, engine_for

if TYPE_CHECKING:  # the model libraries are not in every service's image; only model tests load them
    from mlapi.runtimes.sklearn import SklearnModel

REGISTRY = PACKAGE_DIR / "models" / "registry"
REPO = Path(__file__).resolve().parents[1]
DATASET = REPO.parent / "shared" / "data" / "diabetes_prediction_dataset.csv"
ORIGINAL_CLIENT_SAMPLE: dict[str, Value] = {
    "gender": "Male",
    "age": 0,
    "hypertension": 0,
    "heart_disease": 0,
    "smoking_history": "current",
    "bmi": 0,
    "HbA1c_level": 0,
    "blood_glucose_level": 0,
}


def load_bundled(name: str) -> SklearnModel:
    """A bundled model as a worker loads it: its spec and artifact through `mlapi.runtimes.load`."""
    from mlapi import runtimes
    from mlapi.models.spec import ARTIFACT_FILE, ModelSpec
    from mlapi.runtimes.sklearn import SklearnModel

    directory = REGISTRY / name
    model = runtimes.load(ModelSpec.read(directory), (directory / ARTIFACT_FILE).read_bytes())
    assert isinstance(model, SklearnModel)
    return model


@pytest.fixture(scope="session")
def diabetes() -> SklearnModel:
    return load_bundled("diabetes-risk")


@pytest.fixture(scope="session")
def iris() -> SklearnModel:
    return load_bundled("iris")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"), free_port()).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    server = PostgresServer(tmp_path_factory.mktemp("postgres"), free_port()).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def settings(redis_server: RedisServer, postgres_server: PostgresServer) -> Settings:
    """Settings pointing at the session's servers, with the schema migrated and the bundled models seeded."""
    settings = Settings(redis_url=redis_server.url, database_url=postgres_server.url)
    migrate(settings.require_database_url(), settings.bundled_models_dir)
    return settings


def job(n: int, key: queue.Key = ("diabetes-risk", 1)) -> Job:
    """A one-row job with ids made from `n`, replying to the test reply stream."""
    return Job(
        id=f"job-{n}",
        model=key[0],
        version=key[1],
        rows=[Row(id=f"00000000-0000-0000-0000-{n:012d}", features={"x": n})],
        reply_to=queue.reply_stream("test"),
        created_at=datetime.now(UTC),
    )


async def until(condition: Callable[[], bool], timeout_s: float = 10) -> None:
    """Wait for a state of the code under test, failing after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def entries(redis: Redis, stream: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """A whole stream, typed as the binary client returns it."""
    return await redis.xrange(stream)  # type: ignore[return-value]


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    """A client on an emptied server."""
    client = queue.connect(settings.require_redis_url())
    await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    """An engine on an emptied predictions table."""
    engine = engine_for(settings.require_database_url())
    async with engine.begin() as conn:
        await conn.execute(sa.text("TRUNCATE predictions, drift_counts"))
    yield engine
    await engine.dispose()


@pytest.fixture
def repository(engine: AsyncEngine) -> PredictionRepository:
    return PredictionRepository(engine)


@dataclass
class Stack:
    """Real `mlapi api` and `mlapi worker` processes on the session's servers."""

    settings: Settings
    env: dict[str, str]
    log_dir: Path
    api_port: int = field(default_factory=free_port)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    api: subprocess.Popen[bytes] | None = None
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def grpc_url(self) -> str:
        """The Open Inference Protocol's gRPC service, as tritonclient.grpc takes it."""
        return f"127.0.0.1:{self.env['MLAPI_API__GRPC_PORT']}"

    def spawn(self, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with (self.log_dir / f"{name}-{len(self.processes)}.log").open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "mlapi", *args], env={**self.env, **(env or {})}, stdout=log, stderr=log
            )
        self.processes.append(process)
        return process

    def start_api(self, **env: str) -> None:
        self.api = self.spawn("api", "api", "--port", str(self.api_port), env=env)
        wait_until(lambda: _get(f"{self.url}/healthz") == 200, 30, "the API to start")

    def start_another_api(self, **env: str) -> str:
        """One more API process on the same servers (as behind a load balancer), with its own gRPC port unless
        `env` gives one; returns its URL."""
        port = free_port()
        self.spawn("api", "api", "--port", str(port), env={"MLAPI_API__GRPC_PORT": str(free_port()), **env})
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _get(f"{url}/healthz") == 200, 30, "another API to start")
        return url

    def start_worker(self, *args: str) -> subprocess.Popen[bytes]:
        worker = self.spawn("worker", "worker", *args)
        self.workers.append(worker)
        return worker

    def wait_ready(self) -> None:
        wait_until(lambda: _get(f"{self.url}/readyz") == 200, 60, "the API to be ready")

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in self.log_dir.iterdir())

    def stop(self) -> None:
        for p in self.processes:
            if p.poll() is None:
                p.terminate()
        for p in self.processes:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def keys(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    """`mlapi keys ...` as an operator runs it, on the stack's database and broker."""
    return subprocess.run(
        [sys.executable, "-m", "mlapi", "keys", *args], env=stack.env, capture_output=True, text=True, timeout=60
    )


def create_key(stack: Stack, name: str, *options: str) -> str:
    """A new API key made with `mlapi keys create`."""
    done = keys(stack, "create", name, *options)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]  # the key, alone on the last line


def _get(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return None


def wait_until(condition: object, timeout_s: float, what: str) -> None:
    """Tests only: wait for an outside process to reach a state, failing after `timeout_s`."""
    assert callable(condition)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def stack_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLAPI_")}
    env.update(
        MLAPI_REDIS_URL=settings.require_redis_url(),
        MLAPI_DATABASE_URL=settings.database_url or "",
        MLAPI_LOG_LEVEL="INFO",
        MLAPI_API__AUTH="off",  # the tests of access control turn it on
        MLAPI_API__GRPC_PORT=str(free_port()),
    )
    env.update(extra)
    return env


StackFactory = Callable[..., Stack]
"""Makes a Stack whose processes get the given MLAPI_* environment variables on top of the session's."""


@pytest.fixture(scope="module")
def stack_factory(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackFactory]:
    """Builds stacks whose processes are all stopped when the module ends; the broker starts empty, so no
    heartbeat or entry left by an earlier module makes a stack look ready before its workers are."""
    with redis_sync.Redis.from_url(settings.require_redis_url()) as client:
        client.flushall()
    made: list[Stack] = []

    def make(**env: str) -> Stack:
        stack = Stack(settings, stack_env(settings, **env), tmp_path_factory.mktemp("stack"))
        made.append(stack)
        return stack

    yield make
    for stack in made:
        stack.stop()
