"""One router per area of the JSON API; each translates HTTP to the core (`DataPlane`) and back."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from mlapi.api.access import Caller, credential
from mlapi.api.dataplane import DataPlane
from mlapi.api.quality import QualityPlane
from mlapi.schemas import Error


async def dataplane(request: Request) -> DataPlane:
    # async: FastAPI runs a plain `def` dependency in its thread pool, a thread hop on every request.
    return request.state.dataplane  # type: ignore[no-any-return]


DataPlaneDep = Annotated[DataPlane, Depends(dataplane)]


async def quality_plane(request: Request) -> QualityPlane:
    return request.state.quality  # type: ignore[no-any-return]


QualityDep = Annotated[QualityPlane, Depends(quality_plane)]
# Declared as FastAPI's security schemes, so /docs has an Authorize button; the core reads the values.
bearer = HTTPBearer(
    scheme_name="bearer", auto_error=False, description="`Authorization: Bearer <key>` (`mlapi keys create`)"
)
api_key_header = APIKeyHeader(
    name="X-API-Key", scheme_name="apiKey", auto_error=False, description="The API key as `X-API-Key`"
)
SECURITY: list[dict[str, list[str]]] = [{"bearer": []}, {"apiKey": []}]
"""Either scheme, as an OpenAPI operation's `security`."""


Token = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
ApiKey = Annotated[str | None, Depends(api_key_header)]


async def caller(dp: DataPlaneDep, token: Token, api_key: ApiKey) -> Caller:
    """The caller of a request (the anonymous admin with auth off), counted against its rate limit."""
    return await dp.authenticate(token.credentials if token is not None else api_key)


CallerDep = Annotated[Caller, Depends(caller)]


async def operator(dp: DataPlaneDep, request: Request) -> None:
    """`/metrics` and `/backlog`: open, or for admin keys only (`MLAPI_API__METRICS_ACCESS=admin`). Not a
    security scheme of the document: by default scrapers and autoscalers call them without a key."""
    if dp.settings.api.metrics_access == "admin":
        key = credential(request.headers.get("authorization"), request.headers.get("x-api-key"))
        dp.permit(await dp.authenticate(key), admin="read the service's metrics")


AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": Error, "description": "No API key, or an unknown or revoked one (auth required)"},
    429: {"model": Error, "description": "Over the key's rate limit; see Retry-After"},
}
