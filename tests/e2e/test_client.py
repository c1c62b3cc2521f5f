"""The Python client and `mlapi models add` for every runtime, against real `mlapi api` and `mlapi worker`
processes: in-memory models and files added while the system runs, predicted without a restart and compared
with each library's own prediction; promotion, history and refusals."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from skl2onnx import to_onnx
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from mlapi.client import ApiError, Client
from tests.conftest import Stack, StackFactory, wait_until

pytestmark = pytest.mark.e2e
RELOAD_S = 10
"""The registry's bound: a change reaches every process within this long."""


@pytest.fixture(scope="module")
def stack(stack_factory: StackFactory) -> Stack:
    stack = stack_factory()
    stack.start_api()
    stack.start_worker()  # every model, those added later included
    stack.wait_ready()
    return stack


@pytest.fixture
def client(stack: Stack) -> Iterator[Client]:
    with Client(stack.url) as client:
        yield client


def wait_served(client: Client, name: str, version: int) -> None:
    wait_until(lambda: client.version(name, version).ready >= 1, RELOAD_S, f"{name} version {version} to be served")


def churn(n: int = 300) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    frame = pd.DataFrame(
        {
            "monthly fee": rng.normal(40, 10, n).round(2),
            "support calls": rng.integers(0, 6, n),
            "plan": rng.choice(["basic", "family", "pro"], n),
        }
    )
    score = frame["support calls"] - frame["monthly fee"] / 20 + (frame["plan"] == "basic") + rng.normal(0, 1, n)
    frame["churned"] = np.where(score > 0.5, "leaves", "stays")
    return frame


def churn_model(frame: pd.DataFrame, c: float) -> Pipeline:
    encode = ColumnTransformer([("plan", OneHotEncoder(handle_unknown="ignore"), ["plan"])], remainder="passthrough")
    x, y = frame.drop(columns="churned"), frame["churned"]
    return make_pipeline(encode, LogisticRegression(C=c, max_iter=1000)).fit(x, y)


def iris() -> tuple[pd.DataFrame, pd.Series[str]]:
    x, y = load_iris(as_frame=True, return_X_y=True)
    x.columns = ["sepal length", "sepal width", "petal length", "petal width"]
    return x, pd.Series(np.array(["setosa", "versicolor", "virginica"])[y], name="species")


def test_the_client_adds_predicts_promotes_and_reads_history(client: Client) -> None:
    frame = churn()
    x = frame.drop(columns="churned")
    first = churn_model(frame, 1.0)
    added = client.add_model("client-churn", first, data=frame, target="churned", description="Who leaves")
    assert (added.version, added.default, added.runtime) == (1, True, "sklearn")
    assert added.spec.labels == ["leaves", "stays"] and added.metrics["holdout_rows"] == 300
    wait_served(client, "client-churn", 1)
    answers = client.predict("client-churn", x.head(20))
    probabilities = first.predict_proba(x.head(20))
    assert [a.label for a in answers] == first.predict(x.head(20)).tolist()
    for answer, expected in zip(answers, probabilities.tolist(), strict=True):
        assert answer.probabilities is not None and answer.model_version == "1"
        assert [answer.probabilities[label] for label in first.classes_] == pytest.approx(expected, rel=1e-9)

    second = churn_model(frame, 0.01)
    added = client.add_model("client-churn", second, data=frame, target="churned")
    assert (added.version, added.default) == (2, False)
    wait_served(client, "client-churn", 2)
    by_version = client.predict("client-churn", x.iloc[[5]], version=2)
    assert by_version[0].probability == pytest.approx(float(second.predict_proba(x.iloc[[5]]).max()))
    client.promote("client-churn", 2)
    summary = next(m for m in client.models() if m.name == "client-churn")
    assert (summary.default_version, summary.versions) == (2, [1, 2])
    after = client.predict("client-churn", {"monthly fee": 55.0, "support calls": 4, "plan": "basic"})
    assert after[0].model_version == "2"

    history = {r.id: r for r in client.history(model="client-churn", limit=100)}
    assert {a.id for a in [*answers, *by_version, *after]} <= history.keys()
    assert history[answers[0].id].model_version == "1" and history[after[0].id].model_version == "2"
    assert history[answers[0].id].label == answers[0].label
    assert len(client.history(model="client-churn", limit=3)) == 3

    with pytest.raises(ApiError) as refused:
        client.remove("client-churn", 2)
    assert refused.value.status == 409 and "default" in str(refused.value.detail)
    with pytest.raises(ApiError) as invalid:
        client.predict("client-churn", {"monthly fee": 55.0, "support calls": 4, "plan": "gold"})
    assert invalid.value.status == 422 and "plan" in str(invalid.value)
    with pytest.raises(ApiError) as missing:
        client.predict("client-nothing", {"a": 1})
    assert missing.value.status == 404 and "client-nothing" in str(missing.value.detail)


def test_in_memory_xgboost_lightgbm_and_onnx_models_are_served_without_a_restart(client: Client) -> None:
    x, y = load_diabetes(as_frame=True, return_X_y=True)
    regressor = xgb.XGBRegressor(n_estimators=30, max_depth=3).fit(x, y)
    info = client.add_model("client-xgb", regressor, data=x.assign(progress=y), target="progress")
    assert (info.runtime, info.task) == ("xgboost", "regression")
    wait_served(client, "client-xgb", info.version)
    answers = client.predict("client-xgb", x.head(40))
    assert [a.prediction for a in answers] == pytest.approx(regressor.predict(x.head(40)).tolist(), rel=1e-6)

    flowers, species = iris()
    classifier = lgb.LGBMClassifier(n_estimators=20, num_leaves=4, verbose=-1).fit(flowers, species)
    info = client.add_model("client-lgbm", classifier, data=flowers.assign(species=species), target="species")
    assert (info.runtime, info.spec.labels) == ("lightgbm", ["setosa", "versicolor", "virginica"])
    wait_served(client, "client-lgbm", info.version)
    rows = flowers.iloc[::10]
    answers = client.predict("client-lgbm", rows)
    assert [a.label for a in answers] == np.asarray(classifier.predict(rows)).tolist()
    expected = np.asarray(classifier.predict_proba(rows))
    got = [[a.probabilities[s] for s in classifier.classes_] for a in answers if a.probabilities]
    np.testing.assert_allclose(got, expected, rtol=1e-9)

    cancer = load_breast_cancer(as_frame=True).frame
    features = cancer.drop(columns="target")
    logistic = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    logistic.fit(features.to_numpy(dtype=np.float32), cancer["target"])
    exported = to_onnx(logistic, features.to_numpy(dtype=np.float32)[:1])
    info = client.add_model("client-onnx", exported, data=cancer, target="target")
    assert (info.runtime, info.spec.features[0].name) == ("onnx", "mean radius")
    wait_served(client, "client-onnx", info.version)
    rows = features.iloc[::25]
    answers = client.predict("client-onnx", rows)
    probability = logistic.predict_proba(rows.to_numpy(dtype=np.float32))
    assert [a.prediction for a in answers] == probability.argmax(axis=1).tolist()
    assert [a.probability for a in answers] == pytest.approx(probability.max(axis=1).tolist(), rel=1e-5)


def mlapi(stack: Stack, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mlapi", "models", *map(str, args), "--api", stack.url],
        env=stack.env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_the_cli_adds_an_xgboost_a_lightgbm_and_an_onnx_file_and_refuses_broken_ones(
    stack: Stack, client: Client, tmp_path: Path
) -> None:
    flowers, species = iris()
    labels = species.astype("category").cat.codes.to_numpy()
    flowers.assign(species=species).to_csv(tmp_path / "iris.csv", index=False)
    booster = xgb.train(
        {"objective": "multi:softprob", "num_class": 3, "max_depth": 2}, xgb.DMatrix(flowers, label=labels), 10
    )
    booster.save_model(tmp_path / "iris.json")
    trees = lgb.train({"objective": "multiclass", "num_class": 3, "verbose": -1}, lgb.Dataset(flowers, labels), 10)
    trees.save_model(tmp_path / "iris.txt")
    logistic = LogisticRegression(max_iter=1000).fit(flowers.to_numpy(dtype=np.float32), species)
    (tmp_path / "iris.onnx").write_bytes(to_onnx(logistic, flowers.to_numpy(dtype=np.float32)[:1]).SerializeToString())
    rows = flowers.iloc[::15]
    expected = {
        "cli-xgb": booster.predict(xgb.DMatrix(rows)),
        "cli-lgbm": trees.predict(rows),
        "cli-onnx": logistic.predict_proba(rows.to_numpy(dtype=np.float32)),
    }
    for name, file in [("cli-xgb", "iris.json"), ("cli-lgbm", "iris.txt"), ("cli-onnx", "iris.onnx")]:
        added = mlapi(stack, "add", name, tmp_path / file, "--data", tmp_path / "iris.csv", "--target", "species")
        assert added.returncode == 0, added.stderr
        assert added.stdout == f"{name} version 1 (default)\n"
        wait_served(client, name, 1)
        answers = client.predict(name, rows)
        assert [a.label for a in answers] == [
            ["setosa", "versicolor", "virginica"][k] for k in expected[name].argmax(1)
        ]
        got = [[a.probabilities[s] for s in ("setosa", "versicolor", "virginica")] for a in answers if a.probabilities]
        assert np.allclose(got, expected[name], rtol=1e-5, atol=1e-7), name
    listed = mlapi(stack, "list")
    assert all(f"{name} " in listed.stdout for name in expected)

    broken = {
        "broken.json": (booster.save_raw("json")[:300], "XGBoost"),
        "broken.txt": (trees.model_to_string().encode()[:400], "LightGBM"),
        "broken.onnx": ((tmp_path / "iris.onnx").read_bytes()[:200], "ONNX"),
    }
    for file, (content, library) in broken.items():
        (tmp_path / file).write_bytes(bytes(content))
        refused = mlapi(stack, "add", "cli-broken", tmp_path / file, "--data", tmp_path / "iris.csv")
        assert refused.returncode == 1, refused.stdout
        assert refused.stderr.startswith(f"mlapi models add: {file}: ") and "Traceback" not in refused.stderr, file
        assert f"{file}: not a loadable {library} model: " in refused.stderr, refused.stderr
    assert "cli-broken" not in {m.name for m in client.models()}
