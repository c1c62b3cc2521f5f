"""The messages that cross Redis between the API and the workers: one definition, msgpack on the wire.

`Output` is the one definition of a prediction's result: runtimes return it, `Result` carries it back to the
API, and the history table and the HTTP schemas (`mlapi.schemas`) are checked against it by a test.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

Value = str | int | float


class Output(msgspec.Struct, frozen=True, omit_defaults=True, kw_only=True):
    """What a model answers for one row."""

    prediction: int | float | None = None
    """Classification: the index of the predicted class. Regression: the predicted value."""
    label: str | None = None
    """Classification: the predicted class's label."""
    probability: float | None = None
    """Probability of the predicted class, for classifiers that give probabilities."""
    probabilities: dict[str, float] | None = None
    """Probability of every class, by label, for classifiers that give probabilities."""


OUTPUT_FIELDS = tuple(Output.__struct_fields__)


class Result(Output, frozen=True, omit_defaults=True, kw_only=True):
    """One row's answer: the model's output, or the error that row failed with."""

    id: str
    """Prediction id: the primary key of its history row."""
    warnings: list[str] = []
    """Features outside the range seen in training."""
    error: str | None = None


class Row(msgspec.Struct, frozen=True):
    id: str
    """Prediction id: the primary key of its history row."""
    features: dict[str, Value]


class Job(msgspec.Struct, frozen=True):
    """One request as queued on its model version's stream: a single sample or a batch, answered together."""

    id: str
    model: str
    version: int
    rows: list[Row]
    reply_to: str
    """Stream of the API process waiting for the answer."""
    created_at: datetime
    """When the API accepted the request; the history rows keep it."""
    key: str | None = None
    """The name of the API key that sent it (never the key); None with auth off. The history rows keep it."""


class Validation(msgspec.Struct, frozen=True):
    """A request to load-check an uploaded artifact before the registry stores it."""

    id: str
    spec: bytes
    """The version's `ModelSpec` as JSON."""
    artifact_key: str
    """Redis key holding the artifact's bytes for the time of the check."""
    reply_to: str


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
    """Id of the job (or validation) answered."""
    results: list[Result]
    timings: Timings | None = None
    error: str | None = None
    """Set when the job failed as a whole (it was dead-lettered), or the validation's reason for refusal."""


_job_decoder = msgspec.msgpack.Decoder(Job)
_validation_decoder = msgspec.msgpack.Decoder(Validation)
_replies_decoder = msgspec.msgpack.Decoder(list[Reply])
_encoder = msgspec.msgpack.Encoder()


def encode(message: Job | Validation | Reply | list[Reply]) -> bytes:
    """A job, or the replies of one batch to one API process: they travel as a single stream entry."""
    return _encoder.encode(message)


def decode_job(data: bytes) -> Job:
    """Raises `msgspec.DecodeError` (a `ValueError`) on a malformed message."""
    return _job_decoder.decode(data)


def decode_validation(data: bytes) -> Validation:
    return _validation_decoder.decode(data)


def decode_replies(data: bytes) -> list[Reply]:
    return _replies_decoder.decode(data)
