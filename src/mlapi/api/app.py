"""The HTTP API: `create_app(settings)`; endpoints translate HTTP, `Predictions` holds the logic."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import Depends, FastAPI, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError, OperationalError

from mlapi import queue
from mlapi.api.dispatcher import BrokerUnavailable, PredictionTimeout, ReplyDispatcher
from mlapi.api.limits import BodyLimit, BodyTooLarge
from mlapi.api.metrics import Metrics
from mlapi.api.schemas import (
    Accepted,
    BatchAccepted,
    BatchOut,
    Error,
    ErrorWithIds,
    ModelSummary,
    Page,
    PredictionOut,
    PredictionRecord,
)
from mlapi.contract import Job, Reply, Row
from mlapi.models.spec import ModelSpec, read_registry
from mlapi.settings import Settings
from mlapi.storage.repository import Cursor, Filters, InvalidCursor, PredictionRepository, engine_for

log = logging.getLogger("mlapi.api")


class UnknownModel(Exception):
    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"unknown model {name!r}; known models: {', '.join(known)}")


class MalformedBody(Exception):
    pass


class PredictionFailed(Exception):
    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.error or "prediction failed")
        self.ids = [r.id for r in reply.results]


@dataclass
class Services:
    """The clients one API process holds, opened in the lifespan."""

    settings: Settings
    specs: dict[str, ModelSpec]
    redis: Redis
    repository: PredictionRepository
    dispatcher: ReplyDispatcher
    metrics: Metrics


async def services(request: Request) -> Services:
    # async: FastAPI runs a plain `def` dependency in its thread pool, a thread hop on every request.
    return request.state.services  # type: ignore[no-any-return]


ServicesDep = Annotated[Services, Depends(services)]


def _parse(spec: ModelSpec, body: bytes, max_instances: int) -> tuple[list[dict[str, Any]], bool]:
    """Validate a body holding one sample, or `{"instances": [...]}`; returns the rows and whether it was a batch."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise MalformedBody(f"malformed JSON: {e}") from None
    sample = spec.sample_type
    if isinstance(payload, dict) and "instances" in payload:
        instances = payload["instances"]
        extra = sorted(set(payload) - {"instances"})
        if extra:
            raise RequestValidationError(
                [_error(("body", extra[0]), "extra_forbidden", "Extra inputs are not permitted")]
            )
        if not isinstance(instances, list) or not instances:
            raise RequestValidationError(
                [_error(("body", "instances"), "list_type", "must be a non-empty list of samples")]
            )
        if len(instances) > max_instances:
            raise RequestValidationError(
                [_error(("body", "instances"), "too_long", f"at most {max_instances} instances per request")]
            )
        return [_validate(sample, item, ("body", "instances", i)) for i, item in enumerate(instances)], True
    return [_validate(sample, payload, ("body",))], False


def _error(loc: tuple[str | int, ...], type_: str, msg: str) -> dict[str, Any]:
    return {"loc": loc, "type": type_, "msg": msg}


def _validate(sample: type[BaseModel], item: Any, loc: tuple[str | int, ...]) -> dict[str, Any]:
    try:
        return sample.model_validate(item).model_dump()
    except ValidationError as e:
        errors = e.errors(include_url=False)
        raise RequestValidationError([{**err, "loc": (*loc, *err["loc"])} for err in errors]) from None


def _prediction(job: Job, reply: Reply) -> list[dict[str, Any]]:
    return [
        {
            "id": r.id,
            "model": job.model,
            "model_version": reply.model_version,
            "prediction": r.prediction,
            "label": r.label,
            "probability": r.probability,
            "probabilities": r.probabilities,
            "created_at": job.created_at,
            "warnings": r.warnings,
        }
        for r in reply.results
    ]


def _json(content: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content), status_code, headers, media_type="application/json")


def _server_timing(reply: Reply, started: float) -> str:
    total_ms = (time.perf_counter() - started) * 1000
    parts = [f"total;dur={total_ms:.2f}"]
    if t := reply.timings:
        parts += [
            f"queue;dur={t.queue_ms:.2f}",
            f"predict;dur={t.predict_ms:.2f}",
            f"store;dur={t.store_ms:.2f}",
            f'batch;desc="{t.batch_rows} rows"',
        ]
    return ", ".join(parts)


async def predict(svc: Services, name: str, request: Request, wait: bool) -> Response:
    started = time.perf_counter()
    spec = svc.specs.get(name)
    if spec is None:
        raise UnknownModel(name, list(svc.specs))
    try:
        rows, batch = _parse(spec, await request.body(), svc.settings.api.max_instances)
    except (MalformedBody, RequestValidationError):
        svc.metrics.requests.labels(name, "invalid").inc()
        raise
    job = Job(
        id=uuid.uuid4().hex,
        model=name,
        rows=[Row(id=str(uuid.uuid4()), features=f) for f in rows],
        reply_to=svc.dispatcher.stream,
        created_at=datetime.now(UTC),
    )
    if not wait:
        try:
            await queue.enqueue(svc.redis, job, track=True)
        except RedisError as e:
            svc.metrics.requests.labels(name, "unavailable").inc()
            raise BrokerUnavailable(f"broker unavailable, cannot queue the request: {e}") from e
        svc.metrics.requests.labels(name, "queued").inc()
        ids = [r.id for r in job.rows]
        if batch:
            return _json(BatchAccepted(ids=ids).model_dump(), 202)
        return _json(Accepted(id=ids[0]).model_dump(), 202, {"Location": f"/predictions/{ids[0]}"})
    try:
        reply = await svc.dispatcher.submit(svc.redis, job, svc.settings.api.request_timeout_s)
    except PredictionTimeout:
        svc.metrics.requests.labels(name, "timeout").inc()
        with contextlib.suppress(RedisError):  # its ids are known to the client from now on
            await queue.mark_queued(svc.redis, job)
        raise
    except BrokerUnavailable:
        svc.metrics.requests.labels(name, "unavailable").inc()
        raise
    if reply.error is not None:
        svc.metrics.requests.labels(name, "failed").inc()
        raise PredictionFailed(reply)
    svc.metrics.answered(name, time.perf_counter() - started, reply)
    predictions = _prediction(job, reply)
    headers = {"Server-Timing": _server_timing(reply, started)}
    return _json({"predictions": predictions} if batch else predictions[0], 200, headers)


def _request_body(spec: ModelSpec, max_instances: int) -> dict[str, Any]:
    """The OpenAPI request body: the model's exact sample schema, alone or as a batch."""
    sample = spec.sample_type.model_json_schema()
    batch = {
        "title": f"{sample['title']}Batch",
        "type": "object",
        "properties": {"instances": {"type": "array", "items": sample, "minItems": 1, "maxItems": max_instances}},
        "required": ["instances"],
        "additionalProperties": False,
    }
    return {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"oneOf": [sample, batch]},
                "examples": {
                    "sample": {"summary": "One sample", "value": spec.example},
                    "batch": {"summary": "A batch", "value": {"instances": [spec.example, spec.example]}},
                },
            }
        },
    }


PREDICT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": PredictionOut | BatchOut, "description": "The prediction, or the batch's in order"},
    202: {"model": Accepted | BatchAccepted, "description": "Queued (`wait=false`); see the Location header"},
    400: {"model": Error, "description": "Malformed JSON"},
    404: {"model": Error, "description": "Unknown model"},
    413: {"model": Error, "description": "Body too large"},
    422: {"description": "Invalid sample; `loc` names the field"},
    502: {"model": ErrorWithIds, "description": "The model failed on this input; the history keeps the failure"},
    503: {"model": ErrorWithIds, "description": "Broker unavailable"},
    504: {"model": ErrorWithIds, "description": "No answer in time; the id resolves later in the history"},
}
WAIT = Query(True, description="false: answer 202 at once and let the client read the result later")


def _add_predict_routes(app: FastAPI, settings: Settings, specs: dict[str, ModelSpec]) -> None:
    def endpoint(name: str) -> Callable[..., Awaitable[Response]]:
        async def predict_model(svc: ServicesDep, request: Request, wait: bool = WAIT) -> Response:
            return await predict(svc, name, request, wait)

        return predict_model

    default = specs.get(settings.api.default_model)
    if default is not None:
        app.add_api_route(
            "/predict", endpoint(default.name), methods=["POST"], tags=["predict"],
            summary=f"Predict with the default model, {default.name}", responses=PREDICT_RESPONSES,
            openapi_extra={"requestBody": _request_body(default, settings.api.max_instances)},
            operation_id="predict_default",
        )  # fmt: skip
    for spec in specs.values():
        app.add_api_route(
            f"/models/{spec.name}/predict", endpoint(spec.name), methods=["POST"], tags=["predict"],
            summary=f"Predict with {spec.name}", responses=PREDICT_RESPONSES,
            openapi_extra={"requestBody": _request_body(spec, settings.api.max_instances)},
            operation_id=f"predict_{spec.name.replace('-', '_')}",
        )  # fmt: skip

    @app.post("/models/{name}/predict", include_in_schema=False)
    async def predict_unknown(name: str, svc: ServicesDep) -> Response:
        raise UnknownModel(name, list(svc.specs))


def _record(row: Mapping[str, Any]) -> PredictionRecord:
    return PredictionRecord.model_validate({**row, "id": str(row["id"])})


def _add_meta_routes(app: FastAPI) -> None:
    @app.get("/", tags=["meta"])
    async def hello(svc: ServicesDep) -> dict[str, Any]:
        return {
            "message": "Hello from mlapi, the ML prediction service",
            "default_model": svc.settings.api.default_model,
            "links": {"docs": "/docs", "predict": "/predict", "models": "/models", "history": "/predictions",
                      "health": "/healthz", "ready": "/readyz", "metrics": "/metrics"},
        }  # fmt: skip

    @app.get("/healthz", tags=["meta"])
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz", tags=["meta"], responses={503: {"description": "Not ready, with the reasons"}})
    async def readyz(svc: ServicesDep) -> Response:
        reasons = await _not_ready(svc)
        if reasons:
            return _json({"status": "unavailable", "reasons": reasons}, 503)
        return _json({"status": "ready"})

    @app.get("/metrics", tags=["meta"], response_class=Response)
    async def metrics(svc: ServicesDep) -> Response:
        """Prometheus metrics: this process's requests, and each model's queue (length, lag, pending,
        dead letters, live workers)."""
        svc.metrics.in_flight.set(svc.dispatcher.in_flight)
        body = await svc.metrics.render(svc.redis, svc.specs, svc.settings.worker.liveness_ms)
        return Response(body, media_type=CONTENT_TYPE_LATEST)


def _add_model_and_history_routes(app: FastAPI) -> None:
    @app.get("/models", tags=["models"])
    async def list_models(svc: ServicesDep) -> list[ModelSummary]:
        return [
            ModelSummary(name=s.name, version=s.version, description=s.description, labels=s.labels,
                         predict=f"/models/{s.name}/predict", spec=f"/models/{s.name}")
            for s in svc.specs.values()
        ]  # fmt: skip

    @app.get("/models/{name}", tags=["models"], responses={404: {"model": Error}})
    async def get_model(name: str, svc: ServicesDep) -> ModelSpec:
        if name not in svc.specs:
            raise UnknownModel(name, list(svc.specs))
        return svc.specs[name]

    @app.get("/predictions", tags=["history"], responses={400: {"model": Error}})
    async def list_predictions(
        svc: ServicesDep,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page")] = None,
        model: str | None = None,
        since: Annotated[datetime | None, Query(description="Created at or after (ISO 8601)")] = None,
        until: Annotated[datetime | None, Query(description="Created before (ISO 8601)")] = None,
        prediction: Annotated[int | None, Query(ge=0, description="Predicted class")] = None,
    ) -> Page:
        after = Cursor.decode(cursor) if cursor else None
        filters = Filters(model=model, since=_utc(since), until=_utc(until), prediction=prediction)
        rows, next_cursor = await svc.repository.page(filters, limit, after)
        return Page(items=[_record(r) for r in rows], next_cursor=next_cursor.encode() if next_cursor else None)

    @app.get("/predictions/{prediction_id}", tags=["history"], responses={404: {"model": Error}})
    async def get_prediction(prediction_id: uuid.UUID, svc: ServicesDep) -> PredictionRecord:
        row = await svc.repository.get(str(prediction_id))
        if row is not None:
            return _record(row)
        marker = await queue.queued(svc.redis, str(prediction_id))
        if marker is None:
            raise NotFound(f"no prediction {prediction_id}")
        return PredictionRecord(
            id=str(prediction_id), model=marker["model"], model_version=None, status="queued", features=None,
            prediction=None, label=None, probability=None, probabilities=None, warnings=[], error=None,
            created_at=datetime.fromisoformat(marker["created_at"]), completed_at=None,
        )  # fmt: skip


class NotFound(Exception):
    pass


def _utc(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


async def _not_ready(svc: Services) -> list[str]:
    async def redis_check() -> str | None:
        await svc.redis.ping()
        live = await queue.live_workers(svc.redis, svc.settings.api.default_model, svc.settings.worker.liveness_ms)
        return None if live else f"no live worker for {svc.settings.api.default_model}"

    async def database_check() -> str | None:
        await svc.repository.ping()
        return None

    reasons = []
    for what, check in (("redis", redis_check), ("database", database_check)):
        try:
            if reason := await asyncio.wait_for(check(), 2.0):
                reasons.append(reason)
        except Exception as e:
            reasons.append(f"{what} unreachable: {type(e).__name__}: {e}")
    return reasons


def _add_error_handlers(app: FastAPI) -> None:
    def handler(status: int, with_ids: bool = False) -> Callable[[Request, Exception], Awaitable[Response]]:
        async def handle(request: Request, exc: Exception) -> Response:
            body: dict[str, Any] = {"detail": str(exc)}
            ids = getattr(exc, "ids", None)
            if with_ids and ids:
                body.update({"id": ids[0]} if len(ids) == 1 else {"ids": ids})
            return _json(body, status)

        return handle

    app.add_exception_handler(MalformedBody, handler(400))
    app.add_exception_handler(InvalidCursor, handler(400))
    app.add_exception_handler(NotFound, handler(404))
    app.add_exception_handler(UnknownModel, handler(404))
    app.add_exception_handler(BodyTooLarge, handler(413))
    app.add_exception_handler(PredictionFailed, handler(502, with_ids=True))
    app.add_exception_handler(BrokerUnavailable, handler(503, with_ids=True))
    app.add_exception_handler(PredictionTimeout, handler(504, with_ids=True))

    async def broker_down(request: Request, exc: Exception) -> Response:
        return _json({"detail": f"broker unavailable: {exc}"}, 503)

    async def database_down(request: Request, exc: Exception) -> Response:
        log.warning("database error: %s", exc)
        return _json({"detail": "database unavailable"}, 503)

    async def validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return JSONResponse({"detail": jsonable_encoder(exc.errors())}, 422)

    app.add_exception_handler(RedisError, broker_down)
    app.add_exception_handler(OperationalError, database_down)
    app.add_exception_handler(DBAPIError, database_down)
    app.add_exception_handler(OSError, database_down)
    app.add_exception_handler(RequestValidationError, validation)


def create_app(settings: Settings) -> FastAPI:
    specs = read_registry(settings.models_dir)
    redis_url, database_url = settings.require_redis_url(), settings.require_database_url()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Services]]:
        redis = queue.connect(redis_url)
        engine = engine_for(database_url)
        dispatcher = ReplyDispatcher(redis_url, settings.api.reply_block_ms)
        dispatcher.start()
        try:
            services = Services(settings, specs, redis, PredictionRepository(engine), dispatcher, Metrics())
            yield {"services": services}
        finally:
            await dispatcher.stop()
            await redis.aclose()
            await engine.dispose()

    app = FastAPIOffline(  # Swagger UI and ReDoc served from the package, not a CDN: /docs works offline
        title="mlapi",
        version="0.1.0",
        description="Predictions from models served by workers behind Redis Streams; every prediction is stored.",
        lifespan=lifespan,
    )
    _add_predict_routes(app, settings, specs)
    _add_meta_routes(app)
    _add_model_and_history_routes(app)
    _add_error_handlers(app)
    if settings.api.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.api.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Content-Type"])  # fmt: skip
    app.add_middleware(BodyLimit, max_bytes=settings.api.max_body_bytes)
    return app
