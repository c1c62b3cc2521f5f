"""Model specs: request validation derived from them, feature names of any text, and invalid specs refused."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from mlapi.models.spec import ARTIFACT_FILE, Feature, ModelSpec, SpecBody, read_bundled
from tests.conftest import ORIGINAL_CLIENT_SAMPLE, REGISTRY


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    return read_bundled(REGISTRY)["diabetes-risk"][0]


def number(name: str, example: float = 1.0, **extra: Any) -> dict[str, Any]:
    return {"name": name, "kind": "number", "example": example, **extra}


def custom(*features: dict[str, Any], **body: Any) -> ModelSpec:
    return ModelSpec.model_validate(
        {"name": "custom", "version": 1, "labels": ["no", "yes"], "features": list(features), **body}
    )


def test_the_bundled_models_come_with_their_artifacts_and_metrics() -> None:
    bundled = read_bundled(REGISTRY)
    assert {"diabetes-risk", "iris"} <= set(bundled)
    for name, (spec, artifact) in bundled.items():
        assert spec.name == name and spec.version == 1
        assert artifact == REGISTRY / name / ARTIFACT_FILE and artifact.is_file()
    assert bundled["diabetes-risk"][0].metrics["roc_auc"] >= 0.97
    assert bundled["iris"][0].labels == ["setosa", "versicolor", "virginica"]


def test_original_client_sample_is_valid(spec: ModelSpec) -> None:
    sample = spec.validate_row(ORIGINAL_CLIENT_SAMPLE)
    assert sample["age"] == 0.0
    assert sample["smoking_history"] == "current"
    assert list(sample) == [f.name for f in spec.features]  # by feature name, in the model's order


def test_every_smoking_category_of_the_data_is_accepted(spec: ModelSpec) -> None:
    smoking = next(f for f in spec.features if f.name == "smoking_history")
    assert smoking.values == ["No Info", "current", "ever", "former", "never", "not current"]
    for value in smoking.values:
        spec.validate_row({**ORIGINAL_CLIENT_SAMPLE, "smoking_history": value})


def test_fractional_age_and_glucose_are_accepted(spec: ModelSpec) -> None:
    sample = spec.validate_row({**ORIGINAL_CLIENT_SAMPLE, "age": 0.5, "blood_glucose_level": 99.5})
    assert sample["age"] == 0.5


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
        spec.validate_row({**ORIGINAL_CLIENT_SAMPLE, field: value})
    [err] = info.value.errors()
    assert err["loc"] == (field,)
    assert err["type"] == error


def test_missing_and_unknown_fields_are_rejected(spec: ModelSpec) -> None:
    sample = {k: v for k, v in ORIGINAL_CLIENT_SAMPLE.items() if k != "bmi"} | {"weight": 80}
    with pytest.raises(ValidationError) as info:
        spec.validate_row(sample)
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


# Names pydantic reserves on a model, names that are not identifiers, and one at the length limit.
AWKWARD = ["mean radius", "model_config", "model_fields", "schema", "validate", "copy", "dict", "f1", "x" * 128]


def test_feature_names_of_any_text_validate_through_aliases() -> None:
    features = [number(name, example=float(i), minimum=0) for i, name in enumerate(AWKWARD)]
    spec = custom(*features)
    row = {name: float(i) for i, name in enumerate(AWKWARD)}
    assert spec.validate_row(row) == row
    assert spec.validate_row(spec.example) == spec.example
    schema = spec.sample_type.model_json_schema()
    assert list(schema["properties"]) == AWKWARD and set(schema["required"]) == set(AWKWARD)
    assert schema["properties"]["mean radius"]["title"] == "mean radius"
    with pytest.raises(ValidationError) as info:
        spec.validate_row({**row, "model_config": -1.0})
    [err] = info.value.errors()
    assert err["loc"] == ("model_config",) and err["type"] == "greater_than_equal"


def test_the_internal_field_names_are_not_accepted_in_place_of_the_features() -> None:
    spec = custom(number("mean radius"), number("f1"))
    with pytest.raises(ValidationError) as info:
        spec.validate_row({"f0": 1.0, "f1": 2.0})  # f0 is the first feature's field, not a feature
    assert {(e["loc"], e["type"]) for e in info.value.errors()} == {
        (("mean radius",), "missing"),
        (("f0",), "extra_forbidden"),
    }


def test_warnings_name_a_feature_with_spaces() -> None:
    spec = custom(number("mean radius", training_range=(5.0, 30.0)))
    assert spec.warnings({"mean radius": 40.0}) == ["mean radius=40 is outside the training range [5, 30]"]


@pytest.mark.parametrize("name", ["", "x" * 129])
def test_feature_names_are_non_empty_and_at_most_128_characters(name: str) -> None:
    with pytest.raises(ValidationError, match="name"):
        Feature.model_validate(number(name))


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"features": [number("a"), number("a")]}, "feature names must be unique"),
        ({"features": [number("a")], "labels": ["only"]}, "a classifier needs two or more distinct labels"),
        ({"features": [number("a")], "labels": []}, "a classifier needs two or more distinct labels"),
        ({"features": [number("a")], "labels": ["x", "x"]}, "a classifier needs two or more distinct labels"),
        ({"features": [number("a")], "task": "regression", "labels": ["x", "y"]}, "a regressor has no labels"),
        ({"features": [{"name": "c", "kind": "category", "example": "x"}]}, "category feature 'c' needs `values`"),
        (
            {"features": [{"name": "c", "kind": "category", "values": ["x"], "example": "y"}]},
            "example 'y' of 'c' is not one of its values",
        ),
        ({"features": []}, "at least 1 item"),
        ({"features": [number("a")], "task": "ranking"}, "'classification' or 'regression'"),
        ({"features": [number("a")], "surprise": 1}, "Extra inputs are not permitted"),
    ],
)
def test_invalid_specs_are_refused(body: dict[str, Any], reason: str) -> None:
    body = {"labels": ["no", "yes"], **body}
    with pytest.raises(ValidationError, match=reason):
        SpecBody.model_validate(body)


@pytest.mark.parametrize(
    ("name", "version"), [("Iris", 1), ("-iris", 1), ("iris model", 1), ("a" * 64, 1), ("iris", 0)]
)
def test_model_names_and_versions_are_checked(name: str, version: int) -> None:
    with pytest.raises(ValidationError):
        ModelSpec.model_validate({"name": name, "version": version, "labels": ["a", "b"], "features": [number("a")]})


def test_a_regressor_needs_no_labels() -> None:
    spec = custom(number("a"), task="regression", labels=[])
    assert spec.task == "regression" and spec.labels == []
