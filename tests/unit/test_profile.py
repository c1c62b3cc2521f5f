"""Reference profiles and the population stability index: pure functions against NumPy and by hand."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from mlapi.api.quality import InvalidQuery, bucket_seconds, f1, window_bounds
from mlapi.models import profile
from mlapi.models.profile import EMPTY_SHARE, PREDICTION, Column, Profile, psi, verdict
from mlapi.models.spec import Feature, SpecBody

SPEC = SpecBody(
    labels=["no", "yes"],
    features=[
        Feature(name="age", kind="number", example=1.0),
        Feature(name="colour", kind="category", values=["red", "blue"], example="red"),
        Feature(name="smoker", kind="flag", example=0),
    ],
)


def frame(n: int = 1000) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    return pd.DataFrame(
        {"age": rng.uniform(0, 100, n), "colour": rng.choice(["red", "blue"], n), "smoker": rng.integers(0, 2, n)}
    )


def test_a_profile_has_decile_bins_value_shares_and_the_predictions() -> None:
    data = frame()
    found = profile.compute(SPEC, data, ["yes" if a > 50 else "no" for a in data["age"]])
    age, colour, smoker, prediction = found.columns
    assert age.edges == pytest.approx(np.quantile(data["age"], profile.DECILES).tolist())
    assert age.shares == pytest.approx([0.1] * 10, abs=0.002)
    assert (age.minimum, age.maximum) == (data["age"].min(), data["age"].max())
    assert colour.values == ["red", "blue"] and colour.shares[-1] == 0  # nothing `other`
    assert colour.shares[0] == pytest.approx((data["colour"] == "red").mean())
    assert smoker.kind == "category" and smoker.values == ["0", "1"]  # as the stored JSON prints a flag
    assert prediction.name == PREDICTION and prediction.values == ["no", "yes"]
    assert prediction.shares[1] == pytest.approx((data["age"] > 50).mean())
    found.check(SPEC)


def test_a_regressors_prediction_and_tied_deciles_give_fewer_bins() -> None:
    spec = SpecBody(task="regression", features=[Feature(name="dose", kind="number", example=1.0)])
    data = pd.DataFrame({"dose": [1.0] * 50 + [2.0] * 50})
    found = profile.compute(spec, data, [0.5] * 100)
    dose, prediction = found.columns
    assert dose.edges == [1.0, 1.5, 2.0] and dose.shares == [0.0, 0.5, 0.0, 0.5]
    assert prediction.kind == "number" and prediction.edges == [0.5]


def test_psi_is_the_sum_with_empty_bins_floored() -> None:
    shares = [0.5, 0.5, 0.0]
    assert psi([50, 50, 0], shares) == pytest.approx(0.0)
    expected = (0.8 - 0.5) * math.log(0.8 / 0.5) + (0.2 - 0.5) * math.log(0.2 / 0.5)
    assert psi([80, 20, 0], shares) == pytest.approx(expected)
    floored = (EMPTY_SHARE - 0.5) * math.log(EMPTY_SHARE / 0.5) + (1 - 0.5) * math.log(1 / 0.5)
    assert psi([0, 10, 0], shares) == pytest.approx(floored)
    assert psi([0, 0, 0], shares) is None


@pytest.mark.parametrize(("value", "expected"), [(0.0, "stable"), (0.099, "stable"), (0.1, "watch"), (0.3, "drifted")])
def test_verdicts(value: float, expected: str) -> None:
    assert verdict(value, 0.1, 0.25) == expected


def test_bin_names_read_as_ranges() -> None:
    column = Column(name="x", kind="number", edges=[1, 2.5], shares=[0.2, 0.3, 0.5], minimum=0, maximum=3)
    assert column.bin_names() == ["< 1", "1 to 2.5", "≥ 2.5"]


@pytest.mark.parametrize(
    "bad",
    [
        {"name": "x", "kind": "number", "edges": [1.0], "shares": [1.0], "minimum": 0, "maximum": 1},  # too few
        {"name": "x", "kind": "number", "edges": [2.0, 1.0], "shares": [0.2, 0.3, 0.5], "minimum": 0, "maximum": 3},
        {"name": "x", "kind": "number", "edges": [1.0], "shares": [0.5, 0.5]},  # no training range
        {"name": "x", "kind": "category", "values": ["a"], "shares": [0.5, 0.6]},  # not a distribution
    ],
)
def test_a_malformed_column_is_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Column.model_validate(bad)


def test_a_profile_that_does_not_fit_the_spec_is_refused() -> None:
    column = Column(name="weight", kind="category", values=["a"], shares=[1.0, 0.0])
    with pytest.raises(ValueError, match="not a feature"):
        Profile(rows=1, columns=[column]).check(SPEC)
    age = Column(name="age", kind="category", values=["a"], shares=[1.0, 0.0])
    with pytest.raises(ValueError, match="a category"):
        Profile(rows=1, columns=[age]).check(SPEC)


def test_f1_is_scikit_learns() -> None:
    from sklearn.metrics import f1_score

    y, p = [0, 1, 2, 2, 1, 0, 2], [0, 2, 2, 2, 1, 1, 0]
    confusion: dict[tuple[int, int], int] = {}
    for pair in zip(y, p, strict=True):
        confusion[pair] = confusion.get(pair, 0) + 1
    assert f1(confusion, 3) == pytest.approx(f1_score(y, p, labels=[0, 1, 2], average="macro"))
    binary = {(0, 0): 3, (1, 1): 2, (0, 1): 1, (1, 0): 2}
    assert f1(binary, 2) == pytest.approx(2 * 2 / (2 * 2 + 1 + 2))


def test_windows_and_buckets() -> None:
    until = datetime(2026, 1, 2, tzinfo=UTC)
    since, _ = window_bounds(None, until, until - datetime(2026, 1, 1, tzinfo=UTC))
    assert since == datetime(2026, 1, 1, tzinfo=UTC)
    assert bucket_seconds(None, since, until) == 3600  # 24 buckets of an hour
    assert bucket_seconds("minute", since, until) == 60
    for bad in ("fortnight", "0", "-5"):
        with pytest.raises(InvalidQuery):
            bucket_seconds(bad, since, until)
    with pytest.raises(InvalidQuery):
        bucket_seconds("1", since, until)  # 86,400 buckets
    with pytest.raises(InvalidQuery):
        window_bounds(until, since, until - since)
