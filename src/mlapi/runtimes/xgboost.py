"""The XGBoost runtime: a Booster saved with `save_model` as JSON or UBJSON, classifier or regressor.

A Booster records its objective, its feature names and types (where it was trained on named columns), but no
class labels: those come from the spec, in the order of the model's class numbers. Numeric batches go to
`inplace_predict` as one float32 array (XGBoost's own precision). Category features are served where the model
was trained on pandas category columns with `enable_categorical=True`: the batch becomes a DataFrame whose
categories are the spec's values, which XGBoost (3.1 and later) maps onto the categories the model recorded;
a model saved by an older XGBoost records none and takes the position in the spec's `values` as the category's
code, so list them in the order pandas gave them in training (sorted, by default). Like XGBoost's
scikit-learn API, a model that recorded a best iteration (early stopping) predicts with the trees up to it.

XGBoost's native code kills the process on some damaged files (a UBJSON length pointing past the end, a tree
whose child index is out of range), so a child process loads each file and predicts two rows before this one does.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import xgboost

from mlapi.contract import Output, Value
from mlapi.models.spec import ModelSpec, Task
from mlapi.runtimes import Inspection, LoadError

# Objectives whose answer is a class number rather than probabilities.
_CLASS_ONLY = ("binary:hinge", "multi:softmax")
_PROBE_SECONDS = 60
_SOURCE = re.compile(r"^\[[\d:]+\] [^ ]+:\d+: ")  # `[04:15:34] /workspace/src/common/json.cc:409: `
# The child blocks the optional libraries `import xgboost` would load (scikit-learn alone takes a second): reading a
# model needs neither. Exit status 3 carries XGBoost's reason on stderr.
_PROBE = """
import sys
sys.modules.update(sklearn=None, pandas=None)
import numpy, xgboost
try:
    booster = xgboost.Booster()
    booster.load_model(bytearray(sys.stdin.buffer.read()))
    booster.set_param({"nthread": 1})
    rows = numpy.zeros((2, booster.num_features()), dtype=numpy.float32)
    rows[1] = numpy.nan
    booster.inplace_predict(rows)
except Exception as e:
    sys.stderr.write(str(e))
    sys.exit(3)
"""


class _Objective(NamedTuple):
    """What a Booster's objective makes of it."""

    name: str
    task: Task
    classes: int
    """A classifier's number of classes; 0 for a regressor."""
    outputs: int
    """Values per row and class (`num_target`); mlapi serves one."""


def _objective(booster: xgboost.Booster) -> _Objective:
    """The objective a Booster was trained with, from its configuration."""
    learner = json.loads(booster.save_config())["learner"]
    name = str(learner["objective"]["name"])
    params = learner["learner_model_param"]
    outputs = int(params.get("num_target", 1))
    if name.startswith("binary:"):
        return _Objective(name, "classification", 2, outputs)
    if name.startswith("multi:"):
        return _Objective(name, "classification", int(params["num_class"]), outputs)
    return _Objective(name, "regression", 0, outputs)


def _reason(error: str) -> str:
    """XGBoost's message without its time, source line and native stack trace."""
    first = error.strip().split("\n", 1)[0]
    return _SOURCE.sub("", first).rstrip(" :")


def _probe(artifact: bytes) -> None:
    """Load the file and predict in a child process, which XGBoost may kill rather than this one."""
    try:
        done = subprocess.run(
            [sys.executable, "-I", "-c", _PROBE],
            input=artifact,
            capture_output=True,
            timeout=_PROBE_SECONDS,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise LoadError(f"not a loadable XGBoost model: XGBoost took over {_PROBE_SECONDS} s to read it") from e
    if done.returncode == 0:
        return
    if done.returncode < 0:
        reason = f"XGBoost crashed on it ({signal.Signals(-done.returncode).name}): the file is damaged"
    else:
        error = done.stderr.decode(errors="replace")
        reason = _reason(error) if done.returncode == 3 else error.strip()[-500:] or f"exit status {done.returncode}"
    raise LoadError(f"not a loadable XGBoost model: {reason}")


def _booster(artifact: bytes) -> xgboost.Booster:
    _probe(artifact)
    booster = xgboost.Booster()
    try:
        booster.load_model(bytearray(artifact))
    except Exception as e:  # a damaged or foreign file: the reason, without the native stack trace
        raise LoadError(f"not a loadable XGBoost model: {_reason(str(e))}") from e
    return booster


def inspect_artifact(artifact: bytes) -> Inspection:
    """What an XGBoost model file records: feature names (where trained on named columns), task and width.

    `classes` are the class numbers `0..k-1` of a classifier (`[0, 1]` for a binary one): the file records no
    labels, so the caller names them. Raises `LoadError` for a file XGBoost cannot load.
    """
    booster = _booster(artifact)
    found = _objective(booster)
    names = booster.feature_names
    return Inspection(
        features=None if names is None else list(names),
        classes=list(range(found.classes)) if found.task == "classification" else None,
        task=found.task,
        n_features=booster.num_features(),
    )


def dump(model: object) -> bytes | None:
    """An XGBoost Booster or scikit-learn-API model (`XGBClassifier`, `XGBRegressor`, ...) as UBJSON; else None.

    The file holds no class labels: for an `XGBClassifier` the caller takes them from its `classes_`. Raises
    `LoadError` for a scikit-learn-API model that is not fitted.
    """
    if isinstance(model, xgboost.XGBModel):
        try:
            model = model.get_booster()
        except Exception as e:
            raise LoadError(f"the {type(model).__name__} cannot be saved: {e}") from e
    if isinstance(model, xgboost.Booster):
        return bytes(model.save_raw("ubj"))
    return None


def load(artifact: bytes, spec: ModelSpec) -> XGBoostModel:
    """Load an XGBoost model file (JSON or UBJSON) and check it against the spec."""
    return XGBoostModel(spec, _booster(artifact))


def _feature_difference(model: list[str], spec: list[str]) -> str:
    lacking = [n for n in model if n not in spec]
    unknown = [n for n in spec if n not in model]
    parts = []
    if lacking:
        parts.append(f"the model takes {lacking}, which the spec lacks")
    if unknown:
        parts.append(f"the spec lists {unknown}, which the model does not take")
    if not parts:
        parts.append(f"the model takes them in this order: {model}")
    return "the features do not match the spec: " + "; ".join(parts)


def _check(spec: ModelSpec, booster: xgboost.Booster, found: _Objective) -> None:
    if found.task != spec.task:
        raise LoadError(f"the spec's task is {spec.task}, but the model's objective {found.name} is for {found.task}")
    if found.outputs != 1:
        raise LoadError(f"the model answers {found.outputs} values per row ({found.name}); mlapi serves one")
    if spec.task == "classification" and found.classes != len(spec.labels):
        raise LoadError(
            f"the model has {found.classes} classes ({found.name}), but the spec lists {len(spec.labels)} labels: "
            f"{spec.labels}"
        )
    names = [f.name for f in spec.features]
    recorded = booster.feature_names
    if recorded is not None and list(recorded) != names:
        raise LoadError(_feature_difference(list(recorded), names))
    if booster.num_features() != len(names):
        raise LoadError(f"the model takes {booster.num_features()} features, the spec lists {len(names)}")
    types = booster.feature_types
    categorical = [t == "c" for t in types] if types is not None else [False] * len(names)
    numeric = [f.name for f, c in zip(spec.features, categorical, strict=True) if f.kind == "category" and not c]
    if numeric:
        raise LoadError(
            f"the spec lists {numeric} as categories, but the model takes them as numbers: encode the categories "
            "as numbers (and list them as numbers in the spec), or train on pandas category columns with "
            "enable_categorical=True"
        )


class XGBoostModel:
    """An XGBoost Booster with its spec, ready to predict batches of validated rows.

    Raises `LoadError` when the Booster does not match the spec: its task, classes, features or their types.
    """

    def __init__(self, spec: ModelSpec, booster: xgboost.Booster) -> None:
        self.spec = spec
        self.booster = booster
        self.objective = _objective(booster)
        _check(spec, booster, self.objective)
        booster.set_param({"nthread": 1})  # processes are the unit of parallelism
        best = booster.attr("best_iteration")
        self._iterations = (0, int(best) + 1) if best is not None else (0, 0)
        self._names = [f.name for f in spec.features]
        self._codes: dict[str, dict[Value, int]] = {
            f.name: {v: i for i, v in enumerate(f.values or [])} for f in spec.features if f.kind == "category"
        }
        self._dtypes = {f.name: pd.CategoricalDtype(f.values) for f in spec.features if f.kind == "category"}

    def inputs(self, rows: Sequence[dict[str, Value]]) -> Any:
        """The batch as XGBoost takes it: a float32 array in spec order, or a DataFrame where there are categories."""
        if not self._codes:
            return np.array([[row[n] for n in self._names] for row in rows], dtype=np.float32)
        columns: dict[str, Any] = {}
        for name in self._names:
            codes = self._codes.get(name)
            if codes is None:
                columns[name] = np.array([row[name] for row in rows], dtype=np.float32)
            else:  # a value the spec does not list (none passes validation) would be missing, code -1
                values = [codes.get(row[name], -1) for row in rows]
                columns[name] = pd.Categorical.from_codes(values, dtype=self._dtypes[name])
        return pd.DataFrame(columns, copy=False)

    def scores(self, rows: Sequence[dict[str, Value]]) -> np.ndarray:
        """The Booster's own answer: probabilities, class numbers or values, as its objective gives them."""
        out = self.booster.inplace_predict(self.inputs(rows), iteration_range=self._iterations)
        return np.asarray(out, dtype=np.float64)

    def predict(self, rows: Sequence[dict[str, Value]]) -> list[Output]:
        if not rows:
            return []
        scores = self.scores(rows)
        if self.spec.task == "regression":
            if scores.ndim != 1:
                raise ValueError(f"the regressor answers {scores.shape[1:]} values per row; mlapi serves one")
            return [Output(prediction=v) for v in scores.tolist()]
        labels = self.spec.labels
        name = self.objective.name
        if name in _CLASS_ONLY:
            return [Output(prediction=k, label=labels[k]) for k in scores.astype(np.int64).tolist()]
        if name == "binary:logitraw":  # margins: the probabilities binary:logistic would give
            scores = 1.0 / (1.0 + np.exp(-scores))
        if scores.ndim == 1:
            scores = np.column_stack([1.0 - scores, scores])
        return _with_probabilities(labels, scores)


def _with_probabilities(labels: list[str], probabilities: np.ndarray) -> list[Output]:
    """One output per row of class probabilities (columns in label order); the class is the most probable."""
    if probabilities.ndim != 2 or probabilities.shape[1] != len(labels):
        raise ValueError(f"the model gives probabilities of shape {probabilities.shape} for {len(labels)} labels")
    classes = probabilities.argmax(axis=1).tolist()
    return [
        Output(prediction=k, label=labels[k], probability=p[k], probabilities=dict(zip(labels, p, strict=True)))
        for k, p in zip(classes, probabilities.tolist(), strict=True)
    ]
