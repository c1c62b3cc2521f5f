"""One router per area of the JSON API; each translates HTTP to the core (`DataPlane`) and back."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from mlapi.api.dataplane import DataPlane
from mlapi.api.quality import QualityPlane


async def dataplane(request: Request) -> DataPlane:
    # async: FastAPI runs a plain `def` dependency in its thread pool, a thread hop on every request.
    return request.state.dataplane  # type: ignore[no-any-return]


DataPlaneDep = Annotated[DataPlane, Depends(dataplane)]


async def quality_plane(request: Request) -> QualityPlane:
    return request.state.quality  # type: ignore[no-any-return]


QualityDep = Annotated[QualityPlane, Depends(quality_plane)]
