"""The predict form, derived from a model's spec: one control per feature, typed values back, errors by field."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from mlapi.models.spec import Feature, ModelSpec

FLAG_OPTIONS = (("1", "Yes"), ("0", "No"))
RESERVED = frozenset({"model", "version"})
"""Form and query fields of the page itself, which a feature's field must not shadow."""
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_]+")


ACRONYMS = frozenset({"bmi", "bp", "ecg", "hdl", "ldl", "id"})
"""Words of feature names written in capitals in labels."""


def feature_label(name: str) -> str:
    """`blood_glucose_level` -> `Blood glucose level`; keeps the case of the rest (`HbA1c level`)."""
    words = [w.upper() if w.lower() in ACRONYMS else w for w in name.replace("-", "_").split("_") if w]
    text = " ".join(words)
    return text[:1].upper() + text[1:]


def field_name(feature: str) -> str:
    """The form field of a feature: its name, unless that is one of the page's own fields or starts with `_`.

    Feature names are any text, so `model` or `version` may be one; prefixing `_` to those and to names that
    already start with `_` keeps every feature's field distinct from the others and from the page's fields.
    """
    return f"_{feature}" if feature in RESERVED or feature.startswith("_") else feature


def element_id(feature: str, index: int) -> str:
    """An HTML id for a feature's control: `f-<name>` where the name is plain, else `f<index>`.

    Plain names hold no `-`, so `f-age` never meets the `-error`/`-hint` ids of another feature; an id may
    not hold spaces, so `mean radius` gets `f3`.
    """
    return f"f-{feature}" if _PLAIN_NAME.fullmatch(feature) else f"f{index}"


def format_number(value: float) -> str:
    """A number as a form shows it: `54` rather than `54.0`, and no rounding."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value) if isinstance(value, float) else str(value)


def _initial(feature: Feature) -> str:
    value = feature.example
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int | float):
        return format_number(value)
    return str(value)


@dataclass(frozen=True)
class Control:
    """What the template needs to draw one feature's input."""

    name: str
    """The feature's name."""
    field: str
    """The form field's name (`field_name`)."""
    id: str
    label: str
    kind: Literal["select", "radio", "number"]
    hint: str
    value: str
    error: str | None = None
    options: tuple[tuple[str, str], ...] = ()
    minimum: str | None = None
    maximum: str | None = None
    step: str = "any"
    unit: str | None = None
    typical: str | None = None
    """The range seen in training, for the hint."""

    @property
    def has_hint(self) -> bool:
        return bool(self.hint or self.typical)

    @property
    def described_by(self) -> str:
        """Ids of the error and the hint, those that exist; empty when neither does."""
        ids = [f"{self.id}-error"] if self.error else []
        return " ".join([*ids, f"{self.id}-hint"] if self.has_hint else ids)


def _choice_control(
    feature: Feature,
    index: int,
    kind: Literal["select", "radio"],
    hint: str,
    value: str,
    error: str | None,
    options: tuple[tuple[str, str], ...],
) -> Control:
    return Control(
        name=feature.name, field=field_name(feature.name), id=element_id(feature.name, index),
        label=feature_label(feature.name), kind=kind, hint=hint, value=value, error=error, options=options,
    )  # fmt: skip


def _number_control(feature: Feature, index: int, value: str, error: str | None) -> Control:
    unit = f" {feature.unit}" if feature.unit else ""
    typical = None
    if feature.training_range is not None:
        low, high = feature.training_range
        typical = f"Seen in training: {format_number(low)} to {format_number(high)}{unit}"
    step = format_number(feature.step) if feature.step else ("1" if feature.integer else "any")
    return Control(
        name=feature.name, field=field_name(feature.name), id=element_id(feature.name, index),
        label=feature_label(feature.name), kind="number", hint=feature.description,
        value=value, error=error, step=step, unit=feature.unit, typical=typical,
        minimum=format_number(feature.minimum) if feature.minimum is not None else None,
        maximum=format_number(feature.maximum) if feature.maximum is not None else None,
    )  # fmt: skip


def controls(
    spec: ModelSpec, values: Mapping[str, str] | None = None, errors: Mapping[str, str] | None = None
) -> list[Control]:
    """One control per feature, holding `values` (as submitted, by field) or else the spec's example.

    `errors` are by feature name.
    """
    values, errors = values or {}, errors or {}
    out = []
    for i, f in enumerate(spec.features):
        value, error = values.get(field_name(f.name), _initial(f)), errors.get(f.name)
        if f.kind == "category":
            options = tuple((v, v) for v in f.values or ())
            out.append(_choice_control(f, i, "select", f.description, value, error, options))
        elif f.kind == "flag":
            hint = "Yes if " + f.description[5:] if f.description.startswith("1 if ") else f.description
            out.append(_choice_control(f, i, "radio", hint, value, error, FLAG_OPTIONS))
        else:
            out.append(_number_control(f, i, value, error))
    return out


def _number(feature: Feature, raw: str) -> float | int | str | None:
    if not raw:
        return None
    try:
        number = float(raw)
    except ValueError:
        return raw  # the API rejects it and names the field
    if not math.isfinite(number):
        return raw
    if feature.integer and number.is_integer():
        return int(number)
    return number


def sample_from_form(spec: ModelSpec, form: Mapping[str, str]) -> dict[str, Any]:
    """The JSON sample for the API: typed where the text allows, left as text where it does not (the API decides)."""
    sample: dict[str, Any] = {}
    for f in spec.features:
        raw = form.get(field_name(f.name), "").strip()
        if f.kind == "number":
            sample[f.name] = _number(f, raw)
        elif f.kind == "flag":
            sample[f.name] = int(raw) if raw in ("0", "1") else (raw or None)
        else:
            sample[f.name] = raw or None
    return sample


def _message(error: Mapping[str, Any]) -> str:
    kind, value = str(error.get("type", "")), error.get("input")
    if kind == "missing" or (value is None and kind.endswith("_type")):
        return "Enter a value."
    if kind in ("float_type", "int_type", "float_parsing", "int_parsing"):
        return "Enter a number." if kind.startswith("float") else "Enter a whole number."
    ctx = error.get("ctx") or {}
    bounds = {"greater_than_equal": ("ge", "Enter {} or more."), "less_than_equal": ("le", "Enter {} or less."),
              "greater_than": ("gt", "Enter more than {}."), "less_than": ("lt", "Enter less than {}.")}  # fmt: skip
    if kind in bounds and isinstance(ctx.get(bounds[kind][0]), int | float):
        key, template = bounds[kind]
        return template.format(format_number(ctx[key]))
    if kind == "literal_error":
        return "Choose one of the options."
    msg = str(error.get("msg") or "Invalid value")
    return msg if msg.endswith(".") else f"{msg}."


@dataclass
class FormErrors:
    by_field: dict[str, str] = field(default_factory=dict)
    general: list[str] = field(default_factory=list)


def errors_by_field(spec: ModelSpec, errors: list[dict[str, Any]]) -> FormErrors:
    """FastAPI's 422 `detail` as one message per named feature, and the rest as general messages."""
    names = {f.name for f in spec.features}
    out = FormErrors()
    for error in errors:
        loc = error.get("loc") or []
        name = loc[1] if len(loc) >= 2 and loc[0] == "body" else None
        if isinstance(name, str) and name in names:
            out.by_field.setdefault(name, _message(error))
        else:
            out.general.append(str(error.get("msg") or "Invalid sample"))
    return out
