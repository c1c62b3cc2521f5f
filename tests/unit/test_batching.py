"""The worker's batching logic, without servers: one predict per model version per batch, failures isolated."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime

import msgspec
import pytest

from mlapi import queue
from mlapi.contract import Job, Output, Row, Value, encode
from mlapi.models.spec import Feature, ModelSpec
from mlapi.runtimes import Runtime
from mlapi.runtimes.sklearn import SklearnModel
from mlapi.worker.batching import Planner

KEY: queue.Key = ("diabetes-risk", 1)


class Counting:
    """A real model that counts its predict calls and fails on a marked row."""

    def __init__(self, model: Runtime, poison_bmi: float | None = None) -> None:
        self.model = model
        self.spec: ModelSpec = model.spec
        self.calls: list[int] = []
        self.poison_bmi = poison_bmi

    def predict(self, rows: Sequence[dict[str, Value]]) -> list[Output]:
        self.calls.append(len(rows))
        if any(r.get("bmi") == self.poison_bmi for r in rows):
            raise ValueError("poisoned row")
        return self.model.predict(rows)


def regressor(name: str = "petal-width", version: int = 1) -> SklearnModel:
    """A small real regressor: iris petal width from the other three measurements."""
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LinearRegression

    x, _ = load_iris(return_X_y=True)
    names = ["sepal length", "sepal width", "petal length"]  # names with spaces, as users' data has them
    spec = ModelSpec(
        name=name,
        version=version,
        task="regression",
        features=[
            Feature(name=n, kind="number", example=float(x[0, i]), training_range=(x[:, i].min(), x[:, i].max()))
            for i, n in enumerate(names)
        ],
    )
    return SklearnModel(spec, LinearRegression().fit(x[:, :3], x[:, 3]))


def delivery(key: queue.Key, rows: list[dict[str, Value]], n: int = 0, deliveries: int = 1) -> queue.Delivery:
    job = Job(
        id=f"job-{n}",
        model=key[0],
        version=key[1],
        rows=[Row(id=f"row-{n}-{i}", features=r) for i, r in enumerate(rows)],
        reply_to="mlapi:replies:test",
        created_at=datetime.now(UTC),
    )
    d = queue.Delivery.of(key, f"1-{n}", {queue.FIELD: encode(job)})
    d.deliveries = deliveries
    return d


def test_one_predict_call_for_a_batch_of_jobs(diabetes: SklearnModel) -> None:
    counting = Counting(diabetes)
    planner = Planner({KEY: counting}, max_deliveries=3)
    example = diabetes.spec.example
    batch = [delivery(KEY, [example] * k, n) for n, k in enumerate([1, 3, 2])]
    outcome = planner.plan(batch, datetime.now(UTC))
    assert counting.calls == [6]
    assert [len(a.results) for a in outcome.answers] == [1, 3, 2]
    assert [a.batch_rows for a in outcome.answers] == [6, 6, 6]
    assert [r["id"] for r in outcome.rows] == [row.id for d in batch for row in (d.job.rows if d.job else [])]
    assert all(r["status"] == "done" for r in outcome.rows)
    assert {(r["model"], r["model_version"], r["task"]) for r in outcome.rows} == {
        ("diabetes-risk", "1", "classification")
    }
    assert all(r["value"] is None and r["label"] in diabetes.spec.labels for r in outcome.rows)
    assert outcome.acks == batch and outcome.dead == []


def test_each_version_is_predicted_by_its_own_runtime(diabetes: SklearnModel) -> None:
    v1, v2 = Counting(diabetes), Counting(diabetes)
    planner = Planner({KEY: v1, ("diabetes-risk", 2): v2}, max_deliveries=3)
    example = diabetes.spec.example
    batch = [delivery(KEY, [example], 0), delivery(("diabetes-risk", 2), [example] * 2, 1), delivery(KEY, [example], 2)]
    outcome = planner.plan(batch, datetime.now(UTC))
    assert v1.calls == [2] and v2.calls == [2]
    by_row = {r["id"]: r["model_version"] for r in outcome.rows}
    assert by_row == {"row-0-0": "1", "row-1-0": "2", "row-1-1": "2", "row-2-0": "1"}
    assert outcome.dead == [] and len(outcome.acks) == 3


def test_a_version_not_loaded_here_is_dead_lettered(diabetes: SklearnModel) -> None:
    counting = Counting(diabetes)
    planner = Planner({KEY: counting}, max_deliveries=3)
    outcome = planner.plan([delivery(("diabetes-risk", 9), [diabetes.spec.example])], datetime.now(UTC))
    assert counting.calls == []
    [(_, error)] = outcome.dead
    assert error == "'diabetes-risk' version 9 is not loaded here"
    assert outcome.rows[0]["status"] == "failed" and outcome.rows[0]["model_version"] == "9"


def test_a_regressors_value_goes_to_value_not_prediction() -> None:
    model = regressor()
    key = (model.spec.name, model.spec.version)
    planner = Planner({key: model}, max_deliveries=3)
    rows = [model.spec.example, {**model.spec.example, "petal length": 6.0}]
    outcome = planner.plan([delivery(key, rows)], datetime.now(UTC))
    expected = model.estimator.predict([[r[f.name] for f in model.spec.features] for r in rows]).tolist()
    assert [r["value"] for r in outcome.rows] == pytest.approx(expected)
    assert all(r["task"] == "regression" and r["prediction"] is None and r["label"] is None for r in outcome.rows)
    assert all(r["probability"] is None and r["probabilities"] is None for r in outcome.rows)
    [answer] = outcome.answers
    assert [res.prediction for res in answer.results] == pytest.approx(expected)
    assert all(res.label is None and res.probabilities is None for res in answer.results)


def test_a_failed_regression_row_keeps_its_task() -> None:
    model = regressor()
    key = (model.spec.name, model.spec.version)
    planner = Planner({key: model}, max_deliveries=3)
    outcome = planner.plan([delivery(key, [{"sepal length": 1.0}])], datetime.now(UTC))
    [row] = outcome.rows
    assert row["status"] == "failed" and row["task"] == "regression"
    assert row["value"] is None and row["prediction"] is None


def test_a_failing_job_is_isolated_and_dead_lettered(diabetes: SklearnModel) -> None:
    counting = Counting(diabetes, poison_bmi=12.5)
    planner = Planner({KEY: counting}, max_deliveries=3)
    good, bad = diabetes.spec.example, {**diabetes.spec.example, "bmi": 12.5}
    batch = [delivery(KEY, [good], 0), delivery(KEY, [bad], 1), delivery(KEY, [good], 2)]
    outcome = planner.plan(batch, datetime.now(UTC))
    assert counting.calls == [3, 1, 1, 1]
    assert [r["status"] for r in outcome.rows] == ["done", "failed", "done"]
    [(dead, error)] = outcome.dead
    assert dead is batch[1] and "poisoned row" in error
    assert outcome.answers[1].error == error and outcome.answers[1].results[0].error == error
    assert len(outcome.acks) == 3


class Overflowing:
    """A real regressor whose answer overflows for a marked row, as a float32 model does on a huge input."""

    def __init__(self, model: SklearnModel, huge: float) -> None:
        self.model, self.spec, self.huge = model, model.spec, huge

    def predict(self, rows: Sequence[dict[str, Value]]) -> list[Output]:
        outputs = self.model.predict(rows)
        return [
            Output(prediction=math.inf) if r["petal length"] == self.huge else o
            for r, o in zip(rows, outputs, strict=True)
        ]


def test_a_non_finite_answer_fails_its_row_only() -> None:
    model = Overflowing(regressor(), huge=3.4e38)
    key = (model.spec.name, model.spec.version)
    planner = Planner({key: model}, max_deliveries=3)
    good, huge = model.spec.example, {**model.spec.example, "petal length": 3.4e38}
    outcome = planner.plan([delivery(key, [good], 0), delivery(key, [good, huge], 1)], datetime.now(UTC))
    assert [r["status"] for r in outcome.rows] == ["done", "done", "failed"]
    expected = model.model.predict([good])[0].prediction
    assert outcome.rows[1]["value"] == pytest.approx(expected) and outcome.rows[2]["value"] is None
    [(dead, error)] = outcome.dead
    assert dead.job is not None and dead.job.id == "job-1"
    assert error.startswith("row row-1-1: prediction failed") and "non-finite number (NaN or infinity)" in error
    first, second = outcome.answers
    assert first.error is None and first.results[0].prediction == pytest.approx(expected)
    assert second.error == error and second.results[0].prediction == pytest.approx(expected)
    assert second.results[1].error is not None and second.results[1].prediction is None
    assert len(outcome.acks) == 2


def test_a_job_whose_every_row_fails_fails_whole(diabetes: SklearnModel) -> None:
    counting = Counting(diabetes, poison_bmi=12.5)
    planner = Planner({KEY: counting}, max_deliveries=3)
    bad = {**diabetes.spec.example, "bmi": 12.5}
    outcome = planner.plan([delivery(KEY, [bad, bad], 0), delivery(KEY, [diabetes.spec.example], 1)], datetime.now(UTC))
    assert counting.calls == [3, 1, 1, 1]
    assert [r["status"] for r in outcome.rows] == ["failed", "failed", "done"]
    [(dead, error)] = outcome.dead
    assert dead.job is not None and dead.job.id == "job-0" and "poisoned row" in error
    assert outcome.answers[0].error == error


def test_malformed_messages_are_dead_lettered_without_rows(diabetes: SklearnModel) -> None:
    planner = Planner({KEY: diabetes}, max_deliveries=3)
    garbage = queue.Delivery.of(KEY, "1-9", {queue.FIELD: b"\x00not msgpack"})
    no_field = queue.Delivery.of(KEY, "1-8", {b"other": b"x"})
    outcome = planner.plan([garbage, no_field], datetime.now(UTC))
    assert outcome.rows == [] and outcome.answers == []
    assert [d for d, _ in outcome.dead] == [garbage, no_field]
    assert all(e.startswith("malformed message") for _, e in outcome.dead)


@pytest.mark.parametrize("wrong", [("iris", 1), ("diabetes-risk", 2)], ids=["another model", "another version"])
def test_a_job_on_another_versions_stream_is_refused(diabetes: SklearnModel, wrong: queue.Key) -> None:
    planner = Planner({KEY: diabetes, wrong: diabetes}, max_deliveries=3)
    misplaced = delivery(wrong, [diabetes.spec.example], 7)
    assert misplaced.job is not None
    on_v1 = queue.Delivery.of(KEY, "1-7", {queue.FIELD: encode(misplaced.job)})
    outcome = planner.plan([on_v1], datetime.now(UTC))
    assert f"on the stream of 'diabetes-risk' {KEY[1]}" in outcome.dead[0][1]
    assert outcome.rows[0]["status"] == "failed"


def test_invalid_features_on_the_queue_fail_the_job(diabetes: SklearnModel) -> None:
    planner = Planner({KEY: diabetes}, max_deliveries=3)
    nan_row = {**diabetes.spec.example, "bmi": float("nan")}
    missing = {k: v for k, v in diabetes.spec.example.items() if k != "age"}
    outcome = planner.plan([delivery(KEY, [nan_row], 0), delivery(KEY, [missing], 1)], datetime.now(UTC))
    assert [r["status"] for r in outcome.rows] == ["failed", "failed"]
    assert outcome.rows[0]["features"] == {}  # NaN cannot be stored as JSON; the dead letter keeps it
    assert "age" in outcome.rows[1]["error"]
    assert len(outcome.dead) == 2


def test_a_message_delivered_too_often_is_dead_lettered(diabetes: SklearnModel) -> None:
    counting = Counting(diabetes)
    planner = Planner({KEY: counting}, max_deliveries=3)
    outcome = planner.plan([delivery(KEY, [diabetes.spec.example], 0, deliveries=4)], datetime.now(UTC))
    assert counting.calls == []
    assert "delivered 4 times" in outcome.dead[0][1]
    assert outcome.rows[0]["status"] == "failed"


def test_answers_carry_timings(diabetes: SklearnModel) -> None:
    planner = Planner({KEY: diabetes}, max_deliveries=3)
    outcome = planner.plan([delivery(KEY, [diabetes.spec.example])], datetime.now(UTC))
    reply = outcome.answers[0].reply(datetime.now(UTC), store_ms=1.5)
    assert reply.timings is not None and reply.timings.store_ms == 1.5 and reply.timings.batch_rows == 1
    assert msgspec.msgpack.decode(encode(reply))["results"][0]["label"] in diabetes.spec.labels


def test_the_planner_follows_the_hosts_live_mapping(diabetes: SklearnModel) -> None:
    """The worker hands the planner its host's dict; a version loaded later is served without a new planner."""
    loaded: dict[queue.Key, Runtime] = {}
    planner = Planner(loaded, max_deliveries=3)
    assert planner.plan([delivery(KEY, [diabetes.spec.example])], datetime.now(UTC)).dead
    loaded[KEY] = diabetes
    outcome = planner.plan([delivery(KEY, [diabetes.spec.example])], datetime.now(UTC))
    assert outcome.dead == [] and outcome.rows[0]["status"] == "done"
