"""Spec inference on the user's machine, and `mlapi models`: what it refuses before any network call, and what
it sends to the API (a small recording HTTP server stands in for it here; the end-to-end suite uses the real one)."""

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

import joblib  # type: ignore[import-untyped]
import numpy as np
import pandas as pd
import pytest
import skops.io
from sklearn.base import BaseEstimator
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_iris
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import brier_score_loss, f1_score, mean_absolute_error, r2_score, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder

from mlapi import runtimes
from mlapi.cli import main
from mlapi.models.infer import InferError, infer_spec
from mlapi.models.manage import prepare
from mlapi.models.spec import ModelSpec, SpecBody
from mlapi.runtimes.sklearn import SklearnModel
from mlapi.schemas import ModelSummary, VersionInfo

TREE_PREDICTOR = "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"


def churn(n: int = 200) -> pd.DataFrame:
    """A frame with every kind of column: a number, a 0/1 flag, a whole number, text, and a text target."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "mean radius": rng.normal(14, 3, n).round(2),
            "smoker": rng.integers(0, 2, n),
            "children": rng.integers(0, 5, n),
            "city": rng.choice(["Oslo", "Bergen", "Tromsø"], n),
        }
    )
    score = frame["mean radius"] + 3 * frame["smoker"] - frame["children"] + rng.normal(0, 2, n)
    frame["churned"] = np.where(score > 14, "yes", "no")
    return frame


def churn_model(frame: pd.DataFrame) -> Any:
    encode = ColumnTransformer([("city", OneHotEncoder(handle_unknown="ignore"), ["city"])], remainder="passthrough")
    return make_pipeline(encode, LogisticRegression(max_iter=1000)).fit(frame.drop(columns="churned"), frame["churned"])


class Threshold(BaseEstimator):  # type: ignore[misc]
    """A hand-made model that records no classes and that scikit-learn cannot tell the task of."""

    def fit(self, x: np.ndarray, y: object = None) -> Threshold:
        self.n_features_in_ = x.shape[1]
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.where(x[:, 0] > 0.5, 10, 2)


def test_kinds_ranges_example_labels_and_metrics_come_from_the_data() -> None:
    frame = churn()
    model = churn_model(frame)
    spec = infer_spec(model, frame, "churned", None, "Who leaves", [])
    radius, smoker, children, city = spec.features
    assert [f.name for f in spec.features] == ["mean radius", "smoker", "children", "city"]
    assert (radius.kind, radius.integer, radius.minimum, radius.maximum) == ("number", False, None, None)
    assert radius.training_range == (frame["mean radius"].min(), frame["mean radius"].max())
    assert smoker.kind == "flag"
    assert (children.kind, children.integer, children.training_range) == ("number", True, (0.0, 4.0))
    assert (city.kind, city.values) == ("category", ["Bergen", "Oslo", "Tromsø"])
    assert spec.example == frame.drop(columns="churned").iloc[0].to_dict()
    assert (spec.task, spec.labels, spec.description) == ("classification", ["no", "yes"], "Who leaves")
    x, y = frame.drop(columns="churned"), frame["churned"] == "yes"
    probabilities = model.predict_proba(x)[:, 1]
    assert spec.metrics == pytest.approx(
        {
            "accuracy": model.score(x, frame["churned"]),
            "f1": f1_score(y, model.predict(x) == "yes"),
            "roc_auc": roc_auc_score(y, probabilities),
            "brier": brier_score_loss(y, probabilities),
            "holdout_rows": 200,
        }
    )
    assert 0.7 < spec.metrics["accuracy"] < 1 and spec.metrics["roc_auc"] > 0.8
    assert spec.data is not None and spec.data.rows == 200
    assert spec.framework.keys() == {"scikit-learn", "skops", "numpy"}


def test_multiclass_metrics_are_one_vs_rest_macro_and_the_mean_squared_error_of_the_one_hot() -> None:
    x, y = load_iris(as_frame=True, return_X_y=True)
    model = LogisticRegression(max_iter=1000).fit(x, y)
    frame = x.assign(species=y)
    spec = infer_spec(model, frame, "species", None, "", [])
    probabilities = model.predict_proba(x)
    assert spec.labels == ["0", "1", "2"]
    assert spec.metrics["roc_auc"] == pytest.approx(roc_auc_score(y, probabilities, multi_class="ovr"))
    assert spec.metrics["f1"] == pytest.approx(f1_score(y, model.predict(x), average="macro"))
    assert spec.metrics["brier"] == pytest.approx(np.mean((probabilities - np.eye(3)[y]) ** 2))
    assert 0 < spec.metrics["brier"] < 0.1


def test_feature_names_come_from_the_artifact_where_it_records_them() -> None:
    frame = churn()
    model = LogisticRegression().fit(frame[["children", "mean radius"]], frame["churned"])
    spec = infer_spec(model, frame, "churned", None, "", [])
    assert [f.name for f in spec.features] == ["children", "mean radius"]  # the model's order; others ignored
    with pytest.raises(InferError, match=r"the data lacks columns the model takes: \['mean radius'\]"):
        infer_spec(model, frame.drop(columns="mean radius"), None, None, "", [])


def test_without_recorded_names_the_data_columns_are_the_features_in_order() -> None:
    frame = churn()[["smoker", "mean radius", "churned"]]
    model = LogisticRegression().fit(frame[["smoker", "mean radius"]].to_numpy(), frame["churned"])
    spec = infer_spec(model, frame, "churned", None, "", [])
    assert [(f.name, f.kind) for f in spec.features] == [("smoker", "flag"), ("mean radius", "number")]
    assert spec.metrics["accuracy"] == pytest.approx(
        model.score(frame[["smoker", "mean radius"]].to_numpy(), frame["churned"])
    )
    with pytest.raises(InferError, match="the model takes 2 features, but the data has 3 columns"):
        infer_spec(model, churn()[["smoker", "mean radius", "children"]], None, None, "", [])
    with pytest.raises(InferError, match=r"does not record its feature names .* pass --data"):
        infer_spec(model, None, None, None, "", [])


def test_without_data_every_feature_is_a_number_with_example_zero() -> None:
    frame = churn()
    model = LinearRegression().fit(frame[["mean radius", "children"]], frame["smoker"])
    spec = infer_spec(model, None, None, None, "", [])
    assert [(f.kind, f.example, f.training_range) for f in spec.features] == [("number", 0.0, None)] * 2
    assert (spec.task, spec.labels, spec.metrics, spec.data) == ("regression", [], {}, None)
    with pytest.raises(InferError, match="--target needs --data"):
        infer_spec(model, None, "smoker", None, "", [])


def test_labels_come_from_the_sorted_target_values_where_the_model_records_no_classes() -> None:
    x = np.array([[0.1], [0.9], [0.7], [0.2], [0.3]])
    frame = pd.DataFrame({"share": x[:, 0], "band": [2, 10, 10, 1, 2]})
    model = Threshold().fit(x)
    with pytest.raises(InferError, match="cannot tell whether Threshold is a classifier or a regressor: pass --task"):
        infer_spec(model, frame, "band", None, "", [])
    spec = infer_spec(model, frame, "band", "classification", "", [])
    assert spec.labels == ["1", "2", "10"]  # sorted as numbers, not as text
    assert spec.metrics == {"accuracy": 0.8, "f1": pytest.approx(0.6), "holdout_rows": 5}


def test_a_task_that_conflicts_with_the_artifact_is_refused() -> None:
    frame = churn()
    model = LinearRegression().fit(frame[["mean radius"]], frame["children"])
    with pytest.raises(InferError, match="--task classification conflicts with the artifact, which holds a regression"):
        infer_spec(model, frame, None, "classification", "", [])


def test_regression_metrics_and_a_target_with_gaps() -> None:
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"x": rng.uniform(0, 10, 300)})
    frame["y"] = 3 * frame["x"] + rng.normal(0, 1, 300)
    frame.loc[5, "y"] = np.nan  # rows without a true answer are left out of the metrics
    known = frame.dropna()
    model = LinearRegression().fit(known[["x"]], known["y"])
    spec = infer_spec(model, frame, "y", None, "", [])
    predicted = model.predict(known[["x"]])
    assert spec.metrics["holdout_rows"] == 299
    assert spec.metrics["mae"] == pytest.approx(mean_absolute_error(known["y"], predicted))
    assert spec.metrics["rmse"] == pytest.approx(np.sqrt(np.mean((known["y"] - predicted) ** 2)))
    assert spec.metrics["r2"] == pytest.approx(r2_score(known["y"], predicted)) and spec.metrics["r2"] > 0.95


def test_a_class_target_with_gaps_still_matches_integer_classes() -> None:
    frame = churn()
    frame["left"] = (frame["churned"] == "yes").astype(float)
    frame.loc[0, "left"] = np.nan  # pandas reads such a column as floats: 1.0 must still be class 1
    model = LogisticRegression().fit(frame.loc[1:, ["mean radius"]], frame.loc[1:, "left"].astype(int))
    spec = infer_spec(model, frame.drop(columns="churned"), "left", None, "", [])
    assert spec.labels == ["0", "1"] and spec.metrics["holdout_rows"] == 199


# `mlapi models`, run as a user runs it: `mlapi.cli.main` with the command line.


@dataclass
class Request:
    method: str
    path: str
    headers: Message
    body: bytes


@dataclass
class StubApi:
    """Answers every request with `status` and `reply`, and keeps what it received."""

    url: str = ""
    status: int = 200
    reply: Any = None
    received: list[Request] = field(default_factory=list)


@pytest.fixture
def api() -> Iterator[StubApi]:
    stub = StubApi()

    class Handler(BaseHTTPRequestHandler):
        def answer(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            stub.received.append(Request(self.command, self.path, self.headers, body))
            reply = json.dumps(stub.reply).encode()
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
    upload = prepare("churn", artifact, spec_file=tmp_path / "spec.json")
    assert upload.spec == written.model_copy(update={"trusted": [TREE_PREDICTOR]})
