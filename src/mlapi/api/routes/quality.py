"""Ground truth, live quality, drift and the history's statistics over HTTP."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Query

from mlapi.api.routes import AUTH_RESPONSES, CallerDep, QualityDep
from mlapi.schemas import (
    DriftReport,
    Error,
    Feedback,
    FeedbackBatch,
    FeedbackIn,
    FeedbackItem,
    FeedbackList,
    QualityReport,
    Stats,
)

router = APIRouter(tags=["quality"], responses=AUTH_RESPONSES)
Since = Annotated[datetime | None, Query(description="Window start, inclusive (ISO 8601; UTC unless it says)")]
Until = Annotated[datetime | None, Query(description="Window end, exclusive (ISO 8601); default now")]
VersionQuery = Annotated[int | None, Query(ge=1, le=2**31 - 1, description="One version; default every version")]
BAD_WINDOW: dict[int | str, dict[str, Any]] = {
    404: {"model": Error, "description": "Unknown model or version"},
    422: {"model": Error, "description": "A window or bucket that cannot be"},
}


@router.post(
    "/predictions/{prediction_id}/feedback",
    responses={
        404: {"model": Error, "description": "No such prediction"},
        409: {"model": Error, "description": "The prediction is still queued, or failed"},
        422: {"model": Error, "description": "A label the model does not know, or the wrong kind of feedback"},
    },
)
async def give_feedback(
    prediction_id: uuid.UUID,
    body: Annotated[FeedbackIn, Body(openapi_examples={"label": {"value": {"label": "diabetes"}},
                                                       "index": {"value": {"label": 1}},
                                                       "value": {"value": {"value": 3.2}}})],
    quality: QualityDep,
    caller: CallerDep,
) -> Feedback:  # fmt: skip
    """The ground truth of a prediction: `{"label": "diabetes"}` (a label), `{"label": 1}` (a class index) or
    `{"value": 3.2}` (a regressor's). The latest given wins."""
    return await quality.feedback_one(FeedbackItem(id=prediction_id, label=body.label, value=body.value), caller)


@router.post("/feedback", responses={422: {"model": Error, "description": "The bad items; nothing was stored"}})
async def give_feedback_batch(body: FeedbackBatch, quality: QualityDep, caller: CallerDep) -> FeedbackList:
    """Ground truth for up to 1,000 of the caller's predictions, all or nothing."""
    return FeedbackList(items=await quality.feedback(body.items, caller))


@router.get("/models/{name}/quality", responses=BAD_WINDOW)
async def model_quality(
    name: str,
    quality: QualityDep,
    caller: CallerDep,
    version: VersionQuery = None,
    since: Since = None,
    until: Until = None,
    bucket: Literal["hour", "day"] = "day",
) -> QualityReport:
    """Live quality of labelled predictions (default: the last 7 days), per version that answered in the window,
    overall and per bucket, beside each version's holdout metrics."""
    return await quality.quality(name, version, since, until, bucket, caller)


@router.get("/models/{name}/drift", responses=BAD_WINDOW)
async def model_drift(
    name: str, quality: QualityDep, caller: CallerDep, version: VersionQuery = None, since: Since = None,
    until: Until = None,
) -> DriftReport:  # fmt: skip
    """The window's inputs and answers (default: the last 24 hours, to the minute) against each version's
    training data: population stability index per feature and of the predictions, with a verdict."""
    return await quality.drift(name, version, since, until, caller)


@router.get("/predictions/stats", responses=BAD_WINDOW)
async def prediction_stats(
    quality: QualityDep,
    caller: CallerDep,
    model: str | None = None,
    version: VersionQuery = None,
    since: Annotated[datetime | None, Query(description="Window start; default the oldest matching prediction")] = None,
    until: Until = None,
    bucket: Annotated[
        str | None,
        Query(max_length=16, description="Seconds, or second|minute|hour|day|week; default about 24 buckets"),
    ] = None,
    prediction: Annotated[int | None, Query(ge=0, le=2**31 - 1, description="Predicted class")] = None,
    key: Annotated[str | None, Query(description="Made by this API key (admin keys only)")] = None,
) -> Stats:
    """Counts per time bucket and class, the probability and value histograms and latency percentiles of the
    history's window, computed by PostgreSQL over every row in it."""
    if model is not None:
        caller.require_model(model)
    return await quality.stats(model, version, since, until, bucket, prediction, caller.history_key(key))
