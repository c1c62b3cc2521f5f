"""What the JSON API answers, shared by the API and the web UI. Request schemas are derived from each model
version's spec (`ModelSpec.sample_type`); the prediction fields are `mlapi.contract.Output`'s (a test checks)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from mlapi.contract import Value
from mlapi.models.spec import ModelSpec, Task


class PredictionOut(BaseModel):
    """One answer. A regressor's has no label or probabilities; a classifier without probabilities has no
    `probability` or `probabilities`."""

    model_config = {"protected_namespaces": ()}

    id: str
    model: str
    model_version: str = Field(description="The version that answered")
    task: Task
    prediction: int | float = Field(description="The predicted class's index, or a regressor's value")
    label: str | None = Field(None, description="Label of the predicted class")
    probability: float | None = Field(None, description="Probability of the predicted class")
    probabilities: dict[str, float] | None = Field(None, description="Probability of every class, by label")
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
    """A history entry: a stored prediction, or one still queued."""

    model_config = {"protected_namespaces": ()}

    id: str
    model: str
    model_version: str | None
    task: Task | None
    status: Literal["queued", "done", "failed"]
    features: dict[str, Value] | None
    prediction: int | float | None
    label: str | None
    probability: float | None
    probabilities: dict[str, float] | None
    warnings: list[str]
    error: str | None
    created_at: datetime | None
    completed_at: datetime | None
    key: str | None = Field(None, description="Name of the API key that made it (null: made with auth off)")


class Page(BaseModel):
    items: list[PredictionRecord]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page")


class ModelSummary(BaseModel):
    """A model in `GET /models`."""

    model_config = {"protected_namespaces": ()}

    name: str
    description: str
    default_version: int
    versions: list[int]
    runtime: str = Field(description="Runtime of the default version")
    task: Task = Field(description="Task of the default version")
    labels: list[str] = Field(description="Labels of the default version's classes")
    ready: int = Field(description="Live workers holding the default version")
    predict: str
    spec: str


class ModelDetail(ModelSpec):
    """`GET /models/{name}`: the default version's spec, and the model's versions."""

    default_version: int
    versions: list[int]


class VersionInfo(BaseModel):
    """`GET /models/{name}/versions/{v}`."""

    model_config = {"protected_namespaces": ()}

    model: str
    version: int
    default: bool = Field(description="Whether this is the model's default version")
    runtime: str
    task: Task
    sha256: str
    size: int = Field(description="Bytes of the artifact")
    trusted: list[str] = Field(description="Types trusted beyond the loader's own set")
    metrics: dict[str, float | int]
    created_at: datetime
    status: Literal["ready", "unavailable"] = Field(description="ready: a live worker holds it loaded")
    ready: int = Field(description="Live workers holding it loaded")
    load_errors: dict[str, str] = Field(description="Workers that could not load it, with their reasons")
    predict: str
    spec: ModelSpec


class DefaultVersion(BaseModel):
    """`PUT /models/{name}/default`."""

    version: int = Field(ge=1)


class Error(BaseModel):
    detail: object


class Caller(BaseModel):
    """`GET /me`: the key a request carries, and what it may do."""

    key: str | None = Field(description="The key's name; null when auth is off")
    admin: bool
    models: list[str] | None = Field(description="The models it may use; null: every model")
    rate: str | None = Field(description="Its rate limit, e.g. 100/s; null: none")
    auth: Literal["off", "required"]


class ErrorWithIds(BaseModel):
    detail: str
    id: str | None = None
    ids: list[str] | None = None
