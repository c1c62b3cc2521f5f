"""Ground truth, live quality and drift end to end: a diabetes model added with `--data`, real rows of the data set
predicted by real `mlapi api` and `mlapi worker` processes, labelled, and measured against scikit-learn."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, brier_score_loss, f1_score, log_loss, roc_auc_score

from mlapi.client import Client
from mlapi.models.train import build_pipeline, diabetes_dataset
from mlapi.storage.repository import PredictionRepository
from tests.conftest import DATASET, Stack, StackFactory, wait_until
from tests.integration.test_repository import row

pytestmark = pytest.mark.e2e
NAME = "diabetes-quality"
SHIFTED = {"age": 25.0, "bmi": 12.0}
"""Added to these features of the rows sent to version 2: only they may drift."""


@pytest.fixture(scope="module")
def stack(stack_factory: StackFactory) -> Stack:
    stack = stack_factory(MLAPI_QUALITY__METRICS_INTERVAL_S="0")
    stack.start_api()
    stack.start_worker()
    stack.wait_ready()
    return stack


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    return pd.read_csv(DATASET)


@pytest.fixture(scope="module")
def api(stack: Stack) -> Iterator[Client]:
    with Client(stack.url) as client:
        yield client


@pytest.fixture(scope="module")
def started(api: Client, data: pd.DataFrame) -> datetime:
    """Versions 1 and 2, each trained on and profiled from 20,000 rows (`--data` with the target)."""
    features = diabetes_dataset(DATASET).features
    for rows in (data.iloc[:20_000], data.iloc[20_000:40_000]):
        model = build_pipeline(features).fit(rows.drop(columns="diabetes"), rows["diabetes"])
        info = api.add_model(NAME, model, data=rows, target="diabetes")
        assert info.profiled
        wait_until(
            lambda v=info.version: api.version(NAME, v).ready > 0, 30, f"a worker to hold version {info.version}"
        )
    return datetime.now(UTC) - timedelta(minutes=1)


@pytest.fixture
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, timeout=60) as client:
        yield client


def test_quality_is_scikit_learns_on_the_labelled_rows(api: Client, data: pd.DataFrame, started: datetime) -> None:
    rows = data.iloc[50_000:50_600]
    answers = api.predict(NAME, rows.drop(columns="diabetes"), version=1)
    truth = rows["diabetes"].to_numpy()
    labelled = [i for i in range(len(answers)) if i % 5]  # four in five
    by_label = {answers[i].id: str(truth[i]) for i in labelled[:100]}  # labels as strings, then as indexes
    assert [f.label for f in api.feedback(by_label)] == list(by_label.values())
    api.feedback({answers[i].id: int(truth[i]) for i in labelled[100:]})
    p1 = np.array([answers[i].probabilities["1"] for i in labelled])  # type: ignore[index]
    y = truth[labelled]
    [version] = api.quality(NAME, version=1, since=started).versions
    live = version.overall.metrics
    assert version.overall.labelled == len(labelled)
    assert live["accuracy"] == pytest.approx(accuracy_score(y, p1 >= 0.5), abs=1e-6)
    assert live["roc_auc"] == pytest.approx(roc_auc_score(y, p1), abs=1e-6)
    assert live["brier"] == pytest.approx(brier_score_loss(y, p1), abs=1e-6)
    assert live["log_loss"] == pytest.approx(log_loss(y, np.c_[1 - p1, p1]), abs=1e-6)
    assert live["f1"] == pytest.approx(f1_score(y, p1 >= 0.5), abs=1e-6)
    assert set(version.holdout) >= {"accuracy", "roc_auc", "f1", "brier"}
    assert sum(b.labelled for b in version.buckets) == len(labelled)


def test_rows_drawn_like_the_training_data_do_not_drift_and_shifted_features_do(
    api: Client, data: pd.DataFrame, started: datetime
) -> None:
    like = data.iloc[60_000:62_000].drop(columns="diabetes")
    api.predict(NAME, like, version=1)
    shifted = data.iloc[62_000:64_000].drop(columns="diabetes")
    for feature, change in SHIFTED.items():
        shifted[feature] = shifted[feature] + change
    api.predict(NAME, shifted, version=2)
    drift = {d.version: d for d in api.drift(NAME, since=started).versions}
    assert drift[1].rows >= 2000 and drift[2].rows == 2000
    assert all(f.psi is not None and f.psi < 0.1 and f.verdict == "stable" for f in drift[1].features)
    flagged = {f.name for f in drift[2].features if f.verdict != "stable"}
    assert flagged == set(SHIFTED)
    assert all(f.outside_range is not None for f in drift[2].features if f.kind == "number")
    [age] = [f for f in drift[2].features if f.name == "age"]
    assert age.outside_range and age.outside_range > 0.1  # older than anyone in the training data
    assert drift[2].prediction is not None and drift[2].prediction.psi is not None


def test_history_shows_feedback_and_filters_on_it(client: httpx.Client, started: datetime) -> None:
    query: dict[str, str | int] = {"model": NAME, "since": started.isoformat(), "limit": 500}
    labelled = client.get("/predictions", params=query | {"labelled": "true"}).json()["items"]
    assert labelled and all(r["feedback"] is not None for r in labelled)
    assert {r["feedback"]["label"] for r in labelled} <= {"0", "1"}
    unlabelled = client.get("/predictions", params=query | {"labelled": "false"}).json()["items"]
    assert unlabelled and all(r["feedback"] is None for r in unlabelled)
    one = labelled[0]
    again = client.post(f"/predictions/{one['id']}/feedback", json={"label": 1 - one["feedback"]["actual"]})
    assert again.status_code == 200
    assert client.get(f"/predictions/{one['id']}").json()["feedback"] == again.json()  # the latest wins


def test_statistics_summarise_the_whole_window(client: httpx.Client, started: datetime) -> None:
    stats = client.get("/predictions/stats", params={"model": NAME, "since": started.isoformat()}).json()
    assert stats["total"] == 600 + 2000 + 2000 == sum(sum(b["counts"].values()) for b in stats["over_time"])
    assert set(stats["totals"]) <= {"0", "1", "failed"}
    assert sum(sum(c) for c in stats["probability"]["counts"].values()) == stats["total"]
    assert 0 < stats["latency_ms"]["p50"] <= stats["latency_ms"]["p99"]
    version = client.get("/predictions/stats", params={"model": NAME, "version": 2, "since": started.isoformat()})
    assert version.json()["total"] == 2000


def test_metrics_carry_quality_and_drift(client: httpx.Client, started: datetime) -> None:
    text = client.get("/metrics").text
    assert f'mlapi_model_quality{{metric="accuracy",model="{NAME}",version="1"}}' in text
    assert f'mlapi_model_drift_psi{{feature="age",model="{NAME}",version="2"}}' in text


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("post", "/predictions/{unknown}/feedback", {"label": 1}, 404),
        ("post", "/predictions/{id}/feedback", {"label": "maybe"}, 422),
        ("post", "/predictions/{id}/feedback", {"label": 2}, 422),
        ("post", "/predictions/{id}/feedback", {"value": 1.5}, 422),
        ("post", "/predictions/{id}/feedback", {"label": 1, "value": 1.5}, 422),
        ("post", "/predictions/{id}/feedback", {"label": 1.0}, 422),
        ("post", "/feedback", {"items": []}, 422),
        ("get", "/models/nope/quality", None, 404),
        ("get", f"/models/{NAME}/quality?version=9", None, 404),
        ("get", f"/models/{NAME}/quality?bucket=week", None, 422),
        ("get", f"/models/{NAME}/drift?since=2030-01-01T00:00:00Z&until=2029-01-01T00:00:00Z", None, 422),
        ("get", "/models/nope/drift", None, 404),
        ("get", "/predictions/stats?version=1", None, 422),
        ("get", "/predictions/stats?bucket=fortnight", None, 422),
        ("get", "/predictions/stats?since=0001-01-01T00:00:00Z&bucket=1", None, 422),
    ],
)
def test_bad_input_is_a_clear_4xx(
    client: httpx.Client, api: Client, started: datetime, method: str, path: str, body: object, status: int
) -> None:
    [answer] = api.predict(NAME, [api.version(NAME, 1).spec.example], version=1)
    url = path.format(unknown=uuid.uuid4(), id=answer.id)
    response = client.request(method.upper(), url, json=body)
    assert response.status_code == status, response.text
    assert response.json()["detail"]


def test_a_batch_with_a_bad_item_stores_nothing_and_lists_it(client: httpx.Client, api: Client) -> None:
    answers = api.predict(NAME, [api.version(NAME, 1).spec.example] * 3, version=1)
    items = [{"id": a.id, "label": 1} for a in answers] + [{"id": str(uuid.uuid4()), "label": 0}]
    items[1]["label"] = 7
    response = client.post("/feedback", json={"items": items})
    assert response.status_code == 422
    assert [(e["index"], e["status"]) for e in response.json()["detail"]] == [(1, 422), (3, 404)]
    assert all(client.get(f"/predictions/{a.id}").json()["feedback"] is None for a in answers)


def test_an_empty_window_is_an_empty_answer(client: httpx.Client) -> None:
    window = {"since": "2001-01-01T00:00:00Z", "until": "2001-01-02T00:00:00Z"}
    assert client.get(f"/models/{NAME}/quality", params=window).json()["versions"] == []
    assert client.get(f"/models/{NAME}/drift", params=window).json()["versions"] == []
    stats = client.get("/predictions/stats", params=window | {"model": NAME}).json()
    assert stats["total"] == 0 and stats["over_time"] == [] and stats["latency_ms"]["p50"] is None


async def test_feedback_on_a_failed_prediction_is_a_409(client: httpx.Client, repository: PredictionRepository) -> None:
    """A prediction that failed has no answer to judge (the row as a worker stores a failure)."""
    failed = row(
        uuid.uuid4().int % 10**9, model=NAME, status="failed", prediction=None, label=None, probability=None,
        probabilities=None, error="the model failed on this row",
    )  # fmt: skip
    await repository.add([failed])
    response = client.post(f"/predictions/{failed['id']}/feedback", json={"label": 1})
    assert response.status_code == 409 and "failed" in response.json()["detail"], response.text
    assert client.get(f"/predictions/{failed['id']}").json()["feedback"] is None
