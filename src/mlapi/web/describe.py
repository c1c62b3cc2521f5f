"""Numbers and a model version's record in words, for the pages: probabilities, predicted values, metrics."""

from __future__ import annotations

import math

from mlapi.models.spec import ModelSpec

METRICS = {
    "roc_auc": "ROC AUC",
    "accuracy": "accuracy",
    "f1": "F1",
    "brier": "Brier score",
    "mae": "MAE",
    "rmse": "RMSE",
    "r2": "R²",
}
"""How the metrics `mlapi models add` computes are named in a sentence; others keep their key."""
RATIOS = frozenset({"roc_auc", "f1", "brier", "r2"})
"""Metrics shown with three decimals; `accuracy` is a percentage and the errors (MAE, RMSE) are in the
target's unit, so they get `number`'s significant digits."""


def percent(value: float | None) -> str:
    if value is None:
        return "-"
    if 0.999 <= value < 1:
        return ">99.9%"  # never claim a certainty the model did not give
    return f"{value:.1%}" if 0 < value < 0.1 or 0.99 < value < 1 else f"{value:.0%}"


def number(value: float | None) -> str:
    """A predicted value or a metric to six significant digits, without exponent: `152.133`, `234,568`, `0.0123`."""
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value) or value == 0:
        return str(value).removesuffix(".0")
    if abs(value) < 1e-3:
        return f"{value:.3g}"
    decimals = min(8, max(0, 5 - math.floor(math.log10(abs(value)))))
    text = f"{value:,.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def sentence(text: str) -> str:
    """`text` ending with a full stop."""
    text = text.strip()
    return text if not text or text[-1] in ".!?" else f"{text}."


def _metric(key: str, value: float) -> str:
    name = METRICS.get(key, key.replace("_", " "))
    if key == "accuracy":
        return f"{name} {percent(value)}"
    return f"{name} {value:.3f}" if key in RATIOS else f"{name} {number(value)}"


def _listing(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + f" and {parts[-1]}"


def metrics(spec: ModelSpec) -> str:
    """The holdout metrics the version has, in a sentence; says so when it has none."""
    known = [k for k in METRICS if k in spec.metrics]
    others = sorted(k for k in spec.metrics if k not in METRICS and k != "holdout_rows")
    parts = [_metric(k, spec.metrics[k]) for k in (*known, *others)]
    if not parts:
        return "No holdout metrics were recorded for this version."
    rows = spec.metrics.get("holdout_rows")
    where = f"On {int(rows):,} held-out rows" if rows else "On held-out data"
    return f"{where} it scored {_listing(parts)}."
