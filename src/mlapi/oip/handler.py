"""The protocol's operations on the core, which REST and gRPC only translate, and the one table of their errors."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from grpc import StatusCode
from redis.exceptions import RedisError

from mlapi.api.dataplane import (
    BrokerUnavailable,
    Caller,
    DataPlane,
    Forbidden,
    IdempotencyConflict,
    IdempotencyMismatch,
    Idempotent,
    Inferred,
    InvalidIdempotencyKey,
    InvalidInput,
    NotFound,
    PredictionFailed,
    PredictionTimeout,
    RateLimited,
    Unauthenticated,
    Unavailable,
)
from mlapi.api.limits import BodyTooLarge
from mlapi.api.routes.meta import readiness
from mlapi.oip import codec
from mlapi.oip.codec import InvalidTensor
from mlapi.storage.registry import Version

ERRORS: dict[type[Exception], tuple[int, StatusCode]] = {
    Unauthenticated: (401, StatusCode.UNAUTHENTICATED),
    Forbidden: (403, StatusCode.PERMISSION_DENIED),
    RateLimited: (429, StatusCode.RESOURCE_EXHAUSTED),
    IdempotencyConflict: (409, StatusCode.ALREADY_EXISTS),  # the first request with this key is in flight
    IdempotencyMismatch: (422, StatusCode.INVALID_ARGUMENT),
    InvalidIdempotencyKey: (400, StatusCode.INVALID_ARGUMENT),
    InvalidTensor: (400, StatusCode.INVALID_ARGUMENT),
    PredictionFailed: (400, StatusCode.INVALID_ARGUMENT),  # the model is pure: rows it fails on are bad input
    NotFound: (404, StatusCode.NOT_FOUND),
    BodyTooLarge: (413, StatusCode.RESOURCE_EXHAUSTED),
    Unavailable: (503, StatusCode.UNAVAILABLE),
    BrokerUnavailable: (503, StatusCode.UNAVAILABLE),
    RedisError: (503, StatusCode.UNAVAILABLE),
    PredictionTimeout: (504, StatusCode.DEADLINE_EXCEEDED),
}
"""The core's errors as the protocol answers them: HTTP status and gRPC status code (subclasses included)."""
FAILURES = tuple(ERRORS)
UNSUPPORTED = {
    "shared_memory_region": "shared memory is not supported",
    "classification": "the classification extension is not supported; ask for 'label' and 'probabilities'",
}
"""Tensor parameters of Triton's extensions that would change the answer's meaning, refused rather than ignored."""
SHOWN_ERRORS = 5
"""Invalid values described in one message."""


def status(error: Exception) -> tuple[int, StatusCode]:
    return next(codes for kind, codes in ERRORS.items() if isinstance(error, kind))


def message(error: Exception) -> str:
    """An error's text, with the prediction ids a client needs to find its rows later where it has them."""
    text = str(error)
    ids: list[str] = getattr(error, "ids", [])
    if ids and ids[0] not in text:
        text += f" (prediction ids: {', '.join(ids)})"
    return text


def check_parameters(kind: str, name: str, parameters: Mapping[str, Any]) -> None:
    for key, reason in UNSUPPORTED.items():
        if key in parameters:
            raise InvalidTensor(f"{kind} {name!r}: {reason}")


@dataclass(frozen=True)
class InferRequest:
    inputs: Sequence[codec.Input]
    outputs: Sequence[str] = ()
    """The outputs wanted, in order; all when empty."""
    id: str = ""


@dataclass(frozen=True)
class InferResponse:
    model_name: str
    model_version: str
    id: str
    outputs: list[codec.Tensor]


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    versions: list[str]
    platform: str
    inputs: list[codec.TensorMeta]
    outputs: list[codec.TensorMeta]


class Handler:
    def __init__(self, dp: DataPlane) -> None:
        self.dp = dp

    def server_metadata(self) -> dict[str, Any]:
        return {"name": "mlapi", "version": importlib.metadata.version("mlapi"), "extensions": ["binary_tensor_data"]}

    async def ready(self) -> list[str]:
        """Reasons the server is not ready (as `/readyz`); empty when it is."""
        reasons, _ = await readiness(self.dp)
        return reasons

    def version(self, name: str, version: str) -> Version:
        """A version by the protocol's version string; empty means the model's default."""
        if not version:
            return self.dp.version(name)
        if version.isascii() and version.isdigit() and int(version) < 2**31:
            return self.dp.version(name, int(version))
        known = ", ".join(map(str, self.dp.model(name).versions))
        raise NotFound(f"model {name!r} has no version {version!r}; its versions: {known}")

    async def model_ready(self, name: str, version: str, caller: Caller) -> str | None:
        """Why the version cannot serve now; None when it can."""
        spec = self.version(name, version).spec
        self.dp.permit(caller, model=spec.name)
        if await self.dp.live((spec.name, spec.version)):
            return None
        return f"no live worker holds {spec.name!r} version {spec.version}"

    def model_metadata(self, name: str, version: str, caller: Caller) -> ModelMetadata:
        spec = self.version(name, version).spec
        self.dp.permit(caller, model=spec.name)
        versions = [str(v) for v in self.dp.model(name).versions]
        return ModelMetadata(spec.name, versions, spec.runtime, codec.inputs(spec), codec.outputs(spec))

    async def infer(
        self, name: str, version: str, request: InferRequest, caller: Caller,
        idempotent: Idempotent | None = None,
    ) -> InferResponse:  # fmt: skip
        """One job of all the request's rows, answered with the outputs asked for (with an idempotency key, the
        first request's answer to a repeat)."""
        spec = self.version(name, version).spec
        self.dp.permit(caller, model=spec.name)
        try:
            codec.check_outputs(spec, request.outputs)
            rows = codec.rows(spec, request.inputs, self.dp.settings.api.max_instances)
        except InvalidTensor:
            self.dp.metrics.requests.labels(spec.name, "invalid").inc()
            raise
        try:
            rows = self.dp.validate(spec, rows)
        except InvalidInput as e:
            raise InvalidTensor(_describe(e, matrix=codec.MATRIX in {i.name for i in request.inputs})) from None
        answer = await self.dp.infer(spec, rows, wait=True, caller=caller, idempotent=idempotent)
        assert isinstance(answer, Inferred)
        outputs = codec.encode(spec, answer.results, request.outputs)
        return InferResponse(spec.name, str(spec.version), request.id or answer.job_id, outputs)


def _describe(error: InvalidInput, matrix: bool) -> str:
    """The spec's refusals, each naming the input (and for the `[N, F]` form its feature) and the row."""
    parts = []
    for e in error.errors[:SHOWN_ERRORS]:
        row, *where = e["loc"]
        feature = str(where[0]) if where else "?"
        named = f"input {codec.MATRIX!r}, feature {feature!r}" if matrix else f"input {feature!r}"
        parts.append(f"{named}, row {row}: {e['msg']}")
    more = len(error.errors) - SHOWN_ERRORS
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")
