"""The web UI's view of the API: typed calls over one `httpx.AsyncClient`, and every failure as an `ApiProblem`."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError

from mlapi.contract import Value
from mlapi.schemas import (
    Caller,
    DriftReport,
    Feedback,
    ModelDetail,
    ModelSummary,
    Page,
    PredictionOut,
    PredictionRecord,
    QualityReport,
    Stats,
    VersionInfo,
)

_MODELS = TypeAdapter(list[ModelSummary])
_VERSIONS = TypeAdapter(list[VersionInfo])


class ApiProblem(Exception):
    """The API could not give an answer; `message` is written for the person at the browser."""

    status_code = 502

    def __init__(self, message: str, prediction_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.prediction_id = prediction_id


class ApiUnreachable(ApiProblem):
    status_code = 503


class ApiTooSlow(ApiProblem):
    status_code = 504


class ApiError(ApiProblem):
    """The API answered with an error status."""

    def __init__(self, status: int, message: str, prediction_id: str | None = None) -> None:
        super().__init__(message, prediction_id)
        self.status = status
        self.status_code = status if status in (401, 403, 404, 429, 503, 504) else 502


class InvalidSample(Exception):
    """The API rejected the sample (422); `errors` is FastAPI's `detail` list."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(errors)} invalid field(s)")
        self.errors = errors


@dataclass(frozen=True)
class Answer:
    prediction: PredictionOut
    timings_ms: dict[str, float]
    """The API's `Server-Timing` durations by name (total, queue, predict, store)."""
    round_trip_ms: float
    """Time from the web service to the API and back."""


def parse_server_timing(header: str) -> dict[str, float]:
    """`total;dur=1.2, queue;dur=0.3` -> `{"total": 1.2, "queue": 0.3}`; entries without a duration are skipped."""
    out: dict[str, float] = {}
    for entry in header.split(","):
        name, *params = (part.strip() for part in entry.split(";"))
        for param in params:
            key, _, value = param.partition("=")
            if key.strip() == "dur" and name:
                try:
                    out[name] = float(value)
                except ValueError:
                    continue
    return out


class ApiClient:
    """The API as one browser's session sees it: with the key it signed in with, if any."""

    def __init__(self, http: httpx.AsyncClient, key: str | None = None) -> None:
        self.http = http
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    @property
    def base_url(self) -> str:
        return str(self.http.base_url).rstrip("/")

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return await self.http.request(method, path, headers=self.headers, **kwargs)
        except httpx.TimeoutException:
            raise ApiTooSlow(f"The prediction API at {self.base_url} did not answer in time.") from None
        except httpx.TransportError as e:
            reason = str(e) or type(e).__name__
            raise ApiUnreachable(f"The prediction API at {self.base_url} cannot be reached ({reason}).") from None

    @staticmethod
    def _raise_for(response: httpx.Response) -> None:
        if response.is_success:
            return
        detail: Any = None
        prediction_id = None
        try:
            body = response.json()
            detail, prediction_id = body.get("detail"), body.get("id")
        except (ValueError, AttributeError):
            pass
        text = detail if isinstance(detail, str) else response.reason_phrase or "error"
        raise ApiError(response.status_code, f"The API answered {response.status_code}: {text}", prediction_id)

    @staticmethod
    def _decode(response: httpx.Response, type_: type[BaseModel] | TypeAdapter[Any]) -> Any:
        try:
            if isinstance(type_, TypeAdapter):
                return type_.validate_json(response.content)
            return type_.model_validate_json(response.content)
        except ValidationError as e:
            raise ApiProblem(
                f"The API gave an answer the web UI does not understand ({e.error_count()} errors)."
            ) from e

    async def _get(self, path: str, type_: type[BaseModel] | TypeAdapter[Any], **kwargs: Any) -> Any:
        response = await self._send("GET", path, **kwargs)
        self._raise_for(response)
        return self._decode(response, type_)

    async def me(self) -> Caller:
        """Who the key is (and whether the API asks for keys at all)."""
        return await self._get("/me", Caller)  # type: ignore[no-any-return]

    async def models(self) -> list[ModelSummary]:
        return await self._get("/models", _MODELS)  # type: ignore[no-any-return]

    async def model(self, name: str) -> ModelDetail:
        """The model's default version's spec, and its versions."""
        return await self._get(f"/models/{name}", ModelDetail)  # type: ignore[no-any-return]

    async def versions(self, name: str) -> list[VersionInfo]:
        return await self._get(f"/models/{name}/versions", _VERSIONS)  # type: ignore[no-any-return]

    async def version(self, name: str, version: int) -> VersionInfo:
        return await self._get(f"/models/{name}/versions/{version}", VersionInfo)  # type: ignore[no-any-return]

    async def predict(self, name: str, version: int, sample: dict[str, Value | str | None]) -> Answer:
        """One prediction by the given version (never "the default", which may change under an open form)."""
        started = time.perf_counter()
        response = await self._send("POST", f"/models/{name}/versions/{version}/predict", json=sample)
        round_trip_ms = (time.perf_counter() - started) * 1000
        if response.status_code == 422:
            try:
                errors = response.json()["detail"]
            except (ValueError, KeyError, TypeError):
                errors = None
            if isinstance(errors, list):
                raise InvalidSample([e for e in errors if isinstance(e, dict)])
        self._raise_for(response)
        prediction = self._decode(response, PredictionOut)
        timings = parse_server_timing(response.headers.get("server-timing", ""))
        return Answer(prediction, timings, round_trip_ms)

    async def predictions(
        self, limit: int, cursor: str | None = None, model: str | None = None, prediction: int | None = None
    ) -> Page:
        params: dict[str, str | int] = {"limit": limit}
        for key, value in (("cursor", cursor), ("model", model), ("prediction", prediction)):
            if value is not None:
                params[key] = value
        return await self._get("/predictions", Page, params=params)  # type: ignore[no-any-return]

    async def feedback(self, prediction_id: str, truth: dict[str, str | int | float]) -> Feedback:
        """Store ground truth (`{"label": ...}` or `{"value": ...}`) for a prediction."""
        response = await self._send("POST", f"/predictions/{prediction_id}/feedback", json=truth)
        self._raise_for(response)
        return self._decode(response, Feedback)  # type: ignore[no-any-return]

    async def quality(self, name: str) -> QualityReport:
        return await self._get(f"/models/{name}/quality", QualityReport)  # type: ignore[no-any-return]

    async def drift(self, name: str) -> DriftReport:
        return await self._get(f"/models/{name}/drift", DriftReport)  # type: ignore[no-any-return]

    async def stats(
        self, model: str | None = None, prediction: int | None = None, since: datetime | None = None,
        bucket: str | None = None,
    ) -> Stats:  # fmt: skip
        """The statistics of the history since `since` (of one model, one predicted class), in buckets of `bucket`
        (about 24 when None)."""
        given = {"model": model, "prediction": prediction, "since": since and since.isoformat(), "bucket": bucket}
        params = {k: v for k, v in given.items() if v is not None}
        return await self._get("/predictions/stats", Stats, params=params)  # type: ignore[no-any-return]

    async def prediction(self, prediction_id: str) -> PredictionRecord:
        return await self._get(f"/predictions/{prediction_id}", PredictionRecord)  # type: ignore[no-any-return]
