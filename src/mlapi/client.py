"""A Python client of the mlapi API, for notebooks and scripts; the `mlapi models` command line runs on it.

    from mlapi.client import Client

    client = Client("http://127.0.0.1:8000")
    client.add_model("churn", model, data=frame, target="churned", promote=True)
    client.predict("churn", frame.drop(columns="churned").head())

`add_model` does its work on this machine before anything is sent (see `mlapi.models.manage.prepare`): an
in-memory model is saved in its runtime's format, the spec is inferred, and the artifact is loaded with the
code the workers run. This module imports no ML library itself; `add_model` imports the model's, when called.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, cast

import httpx
from pydantic import TypeAdapter, ValidationError

from mlapi.models.spec import NAME_PATTERN, SpecBody
from mlapi.schemas import (
    BatchOut,
    DriftReport,
    Feedback,
    FeedbackList,
    ModelSummary,
    Page,
    PredictionOut,
    PredictionRecord,
    QualityReport,
    VersionInfo,
)

if TYPE_CHECKING:
    import pandas as pd

    from mlapi.models.manage import Upload

DEFAULT_API = "http://127.0.0.1:8000"
TIMEOUT_S = 120.0
"""Uploads may be hundreds of megabytes, and the API waits for a worker to load-check them."""
BATCH = 256
"""Rows sent per prediction request: the API's default `max_instances`."""
PAGE = 500
"""Most history records the API returns per page."""
FEEDBACK_BATCH = 1000
"""Most feedback items `POST /feedback` takes."""
T = TypeVar("T")


class ClientError(Exception):
    """A refusal: what was given cannot be sent (the message says why), or the API refused it (`ApiError`)."""


class ApiError(ClientError):
    """The API answered with an error status; `detail` is the server's reason, as it sent it."""

    def __init__(self, status: int, detail: object, reason: str = "") -> None:
        self.status = status
        self.detail = detail
        super().__init__(f"{status} {reason}: {describe(detail)}" if reason else f"{status}: {describe(detail)}")


class Unreachable(ClientError):
    """No answer from the API: nothing listens at its URL, or it did not answer in time."""


def describe(detail: object) -> str:
    """A server's `detail` as one line; a validation error's problems each with where they are."""
    if isinstance(detail, list):
        return "; ".join(
            f"{'.'.join(str(p) for p in d.get('loc', []))}: {d.get('msg', d)}" if isinstance(d, dict) else str(d)
            for d in detail
        )
    return str(detail)


def check_name(name: str) -> None:
    """Refuse a bad model name before it reaches a URL path."""
    if not re.fullmatch(NAME_PATTERN, name):
        raise ClientError(f"{name!r} is not a model name: lowercase letters, digits and '-', up to 63")


class Client:
    """The API at `url` (default: `MLAPI_API_URL`, else http://127.0.0.1:8000), with `api_key` sent as a bearer
    token (default: `MLAPI_API_KEY`). Every method raises `ApiError` with the server's reason on an error
    status, `Unreachable` when the API does not answer, and `ClientError` for what it refuses itself.

    Use it as a context manager, or call `close()`, to close its connections.
    """

    def __init__(self, url: str | None = None, api_key: str | None = None, timeout: float = TIMEOUT_S) -> None:
        self.url = (url or os.environ.get("MLAPI_API_URL") or DEFAULT_API).rstrip("/")
        key = api_key if api_key is not None else os.environ.get("MLAPI_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0))
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def add_model(
        self,
        name: str,
        model: object,
        data: pd.DataFrame | str | Path | None = None,
        target: str | None = None,
        task: str | None = None,
        promote: bool = False,
        trust: Sequence[str] = (),
        description: str | None = None,
        spec: SpecBody | str | Path | None = None,
        runtime: str | None = None,
        *,
        from_pickle: bool = False,
    ) -> VersionInfo:
        """Add a version of model `name`; the server assigns its number and load-checks it on a worker first.

        `model` is a file (a skops, XGBoost JSON/UBJSON, LightGBM text or ONNX file; its runtime is told from its
        bytes unless `runtime` says) or an in-memory scikit-learn, XGBoost or LightGBM model or ONNX
        `ModelProto`, saved in its runtime's format first; an in-memory classifier's labels are its `classes_`.
        `data` (a frame or a CSV file) gives the features' kinds, ranges and example; with `target`, the version's
        metrics are computed on it. `trust` accepts types of a skops file that skops does not trust by default
        (an in-memory model's own types are trusted). `spec` replaces inference. `promote` makes the new version
        the default. `from_pickle` converts a pickle or joblib file you made yourself to skops.
        """
        from mlapi.models.manage import prepare

        upload = prepare(
            name, model, data=data, target=target, task=task, trust=trust, description=description, spec=spec,
            runtime=runtime, from_pickle=from_pickle,
        )  # fmt: skip
        return self.upload(name, upload, promote=promote)

    def upload(self, name: str, upload: Upload, *, promote: bool = False) -> VersionInfo:
        """Send a prepared version (`mlapi.models.manage.prepare`)."""
        check_name(name)
        response = self._request(
            "POST",
            f"/models/{name}/versions",
            params={"promote": "true"} if promote else None,
            files={"artifact": (upload.filename, upload.artifact, "application/octet-stream")},
            data={"spec": upload.spec.model_dump_json()}
            | ({"profile": upload.profile.model_dump_json()} if upload.profile is not None else {}),
        )
        return _parse(response, VersionInfo, "a version")

    def predict(
        self,
        name: str,
        rows: Mapping[str, Any] | Sequence[Mapping[str, Any]] | pd.DataFrame,
        version: int | None = None,
    ) -> list[PredictionOut]:
        """The answers for `rows` (one row as a dict, a list of them, or a frame), in order, from the model's default
        version or the given one; sent `BATCH` rows per request."""
        check_name(name)
        path = f"/models/{name}/predict" if version is None else f"/models/{name}/versions/{int(version)}/predict"
        instances = _records(rows)
        answers: list[PredictionOut] = []
        for start in range(0, len(instances), BATCH):
            response = self._request("POST", path, json={"instances": instances[start : start + BATCH]})
            answers.extend(_parse(response, BatchOut, "a batch of predictions").predictions)
        return answers

    def models(self) -> list[ModelSummary]:
        return _parse(self._request("GET", "/models"), list[ModelSummary], "a list of models")

    def versions(self, name: str) -> list[VersionInfo]:
        check_name(name)
        return _parse(self._request("GET", f"/models/{name}/versions"), list[VersionInfo], "a list of versions")

    def version(self, name: str, version: int) -> VersionInfo:
        """One version: its spec, metrics, status, and how many live workers hold it (`ready`)."""
        check_name(name)
        return _parse(self._request("GET", f"/models/{name}/versions/{int(version)}"), VersionInfo, "a version")

    def promote(self, name: str, version: int) -> None:
        """Make `version` the model's default."""
        check_name(name)
        self._request("PUT", f"/models/{name}/default", json={"version": int(version)})

    def remove(self, name: str, version: int | None = None) -> None:
        """Remove one version, or the whole model when `version` is None."""
        check_name(name)
        self._request("DELETE", f"/models/{name}" if version is None else f"/models/{name}/versions/{int(version)}")

    def history(
        self,
        model: str | None = None,
        limit: int = 50,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
    ) -> list[PredictionRecord]:
        """Up to `limit` predictions, newest first, of one model or all, created in [`since`, `until`)."""
        params: dict[str, str] = {}
        if model is not None:
            check_name(model)
            params["model"] = model
        for key, value in (("since", since), ("until", until)):
            if value is not None:
                params[key] = value.isoformat() if isinstance(value, datetime) else value
        records: list[PredictionRecord] = []
        cursor: str | None = None
        while len(records) < limit:
            page_params = {**params, "limit": str(min(PAGE, limit - len(records)))}
            if cursor is not None:
                page_params["cursor"] = cursor
            page = _parse(self._request("GET", "/predictions", params=page_params), Page, "a page of history")
            records.extend(page.items)
            cursor = page.next_cursor
            if cursor is None or not page.items:
                break
        return records[:limit]

    def feedback(self, truths: Mapping[str, str | int | float]) -> list[Feedback]:
        """Ground truth by prediction id: a class's label (str) or index (int), or a regressor's value (float);
        sent 1,000 per request, each request all or nothing."""
        items = [{"id": k, "value" if isinstance(v, float) else "label": v} for k, v in truths.items()]
        stored: list[Feedback] = []
        for start in range(0, len(items), FEEDBACK_BATCH):
            body = {"items": items[start : start + FEEDBACK_BATCH]}
            stored += _parse(self._request("POST", "/feedback", json=body), FeedbackList, "feedback").items
        return stored

    def quality(self, name: str, **params: Any) -> QualityReport:
        """Live quality per version (`version`, `since`, `until`, `bucket` as `GET /models/{name}/quality` takes)."""
        check_name(name)
        return _parse(self._request("GET", f"/models/{name}/quality", params=_params(params)), QualityReport, "quality")

    def drift(self, name: str, **params: Any) -> DriftReport:
        """Drift per version against the training data (`version`, `since`, `until`)."""
        check_name(name)
        return _parse(self._request("GET", f"/models/{name}/drift", params=_params(params)), DriftReport, "drift")

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as e:
            raise Unreachable(f"the API at {self.url} did not answer in time ({type(e).__name__})") from e
        except httpx.TransportError as e:
            raise Unreachable(
                f"cannot reach the API at {self.url} ({type(e).__name__}: {e}); is it running? "
                "Point --api or MLAPI_API_URL at it"
            ) from e
        if response.is_error:
            raise ApiError(response.status_code, _detail(response), response.reason_phrase)
        return response


def _params(params: Mapping[str, Any]) -> dict[str, str]:
    return {k: v.isoformat() if isinstance(v, datetime) else str(v) for k, v in params.items() if v is not None}


def _detail(response: httpx.Response) -> object:
    try:
        return response.json()["detail"]
    except (ValueError, KeyError, TypeError):
        return response.text[:500] or "(no detail)"


def _parse(response: httpx.Response, kind: type[T], what: str) -> T:
    try:
        return TypeAdapter(kind).validate_json(response.content)
    except ValidationError as e:
        raise ClientError(f"the API's answer is not {what}: {e}") from e


def _records(rows: Mapping[str, Any] | Sequence[Mapping[str, Any]] | pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as JSON-ready dicts: NumPy scalars as Python numbers, booleans as the flags 0 and 1, missing values
    (NaN) as null."""
    if isinstance(rows, Mapping):
        listed: Sequence[Mapping[str, Any]] = [rows]
    elif hasattr(rows, "to_dict"):  # a DataFrame, without importing pandas
        listed = cast("list[dict[str, Any]]", rows.to_dict("records"))
    else:
        listed = rows
    if not listed:
        raise ClientError("no rows to predict")
    return [{str(k): _plain(v) for k, v in row.items()} for row in listed]


def _plain(value: Any) -> Any:
    if hasattr(value, "item") and not isinstance(value, str | bytes):  # a NumPy scalar
        value = value.item()
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
