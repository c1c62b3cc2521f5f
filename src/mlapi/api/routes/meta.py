"""`/`, `/healthz`, `/readyz`, `/metrics` and `/backlog`: about the service itself."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy.exc import SQLAlchemyError

from mlapi import queue
from mlapi.api.dataplane import DataPlane
from mlapi.api.errors import json_response
from mlapi.api.routes import AUTH_RESPONSES, CallerDep, DataPlaneDep, QualityDep, operator
from mlapi.schemas import Caller as CallerOut

router = APIRouter(tags=["meta"])
log = logging.getLogger("mlapi.api")


@router.get("/")
async def hello(dp: DataPlaneDep) -> dict[str, Any]:
    return {
        "message": "Hello from mlapi, the ML prediction service",
        "default_model": dp.settings.api.default_model,
        "links": {"docs": "/docs", "predict": "/predict", "models": "/models", "history": "/predictions",
                  "health": "/healthz", "ready": "/readyz", "metrics": "/metrics", "backlog": "/backlog", "me": "/me"},
    }  # fmt: skip


@router.get("/me", responses=AUTH_RESPONSES)
async def me(dp: DataPlaneDep, caller: CallerDep) -> CallerOut:
    """The key this request carries and what it may do (with auth off: an anonymous admin)."""
    models = sorted(caller.models) if caller.models is not None else None
    return CallerOut(key=caller.name, admin=caller.admin, models=models, rate=caller.rate, auth=dp.settings.api.auth)


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "alive"}


CHECK_TIMEOUT_S = 2.5
"""Each readiness check's deadline; the checks run together, within a probe's usual 3 s timeout."""


async def readiness(dp: DataPlane) -> tuple[list[str], dict[str, dict[str, int]]]:
    """Reasons the service is not ready, and each model version's live workers.

    Nothing is remembered between calls: every answer is a fresh look, so readiness returns as soon as
    what it checks is back.
    """
    workers: dict[str, dict[str, int]] = {}

    async def redis_check() -> str | None:
        await dp.redis.ping()  # also when the registry is empty and nothing else is asked
        keys = [(m.name, v) for m in dp.snapshot.values() for v in m.versions]
        for (name, number), live in (await queue.live_counts(dp.redis, keys, dp.settings.worker.liveness_ms)).items():
            workers.setdefault(name, {})[str(number)] = live
        default = dp.settings.api.default_model
        model = dp.snapshot.get(default)
        if model is None or model.default_version is None:
            return f"the default model {default!r} is not in the registry"
        return None if workers[default][str(model.default_version)] else f"no live worker for {default}"

    async def database_check() -> str | None:
        await dp.check_database()
        return None

    async def reader_check() -> str | None:
        return None if dp.dispatcher.up else "the reply reader is down (restarting)"

    checks = {"redis": redis_check(), "database": database_check(), "reply reader": reader_check()}
    outcomes = await asyncio.gather(
        *(asyncio.wait_for(check, CHECK_TIMEOUT_S) for check in checks.values()), return_exceptions=True
    )
    reasons = []
    for what, outcome in zip(checks, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            reasons.append(f"{what} unreachable: {type(outcome).__name__}: {outcome}")
        elif outcome:
            reasons.append(outcome)
    return reasons, workers


@router.get("/readyz", responses={503: {"description": "Not ready, with the reasons"}})
async def readyz(dp: DataPlaneDep) -> Response:
    """Ready: Redis and PostgreSQL reachable, the reply reader running and a live worker for the default model;
    lists every version's live workers either way."""
    reasons, workers = await readiness(dp)
    if reasons:
        return json_response({"status": "unavailable", "reasons": reasons, "workers": workers}, 503)
    return json_response({"status": "ready", "workers": workers})


@router.get("/metrics", response_class=Response, dependencies=[Depends(operator)])
async def metrics(dp: DataPlaneDep, quality: QualityDep) -> Response:
    """Prometheus metrics: this process's requests, each model version's queue (length, lag, pending, live
    workers), each model's dead letters, and each version's live quality and drift (recomputed at most every
    MLAPI_QUALITY__METRICS_INTERVAL_S)."""
    dp.metrics.in_flight.set(dp.dispatcher.in_flight)
    try:
        await quality.update_gauges()
    except (SQLAlchemyError, OSError) as e:  # the other metrics matter most when the database is away
        log.warning("quality and drift gauges not updated: %s", e)
    keys = [(m.name, v) for m in dp.snapshot.values() for v in m.versions]
    body = await dp.metrics.render(dp.redis, keys, dp.settings.worker.liveness_ms)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


@router.get("/backlog", dependencies=[Depends(operator)])
async def backlog(dp: DataPlaneDep) -> dict[str, Any]:
    """Requests waiting for a worker (queued and not yet acknowledged) over every model version: what the
    workers' autoscaler follows (KEDA's metrics-api trigger reads `total`)."""
    keys = [(m.name, v) for m in dp.snapshot.values() for v in m.versions]
    stats = await queue.stats(dp.redis, keys, dp.settings.worker.liveness_ms)
    versions = [
        {"model": name, "version": number, "lag": s["lag"], "pending": s["pending"]}
        for (name, number), s in stats.items()
    ]
    return {"total": sum(s["lag"] + s["pending"] for s in stats.values()), "versions": versions}
