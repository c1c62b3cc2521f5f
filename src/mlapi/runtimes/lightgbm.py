"""The LightGBM runtime: a Booster's text model file, classifier (binary, multiclass) or regressor.

A model file records its objective, its feature names (LightGBM writes a space in a name as `_`, and names
unnamed columns `Column_0, Column_1, ...`: those count as not recorded) and, when trained on pandas category
columns, their categories (`pandas_categorical`), but no class labels: those come from the spec, in the order of
the model's class numbers. A batch goes to the Booster as one float64 array in spec order; a category feature
becomes its code among the categories the model recorded, as LightGBM does with a DataFrame itself.

LightGBM's native loader kills the process on a damaged file: it reads past the end of a truncated one, and a
damaged tree makes it abort (it raises inside an OpenMP region). So the file's layout is checked here, then a child
process reads the file and predicts two rows, and only a file that passes both is loaded in this process.
"""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
from collections.abc import Sequence
from typing import Any, NamedTuple

import lightgbm
import numpy as np

from mlapi.contract import Output, Value
from mlapi.models.spec import ModelSpec, Task
from mlapi.runtimes import Inspection, LoadError

_AUTO_NAME = re.compile(r"Column_\d+")
_PARAMETER = re.compile(rb"\[[^:\]]+: .*\]")
_MULTICLASS = ("multiclass", "multiclassova")
_PROBE_SECONDS = 60
# The child blocks the optional libraries `import lightgbm` would load (scikit-learn alone takes seconds): reading
# a model needs neither. Exit status 3 carries LightGBM's reason on stderr.
_PROBE = """
import sys
sys.modules.update(sklearn=None, pandas=None)
import lightgbm, numpy
try:
    booster = lightgbm.Booster(model_str=sys.stdin.buffer.read().decode())
    booster.feature_name()
    rows = numpy.zeros((2, booster.num_feature()))
    rows[1] = numpy.nan
    booster.predict(rows, num_threads=1)
except Exception as e:
    sys.stderr.write(str(e))
    sys.exit(3)
"""


class _Objective(NamedTuple):
    name: str
    task: Task | None
    """None for a custom objective: its raw scores say nothing of the task."""
    classes: int
    """A classifier's number of classes; 0 otherwise."""


def _header(artifact: bytes) -> dict[str, str]:
    """The `key=value` lines before the first tree, once the file's tree layout is proven whole.

    LightGBM locates each tree by the `tree_sizes` the header states and reads there without a bound check.
    """
    start = artifact.find(b"\nTree=") + 1
    if start == 0:
        raise LoadError("not a loadable LightGBM model: the file holds no trees")
    try:
        text = artifact[:start].decode()
        header = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
        sizes = [int(size) for size in header.get("tree_sizes", "").split()]
    except (UnicodeDecodeError, ValueError) as e:
        raise LoadError(f"not a loadable LightGBM model: a damaged header ({type(e).__name__}: {e})") from e
    if not sizes:
        raise LoadError("not a loadable LightGBM model: its header states no tree_sizes; save it with LightGBM 3 or 4")
    offset = start
    for i, size in enumerate(sizes):
        if size <= 0 or not artifact.startswith(b"Tree=", offset):
            raise LoadError(f"not a loadable LightGBM model: tree {i} is not where the header says (truncated?)")
        offset += size
    tail = artifact[offset:]
    if not tail.lstrip(b"\r\n").startswith(b"end of trees"):
        raise LoadError("not a loadable LightGBM model: the trees do not end where the header says (truncated?)")
    _check_parameters(tail)
    return header


def _check_parameters(tail: bytes) -> None:
    """Each line of the parameters section must read `[key: value]`: LightGBM indexes past the end of others."""
    start = tail.find(b"\nparameters:")
    if start < 0:
        return
    end = tail.find(b"\nend of parameters", start)
    if end < 0:
        raise LoadError("not a loadable LightGBM model: its parameters do not end (truncated?)")
    for line in tail[start:end].splitlines()[2:]:
        if not _PARAMETER.fullmatch(line):
            shown = line[:80].decode(errors="replace")
            raise LoadError(f"not a loadable LightGBM model: a damaged parameter line {shown!r}")


def _probe(artifact: bytes) -> None:
    """Read the file and predict two rows in a child process, which LightGBM may kill rather than this one."""
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
        raise LoadError(f"not a loadable LightGBM model: LightGBM took over {_PROBE_SECONDS} s to read it") from e
    if done.returncode == 0:
        return
    lines = (done.stdout + done.stderr).decode(errors="replace").strip().splitlines()
    fatal = [line.removeprefix("[LightGBM] [Fatal] ") for line in lines if "[Fatal]" in line]
    if done.returncode < 0:  # LightGBM aborts after printing its reason, if it has one
        crash = f"LightGBM crashed on it ({signal.Signals(-done.returncode).name})"
        reason = f"{crash}: {fatal[-1]}" if fatal else crash
    else:
        reason = lines[-1] if lines else f"exit status {done.returncode}"
    raise LoadError(f"not a loadable LightGBM model: {reason}")


def _booster(artifact: bytes) -> tuple[lightgbm.Booster, dict[str, str]]:
    header = _header(artifact)
    _probe(artifact)
    try:
        return lightgbm.Booster(model_str=artifact.decode()), header
    except Exception as e:  # a damaged or foreign file: the reason, not a traceback
        raise LoadError(f"not a loadable LightGBM model: {type(e).__name__}: {e}") from e


def _objective(booster: lightgbm.Booster, header: dict[str, str]) -> _Objective:
    name = (header.get("objective") or "custom").split()[0]
    if name == "binary":
        return _Objective(name, "classification", 2)
    if name in _MULTICLASS:
        return _Objective(name, "classification", booster.num_model_per_iteration())
    return _Objective(name, None if name == "custom" else "regression", 0)


def _features(booster: lightgbm.Booster) -> list[str] | None:
    names = booster.feature_name()
    return None if all(_AUTO_NAME.fullmatch(n) for n in names) else names


def inspect_artifact(artifact: bytes) -> Inspection:
    """What a LightGBM model file records: feature names (None when unnamed), task and width.

    Recorded names have `_` where the training columns had a space. `classes` are the class numbers `0..k-1` of
    a classifier (`[0, 1]` for a binary one): the file records no labels, so the caller names them; `task` is
    None for a custom objective. Raises `LoadError` for a file LightGBM cannot load.
    """
    booster, header = _booster(artifact)
    found = _objective(booster, header)
    return Inspection(
        features=_features(booster),
        classes=list(range(found.classes)) if found.task == "classification" else None,
        task=found.task,
        n_features=booster.num_feature(),
    )


def dump(model: object) -> bytes | None:
    """A LightGBM Booster or scikit-learn-API model (`LGBMClassifier`, `LGBMRegressor`, ...) as its text file.

    The file holds no class labels: for an `LGBMClassifier` the caller takes them from its `classes_`. A model
    trained with early stopping is saved up to its best iteration. Returns None for another library's model;
    raises `LoadError` for a scikit-learn-API model that is not fitted.
    """
    if isinstance(model, lightgbm.LGBMModel):
        try:
            model = model.booster_
        except Exception as e:
            raise LoadError(f"the {type(model).__name__} cannot be saved: {e}") from e
    if isinstance(model, lightgbm.Booster):
        return model.model_to_string().encode()
    return None


def load(artifact: bytes, spec: ModelSpec) -> LightGBMModel:
    """Load a LightGBM text model file and check it against the spec."""
    booster, header = _booster(artifact)
    return LightGBMModel(spec, booster, _objective(booster, header))


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


def _check(spec: ModelSpec, booster: lightgbm.Booster, found: _Objective) -> None:
    if found.task is None and spec.task == "classification":
        raise LoadError("the model was trained with a custom objective: its raw scores are served as a regressor's")
    if found.task is not None and found.task != spec.task:
        raise LoadError(f"the spec's task is {spec.task}, but the model's objective {found.name} is for {found.task}")
    if spec.task == "classification" and found.classes != len(spec.labels):
        raise LoadError(
            f"the model has {found.classes} classes ({found.name}), but the spec lists {len(spec.labels)} labels: "
            f"{spec.labels}"
        )
    recorded = _features(booster)
    # LightGBM records a space in a feature name as `_`.
    names = [f.name.replace(" ", "_") for f in spec.features]
    if recorded is not None and recorded != names:
        raise LoadError(_feature_difference(recorded, names) + " (LightGBM writes a space in a name as `_`)")
    if booster.num_feature() != len(names):
        raise LoadError(f"the model takes {booster.num_feature()} features, the spec lists {len(names)}")


def _category_codes(spec: ModelSpec, booster: lightgbm.Booster) -> dict[str, dict[Value, float]]:
    """The code of each value of each category feature, from the categories the model recorded.

    The n-th category feature of the spec is the n-th pandas category column the model was trained on.
    """
    features = [f for f in spec.features if f.kind == "category"]
    recorded: list[list[Any]] = booster.pandas_categorical or []
    if features and not recorded:
        raise LoadError(
            f"the spec lists {[f.name for f in features]} as categories, but the model was not trained on pandas "
            "category columns: encode the categories as numbers (and list them as numbers in the spec), or train "
            "on pandas category columns"
        )
    if len(features) != len(recorded):
        raise LoadError(
            f"the model was trained on {len(recorded)} pandas category columns, but the spec lists "
            f"{len(features)} categories: {[f.name for f in features]}"
        )
    codes: dict[str, dict[Value, float]] = {}
    for feature, categories in zip(features, recorded, strict=True):
        known: dict[Value, float] = {str(c): float(i) for i, c in enumerate(categories)}
        unknown = [v for v in feature.values or [] if v not in known]
        if unknown:
            raise LoadError(
                f"the spec's values {unknown} of {feature.name!r} are not among the categories the model was "
                f"trained on, {[str(c) for c in categories]}: remove them from the spec"
            )
        codes[feature.name] = known
    return codes


class LightGBMModel:
    """A LightGBM Booster with its spec, ready to predict batches of validated rows.

    Raises `LoadError` when the Booster does not match the spec: its task, classes, features or categories.
    """

    def __init__(self, spec: ModelSpec, booster: lightgbm.Booster, objective: _Objective) -> None:
        self.spec = spec
        self.booster = booster
        self.objective = objective
        _check(spec, booster, objective)
        self._names = [f.name for f in spec.features]
        self._codes = _category_codes(spec, booster)

    def inputs(self, rows: Sequence[dict[str, Value]]) -> np.ndarray:
        """The batch as the Booster takes it: float64 in spec order, categories as the model's codes."""
        if self._codes:  # a value the model does not know (none passes validation) would be missing
            rows = [{**row, **{n: codes.get(row[n], math.nan) for n, codes in self._codes.items()}} for row in rows]
        return np.array([[row[n] for n in self._names] for row in rows], dtype=np.float64)

    def scores(self, rows: Sequence[dict[str, Value]]) -> np.ndarray:
        """The Booster's own answer: probabilities of a classifier, values of a regressor."""
        # One thread: processes are the unit of parallelism.
        return np.asarray(self.booster.predict(self.inputs(rows), num_threads=1), dtype=np.float64)

    def predict(self, rows: Sequence[dict[str, Value]]) -> list[Output]:
        if not rows:
            return []
        scores = self.scores(rows)
        if self.spec.task == "regression":
            if scores.ndim != 1:
                raise ValueError(f"the regressor answers {scores.shape[1:]} values per row; mlapi serves one")
            return [Output(prediction=v) for v in scores.tolist()]
        labels = self.spec.labels
        if scores.ndim == 1:
            scores = np.column_stack([1.0 - scores, scores])
        if scores.shape[1] != len(labels):
            raise ValueError(f"the model gives {scores.shape[1]} probabilities for {len(labels)} labels")
        classes = scores.argmax(axis=1).tolist()
        return [
            Output(prediction=k, label=labels[k], probability=p[k], probabilities=dict(zip(labels, p, strict=True)))
            for k, p in zip(classes, scores.tolist(), strict=True)
        ]
