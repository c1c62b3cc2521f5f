"""The Open Inference Protocol v2 end to end: tritonclient (HTTP binary, HTTP JSON and gRPC) against real `mlapi api`
and `mlapi worker` processes, answers compared with the JSON API's and found in the history.

tritonclient.grpc registers the protocol's messages in protobuf's default pool, so this process never imports
`mlapi.oip.proto`: hand-made gRPC requests use tritonclient's own messages (`service_pb2`).
"""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeAlias

import grpc
import httpx
import numpy as np
import pandas as pd
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from sklearn.datasets import load_diabetes
from sklearn.linear_model import LinearRegression
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from mlapi.client import Client
from tests.conftest import DATASET, Stack, StackFactory, wait_until
from tests.e2e.test_client import churn, churn_model

pytestmark = pytest.mark.e2e
TRANSPORTS = ["http-binary", "http-json", "grpc"]
NUMPY = {"BYTES": np.object_, "INT64": np.int64, "FP64": np.float64, "FP32": np.float32, "INT32": np.int32}
MAX_ROWS = 100
"""The stack's `max_instances`: rows one request may carry."""
TritonClient: TypeAlias = Any
"""tritonclient's HTTP or gRPC client (tritonclient has no type hints)."""


@pytest.fixture(scope="module")
def stack(stack_factory: StackFactory) -> Stack:
    stack = stack_factory(MLAPI_API__MAX_INSTANCES=str(MAX_ROWS))
    stack.start_api()
    stack.start_worker()  # every model, those added later included
    stack.wait_ready()
    with httpx.Client(base_url=stack.url) as client:
        wait_until(lambda: client.get("/models/iris").json().get("versions") is not None, 10, "the registry")
    return stack


@pytest.fixture
def http(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    """64 rows of the diabetes data set, `"No Info"` smoking histories among them."""
    frame = pd.read_csv(DATASET, nrows=64).drop(columns="diabetes")
    assert (frame["smoking_history"] == "No Info").any()
    return frame


def triton(stack: Stack, transport: str) -> TritonClient:
    if transport == "grpc":
        return grpcclient.InferenceServerClient(stack.grpc_url)
    return httpclient.InferenceServerClient(stack.url.removeprefix("http://"))


def metadata(client: TritonClient, model: str, version: str = "") -> dict[str, Any]:
    if isinstance(client, grpcclient.InferenceServerClient):
        return client.get_model_metadata(model, version, as_json=True)  # type: ignore[no-any-return]
    return client.get_model_metadata(model, version)  # type: ignore[no-any-return]


def infer(
    client: TritonClient, model: str, frame: pd.DataFrame, version: str = "", binary: bool = True, **kw: Any
) -> tuple[Any, dict[str, Any]]:
    """The model's answer for a frame, its columns sent as the metadata declares them; the result and its JSON."""
    grpc_client = isinstance(client, grpcclient.InferenceServerClient)
    module: Any = grpcclient if grpc_client else httpclient
    tensors = []
    for meta in metadata(client, model, version)["inputs"]:
        tensor = module.InferInput(meta["name"], [len(frame)], meta["datatype"])
        values = frame[meta["name"]].to_numpy().astype(NUMPY[meta["datatype"]])
        tensor.set_data_from_numpy(values) if grpc_client else tensor.set_data_from_numpy(values, binary_data=binary)
        tensors.append(tensor)
    if not binary:  # JSON answers too: name the outputs, each with binary_data off
        names = [o["name"] for o in metadata(client, model, version)["outputs"]]
        kw["outputs"] = [httpclient.InferRequestedOutput(name, binary_data=False) for name in names]
    result = client.infer(model, tensors, model_version=version, **kw)
    return result, result.get_response(as_json=True) if grpc_client else result.get_response()


def answer(stack: Stack, transport: str, model: str, frame: pd.DataFrame, **kw: Any) -> tuple[Any, dict[str, Any]]:
    client = triton(stack, transport)
    try:
        return infer(client, model, frame, binary=transport != "http-json", **kw)
    finally:
        client.close()


def text(values: Any) -> list[str]:
    """A BYTES output's elements: bytes from binary or gRPC answers, text from JSON ones."""
    return [v.decode() if isinstance(v, bytes) else v for v in values]


def json_api(http: httpx.Client, model: str, frame: pd.DataFrame) -> list[dict[str, Any]]:
    response = http.post(f"/models/{model}/predict", json={"instances": frame.to_dict("records")})
    assert response.status_code == 200, response.text
    return response.json()["predictions"]  # type: ignore[no-any-return]


# ---- health and metadata --------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_live_ready_and_metadata(stack: Stack, transport: str) -> None:
    client = triton(stack, transport)
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("diabetes-risk") and client.is_model_ready("diabetes-risk", "1")
        for model, version in (("diabetes-risk", "7"), ("nothing", "")):
            if transport == "http":  # any status but 200 is "not ready"; the protocol's 404 here
                assert not client.is_model_ready(model, version)
            else:
                with pytest.raises(InferenceServerException) as unknown:
                    client.is_model_ready(model, version)
                assert unknown.value.status() == "StatusCode.NOT_FOUND"
        server = client.get_server_metadata(**({"as_json": True} if transport == "grpc" else {}))
        assert server["name"] == "mlapi" and "binary_tensor_data" in server["extensions"]
        meta = metadata(client, "diabetes-risk")
        assert meta["name"] == "diabetes-risk" and meta["versions"] == ["1"] and meta["platform"] == "sklearn"
        inputs = {i["name"]: (i["datatype"], [int(d) for d in i["shape"]]) for i in meta["inputs"]}
        assert inputs == {
            "gender": ("BYTES", [-1]), "age": ("FP64", [-1]), "hypertension": ("INT64", [-1]),
            "heart_disease": ("INT64", [-1]), "smoking_history": ("BYTES", [-1]), "bmi": ("FP64", [-1]),
            "HbA1c_level": ("FP64", [-1]), "blood_glucose_level": ("FP64", [-1]),
        }  # fmt: skip
        outputs = {o["name"]: (o["datatype"], [int(d) for d in o["shape"]]) for o in meta["outputs"]}
        assert outputs == {"prediction": ("INT64", [-1]), "label": ("BYTES", [-1]),
                           "probabilities": ("FP64", [-1, 2]), "prediction_ids": ("BYTES", [-1])}  # fmt: skip
        assert metadata(client, "diabetes-risk", "1") == meta
        with pytest.raises(InferenceServerException) as unknown:
            metadata(client, "nothing")
        assert "nothing" in str(unknown.value.message())
        with pytest.raises(InferenceServerException):
            metadata(client, "diabetes-risk", "7")
    finally:
        client.close()


def test_rest_answers_are_exactly_200_and_errors_are_the_protocols(http: httpx.Client) -> None:
    for path in ("/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/iris", "/v2/models/iris/ready"):
        assert http.get(path).status_code == 200, path
    for path in ("/v2/models/nothing", "/v2/models/iris/versions/9", "/v2/models/iris/versions/x/ready"):
        response = http.get(path)
        assert response.status_code == 404 and set(response.json()) == {"error"}, path
    assert http.post("/v2/models/nothing/infer", json={"inputs": []}).json()["error"].startswith("unknown model")
    assert http.get("/models/nothing").json().keys() == {"detail"}  # the JSON API keeps its own format


# ---- inference --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("n", [1, 64])
def test_infer_answers_as_the_json_api_and_stores_every_row(
    stack: Stack, http: httpx.Client, rows: pd.DataFrame, transport: str, n: int
) -> None:
    frame = rows.head(n)
    result, response = answer(stack, transport, "diabetes-risk", frame, request_id=f"req-{transport}-{n}")
    assert response["model_name"] == "diabetes-risk" and response["model_version"] == "1"
    assert response["id"] == f"req-{transport}-{n}"
    expected = json_api(http, "diabetes-risk", frame)
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (n, 2) and probabilities.dtype == np.float64
    assert probabilities.tolist() == [[p["probabilities"][k] for k in ("no diabetes", "diabetes")] for p in expected]
    assert result.as_numpy("prediction").tolist() == [p["prediction"] for p in expected]
    assert text(result.as_numpy("label")) == [p["label"] for p in expected]
    ids = text(result.as_numpy("prediction_ids"))
    assert len(set(ids)) == n
    for prediction_id, p in zip(ids, expected, strict=True):
        record = http.get(f"/predictions/{prediction_id}").json()
        assert record["status"] == "done" and record["model"] == "diabetes-risk"
        assert record["probabilities"] == p["probabilities"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_versions_outputs_and_ids(stack: Stack, rows: pd.DataFrame, transport: str) -> None:
    client = triton(stack, transport)
    module: Any = grpcclient if transport == "grpc" else httpclient
    try:
        wanted = [module.InferRequestedOutput("label"), module.InferRequestedOutput("prediction_ids")]
        result, response = infer(client, "diabetes-risk", rows.head(3), version="1", outputs=wanted)
        assert [o["name"] for o in response["outputs"]] == ["label", "prediction_ids"]
        assert response["model_version"] == "1" and response["id"]  # no id asked: the job's id
        assert result.as_numpy("probabilities") is None and len(result.as_numpy("label")) == 3
        with pytest.raises(InferenceServerException) as missing:
            infer(client, "diabetes-risk", rows.head(1), version="2")
        assert "no version" in str(missing.value.message())
    finally:
        client.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_all_numeric_model_takes_one_matrix_input(stack: Stack, http: httpx.Client, transport: str) -> None:
    features = [f["name"] for f in http.get("/models/iris").json()["features"]]
    frame = pd.DataFrame([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]], columns=features)
    client = triton(stack, transport)
    module: Any = grpcclient if transport == "grpc" else httpclient
    try:
        for datatype, dtype in (("FP64", np.float64), ("FP32", np.float32)):
            matrix = module.InferInput("input", [3, 4], datatype)
            values = frame.to_numpy().astype(dtype)
            matrix.set_data_from_numpy(values) if transport == "grpc" else matrix.set_data_from_numpy(
                values, binary_data=transport == "http-binary"
            )
            result = client.infer("iris", [matrix])
            expected = json_api(http, "iris", pd.DataFrame(values.astype(np.float64), columns=features))
            assert text(result.as_numpy("label")) == [p["label"] for p in expected]
            assert result.as_numpy("probabilities").tolist() == [list(p["probabilities"].values()) for p in expected]
    finally:
        client.close()


def test_a_model_added_through_the_registry_is_predicted_by_tritonclient(stack: Stack, http: httpx.Client) -> None:
    """A classifier on a category, a whole number and a number, and a regressor, added while the system runs."""
    frame = churn()
    x = frame.drop(columns="churned")
    model = churn_model(frame, 1.0)
    diabetes = load_diabetes(as_frame=True).frame
    rx = diabetes.drop(columns="target")
    regressor = LinearRegression().fit(rx, diabetes["target"])
    with Client(stack.url) as api:
        added = api.add_model("oip-churn", model, data=frame, target="churned")
        assert {f.name: (f.kind, f.integer) for f in added.spec.features}["support calls"] == ("number", True)
        api.add_model("oip-progress", regressor, data=diabetes, target="target")
        wait_until(lambda: api.version("oip-churn", 1).ready and api.version("oip-progress", 1).ready, 10, "serving")
    for transport in TRANSPORTS:
        client = triton(stack, transport)
        try:
            assert [i["datatype"] for i in metadata(client, "oip-churn")["inputs"]] == ["FP64", "INT64", "BYTES"]
            result, _ = infer(client, "oip-churn", x.head(20), binary=transport != "http-json")
            assert text(result.as_numpy("label")) == model.predict(x.head(20)).tolist()
            assert result.as_numpy("probabilities") == pytest.approx(model.predict_proba(x.head(20)), rel=1e-9)
            result, response = infer(client, "oip-progress", rx.head(5), binary=transport != "http-json")
            assert [o["name"] for o in response["outputs"]] == ["prediction", "prediction_ids"]
            assert result.as_numpy("prediction") == pytest.approx(regressor.predict(rx.head(5)), rel=1e-9)
        finally:
            client.close()


# ---- bad input ------------------------------------------------------------------------------------------------


def body(frame: pd.DataFrame, **changes: dict[str, Any]) -> dict[str, Any]:
    """A JSON infer request for diabetes-risk, with some inputs changed (a None value drops the input)."""
    inputs = []
    for name, column in frame.items():
        flag = name in ("hypertension", "heart_disease")
        datatype = "BYTES" if pd.api.types.is_string_dtype(column) else "INT64" if flag else "FP64"
        tensor = {"name": name, "datatype": datatype, "shape": [len(frame)], "data": column.tolist()}
        if name in changes:
            if changes[name] is None:
                continue
            tensor.update(changes[name])
        inputs.append(tensor)
    return {"inputs": inputs}


BAD_JSON: list[tuple[str, dict[str, Any], str]] = [
    ("wrong datatype", {"gender": {"datatype": "FP64", "data": [1.0]}}, "'gender' has datatype 'FP64'"),
    ("unknown datatype", {"age": {"datatype": "FP16"}}, "'age' has datatype 'FP16'"),
    ("wrong shape", {"age": {"shape": [1, 2], "data": [1.0, 2.0]}}, "'age' has shape [1, 2]"),
    ("too few values", {"age": {"data": []}}, "'age' holds 0 values"),
    ("ragged values", {"age": {"shape": [1, 1], "data": [[1.0, 2.0]]}}, "'age' holds 2 values"),
    ("a string in numbers", {"bmi": {"data": ["x"]}}, "'bmi'"),
    ("a float in a flag", {"hypertension": {"data": [0.5]}}, "'hypertension'"),
    ("a flag out of range", {"hypertension": {"data": [2]}}, "input 'hypertension', row 0"),
    ("an unknown category", {"gender": {"data": ["Robot"]}}, "input 'gender', row 0"),
    ("a negative age", {"age": {"data": [-3.0]}}, "input 'age', row 0"),
    ("missing input", {"bmi": None}, "missing input(s): 'bmi'"),
    ("no data", {"bmi": {"data": None}}, "'bmi' has neither"),
    ("rows differ", {"bmi": {"shape": [2], "data": [20.0, 21.0]}}, "input 'bmi' has 2 rows"),
    ("shared memory", {"bmi": {"parameters": {"shared_memory_region": "r"}}}, "input 'bmi': shared memory"),
]


@pytest.mark.parametrize(("case", "changes", "named"), BAD_JSON, ids=[c[0] for c in BAD_JSON])
def test_bad_json_input_is_a_400_naming_it(
    http: httpx.Client, rows: pd.DataFrame, case: str, changes: dict[str, Any], named: str
) -> None:
    response = http.post("/v2/models/diabetes-risk/infer", json=body(rows.head(1), **changes))
    assert response.status_code == 400 and named in response.json()["error"], response.text


def test_bad_requests_are_400s(http: httpx.Client, rows: pd.DataFrame) -> None:
    url = "/v2/models/diabetes-risk/infer"
    good = body(rows.head(1))

    def refused(content: bytes, headers: dict[str, str] | None = None) -> str:
        response = http.post(url, content=content, headers=headers)
        assert response.status_code == 400, response.text
        return str(response.json()["error"])

    assert "malformed" in refused(b"{not json")
    assert "$.inputs[0].shape" in refused(b'{"inputs": [{"name": "age", "datatype": "FP64", "shape": "x"}]}')
    assert "unknown input 'colour'" in refused(httpx.Request("POST", "/", json={"inputs": [
        *good["inputs"], {"name": "colour", "datatype": "BYTES", "shape": [1], "data": ["red"]}]}).read())  # fmt: skip
    big = body(rows.sample(MAX_ROWS + 1, replace=True, random_state=1))
    assert f"at most {MAX_ROWS}" in refused(httpx.Request("POST", "/", json=big).read())
    for outputs, reason in (([{"name": "colour"}], "unknown output 'colour'"),
                            ([{"name": "label", "parameters": {"classification": 2}}], "classification")):  # fmt: skip
        assert reason in refused(httpx.Request("POST", "/", json={**good, "outputs": outputs}).read())

    def framed(raw: bytes, size: int, after: bytes = b"") -> tuple[bytes, dict[str, str]]:
        """Triton's binary extension: `gender` as `size` raw bytes after the JSON header."""
        binary = {"data": None, "parameters": {"binary_data_size": size}}
        header = httpx.Request("POST", "/", json=body(rows.head(1), gender=binary)).read()
        return header + raw + after, {"Inference-Header-Content-Length": str(len(header))}

    male = b"\x04\x00\x00\x00Male"
    content, headers = framed(male, len(male))
    assert http.post(url, content=content, headers=headers).status_code == 200
    assert "within the body" in refused(content, {"Inference-Header-Content-Length": str(len(content) + 1)})
    assert "run past the body's end" in refused(*framed(b"\x04\x00", 8))
    assert "'gender': a BYTES element of 200 bytes" in refused(*framed(b"\xc8\x00\x00\x00Male", 8))
    assert "'gender': BYTES data end inside" in refused(*framed(male + b"\x01", 9))
    assert "after the inputs' binary data" in refused(*framed(male, len(male), after=b"extra"))
    assert "UTF-8" in refused(*framed(b"\x05\x00\x00\x00\xffMale", 9))
    assert "Content-Encoding" in refused(b"\x1f\x8b", {"Content-Encoding": "gzip"})


def typed_request(row: pd.Series, **changes: Any) -> service_pb2.ModelInferRequest:
    """A diabetes-risk row in a gRPC request's typed contents, with some inputs changed (`changes[name](tensor)`)."""
    message = service_pb2.ModelInferRequest(model_name="diabetes-risk")
    for name, value in row.items():
        tensor = message.inputs.add(name=name, shape=[1])
        if isinstance(value, str):
            tensor.datatype, tensor.contents.bytes_contents[:] = "BYTES", [value.encode()]
        elif name in ("hypertension", "heart_disease"):
            tensor.datatype, tensor.contents.int64_contents[:] = "INT64", [int(value)]
        else:
            tensor.datatype, tensor.contents.fp64_contents[:] = "FP64", [float(value)]
        if name in changes:
            changes[name](tensor)
    return message


def test_bad_grpc_input_is_invalid_argument_naming_it(stack: Stack, rows: pd.DataFrame) -> None:
    with grpc.insecure_channel(stack.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

        def request(**changes: Any) -> service_pb2.ModelInferRequest:
            return typed_request(rows.iloc[0], **changes)

        answer = stub.ModelInfer(request())  # typed contents are a valid request
        assert [o.name for o in answer.outputs] == ["prediction", "label", "probabilities", "prediction_ids"]
        assert len(answer.raw_output_contents) == 4

        def refused(
            message: service_pb2.ModelInferRequest, code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT
        ) -> str:
            with pytest.raises(grpc.RpcError) as error:
                stub.ModelInfer(message)
            assert error.value.code() == code, error.value.details()
            return str(error.value.details())

        def set_(field: str, value: Any) -> Any:
            return lambda tensor: setattr(tensor, field, value)

        assert "'gender' has datatype 'INT64'" in refused(request(gender=set_("datatype", "INT64")))
        assert "input 'age', row 0" in refused(request(age=lambda t: t.contents.fp64_contents.__setitem__(0, -1.0)))
        assert "'age' holds 0 values" in refused(request(age=lambda t: t.contents.ClearField("fp64_contents")))
        assert "'bmi' has shape [1, 3]" in refused(request(bmi=lambda t: t.shape.append(3)))
        mixed = request()
        mixed.raw_input_contents.append(b"\x00" * 8)
        assert "raw_input_contents for 8 inputs" in refused(mixed)
        assert "unknown model" in refused(
            service_pb2.ModelInferRequest(model_name="nothing"), grpc.StatusCode.NOT_FOUND
        )
        versioned = request()
        versioned.model_version = "3"
        assert "no version 3" in refused(versioned, grpc.StatusCode.NOT_FOUND)


def test_a_frozen_worker_means_504s_with_ids_then_503s_at_once(stack: Stack, rows: pd.DataFrame) -> None:
    """While the only worker is frozen (SIGSTOP) but still counts as live, requests wait and time out: 504 and
    DEADLINE_EXCEEDED, with their ids. Once its heartbeat is stale, requests are refused at once: 503 with
    Retry-After, and UNAVAILABLE. Thawed, it answers what waited: every id given out ends `done`, before the
    visibility timeout (30 s) would let a reclaim find an entry the frozen read had taken and lost."""
    (worker,) = stack.workers
    url = f"{stack.url}/v2/models/diabetes-risk/infer"
    with (
        grpc.insecure_channel(stack.grpc_url) as channel,
        httpx.Client(timeout=60) as http,
        ThreadPoolExecutor(2) as pool,
    ):
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        message = typed_request(rows.iloc[0])
        worker.send_signal(signal.SIGSTOP)
        try:
            late_rest = pool.submit(http.post, url, json=body(rows.head(1)))
            late_grpc = pool.submit(stub.ModelInfer, message)
            wait_until(lambda: http.get(f"{stack.url}/v2/models/diabetes-risk/ready").status_code != 200, 30, "stale")
            refused = http.post(url, json=body(rows.head(1)))
            assert refused.status_code == 503 and "no live worker" in refused.json()["error"], refused.text
            assert float(refused.headers["Retry-After"]) > 0
            with pytest.raises(grpc.RpcError) as unavailable:
                stub.ModelInfer(message)
            assert unavailable.value.code() == grpc.StatusCode.UNAVAILABLE, unavailable.value.details()

            timed_out = late_rest.result()
            assert timed_out.status_code == 504, timed_out.text
            ids = timed_out.json()["ids"]
            with pytest.raises(grpc.RpcError) as deadline:
                late_grpc.result()
            assert deadline.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, deadline.value.details()
            ids += re.findall(r"[0-9a-f]{8}-[0-9a-f-]{27}", str(deadline.value.details()))
            assert len(ids) == 2
        finally:
            worker.send_signal(signal.SIGCONT)

        def done() -> bool:
            return all(http.get(f"{stack.url}/predictions/{i}").json().get("status") == "done" for i in ids)

        wait_until(done, 20, "every id given out to be done")
        stack.wait_ready()
