"""The Python client and `mlapi models` on it: what they refuse before any network call, and what they send
(a small recording HTTP server stands in for the API here; tests/e2e/test_client.py uses the real one)."""

from __future__ import annotations

import json
import pickle
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import joblib  # type: ignore[import-untyped]
import numpy as np
import pandas as pd
import pytest
import skops.io
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression

from mlapi import runtimes
from mlapi.cli import main
from mlapi.client import ApiError, Client, ClientError, Unreachable
from mlapi.models.manage import prepare
from mlapi.models.spec import ModelSpec, SpecBody
from mlapi.runtimes.sklearn import SklearnModel
from mlapi.schemas import ModelSummary, VersionInfo
from tests.unit.test_infer import churn, churn_model

TREE_PREDICTOR = "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"


@dataclass
class Request:
    method: str
    path: str
    headers: Message
    body: bytes


@dataclass
class StubApi:
    """Answers each request with the next of `replies` while there are any, else with `status` and `reply`, and
    keeps what it received."""

    url: str = ""
    status: int = 200
    reply: Any = None
    replies: list[Any] = field(default_factory=list)
    received: list[Request] = field(default_factory=list)


@pytest.fixture
def api() -> Iterator[StubApi]:
    stub = StubApi()

    class Handler(BaseHTTPRequestHandler):
        def answer(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            stub.received.append(Request(self.command, self.path, self.headers, body))
            reply = json.dumps(stub.replies.pop(0) if stub.replies else stub.reply).encode()
            self.send_response(stub.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        do_GET = do_POST = do_PUT = do_DELETE = answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    stub.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield stub
    server.shutdown()
    server.server_close()
    thread.join()


def mlapi(*args: str | Path) -> int:
    """Run `mlapi ...` and return its exit status."""
    with pytest.raises(SystemExit) as exit:
        main([str(a) for a in args])
    return int(exit.value.code or 0)


@pytest.fixture
def boosted(tmp_path: Path) -> tuple[Any, Path, Path]:
    """A gradient-boosted classifier (it holds a type skops does not trust) saved with skops, and its data."""
    frame = churn()
    model = HistGradientBoostingClassifier(max_iter=10).fit(frame[["mean radius", "children"]], frame["churned"])
    skops.io.dump(model, tmp_path / "churn.skops")
    frame.to_csv(tmp_path / "churn.csv", index=False)
    return model, tmp_path / "churn.skops", tmp_path / "churn.csv"


def version_info(spec: SpecBody, version: int, default: bool) -> dict[str, Any]:
    info = VersionInfo(
        model="churn", version=version, default=default, runtime="sklearn", task=spec.task, sha256="0" * 64, size=1,
        trusted=spec.trusted, metrics=spec.metrics, created_at=datetime.now(UTC), status="ready", ready=1,
        load_errors={}, predict=f"/models/churn/versions/{version}/predict",
        spec=ModelSpec(**spec.model_dump(), name="churn", version=version),
    )  # fmt: skip
    return info.model_dump(mode="json")


def form_parts(request: Request) -> dict[str, tuple[str | None, bytes]]:
    """A multipart request's fields: name -> (file name, content)."""
    head = f"Content-Type: {request.headers['Content-Type']}\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + request.body)
    parts = {}
    for part in message.iter_parts():
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        parts[str(part.get_param("name", header="content-disposition"))] = (part.get_filename(), payload)
    return parts


def test_add_refuses_untrusted_types_before_any_network_call(
    boosted: tuple[Any, Path, Path], api: StubApi, capsys: pytest.CaptureFixture[str]
) -> None:
    _, artifact, data = boosted
    assert mlapi("models", "add", "churn", artifact, "--data", data, "--api", api.url) == 1
    error = capsys.readouterr().err
    assert f"types that skops does not trust by default:\n  {TREE_PREDICTOR}\n" in error
    assert f"pass --trust {TREE_PREDICTOR}" in error
    assert api.received == []


@pytest.mark.parametrize("save", ["pickle", "joblib"])
def test_add_refuses_pickles_before_any_network_call(
    save: str, tmp_path: Path, api: StubApi, capsys: pytest.CaptureFixture[str]
) -> None:
    frame = churn()
    model = LogisticRegression().fit(frame[["mean radius"]], frame["churned"])
    path = tmp_path / "model.pkl"
    if save == "pickle":
        path.write_bytes(pickle.dumps(model))
    else:
        joblib.dump(model, path, compress=3)
    assert mlapi("models", "add", "churn", path, "--api", api.url) == 1
    assert "pickle files are never loaded on a server; convert it on your machine with" in capsys.readouterr().err
    assert api.received == []


def test_add_refuses_data_that_lacks_the_model_features(
    boosted: tuple[Any, Path, Path], tmp_path: Path, api: StubApi, capsys: pytest.CaptureFixture[str]
) -> None:
    _, artifact, _ = boosted
    churn().drop(columns="children").to_csv(tmp_path / "other.csv", index=False)
    status = mlapi(
        "models",
        "add",
        "churn",
        artifact,
        "--data",
        tmp_path / "other.csv",
        "--trust",
        TREE_PREDICTOR,
        "--api",
        api.url,
    )
    assert status == 1
    assert "the data lacks columns the model takes: ['children']" in capsys.readouterr().err
    assert api.received == []


def test_add_uploads_the_artifact_with_its_inferred_spec(
    boosted: tuple[Any, Path, Path], api: StubApi, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, artifact, data = boosted
    expected = prepare("churn", artifact, data=data, target="churned", trust=[TREE_PREDICTOR]).spec
    api.status, api.reply = 201, version_info(expected, 3, default=True)
    monkeypatch.setenv("MLAPI_API_KEY", "secret-key")
    args: list[str | Path] = [
        "--data",
        data,
        "--target",
        "churned",
        "--trust",
        TREE_PREDICTOR,
        "--promote",
        "--api",
        api.url,
    ]
    assert mlapi("models", "add", "churn", artifact, *args) == 0
    assert capsys.readouterr().out == "churn version 3 (default)\n"
    (request,) = api.received
    assert (request.method, request.path) == ("POST", "/models/churn/versions?promote=true")
    assert request.headers["Authorization"] == "Bearer secret-key"
    parts = form_parts(request)
    assert parts["artifact"] == ("churn.skops", artifact.read_bytes())
    spec = SpecBody.model_validate_json(parts["spec"][1])
    assert spec == expected
    assert spec.trusted == [TREE_PREDICTOR] and spec.metrics["holdout_rows"] == 200


def test_from_pickle_converts_to_a_skops_artifact_that_loads(
    tmp_path: Path, api: StubApi, capsys: pytest.CaptureFixture[str]
) -> None:
    frame = churn()
    model = churn_model(frame)
    joblib.dump(model, tmp_path / "churn.joblib")
    frame.to_csv(tmp_path / "churn.csv", index=False)
    upload = prepare("churn", tmp_path / "churn.joblib", data=tmp_path / "churn.csv", from_pickle=True)
    assert "unpickling runs code from the file: only for files you made yourself" in capsys.readouterr().err
    assert upload.filename == "churn.skops"
    assert runtimes.check_format("sklearn", upload.artifact) is None
    served = runtimes.load(ModelSpec(**upload.spec.model_dump(), name="churn", version=1), upload.artifact)
    assert isinstance(served, SklearnModel)
    x = frame.drop(columns="churned").head(20)
    np.testing.assert_allclose(served.scores(x.to_dict("records")), model.predict_proba(x), rtol=0, atol=1e-12)  # type: ignore[arg-type]


def test_list_prints_a_table_of_the_models(api: StubApi, capsys: pytest.CaptureFixture[str]) -> None:
    common = {"description": "", "labels": [], "predict": "/p", "spec": "/s", "runtime": "sklearn"}
    models = [
        ModelSummary(name="iris", default_version=1, versions=[1], task="classification", ready=2, **common),
        ModelSummary(name="house-prices", default_version=2, versions=[1, 2, 3], task="regression", ready=0, **common),
    ]
    api.reply = [m.model_dump(mode="json") for m in models]
    assert mlapi("models", "list", "--api", api.url) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "VERSIONS", "DEFAULT", "RUNTIME", "TASK", "STATUS", "READY"]
    assert lines[1].split() == ["iris", "1", "1", "sklearn", "classification", "ready", "2"]
    assert lines[2].split() == ["house-prices", "1,2,3", "2", "sklearn", "regression", "no", "workers", "0"]
    assert lines[1].index("sklearn") == lines[2].index("sklearn")  # aligned columns


def test_promote_and_remove_send_their_request(api: StubApi, capsys: pytest.CaptureFixture[str]) -> None:
    assert mlapi("models", "promote", "churn", "2", "--api", api.url) == 0
    assert mlapi("models", "remove", "churn", "1", "--api", api.url) == 0
    assert mlapi("models", "remove", "churn", "--api", api.url) == 0
    assert [(r.method, r.path) for r in api.received] == [
        ("PUT", "/models/churn/default"),
        ("DELETE", "/models/churn/versions/1"),
        ("DELETE", "/models/churn"),
    ]
    assert json.loads(api.received[0].body) == {"version": 2}
    assert capsys.readouterr().out.splitlines() == [
        "churn version 2 is the default",
        "removed churn version 1",
        "removed churn",
    ]


def test_a_refusal_prints_the_server_detail_and_exits_1(api: StubApi, capsys: pytest.CaptureFixture[str]) -> None:
    api.status, api.reply = 409, {"detail": "version 1 is the default of churn: promote another first"}
    assert mlapi("models", "remove", "churn", "1", "--api", api.url) == 1
    assert "409 Conflict: version 1 is the default of churn: promote another first" in capsys.readouterr().err
    api.status, api.reply = 422, {"detail": [{"loc": ["body", "version"], "msg": "must be at least 1"}]}
    assert mlapi("models", "promote", "churn", "0", "--api", api.url) == 1
    assert "422 Unprocessable Entity: body.version: must be at least 1" in capsys.readouterr().err


def test_an_unreachable_api_or_a_bad_name_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:  # a port nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert mlapi("models", "list", "--api", f"http://127.0.0.1:{port}") == 1
    assert f"cannot reach the API at http://127.0.0.1:{port}" in capsys.readouterr().err
    assert mlapi("models", "remove", "../admin", "--api", f"http://127.0.0.1:{port}") == 1
    assert "'../admin' is not a model name" in capsys.readouterr().err


def test_a_spec_file_replaces_inference_but_not_the_trust_check(
    boosted: tuple[Any, Path, Path], tmp_path: Path, api: StubApi, capsys: pytest.CaptureFixture[str]
) -> None:
    _, artifact, data = boosted
    inferred = prepare("churn", artifact, data=data, trust=[TREE_PREDICTOR]).spec
    written = inferred.model_copy(update={"description": "Written by hand", "trusted": []})
    (tmp_path / "spec.json").write_text(written.model_dump_json())
    assert mlapi("models", "add", "churn", artifact, "--spec", tmp_path / "spec.json", "--api", api.url) == 1
    assert f"pass --trust {TREE_PREDICTOR}" in capsys.readouterr().err
    assert mlapi("models", "add", "churn", artifact, "--spec", tmp_path / "spec.json", "--data", data) == 1
    assert "--spec replaces inference" in capsys.readouterr().err
    assert api.received == []
    (tmp_path / "spec.json").write_text(written.model_copy(update={"trusted": [TREE_PREDICTOR]}).model_dump_json())
    upload = prepare("churn", artifact, spec=tmp_path / "spec.json")
    assert upload.spec == written.model_copy(update={"trusted": [TREE_PREDICTOR]})


# Other runtimes: told from the file's bytes; a file the runtime cannot open is refused before any network call.


def xgboost_file(tmp_path: Path) -> tuple[Path, Path]:
    import xgboost as xgb

    frame = churn()
    x = frame[["mean radius", "smoker", "children"]]
    model = xgb.XGBClassifier(n_estimators=5, max_depth=2).fit(x, (frame["churned"] == "yes").astype(int))
    model.save_model(tmp_path / "churn.json")
    frame.to_csv(tmp_path / "churn.csv", index=False)
    return tmp_path / "churn.json", tmp_path / "churn.csv"


def test_a_file_no_runtime_reads_is_refused_with_the_formats_read(
    tmp_path: Path, api: StubApi, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "model.bin").write_bytes(b"GIF89a, not a model")
    assert mlapi("models", "add", "churn", tmp_path / "model.bin", "--api", api.url) == 1
    error = capsys.readouterr().err
    assert f"cannot tell which runtime reads {tmp_path / 'model.bin'}: it is none of a skops file" in error
    assert "XGBoost" in error and "LightGBM" in error and "ONNX" in error
    (tmp_path / "empty.json").write_bytes(b"")
    assert mlapi("models", "add", "churn", tmp_path / "empty.json", "--api", api.url) == 1
    assert "empty.json is empty" in capsys.readouterr().err
    assert api.received == []


@pytest.mark.parametrize(
    ("filename", "content"),
    [
        ("broken.json", b'{"learner": {"attributes": {}, "gradient_booster": {"name": "gbtree", "model": {"tre'),
        ("broken.txt", b"tree\nversion=v4\nnum_class=1\nmax_feature_idx=3\nTree=0\nnum_leaves=oops\n"),
        ("broken.onnx", b"\x08\x07\x12\x07broken\x3a" + b"\xff" * 40),
    ],
)
def test_a_broken_file_of_each_format_is_refused_with_its_reason_before_any_network_call(
    filename: str, content: bytes, tmp_path: Path, api: StubApi, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / filename).write_bytes(content)
    runtime = runtimes.guess_runtime(content)
    assert runtime is not None
    assert mlapi("models", "add", "broken", tmp_path / filename, "--api", api.url) == 1
    error = capsys.readouterr().err
    library = {"xgboost": "XGBoost", "lightgbm": "LightGBM", "onnx": "ONNX"}[runtime]
    assert error.startswith(f"mlapi models add: {filename}: not a loadable {library} model: "), error
    assert "Traceback" not in error
    assert api.received == []


def test_trust_and_pickles_apply_to_skops_files_only(
    tmp_path: Path, api: StubApi, capsys: pytest.CaptureFixture[str]
) -> None:
    artifact, data = xgboost_file(tmp_path)
    assert mlapi("models", "add", "churn", artifact, "--data", data, "--trust", TREE_PREDICTOR) == 1
    assert "--trust applies to skops files (the sklearn runtime) only" in capsys.readouterr().err
    assert mlapi("models", "add", "churn", artifact, "--runtime", "xgboost", "--from-pickle") == 1
    assert "--from-pickle converts a pickle to skops: it applies to the sklearn runtime only" in capsys.readouterr().err
    assert mlapi("models", "add", "churn", artifact, "--runtime", "lightgbm", "--api", api.url) == 1
    assert "not a LightGBM model" in capsys.readouterr().err
    assert api.received == []


def test_add_infers_an_xgboost_spec_and_uploads_the_file_as_it_is(tmp_path: Path, api: StubApi) -> None:
    artifact, data = xgboost_file(tmp_path)
    frame = pd.read_csv(data).assign(left=lambda f: (f["churned"] == "yes").astype(int)).drop(columns="churned")
    frame.to_csv(data, index=False)
    upload = prepare("churn", artifact, data=data, target="left")
    assert (upload.filename, upload.artifact) == ("churn.json", artifact.read_bytes())
    assert (upload.spec.runtime, upload.spec.labels, upload.spec.trusted) == ("xgboost", ["0", "1"], [])
    assert [f.name for f in upload.spec.features] == ["mean radius", "smoker", "children"]  # recorded in the file
    api.status, api.reply = 201, version_info(upload.spec, 1, default=True)
    assert mlapi("models", "add", "churn", artifact, "--data", data, "--target", "left", "--api", api.url) == 0
    parts = form_parts(api.received[0])
    assert parts["artifact"] == ("churn.json", artifact.read_bytes())
    assert SpecBody.model_validate_json(parts["spec"][1]) == upload.spec


# The client in a notebook: in-memory models saved in their runtime's format, rows and answers, history, errors.


def test_in_memory_models_are_saved_in_their_runtime_s_format_with_their_classes() -> None:
    import lightgbm as lgb
    import xgboost as xgb

    frame = churn()
    x = frame[["mean radius", "smoker", "children"]]
    lgbm = lgb.LGBMClassifier(n_estimators=5, num_leaves=4, verbose=-1).fit(x, frame["churned"])
    upload = prepare("churn", lgbm, data=frame.drop(columns="city"), target="churned")
    assert (upload.filename, upload.spec.runtime, upload.spec.labels) == ("churn.txt", "lightgbm", ["no", "yes"])
    assert runtimes.check_format("lightgbm", upload.artifact) is None
    regressor = xgb.XGBRegressor(n_estimators=5).fit(x, frame["children"])
    upload = prepare("kids", regressor, data=x)
    assert (upload.filename, upload.spec.runtime, upload.spec.task) == ("kids.ubj", "xgboost", "regression")
    boosted = HistGradientBoostingClassifier(max_iter=5).fit(x, frame["churned"])
    upload = prepare("churn", boosted, data=frame.drop(columns="city"), target="churned")
    assert (upload.filename, upload.spec.runtime) == ("churn.skops", "sklearn")
    assert upload.spec.trusted == [TREE_PREDICTOR]  # the user's own in-memory model: its types are trusted
    with pytest.raises(ClientError, match="cannot save a dict: pass a scikit-learn estimator or pipeline"):
        prepare("churn", {"weights": [1, 2]})


def prediction(index: int, value: float) -> dict[str, Any]:
    return {
        "id": f"id-{index}", "model": "house", "model_version": "2", "task": "regression", "prediction": value,
        "created_at": datetime.now(UTC).isoformat(), "warnings": [],
    }  # fmt: skip


def test_predict_sends_rows_as_json_instances_in_batches_and_returns_the_answers_in_order(
    api: StubApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLAPI_API_URL", api.url)
    monkeypatch.setenv("MLAPI_API_KEY", "from-env")
    frame = pd.DataFrame({"rooms": np.arange(300, dtype=np.int64), "area": np.linspace(20, 200, 300)})
    frame.loc[1, "area"] = np.nan
    api.replies = [
        {"predictions": [prediction(i, float(i)) for i in range(256)]},
        {"predictions": [prediction(i, float(i)) for i in range(256, 300)]},
        {"predictions": [prediction(0, 1.5)]},
    ]
    with Client() as client:
        answers = client.predict("house", frame, version=2)
        single = client.predict("house", {"rooms": np.int64(3), "area": np.float32(50.0), "garden": np.bool_(True)})
    assert [a.prediction for a in answers] == list(range(300)) and single[0].prediction == 1.5
    first, second, third = api.received
    assert (first.method, first.path, third.path) == (
        "POST",
        "/models/house/versions/2/predict",
        "/models/house/predict",
    )
    assert first.headers["Authorization"] == "Bearer from-env"
    sent = json.loads(first.body)["instances"]
    assert len(sent) == 256 and len(json.loads(second.body)["instances"]) == 44
    assert sent[:2] == [{"rooms": 0, "area": 20.0}, {"rooms": 1, "area": None}]  # a missing value is null
    assert json.loads(third.body) == {"instances": [{"rooms": 3, "area": 50.0, "garden": 1}]}


def test_history_follows_the_cursor_up_to_the_limit(api: StubApi) -> None:
    record = {
        "model": "house", "model_version": "1", "task": "regression", "status": "done", "features": {"rooms": 1},
        "prediction": 1.0, "label": None, "probability": None, "probabilities": None, "warnings": [], "error": None,
        "created_at": datetime.now(UTC).isoformat(), "completed_at": None,
    }  # fmt: skip
    api.replies = [
        {"items": [record | {"id": f"a{i}"} for i in range(3)], "next_cursor": "page-2"},
        {"items": [record | {"id": f"b{i}"} for i in range(2)], "next_cursor": "page-3"},
    ]
    since = datetime(2025, 1, 2, tzinfo=UTC)
    with Client(api.url) as client:
        records = client.history(model="house", limit=5, since=since)
    assert [r.id for r in records] == ["a0", "a1", "a2", "b0", "b1"]
    queries = [parse_qs(urlsplit(r.path).query) for r in api.received]
    assert queries[0] == {"model": ["house"], "limit": ["5"], "since": [since.isoformat()]}
    assert queries[1] == {"model": ["house"], "limit": ["2"], "since": [since.isoformat()], "cursor": ["page-2"]}


def test_an_error_status_raises_api_error_with_the_server_s_detail(api: StubApi) -> None:
    api.status, api.reply = 404, {"detail": "no model 'nope'"}
    with Client(api.url, api_key="") as client, pytest.raises(ApiError) as raised:
        client.predict("nope", {"x": 1})
    assert (raised.value.status, raised.value.detail) == (404, "no model 'nope'")
    assert str(raised.value) == "404 Not Found: no model 'nope'"
    assert "Authorization" not in api.received[0].headers
    with Client(api.url) as client, pytest.raises(ClientError, match="is not a model name"):
        client.versions("../admin")
    with Client(api.url) as client, pytest.raises(ClientError, match="no rows to predict"):
        client.predict("house", [])


def test_an_unreachable_api_raises_unreachable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with Client(f"http://127.0.0.1:{port}") as client, pytest.raises(Unreachable, match="cannot reach the API"):
        client.models()
