"""The web UI: `create_app(settings)`, server-rendered pages that reach the API through one client of the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
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

from mlapi.models.spec import ModelSpec
from mlapi.schemas import ModelSummary, PredictionRecord
from mlapi.settings import Settings
from mlapi.web import charts, describe, quality_charts
from mlapi.web.client import Answer, ApiClient, ApiError, ApiProblem, InvalidSample
from mlapi.web.forms import (
    RESERVED,
    FormErrors,
    controls,
    errors_by_field,
    feature_label,
    field_name,
    format_number,
    sample_from_form,
)

log = logging.getLogger("mlapi.web")
HERE = Path(__file__).resolve().parent
MAX_FORM_BYTES = 64 * 1024
CHART_WINDOW = timedelta(hours=24)
"""What the history's charts summarise: every prediction of the last 24 hours, in hourly bars."""
CHART_WINDOW_WORDS = f"last {CHART_WINDOW // timedelta(hours=1)} hours"
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


KEY_COOKIE = "mlapi_key"
"""The signed-in API key: HttpOnly (no script reads it), SameSite=Strict (no other site sends it), a session
cookie (gone with the browser session), never written into a page."""
NAME_COOKIE = "mlapi_key_name"
"""The signed-in key's name, shown in the header."""


def api(request: Request) -> ApiClient:
    """The API with the browser's signed-in key, if any."""
    return ApiClient(request.state.http, request.cookies.get(KEY_COOKIE))


def _settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def _templates(request: Request) -> Jinja2Templates:
    return request.app.state.templates  # type: ignore[no-any-return]


def render(request: Request, name: str, context: dict[str, Any], status_code: int = 200) -> Response:
    base = {
        "request": request, "api_url": _settings(request).web.api_url, "nav": context.get("nav"),
        "signed_in": request.cookies.get(NAME_COOKIE) if request.cookies.get(KEY_COOKIE) else None,
    }  # fmt: skip
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


def _chosen(params: Mapping[str, str]) -> tuple[str | None, str | None]:
    """The model and version asked for: `model=iris&version=2`, or the picker's `model=iris@2`."""
    name, version = params.get("model") or None, params.get("version") or None
    if name and "@" in name:
        name, _, version = name.partition("@")
    return name, version or None


def _pick(
    settings: Settings, models: list[ModelSummary], name: str | None, version: str | None
) -> tuple[ModelSummary, int]:
    """The model and the version to use: the one asked for, else the model's default."""
    model = _find_model(models, name) if name else _default_model(settings, models)
    if model is None:
        raise HTTPException(404, f"There is no model called {name!r}.")
    if version is None:
        return model, model.default_version
    number = _int_or_none(version)
    if number is None or number not in model.versions:
        raise HTTPException(404, f"The model {model.name} has no version {version!r}.")
    return model, number


def picker_options(models: list[ModelSummary], name: str, version: int) -> list[tuple[str, str, bool]]:
    """(value, text, selected) of every model's versions, the default first: `iris` is the default, `iris@1` v1."""
    options = []
    for m in models:
        for v in sorted(m.versions, key=lambda v: (v != m.default_version, -v)):
            value = m.name if v == m.default_version else f"{m.name}@{v}"
            text = f"{m.name} v{v}" + (" (default)" if v == m.default_version else "")
            options.append((value, text, m.name == name and v == version))
    return options


async def predict_page(request: Request) -> Response:
    """GET shows the form (pre-filled from the query or the spec's example); POST also shows the answer."""
    models = await _models(request)
    submitted = await _form(request) if request.method == "POST" else dict(request.query_params)
    model, number = _pick(_settings(request), models, *_chosen({**request.query_params, **submitted}))
    info = await api(request).version(model.name, number)
    spec = info.spec
    values = {k: v for k, v in submitted.items() if k not in RESERVED}
    answer: Answer | None = None
    problem: ApiProblem | None = None
    errors = FormErrors()
    status = 200
    if request.method == "POST":
        try:
            answer = await api(request).predict(spec.name, spec.version, sample_from_form(spec, values))
        except InvalidSample as e:
            errors, status = errors_by_field(spec, e.errors), 422
        except ApiProblem as e:
            problem, status = e, e.status_code
            log.warning("prediction with %s v%d failed: %s", spec.name, spec.version, e.message)
    context = {
        "nav": "predict", "picker": picker_options(models, model.name, number), "spec": spec, "info": info,
        "default_version": model.default_version, "about": describe.metrics(spec),
        "controls": controls(spec, values, errors.by_field), "errors": errors, "answer": answer, "problem": problem,
    }  # fmt: skip
    return render(request, "predict.html", context, status)


def _int_or_none(value: str | None) -> int | None:
    """`value` as an integer, or None when it is missing or not one."""
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None


def _class_options(models: list[ModelSummary], model: ModelSummary | None) -> list[tuple[int, str]]:
    """The predicted classes to filter by: the model's, or by index across every classifier; none for a regressor."""
    if model is not None:
        return list(enumerate(model.labels))
    most = max((len(m.labels) for m in models), default=0)
    return [(i, f"class {i} ({', '.join(m.labels[i] for m in models if i < len(m.labels))})") for i in range(most)]


def _query(params: QueryParams, **changes: str | None) -> str:
    return urlencode({k: v for k, v in {**dict(params), **changes}.items() if v not in (None, "")})


async def history_page(request: Request) -> Response:
    settings = _settings(request)
    models = await _models(request)
    params = request.query_params
    model = _find_model(models, params.get("model"))
    class_options = _class_options(models, model)
    # A class filter applies to classifiers: it is dropped when the chosen model has no classes.
    prediction = _int_or_none(params.get("prediction")) if class_options else None
    cursor = params.get("cursor") or None
    client = api(request)
    name = model.name if model else None
    since = datetime.now(UTC) - CHART_WINDOW
    page, stats = await asyncio.gather(
        client.predictions(settings.web.page_size, cursor, name, prediction),
        client.stats(name, prediction, since, "hour"),
    )
    series = charts.series_order(stats, models)
    regressors = [m.name for m in ([model] if model else models) if m.task == "regression"]
    # The page changes when a row arrives or is answered, on this page or anywhere in the window.
    state = repr(([(r.id, r.status) for r in page.items], sorted(stats.totals.items())))
    context = {
        "nav": "history", "models": models, "model": model, "prediction": prediction, "cursor": cursor,
        "class_options": class_options, "page": page, "stats": stats, "window_words": CHART_WINDOW_WORDS,
        "charts": charts.history_charts(stats, series, regressors), "series": series,
        "next_query": _query(params, cursor=page.next_cursor) if page.next_cursor else None,
        "first_query": _query(params, cursor=None), "live": cursor is None and settings.web.refresh_s > 0,
        "refresh_s": settings.web.refresh_s, "version": hashlib.sha256(state.encode()).hexdigest()[:16],
    }  # fmt: skip
    return render(request, "history.html", context)


async def _answered_by(client: ApiClient, record: PredictionRecord) -> ModelSpec | None:
    """The spec of the version that answered, else the model's default version's; None for a model gone."""
    version = _int_or_none(record.model_version)
    if version is not None:
        with contextlib.suppress(ApiProblem):
            return (await client.version(record.model, version)).spec
    with contextlib.suppress(ApiProblem):  # a version or a model no longer served still has its history
        return await client.model(record.model)
    return None


async def prediction_page(request: Request) -> Response:
    prediction_id: uuid.UUID = request.path_params["prediction_id"]
    record = await api(request).prediction(str(prediction_id))
    spec = await _answered_by(api(request), record)
    again = None
    if spec is not None and record.features:
        values = {
            field_name(k): format_number(v) if isinstance(v, float) else str(v) for k, v in record.features.items()
        }
        again = urlencode({"model": record.model, "version": spec.version, **values})
    context = {
        "nav": "history", "record": record, "spec": spec, "again": again,
        "latency_ms": charts.latency_ms(record),
        "units": {f.name: f.unit for f in spec.features} if spec else {},
    }  # fmt: skip
    return render(request, "prediction.html", context)


async def feedback(request: Request) -> Response:
    """The "Was this right?" control: the true label or value, then back to the prediction."""
    prediction_id = str(request.path_params["prediction_id"])
    form = await _form(request)
    truth: dict[str, str | int | float]
    if form.get("value", "").strip():
        try:
            truth = {"value": float(form["value"])}
        except ValueError:
            raise HTTPException(422, f"{form['value']!r} is not a number") from None
    elif form.get("label"):
        truth = {"label": form["label"]}
    else:
        raise HTTPException(422, "give the true label or value")
    await api(request).feedback(prediction_id, truth)
    return RedirectResponse(f"/predictions/{prediction_id}", 303)


async def _model_report(client: ApiClient, model: ModelSummary) -> dict[str, Any]:
    versions, quality, drift = await asyncio.gather(
        client.versions(model.name), client.quality(model.name), client.drift(model.name)
    )
    return {
        "model": model, "versions": versions, "quality": quality, "drift": drift,
        "charts": [quality_charts.quality_over_time(model.name, q) for q in quality.versions],
        "headline": {q.version: quality_charts.headline(q) for q in quality.versions},
    }  # fmt: skip


async def models_page(request: Request) -> Response:
    """Every model: its versions with the default and holdout metrics, live quality beside the holdout figure,
    and drift per feature."""
    client = api(request)
    reports = await asyncio.gather(*(_model_report(client, m) for m in await _models(request)))
    context = {"nav": "models", "reports": reports, "bar": quality_charts.psi_bar_width}
    return render(request, "models.html", context)


async def index(request: Request) -> Response:
    return RedirectResponse("/predict", 307)


def _local(target: str | None) -> str:
    """Where to go after signing in: a path of this site only (never another site's URL)."""
    return target if target and target.startswith("/") and not target.startswith("//") else "/predict"


async def signin_page(request: Request) -> Response:
    """GET: the form asking for an API key. POST: the key checked with the API, then kept in the session cookie."""
    if request.method == "GET":
        target = _local(request.query_params.get("next"))
        return render(request, "signin.html", {"nav": None, "next": target, "problem": None})
    form = await _form(request)
    key, target = form.get("key", "").strip(), _local(form.get("next"))
    try:
        caller = await ApiClient(request.state.http, key).me()
    except ApiProblem as e:
        refused = isinstance(e, ApiError) and e.status == 401
        problem = "That key was not accepted: it is unknown or revoked." if refused else e.message
        return render(request, "signin.html", {"nav": None, "next": target, "problem": problem}, e.status_code)
    response = RedirectResponse(target, 303)
    if caller.key is not None:  # with auth off there is nothing to keep
        secure = request.url.scheme == "https"
        for name, value in ((KEY_COOKIE, key), (NAME_COOKIE, caller.key)):
            response.set_cookie(name, value, httponly=True, samesite="strict", secure=secure, path="/")
    return response


def _forget_key(response: Response) -> Response:
    for name in (KEY_COOKIE, NAME_COOKIE):
        response.delete_cookie(name, path="/", httponly=True, samesite="strict")
    return response


async def signout(request: Request) -> Response:
    return _forget_key(RedirectResponse("/signin", 303))


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "alive"})


async def api_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiProblem)
    log.warning("%s %s: %s", request.method, request.url.path, exc.message)
    if isinstance(exc, ApiError) and exc.status == 401:  # signed out, or the key was revoked: sign in (again)
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return _forget_key(RedirectResponse(f"/signin?{urlencode({'next': target})}", 303))
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
    def utc(value: datetime | None, seconds: bool = True) -> str:
        return value.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M") if value else "-"

    def duration(ms: float | None) -> str:
        if ms is None:
            return "-"
        return f"{ms / 1000:.2f} s" if ms >= 1000 else f"{ms:.1f} ms"

    env.filters.update(
        percent=describe.percent, number=describe.number, sentence=describe.sentence,
        utc=utc, duration=duration, feature_label=feature_label,
    )  # fmt: skip
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
            yield {"http": http}

    app = Starlette(
        routes=[
            Route("/", index),
            Route("/predict", predict_page, methods=["GET", "POST"]),
            Route("/history", history_page),
            Route("/signin", signin_page, methods=["GET", "POST"]),
            Route("/signout", signout, methods=["POST"]),
            Route("/predictions/{prediction_id:uuid}", prediction_page),
            Route("/predictions/{prediction_id:uuid}/feedback", feedback, methods=["POST"]),
            Route("/models", models_page),
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
