"""Process lifecycle: a worker stops cleanly on SIGTERM; losing the broker fails waiting requests at once."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import httpx
import pytest
import redis

from mlapi import queue
from mlapi.servers import RedisServer, free_port
from tests.conftest import StackFactory, wait_until

pytestmark = pytest.mark.e2e
IRIS = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


def test_sigterm_stops_a_worker_and_the_api_cleanly(stack_factory: StackFactory) -> None:
    stack = stack_factory()
    stack.start_api()
    worker = stack.start_worker()
    stack.wait_ready()
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(10) == 0
    with httpx.Client(base_url=stack.url, timeout=10) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["reasons"] == ["no live worker for diabetes-risk"]
    assert stack.api is not None
    stack.api.send_signal(signal.SIGTERM)
    stack.api.wait(10)  # raises if the API hangs in shutdown


def test_losing_the_broker_fails_waiting_requests_with_their_ids(stack_factory: StackFactory, tmp_path: Path) -> None:
    broker = RedisServer(tmp_path / "redis", free_port()).start()
    try:
        # The iris worker is stopped (SIGSTOP) but its heartbeat counts for a minute: the request is routed
        # to it and waits.
        stack = stack_factory(MLAPI_REDIS_URL=broker.url, MLAPI_API__REQUEST_TIMEOUT_S="60",
                              MLAPI_WORKER__LIVENESS_MS="60000")  # fmt: skip
        stack.start_api()
        worker = stack.start_worker("--model", "iris")
        queued = redis.Redis.from_url(broker.url)
        with httpx.Client(base_url=stack.url, timeout=30) as client:
            version = client.get("/models/iris").json()["default_version"]
            stream = queue.request_stream("iris", version)
            wait_until(lambda: client.get(f"/models/iris/versions/{version}").json()["ready"], 30, "the iris worker")
            worker.send_signal(signal.SIGSTOP)
            answers: list[httpx.Response] = []
            waiter = threading.Thread(target=lambda: answers.append(client.post("/models/iris/predict", json=IRIS)))
            waiter.start()
            wait_until(lambda: queued.xlen(stream) == 1, 10, "the request to be queued")
            queued.close()
            broker.stop()
            waiter.join(20)
            assert not waiter.is_alive()
            [response] = answers
            assert response.status_code == 503
            assert "lost the broker" in response.json()["detail"] and "id" in response.json()
        worker.send_signal(signal.SIGCONT)
    finally:
        broker.stop()
