from __future__ import annotations

from typing import Any

import pytest

from mlapi.models.spec import ModelSpec
from mlapi.web.forms import (
    controls,
    element_id,
    errors_by_field,
    feature_label,
    field_name,
    format_number,
    sample_from_form,
)
from tests.unit.web.conftest import HOUSES, SPECS

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


def test_any_feature_name_gets_a_field_and_an_id_of_its_own() -> None:
    names = ["age", "model", "version", "_model", "__x", "mean radius", "a-b", "ünits"]
    fields = [field_name(n) for n in names]
    assert fields == ["age", "_model", "_version", "__model", "___x", "mean radius", "a-b", "ünits"]
    assert len(set(fields)) == len(fields) and not {"model", "version"} & set(fields)
    ids = [element_id(n, i) for i, n in enumerate(names)]
    assert ids == ["f-age", "f-model", "f-version", "f-_model", "f-__x", "f5", "f6", "f7"]
    assert all(" " not in i for i in ids) and len(set(ids)) == len(ids)


def test_a_regressors_form() -> None:
    by_name = {c.name: c for c in controls(HOUSES, {"_model": "house"})}
    area, kind, rooms = by_name["floor area"], by_name["model"], by_name["rooms"]
    assert (area.field, area.id, area.label, area.value) == ("floor area", "f0", "Floor area", "85.5")
    assert (kind.field, kind.id, kind.value) == ("_model", "f-model", "house")
    assert (rooms.step, rooms.value) == ("1", "3")
    assert kind.described_by == "" and area.described_by == "f0-hint", "a hint only where there is something to say"
    form = {"model": "house-price", "version": "1", "floor area": "90", "_model": "flat", "rooms": "4"}
    assert sample_from_form(HOUSES, form) == {"floor area": 90.0, "model": "flat", "rooms": 4}
    mapped = errors_by_field(HOUSES, [{"loc": ["body", "floor area"], "type": "missing", "msg": "Field required"}])
    assert mapped.by_field == {"floor area": "Enter a value."}
