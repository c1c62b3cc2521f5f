"""What the API answers; request schemas are derived from each model's spec (`ModelSpec.sample_type`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from mlapi.contract import Value


class PredictionOut(BaseModel):
    id: str
    model: str
    model_version: str
    prediction: int = Field(description="The predicted class")
    label: str = Field(description="Label of the predicted class")
    probability: float = Field(description="Probability of the predicted class")
    probabilities: dict[str, float] = Field(description="Probability of every class, by label")
    created_at: datetime
    warnings: list[str] = Field(description="Features outside the range seen in training")


class BatchOut(BaseModel):
    predictions: list[PredictionOut]


class Accepted(BaseModel):
    id: str
    status: Literal["queued"] = "queued"


class BatchAccepted(BaseModel):
    ids: list[str]
    status: Literal["queued"] = "queued"


class PredictionRecord(BaseModel):
    id: str
    model: str
    model_version: str | None
    status: Literal["queued", "done", "failed"]
    features: dict[str, Value] | None
    prediction: int | None
    label: str | None
    probability: float | None
    probabilities: dict[str, float] | None
    warnings: list[str]
    error: str | None
    created_at: datetime | None
    completed_at: datetime | None


class Page(BaseModel):
    items: list[PredictionRecord]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page")


class ModelSummary(BaseModel):
    model_config = {"protected_namespaces": ()}

    name: str
    version: str
    description: str
    labels: list[str]
    predict: str
    spec: str


class Error(BaseModel):
    detail: Any


class ErrorWithIds(BaseModel):
    detail: str
    id: str | None = None
    ids: list[str] | None = None
