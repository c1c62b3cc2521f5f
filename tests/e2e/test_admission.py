"""Admission control: a version whose backlog is over `MLAPI_API__MAX_BACKLOG`, or that no live worker holds,
or a broker that is away, gets 503 with Retry-After at once instead of a wait towards a 504."""

from __future__ import annotations

import signal
from typing import Any

import httpx
import pytest

from mlapi.models.spec import read_bundled
from mlapi.servers import free_port
from tests.conftest import REGISTRY, StackFactory, wait_until

pytestmark = pytest.mark.e2e
EXAMPLE = read_bundled(REGISTRY)["diabetes-risk"][0].example
IRIS = {"sepal_length": 6.3, "sepal_width": 3.3, "petal_length": 6.0, "petal_width": 2.5}
OVERLOADED = 'mlapi_predict_requests_total{model="diabetes-risk",outcome="overloaded"}'


def metric(client: httpx.Client, name: str) -> float:
    lines = client.get("/metrics").text.splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(name + " "))


def test_a_version_over_its_backlog_limit_is_refused_until_it_drains(stack_factory: StackFactory) -> None:
    # Heartbeats count for a minute, so the worker stopped with SIGSTOP stays live and only the backlog refuses.
    stack = stack_factory(MLAPI_API__MAX_BACKLOG="5", MLAPI_WORKER__LIVENESS_MS="60000")
    stack.start_api()
    worker = stack.start_worker("--model", "diabetes-risk")
    stack.wait_ready()
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        assert metric(client, "mlapi_max_backlog") == 5
        accepted: list[str] = []
        refusals: list[httpx.Response] = []

        def refused() -> bool:
            response = client.post("/predict", params={"wait": "false"}, json=EXAMPLE)
            if response.status_code == 202:
                accepted.append(response.json()["id"])
            else:
                refusals.append(response)
            return response.status_code != 202

        worker.send_signal(signal.SIGSTOP)
        try:
            wait_until(refused, 20, "a request to be refused")
            [refusal] = refusals
            assert refusal.status_code == 503 and refusal.headers["retry-after"] == "1"
            assert "over the limit of 5" in refusal.json()["detail"]
            assert len(accepted) > 5  # the backlog went over the limit before anything was refused
            waiting = client.post("/predict", json=EXAMPLE)  # a waiting request too, at once
            assert waiting.status_code == 503 and "retry-after" in waiting.headers
            assert metric(client, OVERLOADED) == 2
        finally:
            worker.send_signal(signal.SIGCONT)

        def drained() -> bool:
            return all(client.get(f"/predictions/{i}").json().get("status") == "done" for i in accepted)

        wait_until(drained, 30, "the accepted requests to be served")
        wait_until(lambda: client.post("/predict", json=EXAMPLE).status_code == 200, 10, "requests to be accepted")


def test_a_version_without_a_live_worker_gets_503_with_retry_after(stack_factory: StackFactory) -> None:
    stack = stack_factory(MLAPI_WORKER__LIVENESS_MS="7000")
    stack.start_api()  # no worker holds iris
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        for params in ({}, {"wait": "false"}):
            response = client.post("/models/iris/predict", params=params, json=IRIS)
            assert response.status_code == 503
            assert response.headers["retry-after"] == "7"  # the liveness window
            assert "no live worker holds 'iris'" in response.json()["detail"]


def test_an_unreachable_broker_gets_503_with_retry_after(stack_factory: StackFactory) -> None:
    stack = stack_factory(MLAPI_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    stack.start_api()
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        response = client.post("/predict", json=EXAMPLE)
        body: dict[str, Any] = response.json()
        assert response.status_code == 503 and "broker" in body["detail"]
        assert response.headers["retry-after"] == "1"
