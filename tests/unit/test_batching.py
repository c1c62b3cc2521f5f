"""The worker's batching logic, without servers: one predict per model per batch, failures isolated."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import msgspec

from mlapi import queue
from mlapi.contract import Job, Row, Value, encode
from mlapi.models.runtime import LoadedModel, Prediction
from mlapi.models.spec import ModelSpec
from mlapi.worker.batching import Planner


class Counting:
    """A real model that counts its predict calls and fails on a marked row."""

    def __init__(self, model: LoadedModel, poison_bmi: float | None = None) -> None:
        self.model = model
        self.spec: ModelSpec = model.spec
        self.calls: list[int] = []
        self.poison_bmi = poison_bmi

    def predict(self, rows: Sequence[dict[str, Value]]) -> list[Prediction]:
        self.calls.append(len(rows))
        if any(r.get("bmi") == self.poison_bmi for r in rows):
            raise ValueError("poisoned row")
        return self.model.predict(rows)


def delivery(model: str, rows: list[dict[str, Value]], n: int = 0, deliveries: int = 1) -> queue.Delivery:
    job = Job(
        id=f"job-{n}",
        model=model,
        rows=[Row(id=f"row-{n}-{i}", features=r) for i, r in enumerate(rows)],
        reply_to="mlapi:replies:test",
        created_at=datetime.now(UTC),
    )
    d = queue.Delivery.of(model, f"1-{n}", {queue.FIELD: encode(job)})
    d.deliveries = deliveries
    return d


def test_one_predict_call_for_a_batch_of_jobs(diabetes: LoadedModel) -> None:
    counting = Counting(diabetes)
    planner = Planner({"diabetes-risk": counting}, max_deliveries=3)
    example = diabetes.spec.example
    batch = [delivery("diabetes-risk", [example] * k, n) for n, k in enumerate([1, 3, 2])]
    outcome = planner.plan(batch, datetime.now(UTC))
    assert counting.calls == [6]
    assert [len(a.results) for a in outcome.answers] == [1, 3, 2]
    assert [a.batch_rows for a in outcome.answers] == [6, 6, 6]
    assert [r["id"] for r in outcome.rows] == [row.id for d in batch for row in (d.job.rows if d.job else [])]
    assert all(r["status"] == "done" for r in outcome.rows)
    assert outcome.acks == batch and outcome.dead == []


def test_a_failing_job_is_isolated_and_dead_lettered(diabetes: LoadedModel) -> None:
    counting = Counting(diabetes, poison_bmi=12.5)
    planner = Planner({"diabetes-risk": counting}, max_deliveries=3)
    good, bad = diabetes.spec.example, {**diabetes.spec.example, "bmi": 12.5}
    batch = [
        delivery("diabetes-risk", [good], 0),
        delivery("diabetes-risk", [bad], 1),
        delivery("diabetes-risk", [good], 2),
    ]
    outcome = planner.plan(batch, datetime.now(UTC))
    assert counting.calls == [3, 1, 1, 1]
    assert [r["status"] for r in outcome.rows] == ["done", "failed", "done"]
    [(dead, error)] = outcome.dead
    assert dead is batch[1] and "poisoned row" in error
    assert outcome.answers[1].error == error and outcome.answers[1].results[0].error == error
    assert len(outcome.acks) == 3


def test_malformed_messages_are_dead_lettered_without_rows(diabetes: LoadedModel) -> None:
    planner = Planner({"diabetes-risk": diabetes}, max_deliveries=3)
    garbage = queue.Delivery.of("diabetes-risk", "1-9", {queue.FIELD: b"\x00not msgpack"})
    no_field = queue.Delivery.of("diabetes-risk", "1-8", {b"other": b"x"})
    wrong_model = delivery("iris", [diabetes.spec.example], 7)
    wrong_model = queue.Delivery.of("diabetes-risk", "1-7", {queue.FIELD: encode(wrong_model.job)})  # type: ignore[arg-type]
    outcome = planner.plan([garbage, no_field], datetime.now(UTC))
    assert outcome.rows == [] and outcome.answers == []
    assert [d for d, _ in outcome.dead] == [garbage, no_field]
    assert all(e.startswith("malformed message") for _, e in outcome.dead)
    outcome = planner.plan([wrong_model], datetime.now(UTC))
    assert "on the stream of 'diabetes-risk'" in outcome.dead[0][1]
    assert outcome.rows[0]["status"] == "failed"


def test_invalid_features_on_the_queue_fail_the_job(diabetes: LoadedModel) -> None:
    planner = Planner({"diabetes-risk": diabetes}, max_deliveries=3)
    nan_row = {**diabetes.spec.example, "bmi": float("nan")}
    missing = {k: v for k, v in diabetes.spec.example.items() if k != "age"}
    outcome = planner.plan(
        [delivery("diabetes-risk", [nan_row], 0), delivery("diabetes-risk", [missing], 1)], datetime.now(UTC)
    )
    assert [r["status"] for r in outcome.rows] == ["failed", "failed"]
    assert outcome.rows[0]["features"] == {}  # NaN cannot be stored as JSON; the dead letter keeps it
    assert "age" in outcome.rows[1]["error"]
    assert len(outcome.dead) == 2


def test_a_message_delivered_too_often_is_dead_lettered(diabetes: LoadedModel) -> None:
    counting = Counting(diabetes)
    planner = Planner({"diabetes-risk": counting}, max_deliveries=3)
    outcome = planner.plan([delivery("diabetes-risk", [diabetes.spec.example], 0, deliveries=4)], datetime.now(UTC))
    assert counting.calls == []
    assert "delivered 4 times" in outcome.dead[0][1]
    assert outcome.rows[0]["status"] == "failed"


def test_answers_carry_timings(diabetes: LoadedModel) -> None:
    planner = Planner({"diabetes-risk": diabetes}, max_deliveries=3)
    outcome = planner.plan([delivery("diabetes-risk", [diabetes.spec.example])], datetime.now(UTC))
    reply = outcome.answers[0].reply("1", datetime.now(UTC), store_ms=1.5)
    assert reply.timings is not None and reply.timings.store_ms == 1.5 and reply.timings.batch_rows == 1
    assert msgspec.msgpack.decode(encode(reply))["results"][0]["label"] in diabetes.spec.labels
