"""Serving your own model end to end: the `mlapi models` CLI against real `mlapi api` and `mlapi worker`
processes, with no restart anywhere."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import skops.io
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from tests.conftest import Stack, StackFactory, wait_until

pytestmark = pytest.mark.e2e
RELOAD_S = 10
"""The issue's bound: a registry change reaches every process within this long."""
ARTIFACT_LIMIT = 2_000_000
"""Uploads above this get a 413 here: above the 1 MiB limit of other bodies, which uploads are exempt from."""


@pytest.fixture(scope="module")
def stack(stack_factory: StackFactory) -> Stack:
    stack = stack_factory(MLAPI_API__MAX_ARTIFACT_BYTES=str(ARTIFACT_LIMIT))
    stack.start_api()
    stack.start_worker("--model", "diabetes-risk")
    stack.start_worker()  # every model, those added later included
    stack.wait_ready()
    return stack


@pytest.fixture
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, timeout=60) as client:
        yield client


def mlapi(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mlapi", "models", *args, "--api", stack.url],
        env=stack.env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def cancer(tmp: Path, c: float) -> tuple[Pipeline, pd.DataFrame, Path, Path]:
    """A numeric pipeline on scikit-learn's breast-cancer data, whose feature names hold spaces."""
    frame = load_breast_cancer(as_frame=True).frame
    x, y = frame.drop(columns="target"), frame["target"]
    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=500)).fit(x, y)
    artifact, data = tmp / f"cancer-{c}.skops", tmp / "cancer.csv"
    skops.io.dump(model, artifact)
    frame.head(200).to_csv(data, index=False)
    return model, x, artifact, data


def wait_served(client: httpx.Client, name: str, version: int) -> None:
    def ready() -> bool:
        answer = client.get(f"/models/{name}/versions/{version}")
        return answer.status_code == 200 and answer.json()["ready"] >= 1

    wait_until(ready, RELOAD_S, f"{name} version {version} to be served")


def test_a_classifier_and_a_regressor_are_served_without_a_restart(
    stack: Stack, client: httpx.Client, tmp_path: Path
) -> None:
    model, x, artifact, data = cancer(tmp_path, 1.0)
    added = mlapi(stack, "add", "cancer", str(artifact), "--data", str(data), "--target", "target")
    assert added.returncode == 0, added.stderr
    assert "cancer version 1" in added.stdout
    wait_served(client, "cancer", 1)
    sample = x.iloc[7].to_dict()
    answer = client.post("/models/cancer/predict", json=sample)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    expected = model.predict_proba(x.iloc[[7]])[0]
    assert body["task"] == "classification" and body["model_version"] == "1"
    assert body["prediction"] == int(np.argmax(expected)) and body["label"] == ["0", "1"][body["prediction"]]
    assert body["probability"] == pytest.approx(float(expected.max()))
    spec = client.get("/models/cancer").json()
    assert spec["features"][0]["name"] == "mean radius" and 0.9 < spec["metrics"]["accuracy"] <= 1
    # /docs shows the new model's exact fields at once
    schema = client.get("/openapi.json").json()["paths"]["/models/cancer/predict"]["post"]["requestBody"]
    assert "mean radius" in schema["content"]["application/json"]["schema"]["oneOf"][0]["properties"]

    frame = load_diabetes(as_frame=True).frame
    rx, ry = frame.drop(columns="target"), frame["target"]
    regressor = LinearRegression().fit(rx, ry)
    skops.io.dump(regressor, tmp_path / "progress.skops")
    frame.to_csv(tmp_path / "progress.csv", index=False)
    added = mlapi(stack, "add", "progress", str(tmp_path / "progress.skops"), "--data", str(tmp_path / "progress.csv"),
                  "--target", "target")  # fmt: skip
    assert added.returncode == 0, added.stderr
    wait_served(client, "progress", 1)
    answer = client.post("/models/progress/predict", json={"instances": [rx.iloc[0].to_dict(), rx.iloc[1].to_dict()]})
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    assert [p["prediction"] for p in predictions] == pytest.approx(regressor.predict(rx.iloc[:2]).tolist())
    assert all(p["task"] == "regression" and "label" not in p and "probabilities" not in p for p in predictions)
    record = client.get(f"/predictions/{predictions[0]['id']}").json()
    assert record["task"] == "regression" and record["prediction"] == pytest.approx(predictions[0]["prediction"])
    listed = mlapi(stack, "list")
    assert listed.returncode == 0 and "progress" in listed.stdout and "regression" in listed.stdout


def test_versions_are_added_predicted_promoted_and_removed(stack: Stack, client: httpx.Client, tmp_path: Path) -> None:
    if client.get("/models/cancer").status_code == 404:  # run alone: add version 1 first
        _, _, artifact, data = cancer(tmp_path, 1.0)
        assert mlapi(stack, "add", "cancer", str(artifact), "--data", str(data), "--target", "target").returncode == 0
    first = client.get("/models/cancer").json()["default_version"]
    model, x, artifact, data = cancer(tmp_path, 0.01)
    added = mlapi(stack, "add", "cancer", str(artifact), "--data", str(data), "--target", "target")
    assert added.returncode == 0, added.stderr
    second = client.get("/models/cancer").json()["versions"][-1]
    assert f"cancer version {second}" in added.stdout and second > first
    assert client.get("/models/cancer").json()["default_version"] == first  # no traffic yet
    wait_served(client, "cancer", second)
    sample = x.iloc[3].to_dict()
    by_version = client.post(f"/models/cancer/versions/{second}/predict", json=sample).json()
    assert by_version["model_version"] == str(second)
    assert by_version["probability"] == pytest.approx(float(model.predict_proba(x.iloc[[3]]).max()))
    old = client.post("/models/cancer/predict", json=sample).json()
    assert old["model_version"] == str(first)

    promoted = mlapi(stack, "promote", "cancer", str(second))
    assert promoted.returncode == 0, promoted.stderr
    assert client.get("/models/cancer").json()["default_version"] == second
    new = client.post("/models/cancer/predict", json=sample).json()
    assert new["model_version"] == str(second)

    refused = mlapi(stack, "remove", "cancer", str(second))
    assert refused.returncode != 0 and "default" in refused.stderr
    removed = mlapi(stack, "remove", "cancer", str(first))
    assert removed.returncode == 0, removed.stderr
    assert client.get(f"/models/cancer/versions/{first}").status_code == 404
    assert client.post(f"/models/cancer/versions/{first}/predict", json=sample).status_code == 404
    history = {
        r["id"]: r["model_version"] for r in client.get("/predictions", params={"model": "cancer"}).json()["items"]
    }
    assert history[old["id"]] == str(first) and history[new["id"]] == history[by_version["id"]] == str(second)


def upload(client: httpx.Client, name: str, artifact: bytes, spec: dict[str, Any]) -> httpx.Response:
    import json

    files: dict[str, tuple[str | None, bytes | str]] = {
        "artifact": ("model.skops", artifact),
        "spec": (None, json.dumps(spec)),
    }
    return client.post(f"/models/{name}/versions", files=files)


def iris_spec(trusted: list[str], names: list[str] | None = None) -> dict[str, Any]:
    names = names or ["a", "b", "c", "d"]
    return {
        "labels": ["setosa", "versicolor", "virginica"],
        "features": [{"name": n, "kind": "number", "example": 1.0} for n in names],
        "trusted": trusted,
    }


def test_broken_untrusted_and_mismatched_artifacts_are_refused_with_the_reason(
    stack: Stack, client: httpx.Client, tmp_path: Path
) -> None:
    before = client.get("/models").json()
    x, y = load_breast_cancer(return_X_y=True)
    boosted = HistGradientBoostingClassifier(max_iter=5).fit(x[:, :4], y)
    artifact = skops.io.dumps(boosted)
    spec = iris_spec([], ["a", "b", "c", "d"]) | {"labels": ["0", "1"]}
    untrusted = upload(client, "refused", artifact, spec)
    assert untrusted.status_code == 422 and "TreePredictor" in untrusted.json()["detail"]
    mismatched = upload(client, "refused", skops.io.dumps(make_pipeline(StandardScaler(), LogisticRegression()).fit(
        pd.DataFrame(x[:, :4], columns=["p", "q", "r", "s"]), y)), spec)  # fmt: skip
    assert mismatched.status_code == 422 and "feature" in mismatched.json()["detail"]
    pickled = upload(client, "refused", b"\x80\x04\x95" + b"\x00" * 20, spec)
    assert pickled.status_code == 422 and "pickle" in pickled.json()["detail"]
    garbage = upload(client, "refused", b"not a model at all", spec)
    assert garbage.status_code == 422
    bad_name = upload(client, "Not_A_Name", artifact, spec)
    assert bad_name.status_code == 422 and "name" in bad_name.json()["detail"]
    too_large = upload(client, "refused", artifact + b"\0" * ARTIFACT_LIMIT, spec)
    assert too_large.status_code == 413 and "limit" in too_large.json()["detail"]
    over_body_limit = upload(client, "refused", b"x" * 1_500_000, spec)  # not a 413: read, then refused
    assert over_body_limit.status_code == 422 and "skops" in over_body_limit.json()["detail"]
    bad_spec = upload(client, "refused", artifact, {"features": []})
    assert bad_spec.status_code == 422 and "spec" in bad_spec.json()["detail"]
    unknown_runtime = upload(client, "refused", artifact, spec | {"runtime": "tensorflow"})
    assert unknown_runtime.status_code == 422 and "tensorflow" in unknown_runtime.json()["detail"]
    assert client.get("/models").json() == before  # nothing stored
    assert client.get("/models/refused").status_code == 404

    skops.io.dump(boosted, tmp_path / "boosted.skops")
    cli = mlapi(stack, "add", "refused", str(tmp_path / "boosted.skops"))
    assert cli.returncode != 0 and "TreePredictor" in cli.stderr and "--trust" in cli.stderr

    fine = upload(client, "refused", artifact, spec | {"trusted": sorted(skops.io.get_untrusted_types(data=artifact))})
    assert fine.status_code == 201, fine.text
    duplicate = upload(client, "refused", artifact, spec | {"trusted": fine.json()["trusted"]})
    assert duplicate.status_code == 409 and "same artifact" in duplicate.json()["detail"]
    assert mlapi(stack, "remove", "refused").returncode == 0
    assert client.get("/models/refused").status_code == 404


def test_a_version_without_a_live_worker_gets_503_at_once(stack: Stack, client: httpx.Client) -> None:
    every_model = stack.workers[1]
    served = [m["name"] for m in client.get("/models").json() if m["name"] != "diabetes-risk"]
    every_model.send_signal(signal.SIGTERM)
    assert every_model.wait(15) == 0
    example = {f["name"]: f["example"] for f in client.get(f"/models/{served[0]}").json()["features"]}
    answer = client.post(f"/models/{served[0]}/predict", json=example)
    assert answer.status_code == 503 and "no live worker" in answer.json()["detail"]
    assert client.get("/readyz").status_code == 200  # the default model still has its worker
