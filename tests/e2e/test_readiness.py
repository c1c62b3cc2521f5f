"""`/readyz` tells the truth: not ready while PostgreSQL is away or the reply reader is down, ready again as
soon as they are back; the reply reader, crashed on purpose (fault injection), is restarted and counted."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mlapi.models.spec import read_bundled
from mlapi.servers import PostgresServer, free_port
from mlapi.settings import Settings
from mlapi.storage.migrate import migrate
from tests.conftest import REGISTRY, Stack, StackFactory, wait_until

pytestmark = pytest.mark.e2e
EXAMPLE = read_bundled(REGISTRY)["diabetes-risk"][0].example
RESTARTS = 'mlapi_task_restarts_total{task="reply-reader"}'


def readiness(client: httpx.Client) -> tuple[int, dict[str, Any]]:
    response = client.get("/readyz")
    return response.status_code, response.json()


def metric(client: httpx.Client, name: str) -> float:
    lines = client.get("/metrics").text.splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(name + " "))


@pytest.fixture
def postgres(tmp_path: Path, settings: Settings) -> Iterator[PostgresServer]:
    """A PostgreSQL of this test's own, to stop and start again."""
    server = PostgresServer(tmp_path / "postgres", free_port()).start()
    migrate("postgresql+asyncpg://" + server.url.removeprefix("postgresql://"), settings.bundled_models_dir)
    yield server
    server.stop()


def test_readiness_returns_as_soon_as_postgresql_is_back(stack_factory: StackFactory, postgres: PostgresServer) -> None:
    stack = stack_factory(MLAPI_DATABASE_URL=postgres.url, MLAPI_REGISTRY_REFRESH_S="1")
    try:
        stack.start_api()
        stack.start_worker("--model", "diabetes-risk")
        stack.wait_ready()
        with httpx.Client(base_url=stack.url, timeout=10) as client:
            postgres._run("pg_ctl", "-D", str(postgres.data_dir / "pgdata"), "-m", "immediate", "-w", "stop")

            def database_down() -> bool:
                status, body = readiness(client)
                return status == 503 and any(r.startswith("database unreachable") for r in body["reasons"])

            wait_until(database_down, 10, "/readyz to report the database")
            _, body = readiness(client)
            assert "diabetes-risk" in body["workers"]  # the live workers stay in the body
            # The registry watch fails on the database twice, as it did in the reported outage, before it is back.
            api_log = next(stack.log_dir.glob("api-*.log"))
            wait_until(lambda: api_log.read_text().count("registry watch:") >= 2, 15, "the watch to fail twice")
            assert database_down()
            postgres.start()  # same data directory and port
            wait_until(lambda: readiness(client)[0] == 200, 30, "/readyz to be ready again")
            assert client.post("/predict", json=EXAMPLE).status_code == 200
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def injectable(stack_factory: StackFactory) -> Stack:
    stack = stack_factory(MLAPI_FAULT_INJECTION="1")
    stack.start_api()
    stack.start_worker("--model", "diabetes-risk")
    stack.wait_ready()
    return stack


def test_a_crashed_reply_reader_is_restarted_and_counted(injectable: Stack) -> None:
    assert injectable.api is not None
    with httpx.Client(base_url=injectable.url, timeout=30) as client:
        before = metric(client, RESTARTS)
        injectable.api.send_signal(signal.SIGUSR1)
        wait_until(lambda: metric(client, RESTARTS) == before + 1, 10, "the reader to be restarted")
        assert client.post("/predict", json=EXAMPLE).status_code == 200
        assert injectable.api.poll() is None


def test_readiness_reports_the_reply_reader_down_and_requests_wait_for_it(injectable: Stack) -> None:
    api = injectable.api
    assert api is not None
    with httpx.Client(base_url=injectable.url, timeout=30) as client:

        def reader_down() -> bool:
            api.send_signal(signal.SIGUSR1)  # crashes it again at each restart: the backoff grows to seconds
            status, body = readiness(client)
            return status == 503 and "the reply reader is down (restarting)" in body["reasons"]

        wait_until(reader_down, 20, "/readyz to report the reply reader down")
        answers: list[int] = []

        def predict() -> None:
            with httpx.Client(base_url=injectable.url, timeout=30) as own:  # a client per thread
                answers.append(own.post("/predict", json=EXAMPLE).status_code)

        waiting = threading.Thread(target=predict)
        waiting.start()  # sent while the reader is down: answered once it is back
        wait_until(lambda: readiness(client)[0] == 200, 20, "/readyz to be ready again")
        waiting.join(30)
        assert answers == [200]
        assert metric(client, RESTARTS) >= 3


def test_without_fault_injection_sigusr1_keeps_its_default_meaning(stack_factory: StackFactory) -> None:
    stack = stack_factory()
    stack.start_api()
    assert stack.api is not None
    stack.api.send_signal(signal.SIGUSR1)
    assert stack.api.wait(10) == -signal.SIGUSR1
