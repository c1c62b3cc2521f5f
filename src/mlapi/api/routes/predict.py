"""`POST /predict`, `/models/{name}/predict`, `/models/{name}/versions/{v}/predict`: JSON in, answers out.

The routes take the raw body (each model version has its own schema); `mlapi.api.openapi` documents one
path per model and version with its exact request schema.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import Field, TypeAdapter, ValidationError

from mlapi.api.access import Caller, check_idempotency_key, credential
from mlapi.api.dataplane import DataPlane, Idempotent, Inferred, InvalidInput
from mlapi.api.errors import MalformedBody, json_response
from mlapi.contract import OUTPUT_FIELDS, Result
from mlapi.models.spec import ModelSpec
from mlapi.schemas import Accepted, BatchAccepted

router = APIRouter(tags=["predict"])
IDEMPOTENCY = Header(alias="Idempotency-Key", description="A retry with the same key gets the first answer")
IdempotencyKey = Annotated[str | None, IDEMPOTENCY]
"""The OIP routes' parameter; the predict routes read the header themselves (`_arguments`)."""
# The predict routes take only the request and read the rest themselves, in the order FastAPI would (the caller,
# then the path and query parameters): its dependency solving cost more CPU than the rest of a request's
# handling in the API. `mlapi.api.openapi` documents their parameters.
_WAIT = TypeAdapter(bool)
_VERSION = TypeAdapter(Annotated[int, Field(ge=1, le=2**31 - 1)])


@router.post("/predict", include_in_schema=False)
async def predict_default(request: Request) -> Response:
    dp, caller, wait, key, _ = await _arguments(request, versioned=False)
    return await predict(dp, dp.version(dp.settings.api.default_model).spec, request, wait, caller, key)


@router.post("/models/{name}/predict", include_in_schema=False)
async def predict_model(request: Request) -> Response:
    dp, caller, wait, key, _ = await _arguments(request, versioned=False)
    return await predict(dp, dp.version(request.path_params["name"]).spec, request, wait, caller, key)


@router.post("/models/{name}/versions/{version}/predict", include_in_schema=False)
async def predict_version(request: Request) -> Response:
    dp, caller, wait, key, version = await _arguments(request, versioned=True)
    return await predict(dp, dp.version(request.path_params["name"], version).spec, request, wait, caller, key)


async def _arguments(request: Request, versioned: bool) -> tuple[DataPlane, Caller, bool, str | None, int | None]:
    """The data plane, the caller (401 and 429 first), then `version` (path), `wait` (query) and the
    Idempotency-Key, with FastAPI's 422 for invalid parameters."""
    dp: DataPlane = request.state.dataplane
    headers = request.headers
    caller = await dp.authenticate(credential(headers.get("authorization"), headers.get("x-api-key")))
    errors: list[dict[str, Any]] = []
    version = _validated(_VERSION, request.path_params["version"], ("path", "version"), errors) if versioned else None
    given = request.query_params.get("wait")
    wait = True if given is None else _validated(_WAIT, given, ("query", "wait"), errors)
    if errors:
        raise RequestValidationError(errors)
    return dp, caller, wait, headers.get("idempotency-key"), version


def _validated(adapter: TypeAdapter[Any], value: str, loc: tuple[str, ...], errors: list[dict[str, Any]]) -> Any:
    try:
        return adapter.validate_python(value)
    except ValidationError as e:
        errors += [{**err, "loc": (*loc, *err["loc"])} for err in e.errors(include_url=False)]
        return None


def _error(loc: tuple[str | int, ...], type_: str, msg: str) -> dict[str, Any]:
    return {"loc": loc, "type": type_, "msg": msg}


def parse(body: bytes, max_instances: int) -> tuple[list[Any], bool]:
    """The samples of a body holding one sample, or `{"instances": [...]}`, and whether it was a batch."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise MalformedBody(f"malformed JSON: {e}") from None
    if not (isinstance(payload, dict) and "instances" in payload):
        return [payload], False
    instances = payload["instances"]
    if extra := sorted(set(payload) - {"instances"}):
        raise RequestValidationError([_error(("body", extra[0]), "extra_forbidden", "Extra inputs are not permitted")])
    if not isinstance(instances, list) or not instances:
        raise RequestValidationError(
            [_error(("body", "instances"), "list_type", "must be a non-empty list of samples")]
        )
    if len(instances) > max_instances:
        raise RequestValidationError(
            [_error(("body", "instances"), "too_long", f"at most {max_instances} instances per request")]
        )
    return instances, True


def prediction(inferred: Inferred, result: Result) -> dict[str, Any]:
    """One answer as JSON: the model's output fields that apply (`contract.Output`), and where it came from."""
    spec = inferred.spec
    out: dict[str, Any] = {"id": result.id, "model": spec.name, "model_version": str(spec.version), "task": spec.task}
    for name in OUTPUT_FIELDS:
        if (value := getattr(result, name)) is not None:
            out[name] = value
    out["created_at"] = inferred.created_at
    out["warnings"] = result.warnings
    return out


def _server_timing(inferred: Inferred, started: float) -> str:
    parts = [f"total;dur={(time.perf_counter() - started) * 1000:.2f}"]
    if t := inferred.timings:
        parts += [
            f"queue;dur={t.queue_ms:.2f}",
            f"predict;dur={t.predict_ms:.2f}",
            f"store;dur={t.store_ms:.2f}",
            f'batch;desc="{t.batch_rows} rows"',
        ]
    return ", ".join(parts)


async def predict(
    dp: DataPlane, spec: ModelSpec, request: Request, wait: bool, caller: Caller, idempotency_key: str | None
) -> Response:
    started = time.perf_counter()
    dp.permit(caller, model=spec.name)
    idempotent = None
    if idempotency_key is not None:
        idempotent = Idempotent(request.url.path, check_idempotency_key(idempotency_key))
    try:
        items, batch = parse(await request.body(), dp.settings.api.max_instances)
    except (MalformedBody, RequestValidationError):
        dp.metrics.requests.labels(spec.name, "invalid").inc()
        raise
    try:
        rows = dp.validate(spec, items)
    except InvalidInput as e:
        prefix: tuple[str | int, ...] = ("body", "instances") if batch else ("body",)
        for err in e.errors:
            index, *field = err["loc"]
            err["loc"] = (*prefix, index, *field) if batch else (*prefix, *field)
        raise
    answer = await dp.infer(spec, rows, wait, caller, idempotent)
    if not isinstance(answer, Inferred):
        if batch:
            return json_response(BatchAccepted(ids=answer.ids).model_dump(), 202)
        first = answer.ids[0]
        return json_response(Accepted(id=first).model_dump(), 202, {"Location": f"/predictions/{first}"})
    predictions = [prediction(answer, r) for r in answer.results]
    headers = {"Server-Timing": _server_timing(answer, started)}
    return json_response({"predictions": predictions} if batch else predictions[0], 200, headers)
