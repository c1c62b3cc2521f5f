"""The messages that cross Redis between the API and the workers: one definition, msgpack on the wire."""

from __future__ import annotations

from datetime import datetime

import msgspec

Value = str | int | float


class Row(msgspec.Struct, frozen=True):
    id: str
    """Prediction id: the primary key of its history row."""
    features: dict[str, Value]


class Job(msgspec.Struct, frozen=True):
    """One request as queued: a single sample or a batch, answered together."""

    id: str
    model: str
    rows: list[Row]
    reply_to: str
    """Stream of the API process waiting for the answer."""
    created_at: datetime
    """When the API accepted the request; the history rows keep it."""


class Result(msgspec.Struct, frozen=True, omit_defaults=True):
    id: str
    prediction: int | None = None
    label: str | None = None
    probability: float | None = None
    probabilities: dict[str, float] | None = None
    warnings: list[str] = []
    error: str | None = None


class Timings(msgspec.Struct, frozen=True):
    """Where a job's time went on the worker side, in milliseconds."""

    queue_ms: float
    """From acceptance by the API until a worker took the job."""
    predict_ms: float
    """The vectorised predict of the batch the job was in."""
    store_ms: float
    """Committing the batch's history rows."""
    batch_rows: int
    """Rows in the batch the job was predicted in."""


class Reply(msgspec.Struct, frozen=True):
    id: str
    """Id of the job answered."""
    model_version: str
    results: list[Result]
    timings: Timings | None = None
    error: str | None = None
    """Set when the job failed as a whole (it was dead-lettered)."""


_job_decoder = msgspec.msgpack.Decoder(Job)
_replies_decoder = msgspec.msgpack.Decoder(list[Reply])
_encoder = msgspec.msgpack.Encoder()


def encode(message: Job | Reply | list[Reply]) -> bytes:
    """A job, or the replies of one batch to one API process: they travel as a single stream entry."""
    return _encoder.encode(message)


def decode_job(data: bytes) -> Job:
    """Raises `msgspec.DecodeError` (a `ValueError`) on a malformed message."""
    return _job_decoder.decode(data)


def decode_replies(data: bytes) -> list[Reply]:
    return _replies_decoder.decode(data)
