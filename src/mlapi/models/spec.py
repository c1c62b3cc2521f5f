"""Model specs: what a model takes and returns, read from `spec.json`; request schemas are derived here.

This module needs no ML library, so the API can serve specs and validate input without scikit-learn.
"""

from __future__ import annotations

import math
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from mlapi.contract import Value

SPEC_FILE = "spec.json"


class Feature(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    kind: Literal["category", "flag", "number"]
    """`category`: one of `values`; `flag`: 0 or 1; `number`: a finite number within `minimum`/`maximum`."""
    description: str
    values: list[str] | None = None
    """Allowed values of a category."""
    minimum: float | None = None
    """Smallest accepted value of a number."""
    maximum: float | None = None
    """Largest accepted value of a number."""
    integer: bool = False
    """Whether a number must be whole."""
    step: float | None = None
    """Step a form offers for a number."""
    unit: str | None = None
    training_range: tuple[float, float] | None = None
    """Smallest and largest value seen in training; values outside it are answered with a warning."""
    example: Value

    def annotation(self) -> Any:
        """The pydantic type that validates this feature."""
        if self.kind == "category":
            assert self.values, f"category feature {self.name} has no values"
            return Literal[tuple(self.values)]
        if self.kind == "flag":  # a strict int: JSON true/false and 1.0 are wrong types here
            return Annotated[int, Field(ge=0, le=1, strict=True, json_schema_extra={"enum": [0, 1]})]
        base = int if self.integer else float
        return Annotated[
            base, Field(ge=self.minimum, le=self.maximum, allow_inf_nan=False, description=self.description)
        ]


class Metrics(BaseModel):
    model_config = ConfigDict(extra="allow")

    roc_auc: float
    accuracy: float
    f1: float
    """F1 of the positive class (macro F1 for more than two classes)."""
    holdout_rows: int


class DataInfo(BaseModel):
    source: str
    sha256: str
    rows: int


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    name: str
    version: str
    description: str
    labels: list[str]
    """Label of each class, indexed by the class number the model predicts."""
    features: list[Feature]
    artifact: str
    """File of the trained pipeline beside the spec (skops format)."""
    metrics: Metrics
    data: DataInfo
    trained_at: str
    framework: dict[str, str]

    @classmethod
    def read(cls, directory: Path) -> ModelSpec:
        return cls.model_validate_json((directory / SPEC_FILE).read_bytes())

    @property
    def example(self) -> dict[str, Value]:
        return {f.name: f.example for f in self.features}

    @cached_property
    def sample_type(self) -> type[BaseModel]:
        """The request schema of one sample, derived from the features; unknown fields are rejected."""
        fields: dict[str, Any] = {
            f.name: (f.annotation(), Field(description=f.description, examples=[f.example])) for f in self.features
        }
        title = "".join(part.capitalize() for part in self.name.replace("_", "-").split("-")) + "Sample"
        example: dict[str, Any] = self.example
        config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"example": example})
        return create_model(title, __config__=config, **fields)

    def warnings(self, features: dict[str, Value]) -> list[str]:
        """One message for each number outside the range seen in training."""
        out = []
        for f in self.features:
            value = features.get(f.name)
            if f.training_range is None or not isinstance(value, int | float) or math.isnan(value):
                continue
            low, high = f.training_range
            if not low <= value <= high:
                out.append(f"{f.name}={value:g} is outside the training range [{low:g}, {high:g}]")
        return out


def read_registry(models_dir: Path) -> dict[str, ModelSpec]:
    """Every model spec under `models_dir`, by name."""
    specs = [ModelSpec.read(d) for d in sorted(models_dir.iterdir()) if (d / SPEC_FILE).is_file()]
    return {s.name: s for s in specs}
