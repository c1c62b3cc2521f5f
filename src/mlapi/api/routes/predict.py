"""`POST /predict`, `/models/{name}/predict`, `/models/{name}/versions/{v}/predict`: JSON in, answers out.

The routes take the raw body (each model version has its own schema); `mlapi.api.openapi` documents one
path per model and version with its exact request schema.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response

from mlapi.api.access import Caller, check_idempotency_key
from mlapi.api.dataplane import DataPlane, Idempotent, Inferred, InvalidInput
from mlapi.api.errors import MalformedBody, json_response
from mlapi.api.routes import CallerDep, DataPlaneDep
from mlapi.contract import OUTPUT_FIELDS, Result
from mlapi.models.spec import ModelSpec
from mlapi.schemas import Accepted, BatchAccepted

router = APIRouter(tags=["predict"])
WAIT = Query(description="false: answer 202 at once and let the client read the result later")
Version = Annotated[int, Path(ge=1, le=2**31 - 1)]


IDEMPOTENCY = Header(alias="Idempotency-Key", description="A retry with the same key gets the first answer")
IdempotencyKey = Annotated[str | None, IDEMPOTENCY]


@router.post("/predict", include_in_schema=False)
async def predict_default(
    dp: DataPlaneDep, caller: CallerDep, request: Request, wait: Annotated[bool, WAIT] = True,
    idempotency_key: IdempotencyKey = None,
) -> Response:  # fmt: skip
    spec = dp.version(dp.settings.api.default_model).spec
    return await predict(dp, spec, request, wait, caller, idempotency_key)


@router.post("/models/{name}/predict", include_in_schema=False)
async def predict_model(
    dp: DataPlaneDep, caller: CallerDep, name: str, request: Request, wait: Annotated[bool, WAIT] = True,
    idempotency_key: IdempotencyKey = None,
) -> Response:  # fmt: skip
    return await predict(dp, dp.version(name).spec, request, wait, caller, idempotency_key)


@router.post("/models/{name}/versions/{version}/predict", include_in_schema=False)
async def predict_version(
    dp: DataPlaneDep, caller: CallerDep, name: str, version: Version, request: Request,
    wait: Annotated[bool, WAIT] = True, idempotency_key: IdempotencyKey = None,
) -> Response:  # fmt: skip
    return await predict(dp, dp.version(name, version).spec, request, wait, caller, idempotency_key)


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
