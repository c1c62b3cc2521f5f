"""Spec inference for `mlapi models add` and `mlapi.client`: runs on the user's machine, which has the model's
libraries.

It works from what an artifact records about itself (an `Inspection`, whichever runtime made it) and a sample
of data: feature names from the artifact where it records them, else the data's columns; kinds, ranges and the
example row from the data; labels from the recorded classes, else an in-memory model's `classes_`, else the
target's values. The spec is then proven by loading the artifact with it through `mlapi.runtimes.load`, the
code the workers run, and with a target the metrics are computed from that runtime's answers on the data.
"""

from __future__ import annotations

import hashlib
import importlib
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pandas.api import types
from pydantic import ValidationError
from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error, mean_squared_error, r2_score, roc_auc_score

from mlapi import runtimes
from mlapi.contract import Output, Value
from mlapi.models import profile
from mlapi.models.profile import Profile
from mlapi.models.spec import DataInfo, Feature, ModelSpec, SpecBody, Task
from mlapi.runtimes import Inspection, Runtime

TASKS: tuple[Task, ...] = ("classification", "regression")
CHUNK = 1024
"""Rows of the data predicted per call when computing metrics."""
# Libraries whose versions a spec records, by runtime: (name recorded, module).
_FRAMEWORKS: dict[str, list[tuple[str, str]]] = {
    "sklearn": [("scikit-learn", "sklearn"), ("skops", "skops")],
    "xgboost": [("xgboost", "xgboost")],
    "lightgbm": [("lightgbm", "lightgbm")],
    "onnx": [("onnxruntime", "onnxruntime"), ("onnx", "onnx")],
}

_RECORDED_AS: dict[str, Callable[[str], str]] = {"lightgbm": lambda name: name.replace(" ", "_")}
"""How a runtime's files record a column's name, where not as it is: the data's column is the feature's name."""


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


def frame_info(frame: pd.DataFrame) -> DataInfo:
    """What the spec records about an in-memory frame: the digest is of its CSV form."""
    csv = frame.to_csv(index=False).encode()
    return DataInfo(source="data frame", sha256=hashlib.sha256(csv).hexdigest(), rows=len(frame))


def infer_spec(found: Inspection, artifact: bytes, data: pd.DataFrame | None, target: str | None,
               **given: Any) -> SpecBody:  # fmt: skip
    """`infer_version`'s spec alone."""
    return infer_version(found, artifact, data, target, **given)[0]


def infer_version(
    found: Inspection,
    artifact: bytes,
    data: pd.DataFrame | None,
    target: str | None,
    *,
    runtime: str,
    task: str | None = None,
    classes: Sequence[Any] | None = None,
    description: str = "",
    trusted: Sequence[str] = (),
    data_info: DataInfo | None = None,
    name: str = "model",
) -> tuple[SpecBody, Profile | None]:
    """The spec of an artifact of `runtime`, from what it records (`found`) and from a sample of data; and with
    data, the reference profile of that data (`reference_profile`).

    - features: the names the artifact records (as the data's columns name them, where LightGBM recorded a space
      as `_`), else the columns of `data` without `target`, in order (as many as the model takes, where it
      says). Kinds from the data: text is a category of its sorted values, an integer column holding only 0 and
      1 a flag, any other number a number whose observed [min, max] is its `training_range` (integer columns are
      `integer`). Without data every feature is a number.
    - example: the first complete row of the data, else zeros.
    - task: from the artifact, or `task` where the artifact does not say; a conflict is refused.
    - labels: the classes the artifact records where they are labels; where it knows only class numbers
      0..k-1 (a Booster), the `classes` of the in-memory model it came from, else the sorted distinct values of
      `target` (k of them), else the class numbers themselves.
    - metrics: with `target`, computed from the answers of the runtime the workers run, on `data`'s rows
      validated as requests are (`classification_metrics`, `regression_metrics`).

    Raises `InferError` with what to pass when something cannot be inferred or does not match, and
    `runtimes.LoadError` when the artifact does not load with the inferred spec.
    """
    if data is not None:
        data = data.rename(columns=str)
    if target is not None and (data is None or target not in data.columns):
        raise InferError(f"the target column {target!r} is not in the data (--target needs --data holding it)")
    kind = _task(found, task)
    names = _feature_names(runtime, found, data, target)
    example = _example(data[names]) if data is not None else dict.fromkeys(names, 0.0)
    features = [_feature(n, None if data is None else data[n], example[n]) for n in names]
    labels = _labels(kind, found, classes, data, target)
    if data is not None and data_info is None:
        data_info = frame_info(data)
    try:
        body = SpecBody(
            runtime=runtime,
            task=kind,
            description=description,
            labels=labels,
            features=features,
            data=data_info,
            framework=framework(runtime),
            trusted=list(trusted),
        )
    except ValidationError as e:
        raise InferError(f"the inferred spec is not valid: {e}") from e
    spec = ModelSpec(**body.model_dump(), name=name, version=1)
    model = runtimes.load(spec, artifact)
    if data is None:
        return body, None
    profile = reference_profile(model, data)
    if target is None:
        return body, profile
    return body.model_copy(update={"metrics": measure(model, data, target)}), profile


def reference_profile(model: Runtime, data: pd.DataFrame) -> Profile:
    """The profile drift is measured against: the features of `data`'s complete rows, and the loaded runtime's
    answers on them, fed as requests are."""
    spec = model.spec
    rows = data[[f.name for f in spec.features]].dropna()
    if rows.empty:
        raise InferError("no row of the data holds every feature: the reference profile needs some")
    answers = [o.prediction for o in _predict(model, spec, rows)]
    if spec.task == "regression":
        return profile.compute(spec, rows, [float(a or 0) for a in answers])
    return profile.compute(spec, rows, [spec.labels[int(a or 0)] for a in answers])


def framework(runtime: str) -> dict[str, str]:
    """Versions of the libraries that read `runtime`'s artifacts, as installed here."""
    versions = {name: str(importlib.import_module(module).__version__) for name, module in _FRAMEWORKS[runtime]}
    return {**versions, "numpy": np.__version__}


def _task(found: Inspection, given: str | None) -> Task:
    if given is not None and given not in TASKS:
        raise InferError(f"unknown task {given!r}: one of {', '.join(TASKS)}")
    if given is not None and found.task is not None and given != found.task:
        raise InferError(f"--task {given} conflicts with the artifact, which holds a {found.task} model")
    for task in TASKS:
        if task in (given, found.task):
            return task
    raise InferError("cannot tell whether the model is a classifier or a regressor: pass --task")


def _feature_names(runtime: str, found: Inspection, data: pd.DataFrame | None, target: str | None) -> list[str]:
    if found.features is not None:
        if data is None:
            return found.features
        recorded_as = _RECORDED_AS.get(runtime, str)
        columns = {recorded_as(c): c for c in data.columns if c != target}
        names = [n if n in data.columns else columns.get(n, n) for n in found.features]
        missing = [n for n in names if n not in data.columns]
        if missing:
            raise InferError(f"the data lacks columns the model takes: {missing}")
        return names
    if data is None:
        raise InferError(
            "the artifact does not record its feature names: pass --data with one column per feature, in the "
            "order the model takes them"
        )
    names = [c for c in data.columns if c != target]
    width = found.n_features
    if width is not None and width != len(names):
        besides = "" if target is None else f" besides the target {target!r}"
        raise InferError(f"the model takes {width} features, but the data has {len(names)} columns{besides}: {names}")
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


def _numbers_only(classes: Sequence[Any]) -> bool:
    """Whether recorded classes are only the class numbers 0..k-1, as a Booster has them, not labels."""
    return all(type(c) is int for c in classes) and list(classes) == list(range(len(classes)))


def _labels(
    task: Task, found: Inspection, classes: Sequence[Any] | None, data: pd.DataFrame | None, target: str | None
) -> list[str]:
    if task == "regression":
        return []
    recorded = found.classes
    if recorded is not None and not _numbers_only(recorded):
        return [str(c) for c in recorded]
    count = None if recorded is None else len(recorded)
    if classes is not None:
        labels = [str(c) for c in np.asarray(classes).tolist()]
        if count is not None and len(labels) != count:
            raise InferError(f"the model has {count} classes, but its `classes_` lists {len(labels)}: {labels}")
        return labels
    if data is not None and target is not None:
        values = sorted(_target(data[target]).unique().tolist())
        if count is None:
            return [str(v) for v in values]
        if all(type(v) is int and 0 <= v < count for v in values):  # the class numbers themselves
            return [str(k) for k in range(count)]
        if len(values) != count:
            raise InferError(
                f"the model has {count} classes and records no labels, but the target {target!r} holds "
                f"{len(values)} distinct values ({', '.join(map(str, values[:10]))}): pass data in which every "
                "class occurs, or the labels' order with --spec"
            )
        return [str(v) for v in values]
    if recorded is not None:
        return [str(c) for c in recorded]
    raise InferError("the artifact records no classes: pass --data and --target to take the labels from the target")


def _target(column: pd.Series[Any]) -> pd.Series[Any]:
    """A target column without missing values; whole floats (a column that had gaps) back as integers."""
    values = column.dropna()
    if types.is_float_dtype(values) and bool((values == values.round()).all()):
        return values.astype(np.int64)
    return values


def measure(model: Runtime, data: pd.DataFrame, target: str) -> dict[str, float | int]:
    """Metrics of a loaded runtime on the rows of `data` with a target and every feature, fed as requests are."""
    spec = model.spec
    y = _target(data[target])
    names = [f.name for f in spec.features]
    rows = data.loc[y.index, names]
    complete = rows.notna().all(axis=1)
    rows, y = rows[complete], y[complete]
    if rows.empty:
        raise InferError(f"no row of the data holds the target {target!r} and every feature")
    outputs = _predict(model, spec, rows)
    if spec.task == "regression":
        predicted = np.array([o.prediction for o in outputs], dtype=np.float64)
        return regression_metrics(y.to_numpy(dtype=np.float64), predicted)
    index = {label: i for i, label in enumerate(spec.labels)}
    unknown = sorted({str(v) for v in y} - index.keys())
    if unknown:
        raise InferError(f"target values {unknown[:10]} are not classes of the model: {spec.labels}")
    actual = np.array([index[str(v)] for v in y], dtype=np.int64)
    predicted = np.array([o.prediction for o in outputs], dtype=np.int64)
    probabilities = None
    if all(o.probabilities is not None for o in outputs):
        probabilities = np.array([[o.probabilities[label] for label in spec.labels] for o in outputs])  # type: ignore[index]
    return classification_metrics(actual, predicted, probabilities, len(spec.labels))


def _predict(model: Runtime, spec: ModelSpec, frame: pd.DataFrame) -> list[Output]:
    """The runtime's answers for a frame's rows, each validated by the spec as the API validates a request."""
    convert = {f.name: str if f.kind == "category" else int if f.kind == "flag" or f.integer else float
               for f in spec.features}  # fmt: skip
    records = frame.to_dict("records")
    outputs: list[Output] = []
    for start in range(0, len(records), CHUNK):
        rows: list[dict[str, Value]] = []
        for offset, record in enumerate(records[start : start + CHUNK]):
            try:
                rows.append(spec.validate_row({n: f(record[n]) for n, f in convert.items()}))
            except (ValidationError, ValueError) as e:
                raise InferError(f"row {frame.index[start + offset]} of the data is not a valid request: {e}") from e
        try:
            outputs.extend(model.predict(rows))
        except Exception as e:  # whatever the library raises, the user gets the reason, not a traceback
            raise InferError(f"the model fails on the data: {type(e).__name__}: {e}") from e
    return outputs


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
