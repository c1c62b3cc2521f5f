"""The API end to end: real `mlapi api` and `mlapi worker` processes on real servers."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from mlapi.models.spec import read_bundled
from tests.conftest import ORIGINAL_CLIENT_SAMPLE, REGISTRY, Stack, StackFactory, wait_until

pytestmark = pytest.mark.e2e
EXAMPLE = read_bundled(REGISTRY)["diabetes-risk"][0].example


@pytest.fixture(scope="module")
def stack(stack_factory: StackFactory) -> Stack:
    # Heartbeats count for a minute here, so a worker stopped with SIGSTOP still looks live and the requests
    # routed to it stay queued: that is how timeouts are tested.
    stack = stack_factory(MLAPI_API__REQUEST_TIMEOUT_S="1.5", MLAPI_API__MAX_INSTANCES="8",
                          MLAPI_API__MAX_BODY_BYTES="4096", MLAPI_WORKER__LIVENESS_MS="60000")  # fmt: skip
    stack.start_api()
    stack.start_worker("--model", "diabetes-risk")
    stack.start_worker("--model", "diabetes-risk")
    stack.start_worker("--model", "iris")
    stack.wait_ready()
    with httpx.Client(base_url=stack.url) as client:
        iris = "/models/iris/versions/{}".format(client.get("/models/iris").json()["default_version"])
        wait_until(lambda: client.get(iris).json()["ready"] == 1, 30, "the iris worker")
    return stack


def iris_worker(stack: Stack) -> subprocess.Popen[bytes]:
    return stack.workers[2]


@pytest.fixture
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        yield client


def done(client: httpx.Client, prediction_id: str) -> dict[str, Any]:
    record: dict[str, Any] = {}

    def finished() -> bool:
        record.update(client.get(f"/predictions/{prediction_id}").json())
        return record.get("status") in ("done", "failed")

    wait_until(finished, 30, f"prediction {prediction_id} to complete")
    return record


def test_hello_docs_and_models(client: httpx.Client) -> None:
    hello = client.get("/").json()
    assert hello["links"]["docs"] == "/docs"
    docs = client.get("/docs").text
    assert "swagger-ui" in docs and "cdn." not in docs  # served locally: works without internet
    bundle = next(part.split('"')[0] for part in docs.split('src="')[1:] if "swagger-ui-bundle" in part)
    assert client.get(bundle).status_code == 200
    openapi = client.get("/openapi.json").json()
    body = openapi["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    sample = body["oneOf"][0]
    assert set(sample["required"]) == set(ORIGINAL_CLIENT_SAMPLE)
    assert "/models/iris/predict" in openapi["paths"]
    models = {m["name"]: m for m in client.get("/models").json()}
    assert {"diabetes-risk", "iris"} <= set(models)
    assert models["iris"]["task"] == "classification" and models["iris"]["ready"] == 1
    assert models["diabetes-risk"]["default_version"] in models["diabetes-risk"]["versions"]
    spec = client.get("/models/diabetes-risk").json()
    assert spec["metrics"]["roc_auc"] >= 0.97
    assert {f["name"]: f["kind"] for f in spec["features"]}["hypertension"] == "flag"


def test_the_original_client_gets_a_prediction_that_is_stored(client: httpx.Client) -> None:
    response = client.post("/predict", json=ORIGINAL_CLIENT_SAMPLE)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"id", "model", "model_version", "task", "prediction", "label", "probability",
                         "probabilities", "created_at", "warnings"}  # fmt: skip
    assert body["task"] == "classification"
    assert body["model"] == "diabetes-risk" and body["prediction"] in (0, 1)
    assert body["label"] == ["no diabetes", "diabetes"][body["prediction"]]
    assert any(w.startswith("bmi=0") for w in body["warnings"])
    assert "queue;dur=" in response.headers["server-timing"]
    record = client.get(f"/predictions/{body['id']}").json()
    assert record["status"] == "done" and record["task"] == "classification"
    assert record["model_version"] == body["model_version"]
    assert record["features"]["smoking_history"] == "current"
    assert record["probability"] == pytest.approx(body["probability"])
    assert record["created_at"] is not None and record["completed_at"] is not None


def test_a_batch_is_answered_in_order_and_every_row_stored(client: httpx.Client) -> None:
    samples = [
        {**EXAMPLE, "HbA1c_level": a1c, "blood_glucose_level": g} for a1c, g in [(4.0, 90), (8.8, 280), (5.0, 100)]
    ]
    response = client.post("/models/diabetes-risk/predict", json={"instances": samples})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [p["prediction"] for p in predictions] == [0, 1, 0]
    singles = [client.post("/predict", json=s).json()["probability"] for s in samples]
    assert [p["probability"] for p in predictions] == pytest.approx(singles)
    for p in predictions:
        assert client.get(f"/predictions/{p['id']}").json()["status"] == "done"


def test_wait_false_answers_202_with_a_location_that_resolves(client: httpx.Client) -> None:
    response = client.post("/predict", params={"wait": "false"}, json=EXAMPLE)
    assert response.status_code == 202
    location = response.headers["location"]
    assert location == f"/predictions/{response.json()['id']}"
    assert done(client, response.json()["id"])["status"] == "done"


def test_a_request_without_an_answer_in_time_gets_504_and_lands_later(client: httpx.Client, stack: Stack) -> None:
    sample = {"sepal_length": 6.3, "sepal_width": 3.3, "petal_length": 6.0, "petal_width": 2.5}
    worker = iris_worker(stack)
    worker.send_signal(signal.SIGSTOP)
    try:
        response = client.post("/models/iris/predict", json=sample)
        assert response.status_code == 504
        prediction_id = response.json()["id"]
        queued = client.get(f"/predictions/{prediction_id}").json()
        assert queued["status"] == "queued" and queued["model"] == "iris"
    finally:
        worker.send_signal(signal.SIGCONT)
    record = done(client, prediction_id)
    assert record["status"] == "done" and record["label"] == "virginica"


@pytest.mark.parametrize(
    ("body", "status", "loc"),
    [
        ({**ORIGINAL_CLIENT_SAMPLE, "gender": "Robot"}, 422, ["body", "gender"]),
        ({**ORIGINAL_CLIENT_SAMPLE, "bmi": -1}, 422, ["body", "bmi"]),
        ({**ORIGINAL_CLIENT_SAMPLE, "age": "old"}, 422, ["body", "age"]),
        ({**ORIGINAL_CLIENT_SAMPLE, "hypertension": 3}, 422, ["body", "hypertension"]),
        ({**ORIGINAL_CLIENT_SAMPLE, "extra": 1}, 422, ["body", "extra"]),
        ({k: v for k, v in ORIGINAL_CLIENT_SAMPLE.items() if k != "bmi"}, 422, ["body", "bmi"]),
        ({"instances": [ORIGINAL_CLIENT_SAMPLE, {**ORIGINAL_CLIENT_SAMPLE, "age": -5}]}, 422,
         ["body", "instances", 1, "age"]),
        ({"instances": [ORIGINAL_CLIENT_SAMPLE] * 9}, 422, ["body", "instances"]),
        ({"instances": []}, 422, ["body", "instances"]),
        ([1, 2], 422, ["body"]),
    ],
)  # fmt: skip
def test_invalid_samples_get_422_naming_the_field(client: httpx.Client, body: Any, status: int, loc: list[Any]) -> None:
    response = client.post("/predict", json=body)
    assert response.status_code == status
    assert response.json()["detail"][0]["loc"] == loc


def test_malformed_oversized_and_unknown_get_precise_errors(client: httpx.Client) -> None:
    malformed = client.post("/predict", content=b'{"gender": "Male",', headers={"content-type": "application/json"})
    assert malformed.status_code == 400 and "malformed JSON" in malformed.json()["detail"]
    huge = client.post("/predict", content=b" " * 5000, headers={"content-type": "application/json"})
    assert huge.status_code == 413 and "limit" in huge.json()["detail"]

    def chunks() -> Iterator[bytes]:
        yield b'{"gender": "' + b"x" * 3000
        yield b"y" * 3000 + b'"}'

    streamed = client.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413
    unknown = client.post("/models/nope/predict", json=ORIGINAL_CLIENT_SAMPLE)
    assert unknown.status_code == 404 and "diabetes-risk" in unknown.json()["detail"]
    assert client.get("/models/nope").status_code == 404
    no_version = client.post("/models/iris/versions/999/predict", json={})
    assert no_version.status_code == 404 and "no version 999" in no_version.json()["detail"]
    assert client.get("/predictions/00000000-0000-0000-0000-000000000000").status_code == 404
    assert client.get("/predictions/not-a-uuid").status_code == 422


def test_history_pages_newest_first_with_filters(client: httpx.Client) -> None:
    ids = [client.post("/predict", json={**EXAMPLE, "age": float(a)}).json()["id"] for a in range(30, 35)]
    first = client.get("/predictions", params={"limit": 2, "model": "diabetes-risk"}).json()
    assert [i["id"] for i in first["items"]] == ids[::-1][:2]
    second = client.get("/predictions", params={"limit": 2, "model": "diabetes-risk", "cursor": first["next_cursor"]})
    assert [i["id"] for i in second.json()["items"]] == ids[::-1][2:4]
    since = client.get(f"/predictions/{ids[2]}").json()["created_at"]
    recent = client.get("/predictions", params={"since": since, "limit": 500}).json()["items"]
    assert {i["id"] for i in recent} >= set(ids[2:]) and ids[1] not in {i["id"] for i in recent}
    positives = client.get("/predictions", params={"prediction": 1, "limit": 500}).json()["items"]
    assert all(i["prediction"] == 1 for i in positives)
    assert client.get("/predictions", params={"limit": 501}).status_code == 422
    assert client.get("/predictions", params={"cursor": "garbage!"}).status_code == 400


def metric(text: str, name: str) -> float:
    """The value of one sample line `name value` of a Prometheus exposition."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " "))


def test_metrics_count_requests_and_show_the_queue(client: httpx.Client) -> None:
    diabetes = client.get("/models/diabetes-risk").json()["default_version"]
    iris = client.get("/models/iris").json()["default_version"]
    before = client.get("/metrics").text
    ok = 'mlapi_predict_requests_total{model="diabetes-risk",outcome="ok"}'
    invalid = 'mlapi_predict_requests_total{model="diabetes-risk",outcome="invalid"}'
    client.post("/predict", json=EXAMPLE)
    client.post("/predict", json={**EXAMPLE, "bmi": -1})
    after = client.get("/metrics")
    assert after.headers["content-type"].startswith("text/plain")
    assert metric(after.text, ok) == metric(before, ok) + 1
    assert metric(after.text, invalid) == metric(before, invalid) + 1
    assert metric(after.text, f'mlapi_queue_live_workers{{model="diabetes-risk",version="{diabetes}"}}') == 2
    assert metric(after.text, f'mlapi_queue_live_workers{{model="iris",version="{iris}"}}') == 1
    assert metric(after.text, f'mlapi_queue_lag{{model="diabetes-risk",version="{diabetes}"}}') == 0
    assert metric(after.text, 'mlapi_stage_seconds_count{stage="predict"}') >= 1


def test_readyz_reports_the_stack_ready(client: httpx.Client) -> None:
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready"
    diabetes = client.get("/models/diabetes-risk").json()["default_version"]
    assert ready["workers"]["diabetes-risk"][str(diabetes)] == 2
    assert client.get("/healthz").json() == {"status": "alive"}
