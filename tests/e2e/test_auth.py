"""Access control end to end: keys made with the real `mlapi keys` CLI, two real API processes, a real worker.

No key is 401; two keys never see each other's predictions; an admin sees both; a model-restricted key gets
403; a revoked key is refused within a second by both API processes; a rate limit holds across them; and
concurrent duplicates of an idempotent request make one prediction. The same over the Open Inference
Protocol, REST and gRPC (tritonclient's own messages: this process never imports `mlapi.oip.proto`).
"""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from mlapi.models.spec import read_bundled
from tests.conftest import REGISTRY, Stack, StackFactory, create_key, keys, wait_until

pytestmark = pytest.mark.e2e
EXAMPLE = read_bundled(REGISTRY)["diabetes-risk"][0].example
IRIS = {"sepal_length": 6.3, "sepal_width": 3.3, "petal_length": 6.0, "petal_width": 2.5}


@dataclass
class Auth:
    stack: Stack
    urls: list[str]
    """Two API processes on the same servers."""
    admin: str
    alice: str
    bob: str

    def client(self, key: str | None, api: int = 0, headers: dict[str, str] | None = None) -> httpx.Client:
        auth = {"Authorization": f"Bearer {key}"} if key is not None else {}
        return httpx.Client(base_url=self.urls[api], timeout=30, headers={**auth, **(headers or {})})


@pytest.fixture(scope="module")
def auth(stack_factory: StackFactory) -> Auth:
    # Heartbeats count for a minute, so a worker stopped with SIGSTOP still looks live: that is how a 504 is made.
    env = {"MLAPI_API__AUTH": "required", "MLAPI_API__REQUEST_TIMEOUT_S": "2", "MLAPI_WORKER__LIVENESS_MS": "60000"}
    stack = stack_factory(**env)
    admin, alice, bob = create_key(stack, "admin", "--admin"), create_key(stack, "alice"), create_key(stack, "bob")
    stack.start_api()
    urls = [stack.url, stack.start_another_api()]
    stack.start_worker()
    wait_until(lambda: httpx.get(f"{stack.url}/readyz").status_code == 200, 60, "the stack to be ready")
    with httpx.Client(base_url=stack.url, headers={"X-API-Key": admin}) as client:
        iris = "/models/iris/versions/{}".format(client.get("/models/iris").json()["default_version"])
        wait_until(lambda: client.get(iris).json()["ready"] == 1, 30, "the worker to load iris")
    return Auth(stack, urls, admin, alice, bob)


def predict(client: httpx.Client, sample: dict[str, Any] | None = None, path: str = "/predict") -> str:
    response = client.post(path, json=sample or EXAMPLE)
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def ids(client: httpx.Client, **params: Any) -> list[str]:
    """Every id of the history the client may read, through every page."""
    found: list[str] = []
    cursor = None
    while True:
        page = client.get("/predictions", params={**params, "limit": 2, **({"cursor": cursor} if cursor else {})})
        assert page.status_code == 200, page.text
        found += [item["id"] for item in page.json()["items"]]
        if (cursor := page.json()["next_cursor"]) is None:
            return found


def test_without_a_valid_key_only_health_is_open(auth: Auth) -> None:
    with auth.client(None) as anonymous:
        somebodys = f"/predictions/{'0' * 8}-0000-0000-0000-{'0' * 12}"
        for method, path in [("POST", "/predict"), ("GET", "/predictions"), ("GET", "/models"), ("GET", "/me"),
                             ("DELETE", "/models/iris"), ("GET", somebodys)]:  # fmt: skip
            response = anonymous.request(method, path, json=EXAMPLE if method == "POST" else None)
            assert response.status_code == 401, (method, path, response.text)
            assert response.headers["www-authenticate"].startswith("Bearer")
        assert anonymous.get("/healthz").status_code == 200
        assert anonymous.get("/readyz").status_code == 200
        assert anonymous.get("/metrics").status_code == 200  # open by default (MLAPI_API__METRICS_ACCESS)
        schemes = anonymous.get("/openapi.json").json()["components"]["securitySchemes"]
        assert set(schemes) == {"bearer", "apiKey"}  # /docs has an Authorize button
    for wrong in ("Bearer mlapi_not-a-key", "Basic YWxpY2U6cHc=", "Bearer", "mlapi_no-scheme"):
        with auth.client(None, headers={"Authorization": wrong}) as client:
            assert client.get("/me").status_code == 401
    with auth.client(None, headers={"X-API-Key": auth.alice}) as client:  # the other header works as well
        assert client.get("/me").json() == {"key": "alice", "admin": False, "models": None, "rate": None,
                                            "auth": "required"}  # fmt: skip


def test_two_keys_never_see_each_others_predictions(auth: Auth) -> None:
    with auth.client(auth.alice) as alice, auth.client(auth.bob, api=1) as bob, auth.client(auth.admin) as admin:
        mine = {predict(alice) for _ in range(3)} | {predict(alice, IRIS, "/models/iris/predict")}
        theirs = {predict(bob) for _ in range(3)}
        assert set(ids(alice)) == mine and set(ids(bob)) == theirs
        assert len(ids(alice, model="iris")) == 1
        for other in theirs:
            assert alice.get(f"/predictions/{other}").status_code == 404  # as if it did not exist: ids do not leak
            assert bob.get(f"/predictions/{other}").json()["key"] == "bob"
        # A cursor forged to point just after bob's newest row pages alice's rows only.
        newest = bob.get("/predictions", params={"limit": 1}).json()["items"][0]
        forged = base64.urlsafe_b64encode(json.dumps([newest["created_at"], newest["id"]]).encode()).decode()
        page = alice.get("/predictions", params={"cursor": forged.rstrip("=")}).json()["items"]
        assert page and {item["id"] for item in page} <= mine
        bobs_cursor = bob.get("/predictions", params={"limit": 1}).json()["next_cursor"]
        page = alice.get("/predictions", params={"cursor": bobs_cursor}).json()["items"]
        assert {item["id"] for item in page} <= mine
        assert alice.get("/predictions", params={"key": "bob"}).status_code == 403
        # The admin key sees both, and may narrow to one key.
        assert mine | theirs <= set(ids(admin))
        assert set(ids(admin, key="bob")) == theirs
        assert admin.get(f"/predictions/{next(iter(theirs))}").status_code == 200


def test_a_model_restricted_key_gets_403_for_other_models_and_only_admins_manage(auth: Auth) -> None:
    restricted = create_key(auth.stack, "iris-only", "--models", "iris")
    with auth.client(restricted) as client:
        assert client.post("/models/iris/predict", json=IRIS).status_code == 200
        for path, body in [("/predict", EXAMPLE), ("/models/diabetes-risk/predict", EXAMPLE),
                           ("/models/diabetes-risk/versions/1/predict", {"not": "even valid"})]:  # fmt: skip
            response = client.post(path, json=body)
            assert response.status_code == 403, response.text
            assert "diabetes-risk" in response.json()["detail"]
        assert client.get("/models/diabetes-risk").status_code == 403
        assert [m["name"] for m in client.get("/models").json()] == ["iris"]
    with auth.client(auth.alice) as alice, auth.client(auth.admin) as admin:
        version = admin.get("/models/iris").json()["default_version"]
        assert alice.put("/models/iris/default", json={"version": version}).status_code == 403
        assert alice.delete("/models/iris/versions/999").status_code == 403
        assert admin.put("/models/iris/default", json={"version": version}).status_code == 200
        metrics = admin.get("/metrics").text
        assert 'mlapi_forbidden_total{key="alice"}' in metrics or 'mlapi_forbidden_total{key="iris-only"}' in metrics


def test_a_revoked_key_is_refused_within_a_second_by_every_api_process(auth: Auth) -> None:
    key = create_key(auth.stack, "short-lived")
    clients = [auth.client(key, api) for api in (0, 1)]
    try:
        for client in clients:  # each process has looked the key up and holds it in its cache
            assert client.get("/me").status_code == 200
        done = keys(auth.stack, "revoke", "short-lived")
        assert done.returncode == 0, done.stderr
        revoked = time.monotonic()
        wait_until(lambda: all(c.get("/me").status_code == 401 for c in clients), 1, "both APIs to refuse the key")
        assert time.monotonic() - revoked < 1
    finally:
        for client in clients:
            client.close()
    listed = keys(auth.stack, "list").stdout
    assert "short-lived" in listed and "revoked" in listed and key not in listed


def test_the_keys_cli_refuses_what_it_cannot_do(auth: Auth) -> None:
    again = keys(auth.stack, "create", "alice")
    assert again.returncode == 1 and "never reused" in again.stderr
    assert keys(auth.stack, "create", "x", "--rate", "5/d").returncode == 2  # argparse: N/s, N/m or N/h
    assert keys(auth.stack, "revoke", "nobody").returncode == 1
    assert keys(auth.stack, "create", "Bad Name").returncode == 1


def test_a_rate_limit_holds_under_concurrency_across_two_api_processes(auth: Auth) -> None:
    key = create_key(auth.stack, "limited", "--rate", "10/m")
    clients = [auth.client(key, api) for api in (0, 1)]
    try:
        with ThreadPoolExecutor(16) as pool:
            responses = list(pool.map(lambda i: clients[i % 2].get("/me"), range(40)))
    finally:
        for client in clients:
            client.close()
    assert sorted(r.status_code for r in responses) == [200] * 10 + [429] * 30
    refused = [r for r in responses if r.status_code == 429]
    assert all(1 <= int(r.headers["retry-after"]) <= 60 for r in refused)
    counted = 0.0
    for url in auth.urls:
        for line in httpx.get(f"{url}/metrics").text.splitlines():
            if line.startswith('mlapi_rate_limited_total{key="limited"}'):
                counted += float(line.split()[-1])
    assert counted == 30


def test_concurrent_duplicates_with_one_idempotency_key_make_one_prediction(auth: Auth) -> None:
    key = create_key(auth.stack, "retrier")
    headers = {"Idempotency-Key": "order-1"}
    clients = [auth.client(key, api, headers) for api in (0, 1)]
    try:
        with ThreadPoolExecutor(12) as pool:
            responses = list(pool.map(lambda i: clients[i % 2].post("/predict", json=EXAMPLE), range(12)))
        answered = [r for r in responses if r.status_code == 200]
        in_flight = [r for r in responses if r.status_code == 409]
        assert len(answered) + len(in_flight) == 12 and answered
        first = answered[0].json()
        assert all(r.json() == first for r in answered)  # the same id and answer, rebuilt from the history
        assert all(r.json()["id"] == first["id"] and r.headers["retry-after"] == "1" for r in in_flight)
        assert clients[1].post("/predict", json=EXAMPLE).json() == first  # later, on the other process too
        mismatch = clients[0].post("/predict", json={**EXAMPLE, "age": 55})
        assert mismatch.status_code == 422 and "other rows" in mismatch.json()["detail"]
        with auth.client(auth.admin) as admin:
            assert ids(admin, key="retrier") == [first["id"]]
        # The same idempotency key on another route, or for another API key, is another request.
        other_route = clients[0].post("/models/diabetes-risk/predict", json=EXAMPLE).json()
        with auth.client(auth.bob, headers=headers) as bob:
            other_key = bob.post("/predict", json=EXAMPLE).json()
        assert len({first["id"], other_route["id"], other_key["id"]}) == 3
        assert clients[0].post("/predict", json=EXAMPLE, headers={"Idempotency-Key": "has space"}).status_code == 400
    finally:
        for client in clients:
            client.close()


@pytest.fixture
def stopped_worker(auth: Auth) -> Iterator[subprocess.Popen[bytes]]:
    worker = auth.stack.workers[0]
    worker.send_signal(signal.SIGSTOP)
    try:
        yield worker
    finally:
        worker.send_signal(signal.SIGCONT)


def test_a_retry_after_a_504_gets_the_first_answer(auth: Auth, stopped_worker: subprocess.Popen[bytes]) -> None:
    headers = {"Idempotency-Key": "after-timeout"}
    with auth.client(auth.alice, 0, headers) as first, auth.client(auth.alice, 1, headers) as retry:
        timed_out = first.post("/models/iris/predict", json=IRIS)
        assert timed_out.status_code == 504
        queued = timed_out.json()["id"]
        in_flight = retry.post("/models/iris/predict", json=IRIS)
        assert in_flight.status_code == 409 and in_flight.json()["id"] == queued
        assert in_flight.headers["retry-after"] == "1"
        stopped_worker.send_signal(signal.SIGCONT)
        # 404 until the worker has stored the row
        wait_until(lambda: retry.get(f"/predictions/{queued}").json().get("status") == "done", 30, "the answer")
        answer = retry.post("/models/iris/predict", json=IRIS)
        assert answer.status_code == 200 and answer.json()["id"] == queued
        assert answer.json()["label"] == "virginica"


def test_metrics_can_be_for_admins_only(auth: Auth) -> None:
    url = auth.stack.start_another_api(MLAPI_API__METRICS_ACCESS="admin")
    for path in ("/metrics", "/backlog"):
        assert httpx.get(f"{url}{path}").status_code == 401
        assert httpx.get(f"{url}{path}", headers={"X-API-Key": auth.alice}).status_code == 403
        assert httpx.get(f"{url}{path}", headers={"Authorization": f"Bearer {auth.admin}"}).status_code == 200
    assert httpx.get(f"{url}/healthz").status_code == 200


# ---- the Open Inference Protocol: REST /v2 and gRPC ---------------------------------------------------------


def grpc_infer(
    auth: Auth, key: str | None, model: str = "iris", idempotency_key: str | None = None
) -> service_pb2.ModelInferResponse:
    """An iris sample over gRPC (tritonclient's own messages), with the key in the call's metadata."""
    metadata = [("authorization", f"Bearer {key}")] if key is not None else []
    if idempotency_key is not None:
        metadata.append(("idempotency-key", idempotency_key))
    request = service_pb2.ModelInferRequest(model_name=model, inputs=[
        service_pb2.ModelInferRequest.InferInputTensor(
            name=name, datatype="FP64", shape=[1], contents=service_pb2.InferTensorContents(fp64_contents=[value])
        )
        for name, value in IRIS.items()
    ])  # fmt: skip
    with grpc.insecure_channel(auth.stack.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        return stub.ModelInfer(request, metadata=metadata, timeout=30)


def grpc_refusal(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return raised.value.code()


def prediction_id(answer: service_pb2.ModelInferResponse) -> str:
    """The one row's id, from the raw BYTES output `prediction_ids` (a 4-byte little-endian length, then it)."""
    raw = answer.raw_output_contents[[o.name for o in answer.outputs].index("prediction_ids")]
    return str(raw[4 : 4 + int.from_bytes(raw[:4], "little")].decode())


def test_the_open_inference_protocol_asks_for_keys_and_keeps_history_private(auth: Auth) -> None:
    v2_sample = {"inputs": [{"name": k, "datatype": "FP64", "shape": [1], "data": [v]} for k, v in IRIS.items()]}
    with auth.client(None) as anonymous:
        assert anonymous.get("/v2/health/live").status_code == 200
        assert anonymous.get("/v2/health/ready").status_code == 200
        for path in ("/v2", "/v2/models/iris", "/v2/models/iris/ready"):
            assert anonymous.get(path).status_code == 401
        refused = anonymous.post("/v2/models/iris/infer", json=v2_sample)
        assert refused.status_code == 401 and "API key" in refused.json()["error"]
        assert refused.headers["www-authenticate"].startswith("Bearer")
    with auth.client(auth.alice) as alice:
        answered = alice.post("/v2/models/iris/infer", json=v2_sample)
        assert answered.status_code == 200, answered.text
        over_rest = next(o for o in answered.json()["outputs"] if o["name"] == "prediction_ids")["data"][0]
    # gRPC: the health calls are open, the others need the key in the metadata.
    with grpc.insecure_channel(auth.stack.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerLive(service_pb2.ServerLiveRequest()).live
        refusal = grpc_refusal(lambda: stub.ServerMetadata(service_pb2.ServerMetadataRequest()))
        assert refusal == grpc.StatusCode.UNAUTHENTICATED
    assert grpc_refusal(lambda: grpc_infer(auth, None)) == grpc.StatusCode.UNAUTHENTICATED
    assert grpc_refusal(lambda: grpc_infer(auth, "mlapi_not-a-key")) == grpc.StatusCode.UNAUTHENTICATED
    over_grpc = prediction_id(grpc_infer(auth, auth.bob))
    with auth.client(auth.alice) as alice, auth.client(auth.bob) as bob:
        assert alice.get(f"/predictions/{over_rest}").json()["key"] == "alice"
        assert bob.get(f"/predictions/{over_grpc}").json()["key"] == "bob"
        assert alice.get(f"/predictions/{over_grpc}").status_code == 404
        assert bob.get(f"/predictions/{over_rest}").status_code == 404
        assert over_grpc not in ids(alice) and over_rest not in ids(bob)
    restricted = create_key(auth.stack, "v2-iris-only", "--models", "iris")
    assert grpc_refusal(lambda: grpc_infer(auth, restricted, "diabetes-risk")) == grpc.StatusCode.PERMISSION_DENIED
    with auth.client(restricted) as client:
        assert client.get("/v2/models/diabetes-risk").status_code == 403
        assert client.post("/v2/models/diabetes-risk/infer", json={"inputs": []}).status_code == 403


def test_a_rate_limit_holds_over_grpc(auth: Auth) -> None:
    key = create_key(auth.stack, "grpc-limited", "--rate", "3/m")
    codes = []
    for _ in range(5):
        try:
            grpc_infer(auth, key)
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as e:
            codes.append(e.code())
    assert codes == [grpc.StatusCode.OK] * 3 + [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2


def test_concurrent_grpc_duplicates_with_one_idempotency_key_make_one_prediction(auth: Auth) -> None:
    key = create_key(auth.stack, "grpc-retrier")

    def call(_: int) -> str | grpc.StatusCode:
        try:
            return prediction_id(grpc_infer(auth, key, idempotency_key="grpc-order-1"))
        except grpc.RpcError as e:
            return e.code()

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(call, range(8)))
    answered = {o for o in outcomes if isinstance(o, str)}
    assert len(answered) == 1 and set(outcomes) - answered <= {grpc.StatusCode.ALREADY_EXISTS}
    assert prediction_id(grpc_infer(auth, key, idempotency_key="grpc-order-1")) in answered  # after: the answer
    with auth.client(auth.admin) as admin:
        assert ids(admin, key="grpc-retrier") == list(answered)


def test_a_key_labels_and_measures_only_its_own_predictions(auth: Auth) -> None:
    with auth.client(auth.alice) as alice, auth.client(auth.bob) as bob, auth.client(auth.admin) as admin:
        mine = predict(alice)
        assert bob.post(f"/predictions/{mine}/feedback", json={"label": 1}).status_code == 404
        batch = bob.post("/feedback", json={"items": [{"id": mine, "label": 1}]})
        assert batch.status_code == 422 and batch.json()["detail"][0]["status"] == 404
        assert alice.post(f"/predictions/{mine}/feedback", json={"label": 1}).status_code == 200
        theirs = predict(bob)
        assert bob.post(f"/predictions/{theirs}/feedback", json={"label": 0}).status_code == 200

        def labelled(client: httpx.Client) -> int:
            versions = client.get("/models/diabetes-risk/quality").json()["versions"]
            return sum(v["overall"]["labelled"] for v in versions)

        assert labelled(alice) >= 1 and labelled(bob) >= 1 and labelled(admin) >= labelled(alice) + labelled(bob)
        alice_total = alice.get("/predictions/stats").json()["total"]
        assert alice_total == len(ids(alice))
        assert admin.get("/predictions/stats").json()["total"] >= alice_total + 1
        assert bob.get("/predictions/stats", params={"key": "alice"}).status_code == 403
