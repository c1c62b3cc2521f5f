"""Request validation derived from the model specs."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from mlapi.models.spec import ModelSpec, read_registry
from tests.conftest import ORIGINAL_CLIENT_SAMPLE, REGISTRY


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    return read_registry(REGISTRY)["diabetes-risk"]


def test_registry_holds_both_models_with_their_metrics() -> None:
    specs = read_registry(REGISTRY)
    assert set(specs) == {"diabetes-risk", "iris"}
    assert specs["diabetes-risk"].metrics.roc_auc >= 0.97
    assert specs["iris"].labels == ["setosa", "versicolor", "virginica"]


def test_original_client_sample_is_valid(spec: ModelSpec) -> None:
    sample = spec.sample_type.model_validate(ORIGINAL_CLIENT_SAMPLE).model_dump()
    assert sample["age"] == 0.0
    assert sample["smoking_history"] == "current"


def test_every_smoking_category_of_the_data_is_accepted(spec: ModelSpec) -> None:
    smoking = next(f for f in spec.features if f.name == "smoking_history")
    assert smoking.values == ["No Info", "current", "ever", "former", "never", "not current"]
    for value in smoking.values:
        spec.sample_type.model_validate({**ORIGINAL_CLIENT_SAMPLE, "smoking_history": value})


def test_fractional_age_and_glucose_are_accepted(spec: ModelSpec) -> None:
    sample = spec.sample_type.model_validate({**ORIGINAL_CLIENT_SAMPLE, "age": 0.5, "blood_glucose_level": 99.5})
    assert sample.model_dump()["age"] == 0.5


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("gender", "male", "literal_error"),
        ("smoking_history", "sometimes", "literal_error"),
        ("hypertension", 2, "less_than_equal"),
        ("hypertension", True, "int_type"),
        ("heart_disease", 0.5, "int_type"),
        ("age", -1, "greater_than_equal"),
        ("bmi", "27", "float_type"),
        ("HbA1c_level", float("nan"), "finite_number"),
        ("blood_glucose_level", None, "float_type"),
    ],
)
def test_bad_values_name_the_field(spec: ModelSpec, field: str, value: Any, error: str) -> None:
    with pytest.raises(ValidationError) as info:
        spec.sample_type.model_validate({**ORIGINAL_CLIENT_SAMPLE, field: value})
    [err] = info.value.errors()
    assert err["loc"] == (field,)
    assert err["type"] == error


def test_missing_and_unknown_fields_are_rejected(spec: ModelSpec) -> None:
    sample = {k: v for k, v in ORIGINAL_CLIENT_SAMPLE.items() if k != "bmi"} | {"weight": 80}
    with pytest.raises(ValidationError) as info:
        spec.sample_type.model_validate(sample)
    assert {(e["loc"], e["type"]) for e in info.value.errors()} == {
        (("bmi",), "missing"),
        (("weight",), "extra_forbidden"),
    }


def test_schema_shows_the_exact_fields(spec: ModelSpec) -> None:
    schema = spec.sample_type.model_json_schema()
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {f.name for f in spec.features}
    assert "No Info" in schema["properties"]["smoking_history"]["enum"]
    assert schema["properties"]["hypertension"]["enum"] == [0, 1]


def test_warnings_name_features_outside_the_training_range(spec: ModelSpec) -> None:
    assert spec.warnings(spec.example) == []
    warnings = spec.warnings({**spec.example, "bmi": 200.0, "age": 0})
    assert len(warnings) == 2
    assert warnings[0].startswith("age=0 is outside the training range")
    assert warnings[1].startswith("bmi=200 is outside the training range")
