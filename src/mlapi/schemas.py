"""What the JSON API answers, shared by the API and the web UI. Request schemas are derived from each model
version's spec (`ModelSpec.sample_type`); the prediction fields are `mlapi.contract.Output`'s (a test checks)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, model_validator

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
    feedback: Feedback | None = Field(None, description="The ground truth given for it, if any")


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
    profiled: bool = Field(False, description="Whether it has a reference profile of its training data (drift)")
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


Label = Annotated[StrictInt, Field(ge=0, le=2**31 - 1)] | Annotated[StrictStr, Field(min_length=1, max_length=1000)]


class FeedbackIn(BaseModel):
    """Ground truth for a prediction: `label` (a class's label as a string, or its index as an integer) for a
    classifier, `value` for a regressor."""

    model_config = ConfigDict(extra="forbid")

    label: Label | None = None
    value: Annotated[float, Field(allow_inf_nan=False)] | None = None

    @model_validator(mode="after")
    def _one(self) -> FeedbackIn:
        if (self.label is None) == (self.value is None):
            raise ValueError("give exactly one of `label` (a classifier's class) and `value` (a regressor's)")
        return self


class FeedbackItem(FeedbackIn):
    id: uuid.UUID


class FeedbackBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[FeedbackItem] = Field(min_length=1, max_length=1000)


class Feedback(BaseModel):
    """The ground truth stored for a prediction; the latest given wins."""

    id: str
    actual: int | float = Field(description="The true class's index, or a regressor's true value")
    label: str | None = Field(None, description="Label of the true class")
    created_at: datetime = Field(description="When this feedback was given")


class FeedbackList(BaseModel):
    items: list[Feedback]


class QualityFigures(BaseModel):
    start: datetime | None = Field(None, description="Start of the bucket; null for the whole window")
    labelled: int = Field(description="Labelled predictions")
    metrics: dict[str, float | None] = Field(
        description="Classifiers: accuracy, roc_auc (binary), brier, log_loss, f1; regressors: mae, rmse, r2"
    )


class VersionQuality(BaseModel):
    version: int
    task: Task
    holdout: dict[str, float | int] = Field(description="The version's holdout metrics, from when it was added")
    overall: QualityFigures
    buckets: list[QualityFigures] = Field(description="Buckets holding labelled predictions, oldest first")


class QualityReport(BaseModel):
    model: str
    since: datetime
    until: datetime
    bucket: str
    versions: list[VersionQuality]


class DriftBin(BaseModel):
    name: str
    expected: float = Field(description="Share of the training data in this bin")
    actual: float = Field(description="Share of the window's rows in this bin")


class FeatureDrift(BaseModel):
    name: str = Field(description="The feature; '' for the prediction")
    kind: Literal["number", "category"]
    psi: float | None = Field(description="Population stability index; null for an empty window")
    verdict: Literal["stable", "watch", "drifted"] | None
    outside_range: float | None = Field(None, description="Share of the window's values outside the training range")
    bins: list[DriftBin]


class VersionDrift(BaseModel):
    version: int
    rows: int = Field(description="Answered predictions of the version in the window")
    profiled: bool = Field(description="Whether the version has a reference profile to compare with")
    features: list[FeatureDrift]
    prediction: FeatureDrift | None = Field(description="The distribution of the answers against the reference's")


class DriftReport(BaseModel):
    model: str
    since: datetime
    until: datetime
    thresholds: dict[str, float] = Field(description="PSI below `watch` is stable, below `drifted` watch")
    versions: list[VersionDrift]


class TimeBucket(BaseModel):
    start: datetime
    counts: dict[str, int] = Field(description="Predictions per series: a class's label, `value`, `failed`, `queued`")


class Histogram(BaseModel):
    edges: list[float] = Field(description="Bin edges: bin i holds values in [edges[i], edges[i+1])")
    counts: dict[str, list[int]] = Field(description="Counts per bin, per series")


class Stats(BaseModel):
    since: datetime
    until: datetime
    bucket_s: int
    total: int
    totals: dict[str, int] = Field(description="Predictions per series over the window")
    over_time: list[TimeBucket] = Field(description="Non-empty buckets, oldest first")
    probability: Histogram = Field(description="Probability of the predicted class, per label")
    values: Histogram | None = Field(description="Regressors' predicted values")
    latency_ms: dict[str, float | None] = Field(description="Percentiles (p50, p90, p95, p99) of creation to answer")
