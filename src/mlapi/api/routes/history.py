"""`GET /predictions` and `/predictions/{id}`: the stored history, and predictions still queued."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query

from mlapi import queue
from mlapi.api.dataplane import DataPlane
from mlapi.api.quality import utc
from mlapi.api.routes import AUTH_RESPONSES, CallerDep, DataPlaneDep
from mlapi.schemas import Error, Feedback, Page, PredictionRecord
from mlapi.storage.registry import NotFound
from mlapi.storage.repository import Cursor, Filters

router = APIRouter(tags=["history"], responses=AUTH_RESPONSES)


def record(row: Mapping[str, Any], labels: Sequence[str] = ()) -> PredictionRecord:
    """A history row as the API shows it: a regressor's `value` is its `prediction`; its feedback, if any, with
    the true class's label from the version's `labels`."""
    regression = row["task"] == "regression"
    prediction = row["value"] if regression else row["prediction"]
    feedback = None
    if row.get("feedback_at") is not None:
        actual = row["truth_value"] if regression else row["truth"]
        label = labels[actual] if not regression and 0 <= actual < len(labels) else None
        feedback = Feedback(id=str(row["id"]), actual=actual, label=label, created_at=row["feedback_at"])
    return PredictionRecord.model_validate(
        {**row, "id": str(row["id"]), "prediction": prediction, "feedback": feedback}
    )


def _labels(dp: DataPlane, row: Mapping[str, Any]) -> list[str]:
    """The labels of the version that answered, while the registry has it."""
    model, number = dp.snapshot.get(row["model"]), str(row["model_version"])
    version = model.versions.get(int(number)) if model is not None and number.isdigit() else None
    return version.spec.labels if version is not None else []


@router.get("/predictions", responses={400: {"model": Error}, 403: {"model": Error}})
async def list_predictions(
    dp: DataPlaneDep,
    caller: CallerDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page")] = None,
    model: str | None = None,
    since: Annotated[datetime | None, Query(description="Created at or after (ISO 8601)")] = None,
    until: Annotated[datetime | None, Query(description="Created before (ISO 8601)")] = None,
    prediction: Annotated[int | None, Query(ge=0, le=2**31 - 1, description="Predicted class")] = None,
    labelled: Annotated[
        bool | None, Query(description="Only predictions with (true) or without (false) feedback")
    ] = None,
    key: Annotated[str | None, Query(description="Made by this API key (admin keys only)")] = None,
) -> Page:
    """The caller's own predictions (an admin key's: everyone's, or `key`'s), newest first."""
    after = Cursor.decode(cursor) if cursor else None
    filters = Filters(
        key=caller.history_key(key), model=model, since=utc(since), until=utc(until), prediction=prediction,
        labelled=labelled,
    )  # fmt: skip
    rows, next_cursor = await dp.predictions.page(filters, limit, after)
    items = [record(r, _labels(dp, r)) for r in rows]
    return Page(items=items, next_cursor=next_cursor.encode() if next_cursor else None)


@router.get("/predictions/{prediction_id}", responses={404: {"model": Error}})
async def get_prediction(prediction_id: uuid.UUID, dp: DataPlaneDep, caller: CallerDep) -> PredictionRecord:
    """One of the caller's predictions (any, for an admin key); another key's is not found, as a missing one."""
    owner = caller.history_key(None)
    row = await dp.predictions.get(str(prediction_id), owner)
    if row is not None:
        return record(row, _labels(dp, row))
    marker = await queue.queued(dp.redis, str(prediction_id))
    if marker is None or (owner is not None and marker.get("key") != owner):
        raise NotFound(f"no prediction {prediction_id}")
    return PredictionRecord(
        id=str(prediction_id), model=marker["model"], model_version=str(marker.get("version", "")) or None,
        task=None, status="queued", features=None, prediction=None, label=None, probability=None,
        probabilities=None, warnings=[], error=None, created_at=datetime.fromisoformat(marker["created_at"]),
        completed_at=None, key=marker.get("key"),
    )  # fmt: skip
