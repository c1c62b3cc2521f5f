from __future__ import annotations

from typing import Any

import pytest

from mlapi.models.spec import ModelSpec
from mlapi.web.forms import controls, errors_by_field, feature_label, format_number, sample_from_form
from tests.unit.web.conftest import SPECS

DIABETES: ModelSpec = SPECS["diabetes-risk"]


def test_labels_read_like_words() -> None:
    assert feature_label("blood_glucose_level") == "Blood glucose level"
    assert feature_label("HbA1c_level") == "HbA1c level"
    assert feature_label("bmi") == "BMI"


@pytest.mark.parametrize(("value", "text"), [(54.0, "54"), (27.32, "27.32"), (140, "140"), (0.08, "0.08")])
def test_numbers_are_shown_without_noise(value: float, text: str) -> None:
    assert format_number(value) == text


def test_one_fitting_control_per_feature_prefilled_with_the_example() -> None:
    by_name = {c.name: c for c in controls(DIABETES)}
    assert list(by_name) == [f.name for f in DIABETES.features]
    gender = by_name["gender"]
    assert gender.kind == "select"
    assert [v for v, _ in gender.options] == ["Female", "Male", "Other"]
    assert gender.value == "Female"
    assert by_name["hypertension"].kind == "radio"
    assert by_name["hypertension"].options == (("1", "Yes"), ("0", "No"))
    assert by_name["hypertension"].value == "0"
    assert by_name["hypertension"].hint == "Yes if the patient has hypertension"  # the spec says "1 if ..."
    age = by_name["age"]
    assert (age.kind, age.value, age.minimum, age.maximum, age.step, age.unit) == (
        "number", "54", "0", None, "0.1", "years"
    )  # fmt: skip
    assert age.typical == "Seen in training: 0.08 to 80 years"
    assert age.described_by == "f-age-hint"


def test_submitted_values_and_errors_replace_the_example() -> None:
    age = {c.name: c for c in controls(DIABETES, {"age": "-3"}, {"age": "Too small."})}["age"]
    assert (age.value, age.error) == ("-3", "Too small.")
    assert age.described_by == "f-age-error f-age-hint"


def test_form_text_becomes_a_typed_sample() -> None:
    form = {
        "gender": "Male", "age": "61.5", "hypertension": "1", "heart_disease": "0", "smoking_history": "former",
        "bmi": "27", "HbA1c_level": "6.1", "blood_glucose_level": "140", "model": "ignored",
    }  # fmt: skip
    assert sample_from_form(DIABETES, form) == {
        "gender": "Male", "age": 61.5, "hypertension": 1, "heart_disease": 0, "smoking_history": "former",
        "bmi": 27.0, "HbA1c_level": 6.1, "blood_glucose_level": 140.0,
    }  # fmt: skip


@pytest.mark.parametrize(("text", "sent"), [("", None), ("abc", "abc"), ("nan", "nan"), ("1e999", "1e999")])
def test_text_that_is_no_number_is_left_for_the_api_to_reject(text: str, sent: Any) -> None:
    assert sample_from_form(DIABETES, {"age": text})["age"] == sent


def test_api_errors_are_mapped_to_their_fields() -> None:
    errors: list[dict[str, Any]] = [
        {"loc": ["body", "age"], "type": "greater_than_equal", "msg": "Input should be greater than or equal to 0"},
        {"loc": ["body", "age"], "type": "other", "msg": "second error of the same field"},
        {"loc": ["body", "bmi"], "type": "float_type", "msg": "Input should be a valid number", "input": None},
        {"loc": ["body", "HbA1c_level"], "type": "greater_than_equal", "msg": "ignored", "ctx": {"ge": 0.0}},
        {"loc": ["body", "gender"], "type": "literal_error", "msg": "Input should be 'Female', 'Male' or 'Other'"},
        {"loc": ["body", "bmi_typo"], "type": "extra_forbidden", "msg": "Extra inputs are not permitted"},
        {"loc": ["body"], "type": "model_type", "msg": "Input should be an object"},
    ]
    mapped = errors_by_field(DIABETES, errors)
    assert mapped.by_field == {
        "age": "Input should be greater than or equal to 0.", "bmi": "Enter a value.",
        "HbA1c_level": "Enter 0 or more.", "gender": "Choose one of the options.",
    }  # fmt: skip
    assert mapped.general == ["Extra inputs are not permitted", "Input should be an object"]
