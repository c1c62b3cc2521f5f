"""The wire messages: msgpack round trips, and malformed input is refused, never guessed at."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest

from mlapi.contract import (
    OUTPUT_FIELDS,
    Job,
    Output,
    Reply,
    Result,
    Row,
    Timings,
    Validation,
    decode_job,
    decode_replies,
    decode_validation,
    encode,
)


def test_job_round_trips_with_its_version() -> None:
    job = Job(
        id="j1",
        model="iris",
        version=3,
        rows=[Row(id="r1", features={"a": 1.5, "b": "x", "c": 0, "mean radius": 2.0})],
        reply_to="mlapi:replies:x",
        created_at=datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC),
    )
    decoded = decode_job(encode(job))
    assert decoded == job and decoded.version == 3


def test_replies_round_trip() -> None:
    reply = Reply(
        id="j1",
        results=[Result(id="r1", prediction=1, label="x", probability=0.75, probabilities={"x": 0.75, "y": 0.25})],
        timings=Timings(queue_ms=1.0, predict_ms=2.0, store_ms=3.0, batch_rows=4),
    )
    assert decode_replies(encode([reply, reply])) == [reply, reply]


def test_a_regressors_value_stays_a_number_of_its_type() -> None:
    """`prediction` holds a class index (int) or a value (float); a whole-number value must not become a class."""
    reply = Reply(id="j1", results=[Result(id="r1", prediction=2.0), Result(id="r2", prediction=2)])
    [decoded] = decode_replies(encode([reply]))
    value, index = decoded.results
    assert isinstance(value.prediction, float) and value.prediction == 2.0
    assert isinstance(index.prediction, int) and index.prediction == 2
    assert value.label is None and value.probabilities is None


def test_a_result_is_an_output_with_an_id() -> None:
    assert set(OUTPUT_FIELDS) == {"prediction", "label", "probability", "probabilities"}
    assert set(OUTPUT_FIELDS) < set(Result.__struct_fields__)
    output = Output(prediction=0, label="setosa", probability=0.9, probabilities={"setosa": 0.9})
    result = Result(id="r1", **msgspec.structs.asdict(output))
    assert all(getattr(result, name) == getattr(output, name) for name in OUTPUT_FIELDS)


def test_absent_outputs_are_not_sent() -> None:
    """A regressor's or a failed row's answer carries only what applies."""
    assert msgspec.msgpack.decode(encode(Reply(id="j", results=[Result(id="r", prediction=1.5)]))) == {
        "id": "j",
        "results": [{"id": "r", "prediction": 1.5}],
        "timings": None,
        "error": None,
    }


def test_validations_round_trip() -> None:
    validation = Validation(id="v1", spec=b'{"task": "regression"}', artifact_key="mlapi:validation:v1", reply_to="r")
    assert decode_validation(encode(validation)) == validation


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",
        msgspec.msgpack.encode({"id": "j1"}),
        msgspec.msgpack.encode([1, 2, 3]),
        b'{"id": "json"}',
        msgspec.msgpack.encode(
            {"id": "j", "model": "m", "rows": [], "reply_to": "r", "created_at": "2026-01-01T00:00:00Z"}
        ),  # no version: a job must say which version it is for
        msgspec.msgpack.encode(
            {"id": "j", "model": "m", "version": "1", "rows": [], "reply_to": "r", "created_at": "2026-01-01T00:00:00Z"}
        ),
    ],
)
def test_malformed_jobs_raise(data: bytes) -> None:
    with pytest.raises((msgspec.DecodeError, msgspec.ValidationError)):
        decode_job(data)


def test_the_wire_is_msgpack_not_pickle() -> None:
    job = Job(id="j", model="m", version=1, rows=[], reply_to="r", created_at=datetime.now(UTC))
    assert msgspec.msgpack.decode(encode(job))["model"] == "m"
