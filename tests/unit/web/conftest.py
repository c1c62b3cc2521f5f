"""A stand-in for the API, in-process, so the web UI's pages and failure handling can be tested without servers.

It serves the real registry's specs and answers like the real API (same schemas, same error bodies); each test
can make it fail, stall or reject a field.
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
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from mlapi.api.schemas import PredictionRecord
from mlapi.models.spec import read_registry
from mlapi.settings import PACKAGE_DIR, Settings, WebSettings
from mlapi.web import create_app

SPECS = read_registry(PACKAGE_DIR / "models" / "registry")
START = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def record(i: int, model: str = "iris", prediction: int = 0, probability: float = 0.9) -> PredictionRecord:
    spec = SPECS[model]
    created = START + timedelta(seconds=10 * i)
    others = (1 - probability) / max(1, len(spec.labels) - 1)
    return PredictionRecord(
        id=str(uuid.UUID(int=i + 1)), model=model, model_version=spec.version, status="done",
        features=spec.example, prediction=prediction, label=spec.labels[prediction], probability=probability,
        probabilities={label: probability if c == prediction else others for c, label in enumerate(spec.labels)},
        warnings=[], error=None, created_at=created, completed_at=created + timedelta(milliseconds=5 + i),
    )  # fmt: skip


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

    async def models(self, request: Request) -> Response:
        await self._pause(request)
        return JSONResponse(
            [{"name": s.name, "version": s.version, "description": s.description, "labels": s.labels,
              "predict": f"/models/{s.name}/predict", "spec": f"/models/{s.name}"} for s in SPECS.values()]
        )  # fmt: skip

    async def spec(self, request: Request) -> Response:
        await self._pause(request)
        spec = SPECS.get(request.path_params["name"])
        if spec is None:
            return JSONResponse({"detail": "unknown model"}, 404)
        return Response(spec.model_dump_json(), media_type="application/json")

    async def predict(self, request: Request) -> Response:
        await self._pause(request)
        spec = SPECS[request.path_params["name"]]
        sample = await request.json()
        if self.predict_body is not None:
            return JSONResponse(self.predict_body, self.predict_status)
        self.last_sample = sample
        body = {
            "id": str(uuid.uuid4()), "model": spec.name, "model_version": spec.version, "prediction": 1,
            "label": spec.labels[1], "probability": 0.8125,
            "probabilities": {label: (0.8125 if i == 1 else 0.1875 / (len(spec.labels) - 1))
                              for i, label in enumerate(spec.labels)},
            "created_at": START.isoformat(), "warnings": spec.warnings(sample),
        }  # fmt: skip
        timing = 'total;dur=12.50, queue;dur=1.25, predict;dur=3.00, store;dur=4.75, batch;desc="1 rows"'
        return JSONResponse(body, headers={"Server-Timing": timing})

    async def predictions(self, request: Request) -> Response:
        await self._pause(request)
        q = request.query_params
        items = [
            r for r in self.records
            if q.get("model") in (None, r.model) and q.get("prediction") in (None, str(r.prediction))
        ]  # fmt: skip
        start = int(q.get("cursor", "0"))
        limit = int(q.get("limit", "50"))
        page = items[start : start + limit]
        next_cursor = str(start + limit) if start + limit < len(items) else None
        return JSONResponse({"items": [r.model_dump(mode="json") for r in page], "next_cursor": next_cursor})

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
                Route("/models/{name}", self.spec),
                Route("/models/{name}/predict", self.predict, methods=["POST"]),
                Route("/predictions", self.predictions),
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
