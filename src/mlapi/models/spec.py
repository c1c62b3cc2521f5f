"""Model specs: what a model version takes and returns; request schemas are derived here.

This module needs no ML library, so the API can serve specs and validate input without scikit-learn.
"""

from __future__ import annotations

import math
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from mlapi.contract import Value

SPEC_FILE = "spec.json"
ARTIFACT_FILE = "model.skops"
"""File of a bundled model's artifact beside its spec."""
NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
"""A model's name: it appears in URLs and Redis keys."""
Task = Literal["classification", "regression"]


class Feature(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=128)
    """Any non-empty text: `mean radius` and `HbA1c_level` alike; the request field of the same name."""
    kind: Literal["category", "flag", "number"]
    """`category`: one of `values`; `flag`: 0 or 1; `number`: a finite number within `minimum`/`maximum`."""
    description: str = ""
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

    @model_validator(mode="after")
    def _consistent(self) -> Feature:
        if self.kind == "category" and not self.values:
            raise ValueError(f"category feature {self.name!r} needs `values`")
        if self.kind == "category" and self.example not in self.values:  # type: ignore[operator]
            raise ValueError(f"example {self.example!r} of {self.name!r} is not one of its values")
        return self

    def annotation(self) -> Any:
        """The pydantic type that validates this feature."""
        if self.kind == "category":
            return Literal[tuple(self.values or ())]
        if self.kind == "flag":  # a strict int: JSON true/false and 1.0 are wrong types here
            return Annotated[int, Field(ge=0, le=1, strict=True, json_schema_extra={"enum": [0, 1]})]
        base = int if self.integer else float
        return Annotated[base, Field(ge=self.minimum, le=self.maximum, allow_inf_nan=False)]


class DataInfo(BaseModel):
    source: str
    sha256: str
    rows: int


class SpecBody(BaseModel):
    """What a user uploads with an artifact; the registry adds the name and the version (`ModelSpec`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    runtime: str = "sklearn"
    """Which runtime loads the artifact (`mlapi.runtimes`)."""
    task: Task = "classification"
    description: str = ""
    labels: list[str] = []
    """Classification: the label of each class, indexed by the class number the model predicts. Regression: none."""
    features: list[Feature] = Field(min_length=1)
    """The model's inputs, in the order the model takes them."""
    metrics: dict[str, float | int] = {}
    """Holdout metrics: classification `roc_auc`, `accuracy`, `f1`, `brier`; regression `mae`, `rmse`, `r2`;
    and `holdout_rows`."""
    data: DataInfo | None = None
    """The data the metrics and ranges come from."""
    trained_at: str | None = None
    framework: dict[str, str] = {}
    """Library versions the artifact was made with."""
    trusted: list[str] = []
    """Types the artifact holds beyond the loader's own trusted set (skops), each accepted by name at `add`."""

    @model_validator(mode="after")
    def _consistent(self) -> SpecBody:
        names = [f.name for f in self.features]
        if len(set(names)) != len(names):
            raise ValueError("feature names must be unique")
        if self.task == "classification" and (len(self.labels) < 2 or len(set(self.labels)) != len(self.labels)):
            raise ValueError("a classifier needs two or more distinct labels")
        if self.task == "regression" and self.labels:
            raise ValueError("a regressor has no labels")
        return self

    @property
    def example(self) -> dict[str, Value]:
        return {f.name: f.example for f in self.features}

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


class ModelSpec(SpecBody):
    """One version of a model as the registry holds it."""

    name: str = Field(pattern=NAME_PATTERN)
    version: int = Field(ge=1)

    @classmethod
    def read(cls, directory: Path, version: int = 1) -> ModelSpec:
        """A bundled model's spec; its folder's name is the model's."""
        body = SpecBody.model_validate_json((directory / SPEC_FILE).read_bytes())
        return cls(**body.model_dump(), name=directory.name, version=version)

    @cached_property
    def sample_type(self) -> type[BaseModel]:
        """The request schema of one sample, derived from the features; unknown fields are rejected.

        Fields are named `f0, f1, ...` and carry the feature's name as alias and title, so a feature may be
        called anything (`mean radius`, `model_config`); validate with aliases and `model_dump(by_alias=True)`.
        """
        fields: dict[str, Any] = {
            f"f{i}": (
                f.annotation(),
                Field(alias=f.name, title=f.name, description=f.description or None, examples=[f.example]),
            )
            for i, f in enumerate(self.features)
        }
        title = "".join(part.capitalize() for part in self.name.split("-")) + f"V{self.version}Sample"
        example: dict[str, Any] = self.example
        config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"example": example})
        return create_model(title, __config__=config, **fields)

    def validate_row(self, item: Any) -> dict[str, Value]:
        """A validated sample; raises pydantic's `ValidationError`, whose `loc` names the feature."""
        return self.sample_type.model_validate(item).model_dump(by_alias=True)


def read_bundled(models_dir: Path) -> dict[str, tuple[ModelSpec, Path]]:
    """The models shipped in the package's registry folder, by name: each spec and its artifact's path."""
    return {
        d.name: (ModelSpec.read(d), d / ARTIFACT_FILE)
        for d in sorted(models_dir.iterdir())
        if (d / SPEC_FILE).is_file()
    }
