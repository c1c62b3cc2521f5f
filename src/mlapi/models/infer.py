"""Spec inference for `mlapi models add`: runs on the user's machine, which has the model's libraries.

Feature names come from the artifact where it records them (`feature_names_in_`), else from the data's
columns; kinds, ranges and the example row from the data; labels from `classes_`, else the target's values;
with a target, metrics of the model on that data.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sklearn
import skops
from pandas.api import types
from pydantic import ValidationError
from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error, mean_squared_error, r2_score, roc_auc_score

from mlapi.models.spec import DataInfo, Feature, SpecBody, Task
from mlapi.runtimes.sklearn import Inspection, inspect

TASKS: tuple[Task, ...] = ("classification", "regression")


class InferError(Exception):
    """The spec cannot be inferred from what was given; the message says what to pass."""


def read_data(path: Path) -> tuple[pd.DataFrame, DataInfo]:
    """A CSV file as a frame, with what the spec records about it."""
    raw = path.read_bytes()
    try:
        frame = pd.read_csv(path)
    except (ValueError, pd.errors.ParserError) as e:
        raise InferError(f"cannot read {path} as CSV: {e}") from e
    return frame, DataInfo(source=path.name, sha256=hashlib.sha256(raw).hexdigest(), rows=len(frame))


def infer_spec(
    estimator: Any,
    data: pd.DataFrame | None,
    target: str | None,
    task: str | None,
    description: str,
    trusted: list[str],
    *,
    data_info: DataInfo | None = None,
) -> SpecBody:
    """The spec of a fitted estimator, from what it records and from a sample of data.

    - features: `feature_names_in_` where the estimator records it, else the columns of `data` without
      `target`, in order. Kinds from the data: text is a category of its sorted values, an integer column
      holding only 0 and 1 a flag, any other number a number whose observed [min, max] is its
      `training_range` (integer columns are `integer`). Without data every feature is a number.
    - example: the first complete row of the data, else zeros.
    - task: from the estimator, or `task` where the estimator does not say; a conflict is refused.
    - labels: `classes_` as strings, else the sorted distinct values of `target`.
    - metrics: with `target`, the model's scores on `data` (`classification_metrics`, `regression_metrics`).

    Raises `InferError` with what to pass when something cannot be inferred or does not match.
    """
    if data is not None:
        data = data.rename(columns=str)
    if target is not None and (data is None or target not in data.columns):
        raise InferError(f"the target column {target!r} is not in the data (--target needs --data holding it)")
    found = inspect(estimator)
    kind = _task(found, task, type(estimator).__name__)
    names = _feature_names(found, getattr(estimator, "n_features_in_", None), data, target)
    example = _example(data[names]) if data is not None else dict.fromkeys(names, 0.0)
    features = [_feature(n, None if data is None else data[n], example[n]) for n in names]
    labels = _labels(kind, found, data, target)
    metrics: dict[str, float | int] = {}
    if data is not None and target is not None:
        metrics = _metrics(estimator, found, kind, labels, data, names, target)
        if data_info is None:
            csv = data.to_csv(index=False).encode()
            data_info = DataInfo(source="data frame", sha256=hashlib.sha256(csv).hexdigest(), rows=len(data))
    try:
        return SpecBody(
            runtime="sklearn",
            task=kind,
            description=description,
            labels=labels,
            features=features,
            metrics=metrics,
            data=data_info,
            trained_at=None,
            framework={"scikit-learn": sklearn.__version__, "skops": skops.__version__, "numpy": np.__version__},
            trusted=trusted,
        )
    except ValidationError as e:
        raise InferError(f"the inferred spec is not valid: {e}") from e


def _task(found: Inspection, given: str | None, kind: str) -> Task:
    if given is not None and given not in TASKS:
        raise InferError(f"unknown task {given!r}: one of {', '.join(TASKS)}")
    if given is not None and found.task is not None and given != found.task:
        raise InferError(f"--task {given} conflicts with the artifact, which holds a {found.task} model ({kind})")
    for task in TASKS:
        if task in (given, found.task):
            return task
    raise InferError(f"cannot tell whether {kind} is a classifier or a regressor: pass --task")


def _feature_names(found: Inspection, width: int | None, data: pd.DataFrame | None, target: str | None) -> list[str]:
    if found.features is not None:
        missing = [] if data is None else [n for n in found.features if n not in data.columns]
        if missing:
            raise InferError(f"the data lacks columns the model takes: {missing}")
        return found.features
    if data is None:
        raise InferError(
            "the artifact does not record its feature names (it was fitted on an array): pass --data with "
            "one column per feature, in the order the model takes them"
        )
    names = [c for c in data.columns if c != target]
    if width is not None and width != len(names):
        raise InferError(f"the model takes {width} features, but the data has {len(names)} columns: {names}")
    return names


def _example(frame: pd.DataFrame) -> dict[str, Any]:
    """The first row with no missing value; else each column's first value that is not missing."""
    complete = frame.dropna()
    if len(complete):
        return {str(name): value for name, value in complete.iloc[0].items()}
    return {str(name): column.dropna().iloc[0] if column.notna().any() else 0 for name, column in frame.items()}


def _feature(name: str, column: pd.Series[Any] | None, example: Any) -> Feature:
    if column is None:
        return Feature(name=name, kind="number", example=0.0)
    values = column.dropna()
    if values.empty:
        raise InferError(f"column {name!r} holds no values")
    if types.is_bool_dtype(column):
        return Feature(name=name, kind="flag", example=int(example))
    if types.is_numeric_dtype(column):
        integer = types.is_integer_dtype(column)
        if integer and set(values.unique().tolist()) <= {0, 1}:
            return Feature(name=name, kind="flag", example=int(example))
        low, high = float(values.min()), float(values.max())
        if not (math.isfinite(low) and math.isfinite(high)):
            raise InferError(f"column {name!r} holds infinite values")
        value = int(example) if integer else float(example)
        return Feature(name=name, kind="number", integer=integer, training_range=(low, high), example=value)
    if types.is_string_dtype(column) or types.is_object_dtype(column):
        return Feature(name=name, kind="category", values=sorted({str(v) for v in values}), example=str(example))
    raise InferError(f"column {name!r} has type {column.dtype}: a feature is text or a number")


def _labels(task: Task, found: Inspection, data: pd.DataFrame | None, target: str | None) -> list[str]:
    if task == "regression":
        return []
    if found.classes is not None:
        return [str(c) for c in found.classes]
    if data is None or target is None:
        raise InferError("the artifact records no classes (`classes_`): pass --data and --target to take them")
    return [str(v) for v in sorted(_target(data[target]).unique().tolist())]


def _target(column: pd.Series[Any]) -> pd.Series[Any]:
    """A target column without missing values; whole floats (a column that had gaps) back as integers."""
    values = column.dropna()
    if types.is_float_dtype(values) and bool((values == values.round()).all()):
        return values.astype(np.int64)
    return values


def _metrics(
    estimator: Any, found: Inspection, task: Task, labels: list[str], data: pd.DataFrame, names: list[str], target: str
) -> dict[str, float | int]:
    """Scores of the model on the data, fed as the runtime feeds it: a frame if fitted on one, else an array."""
    y = _target(data[target])
    rows = data.loc[y.index, names]
    text = any(not types.is_numeric_dtype(rows[n]) for n in names)
    x = rows if found.features is not None else rows.to_numpy(dtype=object if text else np.float64)
    if task == "regression":
        return regression_metrics(y.to_numpy(dtype=np.float64), np.asarray(estimator.predict(x), dtype=np.float64))
    classes = [str(c) for c in found.classes] if found.classes is not None else labels
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({str(v) for v in y} - index.keys())
    if unknown:
        raise InferError(f"target values {unknown[:10]} are not classes of the model: {classes}")
    actual = np.array([index[str(v)] for v in y], dtype=np.int64)
    predicted = np.array([index[str(v)] for v in np.asarray(estimator.predict(x)).tolist()], dtype=np.int64)
    probabilities = estimator.predict_proba(x) if hasattr(estimator, "predict_proba") else None
    return classification_metrics(actual, predicted, probabilities, len(classes))


def classification_metrics(
    actual: np.ndarray, predicted: np.ndarray, probabilities: np.ndarray | None, classes: int
) -> dict[str, float | int]:
    """Accuracy, F1 (of class 1 for two classes, else macro), and with probabilities ROC AUC (one-vs-rest for
    more than two classes; only where every class occurs) and the Brier score (the mean squared error of the
    probabilities against the one-hot classes: for two classes, the usual binary Brier score).

    `actual` and `predicted` are class numbers 0..classes-1; `probabilities` has one column per class.
    """
    binary = classes == 2
    f1 = (
        f1_score(actual, predicted, average="binary", zero_division=0)
        if binary
        else f1_score(actual, predicted, labels=list(range(classes)), average="macro", zero_division=0)
    )
    metrics: dict[str, float | int] = {"accuracy": float(accuracy_score(actual, predicted)), "f1": float(f1)}
    if probabilities is not None:
        if len(np.unique(actual)) == classes:
            metrics["roc_auc"] = float(
                roc_auc_score(actual, probabilities[:, 1])
                if binary
                else roc_auc_score(actual, probabilities, multi_class="ovr", labels=list(range(classes)))
            )
        one_hot = np.eye(classes)[actual]
        metrics["brier"] = float(np.mean((probabilities - one_hot) ** 2))
    metrics["holdout_rows"] = len(actual)
    return metrics


def regression_metrics(actual: np.ndarray, predicted: np.ndarray) -> dict[str, float | int]:
    """MAE, RMSE and R² (R² only from two rows on, where it is defined)."""
    predicted = predicted.reshape(len(actual))
    metrics: dict[str, float | int] = {
        "mae": float(mean_absolute_error(actual, predicted)),
        "rmse": math.sqrt(float(mean_squared_error(actual, predicted))),
    }
    if len(actual) >= 2:
        metrics["r2"] = float(r2_score(actual, predicted))
    metrics["holdout_rows"] = len(actual)
    return metrics
