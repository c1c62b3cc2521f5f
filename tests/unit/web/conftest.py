"""A stand-in for the API, in-process, so the web UI's pages and failure handling can be tested without servers.

It serves the bundled models' specs, a second version of iris (a classifier without probabilities, on two of
the four features, not the default) and a small regressor whose feature names are not identifiers, and answers
like the real API (same schemas, same error bodies); each test can make it fail, stall or reject a field.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import numpy as np
import pytest
from starlette.applications import Starlette
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from mlapi.models.spec import Feature, ModelSpec, read_bundled
from mlapi.schemas import Histogram, ModelDetail, ModelSummary, PredictionRecord, Stats, TimeBucket, VersionInfo
from mlapi.settings import PACKAGE_DIR, Settings, WebSettings
from mlapi.web import create_app

BUNDLED = {name: spec for name, (spec, _) in read_bundled(PACKAGE_DIR / "models" / "registry").items()}
IRIS_V2 = ModelSpec(
    **{
        **BUNDLED["iris"].model_dump(), "version": 2, "description": "Species of an iris flower from its petals alone",
        "features": [f for f in BUNDLED["iris"].features if f.name.startswith("petal")],
        "metrics": {"accuracy": 0.9333, "holdout_rows": 30}, "data": None, "trained_at": None,
    }
)  # fmt: skip
HOUSES = ModelSpec(
    name="house-price", version=1, task="regression", labels=[], description="Price of a house, in euros",
    features=[
        Feature(name="floor area", kind="number", minimum=0, unit="m²", training_range=(20, 400), example=85.5),
        Feature(name="model", kind="category", values=["flat", "house"], example="flat"),
        Feature(name="rooms", kind="number", integer=True, minimum=1, example=3),
    ],
    metrics={"mae": 20512.25, "rmse": 31877.5, "r2": 0.81234, "holdout_rows": 412},
)  # fmt: skip
VERSIONS: dict[str, dict[int, ModelSpec]] = {
    "diabetes-risk": {1: BUNDLED["diabetes-risk"]},
    "house-price": {1: HOUSES},
    "iris": {1: BUNDLED["iris"], 2: IRIS_V2},
}
"""Every version of every model the stand-in serves; each model's default is its version 1."""
SPECS = {name: versions[1] for name, versions in VERSIONS.items()}
"""Each model's default version."""
NO_PROBABILITIES = {("iris", 2)}
HOUSE_PRICE = 312456.789
"""What the stand-in's regressor answers."""
START = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
"""When the stand-in's history starts: within the web UI's chart window of the last 24 hours."""
ORIGIN = datetime(2000, 1, 3, tzinfo=UTC)
BINS = 10


def record(i: int, model: str = "iris", prediction: int = 0, probability: float = 0.9) -> PredictionRecord:
    spec = SPECS[model]
    created = START + timedelta(seconds=10 * i)
    others = (1 - probability) / max(1, len(spec.labels) - 1)
    return PredictionRecord(
        id=str(uuid.UUID(int=i + 1)), model=model, model_version=str(spec.version), task="classification",
        status="done", features=spec.example, prediction=prediction, label=spec.labels[prediction],
        probability=probability,
        probabilities={label: probability if c == prediction else others for c, label in enumerate(spec.labels)},
        warnings=[], error=None, created_at=created, completed_at=created + timedelta(milliseconds=5 + i),
    )  # fmt: skip


def value_record(i: int, value: float, model: str = "house-price") -> PredictionRecord:
    """A regressor's answer in the history: a value, no label, no probabilities."""
    return record(i).model_copy(
        update={"model": model, "task": "regression", "features": HOUSES.example, "prediction": value, "label": None,
                "probability": None, "probabilities": None}
    )  # fmt: skip


def stats_of(
    records: list[PredictionRecord], since: datetime | None = None, until: datetime | None = None, width: int = 3600
) -> Stats:
    """What the API's statistics say of the records created in [since, until) (default: an hour either side), done
    by the stand-in's own arithmetic: buckets from the API's origin, 10 bins, linear percentiles."""
    since = since or START - timedelta(hours=1)
    until = until or max((r.created_at or START for r in records), default=START) + timedelta(hours=1)
    rows = [r for r in records if r.created_at is not None and since <= r.created_at < until]
    step = timedelta(seconds=width)
    buckets: dict[datetime, dict[str, int]] = {}
    totals: dict[str, int] = {}
    probability: dict[str, list[int]] = {}
    values = [float(r.prediction) for r in rows if r.status == "done" and r.task == "regression" and r.prediction]
    for r in rows:
        assert r.created_at is not None
        series = r.status if r.status != "done" else "value" if r.task == "regression" else str(r.label)
        bucket = buckets.setdefault(ORIGIN + (r.created_at - ORIGIN) // step * step, {})
        bucket[series] = bucket.get(series, 0) + 1
        totals[series] = totals.get(series, 0) + 1
        if r.status == "done" and r.probability is not None:
            probability.setdefault(series, [0] * BINS)[min(BINS - 1, int(r.probability * BINS))] += 1
    histogram = None
    if values:
        low, high = min(values), max(values)
        counts = [0] * BINS
        for v in values:
            counts[0 if high == low else min(BINS - 1, int((v - low) / (high - low) * BINS))] += 1
        histogram = Histogram(edges=list(np.linspace(low, high, BINS + 1)), counts={"value": counts})
    latencies = [
        (r.completed_at - r.created_at).total_seconds() * 1000
        for r in rows if r.status == "done" and r.created_at and r.completed_at
    ]  # fmt: skip
    return Stats(
        since=since, until=until, bucket_s=width, total=len(rows), totals=totals,
        over_time=[TimeBucket(start=b, counts=c) for b, c in sorted(buckets.items())],
        probability=Histogram(edges=[i / BINS for i in range(BINS + 1)], counts=probability), values=histogram,
        latency_ms={f"p{q}": float(np.percentile(latencies, q)) if latencies else None for q in (50, 90, 95, 99)},
    )  # fmt: skip


def summary(name: str) -> ModelSummary:
    spec = SPECS[name]
    return ModelSummary(
        name=name, description=spec.description, default_version=spec.version, versions=sorted(VERSIONS[name]),
        runtime=spec.runtime, task=spec.task, labels=spec.labels, ready=1, predict=f"/models/{name}/predict",
        spec=f"/models/{name}",
    )  # fmt: skip


def version_info(spec: ModelSpec, ready: int = 1) -> VersionInfo:
    return VersionInfo(
        model=spec.name, version=spec.version, default=SPECS[spec.name].version == spec.version,
        runtime=spec.runtime, task=spec.task, sha256="0" * 64, size=1024, trusted=spec.trusted,
        metrics=spec.metrics, created_at=START, status="ready" if ready else "unavailable", ready=ready,
        load_errors={}, predict=f"/models/{spec.name}/versions/{spec.version}/predict", spec=spec,
    )  # fmt: skip


def answer(spec: ModelSpec, sample: dict[str, Any]) -> dict[str, Any]:
    """What the stand-in answers: class 1 at 81.25%, or the regressor's fixed value."""
    body: dict[str, Any] = {
        "id": str(uuid.uuid4()), "model": spec.name, "model_version": str(spec.version), "task": spec.task,
        "created_at": START.isoformat(), "warnings": spec.warnings(sample),
    }  # fmt: skip
    if spec.task == "regression":
        return {**body, "prediction": HOUSE_PRICE}
    body.update(prediction=1, label=spec.labels[1])
    if (spec.name, spec.version) not in NO_PROBABILITIES:
        others = 0.1875 / (len(spec.labels) - 1)
        probabilities = {label: (0.8125 if i == 1 else others) for i, label in enumerate(spec.labels)}
        body.update(probability=0.8125, probabilities=probabilities)
    return body


@dataclass
class FakeApi:
    records: list[PredictionRecord] = field(default_factory=list)
    """The history, newest first."""
    predict_status: int = 200
    predict_body: dict[str, Any] | None = None
    delay_s: float = 0.0
    requests: list[httpx.URL] = field(default_factory=list)
    last_sample: dict[str, Any] | None = None

    async def _pause(self, request: Request) -> None:
        self.requests.append(httpx.URL(str(request.url)))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)

    unready: set[tuple[str, int]] = field(default_factory=set)
    """Versions no live worker holds."""

    async def models(self, request: Request) -> Response:
        await self._pause(request)
        return JSONResponse([summary(name).model_dump(mode="json") for name in sorted(VERSIONS)])

    def _spec(self, request: Request) -> ModelSpec | None:
        """The version the path names (the default when it names none), or None."""
        versions = VERSIONS.get(request.path_params["name"], {})
        if "version" not in request.path_params:
            return versions.get(1)
        return versions.get(int(request.path_params["version"]))

    async def model(self, request: Request) -> Response:
        await self._pause(request)
        spec = self._spec(request)
        if spec is None:
            return JSONResponse({"detail": "unknown model"}, 404)
        detail = ModelDetail(**spec.model_dump(), default_version=spec.version, versions=sorted(VERSIONS[spec.name]))
        return Response(detail.model_dump_json(), media_type="application/json")

    async def version(self, request: Request) -> Response:
        await self._pause(request)
        spec = self._spec(request)
        if spec is None:
            return JSONResponse({"detail": "unknown model or version"}, 404)
        info = version_info(spec, ready=0 if (spec.name, spec.version) in self.unready else 1)
        return Response(info.model_dump_json(), media_type="application/json")

    async def versions(self, request: Request) -> Response:
        await self._pause(request)
        versions = VERSIONS.get(request.path_params["name"])
        if versions is None:
            return JSONResponse({"detail": "unknown model"}, 404)
        return JSONResponse([version_info(spec).model_dump(mode="json") for spec in versions.values()])

    async def predict(self, request: Request) -> Response:
        await self._pause(request)
        spec = self._spec(request)
        if spec is None:
            return JSONResponse({"detail": "unknown model or version"}, 404)
        sample = await request.json()
        if self.predict_body is not None:
            return JSONResponse(self.predict_body, self.predict_status)
        self.last_sample = sample
        timing = 'total;dur=12.50, queue;dur=1.25, predict;dur=3.00, store;dur=4.75, batch;desc="1 rows"'
        return JSONResponse(answer(spec, sample), headers={"Server-Timing": timing})

    def _matching(self, q: QueryParams) -> list[PredictionRecord]:
        """The history filtered by the query's model and predicted class."""
        return [
            r for r in self.records
            if q.get("model") in (None, r.model) and q.get("prediction") in (None, str(r.prediction))
        ]  # fmt: skip

    async def predictions(self, request: Request) -> Response:
        await self._pause(request)
        q = request.query_params
        items = self._matching(q)
        start = int(q.get("cursor", "0"))
        limit = int(q.get("limit", "50"))
        page = items[start : start + limit]
        next_cursor = str(start + limit) if start + limit < len(items) else None
        return JSONResponse({"items": [r.model_dump(mode="json") for r in page], "next_cursor": next_cursor})

    async def stats(self, request: Request) -> Response:
        await self._pause(request)
        q = request.query_params
        items = self._matching(q)
        since = datetime.fromisoformat(q["since"]) if "since" in q else None
        width = {"hour": 3600}.get(q.get("bucket", ""), 3600)
        found = stats_of(items, since, datetime.now(UTC), width)
        return Response(found.model_dump_json(), media_type="application/json")

    async def prediction(self, request: Request) -> Response:
        await self._pause(request)
        found = next((r for r in self.records if r.id == request.path_params["id"]), None)
        if found is None:
            return JSONResponse({"detail": f"no prediction {request.path_params['id']}"}, 404)
        return Response(found.model_dump_json(), media_type="application/json")

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/models", self.models),
                Route("/models/{name}", self.model),
                Route("/models/{name}/versions", self.versions),
                Route("/models/{name}/versions/{version:int}", self.version),
                Route("/models/{name}/predict", self.predict, methods=["POST"]),
                Route("/models/{name}/versions/{version:int}/predict", self.predict, methods=["POST"]),
                Route("/predictions", self.predictions),
                Route("/predictions/stats", self.stats),
                Route("/predictions/{id}", self.prediction),
            ]
        )


@pytest.fixture
def fake_api() -> FakeApi:
    return FakeApi()


def web_settings(**web: Any) -> Settings:
    return Settings(web=WebSettings(**{"api_url": "http://api.test", "api_timeout_s": 2.0, **web}))


@asynccontextmanager
async def serve(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan and hand its state to each request, as uvicorn does; then a client on it."""
    async with app.router.lifespan_context(app) as state:

        async def with_state(scope: Scope, receive: Receive, send: Send) -> None:
            await app({**scope, "state": dict(state or {})}, receive, send)

        transport = httpx.ASGITransport(app=with_state)
        async with httpx.AsyncClient(transport=transport, base_url="http://web.test") as client:
            yield client


@pytest.fixture
async def web(fake_api: FakeApi) -> AsyncIterator[httpx.AsyncClient]:
    """The web UI in front of the stand-in API."""
    app = create_app(web_settings(), api_transport=httpx.ASGITransport(app=fake_api.app()))
    async with serve(app) as client:
        yield client
