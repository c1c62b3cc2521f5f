"""The wire messages: msgpack round trips, and malformed input is refused, never guessed at."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest

from mlapi.contract import Job, Reply, Result, Row, Timings, decode_job, decode_replies, encode


def test_job_round_trips() -> None:
    job = Job(
        id="j1",
        model="iris",
        rows=[Row(id="r1", features={"a": 1.5, "b": "x", "c": 0})],
        reply_to="mlapi:replies:x",
        created_at=datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC),
    )
    assert decode_job(encode(job)) == job


def test_replies_round_trip() -> None:
    reply = Reply(
        id="j1",
        model_version="3",
        results=[Result(id="r1", prediction=1, label="x", probability=0.75, probabilities={"x": 0.75, "y": 0.25})],
        timings=Timings(queue_ms=1.0, predict_ms=2.0, store_ms=3.0, batch_rows=4),
    )
    assert decode_replies(encode([reply, reply])) == [reply, reply]


@pytest.mark.parametrize(
    "data",
    [b"", b"\xc1", msgspec.msgpack.encode({"id": "j1"}), msgspec.msgpack.encode([1, 2, 3]), b'{"id": "json"}'],
)
def test_malformed_jobs_raise(data: bytes) -> None:
    with pytest.raises((msgspec.DecodeError, msgspec.ValidationError)):
        decode_job(data)


def test_the_wire_is_msgpack_not_pickle() -> None:
    job = Job(id="j", model="m", rows=[], reply_to="r", created_at=datetime.now(UTC))
    assert msgspec.msgpack.decode(encode(job))["model"] == "m"
