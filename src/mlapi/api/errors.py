"""The core's errors as HTTP answers: JSON with `detail`, and the prediction ids where a client needs them."""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError, OperationalError

from mlapi.api.dataplane import (
    BrokerUnavailable,
    Conflict,
    Forbidden,
    IdempotencyConflict,
    IdempotencyMismatch,
    InvalidIdempotencyKey,
    InvalidInput,
    NotFound,
    PredictionFailed,
    PredictionTimeout,
    RateLimited,
    Refused,
    Unauthenticated,
    Unavailable,
)
from mlapi.api.limits import BodyTooLarge
from mlapi.api.quality import InvalidFeedback, InvalidQuery, LabelRefused
from mlapi.storage.repository import InvalidCursor

log = logging.getLogger("mlapi.api")


RETRY_AFTER_S = 1.0
"""How long a 503 tells the client to wait before trying again, where its error does not say."""
WWW_AUTHENTICATE = {"WWW-Authenticate": 'Bearer realm="mlapi"'}
"""What a 401 names: the scheme its key goes in (`X-API-Key` works too)."""


class MalformedBody(Exception):
    pass


def retry_after(exc: Exception) -> dict[str, str]:
    """The Retry-After header every 409, 429 and 503 carries, in whole seconds."""
    return {"Retry-After": str(max(1, math.ceil(getattr(exc, "retry_after_s", RETRY_AFTER_S))))}


def error_headers(status: int, exc: Exception) -> dict[str, str] | None:
    """What an error's answer tells the client beyond its body: when to try again (503, 429, and a 409 of a
    request in flight), or which credentials a 401 wants."""
    if status == 503 or hasattr(exc, "retry_after_s"):
        return retry_after(exc)
    return WWW_AUTHENTICATE if status == 401 else None


def json_response(content: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content), status_code, headers, media_type="application/json")


def add_error_handlers(app: FastAPI) -> None:
    def handler(status: int, with_ids: bool = False) -> Callable[[Request, Exception], Awaitable[Response]]:
        async def handle(request: Request, exc: Exception) -> Response:
            body: dict[str, Any] = {"detail": str(exc)}
            ids = getattr(exc, "ids", None)
            if with_ids and ids:
                body.update({"id": ids[0]} if len(ids) == 1 else {"ids": ids})
            return json_response(body, status, error_headers(status, exc))

        return handle

    for exc, status in (
        (MalformedBody, 400), (InvalidCursor, 400), (InvalidIdempotencyKey, 400), (Unauthenticated, 401),
        (Forbidden, 403), (NotFound, 404), (Conflict, 409), (BodyTooLarge, 413), (Refused, 422),
        (IdempotencyMismatch, 422), (InvalidQuery, 422), (LabelRefused, 422), (RateLimited, 429), (Unavailable, 503),
    ):  # fmt: skip
        app.add_exception_handler(exc, handler(status))
    app.add_exception_handler(IdempotencyConflict, handler(409, with_ids=True))
    app.add_exception_handler(PredictionFailed, handler(422, with_ids=True))  # the model is pure: the input's fault
    app.add_exception_handler(BrokerUnavailable, handler(503, with_ids=True))
    app.add_exception_handler(PredictionTimeout, handler(504, with_ids=True))

    async def broker_down(request: Request, exc: Exception) -> Response:
        return json_response({"detail": f"broker unavailable: {exc}"}, 503, retry_after(exc))

    async def database_down(request: Request, exc: Exception) -> Response:
        log.warning("database error: %s", exc)
        return json_response({"detail": "database unavailable"}, 503, retry_after(exc))

    async def validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return JSONResponse({"detail": jsonable_encoder(exc.errors())}, 422)

    async def invalid_input(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, InvalidInput)
        return JSONResponse({"detail": jsonable_encoder(exc.errors)}, 422)

    async def invalid_feedback(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, InvalidFeedback)
        return json_response({"detail": exc.errors}, 422)

    app.add_exception_handler(InvalidFeedback, invalid_feedback)
    app.add_exception_handler(RedisError, broker_down)
    app.add_exception_handler(OperationalError, database_down)
    app.add_exception_handler(DBAPIError, database_down)
    app.add_exception_handler(OSError, database_down)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(InvalidInput, invalid_input)
