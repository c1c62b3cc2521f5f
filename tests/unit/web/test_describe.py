from __future__ import annotations

import pytest

from mlapi.web import describe
from tests.unit.web.conftest import HOUSES, IRIS_V2, SPECS


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (312456.789, "312,457"), (152.13345, "152.133"), (-3.5, "-3.5"), (0.0, "0"), (1.0, "1"), (7, "7"),
        (0.012345678, "0.0123457"), (1.5e-7, "1.5e-07"), (12345678.9, "12,345,679"), (float("nan"), "nan"),
        (None, "-"),
    ],
)  # fmt: skip
def test_values_read_without_noise_or_exponents(value: float | None, text: str) -> None:
    assert describe.number(value) == text


@pytest.mark.parametrize(
    ("value", "text"), [(None, "-"), (0.8125, "81%"), (0.9995, ">99.9%"), (0.05, "5.0%"), (1.0, "100%")]
)
def test_percentages_never_overclaim(value: float | None, text: str) -> None:
    assert describe.percent(value) == text


def test_the_metrics_a_version_has_and_no_others() -> None:
    assert describe.metrics(SPECS["iris"]) == "On 30 held-out rows it scored ROC AUC 0.985, accuracy 90% and F1 0.900."
    assert describe.metrics(IRIS_V2) == "On 30 held-out rows it scored accuracy 93%."
    assert describe.metrics(HOUSES) == "On 412 held-out rows it scored MAE 20,512.2, RMSE 31,877.5 and R² 0.812."
    brier = IRIS_V2.model_copy(update={"metrics": {"brier": 0.0412, "log_loss": 0.21}})
    assert describe.metrics(brier) == "On held-out data it scored Brier score 0.041 and log loss 0.21."
    none = IRIS_V2.model_copy(update={"metrics": {}})
    assert describe.metrics(none) == "No holdout metrics were recorded for this version."


@pytest.mark.parametrize(
    ("text", "out"), [("A model", "A model."), ("A model.", "A model."), ("", ""), ("Why?", "Why?")]
)
def test_sentences_end_once(text: str, out: str) -> None:
    assert describe.sentence(text) == out
