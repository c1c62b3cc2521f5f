"""The web UI: `create_app(settings)`, server-rendered pages that reach the API through one client of the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import httpx
import jinja2
from starlette.applications import Starlette
from starlette.datastructures import QueryParams
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mlapi.api.schemas import ModelSummary
from mlapi.settings import Settings
from mlapi.web import charts
from mlapi.web.client import Answer, ApiClient, ApiProblem, InvalidSample
from mlapi.web.forms import FormErrors, controls, errors_by_field, feature_label, format_number, sample_from_form

log = logging.getLogger("mlapi.web")
HERE = Path(__file__).resolve().parent
MAX_FORM_BYTES = 64 * 1024
SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
     b"form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
]  # fmt: skip


class SecurityHeaders:
    """Adds a strict Content-Security-Policy (no inline script or style) and friends to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def api(request: Request) -> ApiClient:
    return request.state.api  # type: ignore[no-any-return]


def _settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def _templates(request: Request) -> Jinja2Templates:
    return request.app.state.templates  # type: ignore[no-any-return]


def render(request: Request, name: str, context: dict[str, Any], status_code: int = 200) -> Response:
    base = {"request": request, "api_url": _settings(request).web.api_url, "nav": context.get("nav")}
    return _templates(request).TemplateResponse(request, name, {**base, **context}, status_code=status_code)


def _default_model(settings: Settings, models: list[ModelSummary]) -> ModelSummary:
    by_name = {m.name: m for m in models}
    return by_name.get(settings.api.default_model) or models[0]


def _find_model(models: list[ModelSummary], name: str | None) -> ModelSummary | None:
    return next((m for m in models if m.name == name), None)


async def _models(request: Request) -> list[ModelSummary]:
    models = await api(request).models()
    if not models:
        raise ApiProblem("The API serves no models yet.")
    return models


async def _form(request: Request) -> dict[str, str]:
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise HTTPException(413, "The form is too large.")
    return dict(parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True))


async def predict_page(request: Request) -> Response:
    """GET shows the form (pre-filled from the query or the spec's example); POST also shows the answer."""
    models = await _models(request)
    submitted = await _form(request) if request.method == "POST" else dict(request.query_params)
    name = submitted.get("model") or request.query_params.get("model")
    model = _find_model(models, name) if name else _default_model(_settings(request), models)
    if model is None:
        raise HTTPException(404, f"There is no model called {name!r}.")
    spec = await api(request).spec(model.name)
    values = {k: v for k, v in submitted.items() if k != "model"}
    answer: Answer | None = None
    problem: ApiProblem | None = None
    errors = FormErrors()
    status = 200
    if request.method == "POST":
        try:
            answer = await api(request).predict(spec.name, sample_from_form(spec, values))
        except InvalidSample as e:
            errors, status = errors_by_field(spec, e.errors), 422
        except ApiProblem as e:
            problem, status = e, e.status_code
            log.warning("prediction with %s failed: %s", spec.name, e.message)
    context = {
        "nav": "predict", "models": models, "spec": spec, "controls": controls(spec, values, errors.by_field),
        "errors": errors, "answer": answer, "problem": problem,
    }  # fmt: skip
    return render(request, "predict.html", context, status)


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None


def _class_options(models: list[ModelSummary], model: ModelSummary | None) -> list[tuple[int, str]]:
    if model is not None:
        return list(enumerate(model.labels))
    most = max(len(m.labels) for m in models)
    return [(i, f"class {i} ({', '.join(m.labels[i] for m in models if i < len(m.labels))})") for i in range(most)]


def _query(params: QueryParams, **changes: str | None) -> str:
    return urlencode({k: v for k, v in {**dict(params), **changes}.items() if v not in (None, "")})


async def history_page(request: Request) -> Response:
    settings = _settings(request)
    models = await _models(request)
    params = request.query_params
    model = _find_model(models, params.get("model"))
    prediction = _int_or_none(params.get("prediction"))
    cursor = params.get("cursor") or None
    client = api(request)
    name = model.name if model else None
    page, window = await asyncio.gather(
        client.predictions(settings.web.page_size, cursor, name, prediction),
        client.predictions(settings.web.chart_window, None, name, prediction),
    )
    newest = page.items[0].id if page.items else ""
    context = {
        "nav": "history", "models": models, "model": model, "prediction": prediction, "cursor": cursor,
        "class_options": _class_options(models, model), "page": page, "window": window,
        "charts": charts.history_charts(window.items), "series": charts.series_order(window.items),
        "next_query": _query(params, cursor=page.next_cursor) if page.next_cursor else None,
        "first_query": _query(params, cursor=None), "live": cursor is None and settings.web.refresh_s > 0,
        "refresh_s": settings.web.refresh_s, "version": f"{newest}:{len(window.items)}",
    }  # fmt: skip
    return render(request, "history.html", context)


async def prediction_page(request: Request) -> Response:
    prediction_id: uuid.UUID = request.path_params["prediction_id"]
    record = await api(request).prediction(str(prediction_id))
    spec = None
    with contextlib.suppress(ApiProblem):  # a model no longer served still has its history
        spec = await api(request).spec(record.model)
    again = None
    if spec is not None and record.features:
        values = {k: format_number(v) if isinstance(v, float) else str(v) for k, v in record.features.items()}
        again = urlencode({"model": record.model, **values})
    context = {
        "nav": "history", "record": record, "spec": spec, "again": again,
        "latency_ms": charts.latency_ms(record),
        "units": {f.name: f.unit for f in spec.features} if spec else {},
    }  # fmt: skip
    return render(request, "prediction.html", context)


async def index(request: Request) -> Response:
    return RedirectResponse("/predict", 307)


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "alive"})


async def api_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiProblem)
    log.warning("%s %s: %s", request.method, request.url.path, exc.message)
    context = {"title": "The prediction service is not available", "message": exc.message, "retry": True}
    if exc.status_code == 404:
        context = {"title": "Not found", "message": exc.message, "retry": False}
    return render(request, "error.html", context, exc.status_code)


async def http_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    title = "Page not found" if exc.status_code == 404 else "That did not work"
    message = exc.detail if exc.status_code != 404 or exc.detail != "Not Found" else "There is no page here."
    return render(request, "error.html", {"title": title, "message": message, "retry": False}, exc.status_code)


async def unexpected(request: Request, exc: Exception) -> Response:
    log.exception("%s %s failed", request.method, request.url.path, exc_info=exc)
    message = "Something went wrong in the web interface. The error has been logged."
    return render(request, "error.html", {"title": "Something went wrong", "message": message, "retry": True}, 500)


def _filters(env: jinja2.Environment) -> None:
    def percent(value: float | None) -> str:
        if value is None:
            return "-"
        if 0.999 <= value < 1:
            return ">99.9%"  # never claim a certainty the model did not give
        return f"{value:.1%}" if 0 < value < 0.1 or 0.99 < value < 1 else f"{value:.0%}"

    def utc(value: datetime | None, seconds: bool = True) -> str:
        return value.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M") if value else "-"

    def duration(ms: float | None) -> str:
        if ms is None:
            return "-"
        return f"{ms / 1000:.2f} s" if ms >= 1000 else f"{ms:.1f} ms"

    env.filters.update(percent=percent, utc=utc, duration=duration, feature_label=feature_label)
    env.globals["latency"] = charts.latency_ms
    env.globals["series_class"] = lambda labels, label: (
        f"series-{labels.index(label) % charts.SERIES_COLOURS}" if label in labels else "series-0"
    )


def create_app(settings: Settings, api_transport: httpx.AsyncBaseTransport | None = None) -> Starlette:
    """The web UI's ASGI app; `api_transport` lets tests put the API in-process."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=jinja2.select_autoescape(default=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    _filters(env)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[Mapping[str, Any]]:
        timeout = httpx.Timeout(settings.web.api_timeout_s, connect=min(5.0, settings.web.api_timeout_s))
        async with httpx.AsyncClient(base_url=settings.web.api_url, timeout=timeout, transport=api_transport) as http:
            yield {"api": ApiClient(http)}

    app = Starlette(
        routes=[
            Route("/", index),
            Route("/predict", predict_page, methods=["GET", "POST"]),
            Route("/history", history_page),
            Route("/predictions/{prediction_id:uuid}", prediction_page),
            Route("/healthz", healthz),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ],
        exception_handlers={ApiProblem: api_problem, HTTPException: http_problem, Exception: unexpected},
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.templates = Jinja2Templates(env=env)
    app.add_middleware(SecurityHeaders)
    return app
