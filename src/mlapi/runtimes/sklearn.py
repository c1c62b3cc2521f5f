"""The scikit-learn runtime: any estimator or pipeline saved with skops, classifier or regressor.

Two ways to feed a batch to the model. The generic path builds one DataFrame per batch (columns in the
spec's order) when the model was fitted on a frame, else one NumPy array, and calls the whole estimator.
Calling a pipeline that way costs about a millisecond per call whatever the batch size, almost all of it
DataFrame and column-transformer overhead; so where the artifact is `Pipeline(ColumnTransformer of
OneHotEncoder/passthrough, estimator)` its fitted encoders are compiled into a plain NumPy encoding and the
final estimator is called directly (the fast path). Loading checks the two paths agree on the example row,
and the tests check they agree on many.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import skops.io
from sklearn.base import BaseEstimator, is_classifier, is_regressor
from sklearn.compose import ColumnTransformer
from sklearn.model_selection import FixedThresholdClassifier, TunedThresholdClassifierCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder
from sklearn.svm import SVC, NuSVC
from skops.io.exceptions import UntrustedTypesFoundException

from mlapi.contract import Output, Value
from mlapi.models.spec import ModelSpec, Task
from mlapi.runtimes import Inspection, LoadError

log = logging.getLogger(__name__)

Encoder = Callable[[Sequence[dict[str, Value]], np.ndarray], None]

# Classifiers whose `predict` is not the most probable class (a tuned threshold; SVC's Platt scaling is fitted
# apart from its decision function): the class comes from `predict`, the probabilities from `predict_proba`.
_PREDICT_NOT_ARGMAX = (FixedThresholdClassifier, TunedThresholdClassifierCV, SVC, NuSVC)


def inspect(estimator: Any) -> Inspection:
    """Feature names, classes and task of a fitted estimator or pipeline, for the spec and its checks."""
    names = getattr(estimator, "feature_names_in_", None)
    classes = getattr(estimator, "classes_", None)
    task: Task | None = None
    with contextlib.suppress(AttributeError):  # not a scikit-learn estimator: it has no tags to ask
        task = "classification" if is_classifier(estimator) else "regression" if is_regressor(estimator) else None
    width = getattr(estimator, "n_features_in_", None)
    return Inspection(
        features=None if names is None else [str(n) for n in names],
        classes=None if classes is None else np.asarray(classes).tolist(),
        task=task,
        n_features=None if width is None else int(width),
    )


def inspect_artifact(artifact: bytes, trusted: Sequence[str] = ()) -> Inspection:
    """What a skops artifact records about itself, loaded with skops' own trusted types plus `trusted`.

    Unlike the other runtimes' files, a skops file can only be read by loading it, and loading runs the code
    of the types it names: the caller checks the file's untrusted types first and passes those the user
    accepted. Raises `LoadError` as `load` does.
    """
    return inspect(_loads(artifact, trusted))


def dump(model: object) -> bytes | None:
    """A scikit-learn estimator or pipeline as a skops file; None for anything else."""
    return skops.io.dumps(model) if isinstance(model, BaseEstimator) else None


def _one_hot(columns: list[str], encoder: OneHotEncoder, start: int) -> tuple[Encoder, int]:
    if encoder.drop is not None or encoder.min_frequency is not None or encoder.max_categories is not None:
        raise ValueError("one-hot encoders that drop or group categories are not compiled")
    if encoder.handle_unknown not in ("ignore", "infrequent_if_exist"):
        raise ValueError("one-hot encoders that raise on unknown categories are not compiled")
    offsets: list[tuple[str, dict[Any, int]]] = []
    width = start
    for column, categories in zip(columns, encoder.categories_, strict=True):
        offsets.append((column, {c: width + i for i, c in enumerate(categories.tolist())}))
        width += len(categories)

    def encode(rows: Sequence[dict[str, Value]], out: np.ndarray) -> None:
        for r, row in enumerate(rows):
            for column, index in offsets:
                position = index.get(row[column])
                if position is not None:  # an unknown category encodes as all zeros, as handle_unknown="ignore"
                    out[r, position] = 1.0

    return encode, width


def _passthrough(columns: list[str], start: int) -> tuple[Encoder, int]:
    def encode(rows: Sequence[dict[str, Value]], out: np.ndarray) -> None:
        out[:, start : start + len(columns)] = [[row[c] for c in columns] for row in rows]

    return encode, start + len(columns)


def compile_encoder(transformer: ColumnTransformer, kinds: dict[str, str]) -> tuple[list[Encoder], int]:
    """Encoders that write the transformer's output for rows of dicts, and the output width.

    `kinds` maps each spec feature to its kind. Raises `ValueError` for anything not compiled here.
    """
    if transformer.transformer_weights is not None or transformer.sparse_output_:
        raise ValueError("weighted or sparse column transformers are not compiled")
    encoders: list[Encoder] = []
    width = 0
    for name, step, selected in transformer.transformers_:
        if step == "drop":
            continue
        columns = list(selected)
        if not all(isinstance(c, str) and c in kinds for c in columns):
            raise ValueError(f"transformer {name!r} selects columns that are not spec features: {columns}")
        if isinstance(step, OneHotEncoder):
            encoder, width = _one_hot(columns, step, width)
        elif step == "passthrough" or (isinstance(step, FunctionTransformer) and step.func is None):
            if any(kinds[c] == "category" for c in columns):
                raise ValueError(f"transformer {name!r} passes text through")
            encoder, width = _passthrough(columns, width)
        else:
            raise ValueError(f"transformer {name!r} is not compiled: {step!r}")
        encoders.append(encoder)
    return encoders, width


def _compile(estimator: Any, spec: ModelSpec) -> tuple[list[Encoder], int, Any] | None:
    """The fast path's encoders, width and final estimator, or None where the artifact has another shape."""
    if not isinstance(estimator, Pipeline) or len(estimator.steps) != 2:
        return None
    transformer, final = estimator.steps[0][1], estimator.steps[1][1]
    # A final step fitted on named columns (set_output="pandas") would warn about a bare array.
    if not isinstance(transformer, ColumnTransformer) or hasattr(final, "feature_names_in_"):
        return None
    try:
        encoders, width = compile_encoder(transformer, {f.name: f.kind for f in spec.features})
    except ValueError as e:
        log.info("%s v%d takes the generic path: %s", spec.name, spec.version, e)
        return None
    return encoders, width, final


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


class SklearnModel:
    """A scikit-learn estimator with its spec, ready to predict batches of validated rows.

    `fast=False` keeps the generic path even where the fast one applies (the benchmark and tests use it).
    Raises `LoadError` when the estimator does not match the spec: its task, features or classes.
    """

    def __init__(self, spec: ModelSpec, estimator: Any, *, fast: bool = True) -> None:
        self.spec = spec
        self.estimator = estimator
        found = inspect(estimator)
        self._check(found)
        self._names = [f.name for f in spec.features]
        self._by_name = getattr(estimator, "feature_names_in_", None) is not None
        self._dtypes = {
            f.name: None if f.kind == "category" else np.int64 if f.kind == "flag" or f.integer else np.float64
            for f in spec.features
        }
        self._text = any(f.kind == "category" for f in spec.features)
        self._proba = spec.task == "classification" and hasattr(estimator, "predict_proba")
        final = estimator.steps[-1][1] if isinstance(estimator, Pipeline) else estimator
        self._argmax = not isinstance(final, _PREDICT_NOT_ARGMAX)
        self._index = {c: i for i, c in enumerate(found.classes or [])}
        compiled = _compile(estimator, spec) if fast else None
        self.fast = compiled is not None
        """Whether batches take the fast path."""
        if compiled is not None:
            self._encoders, self._width, self._final = compiled
            self._check_fast_path()

    def _check(self, found: Inspection) -> None:
        spec = self.spec
        kind = type(self.estimator).__name__
        if not hasattr(self.estimator, "predict"):
            raise LoadError(f"the artifact holds a {kind}, which does not predict")
        if found.task is not None and found.task != spec.task:
            raise LoadError(f"the spec's task is {spec.task}, but the artifact holds a {found.task} model ({kind})")
        names = [f.name for f in spec.features]
        if found.features is not None and found.features != names:
            raise LoadError(_feature_difference(found.features, names))
        expected = getattr(self.estimator, "n_features_in_", len(names))
        if expected != len(names):
            raise LoadError(f"the model takes {expected} features, the spec lists {len(names)}")
        if spec.task == "classification":
            if found.classes is None:
                raise LoadError(f"the artifact holds a {kind}, which records no classes (`classes_`)")
            # Classes are either the labels themselves or the class numbers 0..n-1 the labels name.
            if [str(c) for c in found.classes] != spec.labels and found.classes != list(range(len(spec.labels))):
                raise LoadError(f"the model's classes {found.classes} do not match the spec's labels {spec.labels}")

    def _check_fast_path(self) -> None:
        """Fall back to the generic path if the compiled encoding answers differently on the example row."""
        rows = [self.spec.example]
        fast = self.scores(rows)
        self.fast = False
        if np.allclose(fast, self.scores(rows), rtol=0, atol=1e-9):
            self.fast = True
        else:
            log.warning("%s v%d: the compiled encoding disagrees with the pipeline", self.spec.name, self.spec.version)

    def encode(self, rows: Sequence[dict[str, Value]]) -> np.ndarray:
        """The fast path's input: what the pipeline's column transformer would output."""
        out = np.zeros((len(rows), self._width), dtype=np.float64)
        for encoder in self._encoders:
            encoder(rows, out)
        return out

    def inputs(self, rows: Sequence[dict[str, Value]]) -> Any:
        """The generic path's input: a DataFrame if the model was fitted on one, else an array, in spec order."""
        if self._by_name:
            columns = {n: np.array([row[n] for row in rows], dtype=t) for n, t in self._dtypes.items()}
            return pd.DataFrame(columns, copy=False)
        return np.array([[row[n] for n in self._names] for row in rows], dtype=object if self._text else np.float64)

    def _call(self, method: str, rows: Sequence[dict[str, Value]]) -> np.ndarray:
        if self.fast:
            return getattr(self._final, method)(self.encode(rows))  # type: ignore[no-any-return]
        return getattr(self.estimator, method)(self.inputs(rows))  # type: ignore[no-any-return]

    def scores(self, rows: Sequence[dict[str, Value]]) -> np.ndarray:
        """The estimator's own answer: probabilities where it gives them, else its predicted classes or values."""
        return self._call("predict_proba" if self._proba else "predict", rows)

    def predict(self, rows: Sequence[dict[str, Value]]) -> list[Output]:
        if not rows:
            return []
        if self.spec.task == "regression":
            values = np.asarray(self._call("predict", rows), dtype=np.float64)
            if values.ndim == 2 and values.shape[1] == 1:
                values = values[:, 0]
            if values.ndim != 1:
                raise ValueError(f"the regressor answers {values.shape[1]} values per row; mlapi serves one")
            return [Output(prediction=v) for v in values.tolist()]
        labels = self.spec.labels
        if not self._proba:
            classes = [self._index[c] for c in self._call("predict", rows).tolist()]
            return [Output(prediction=k, label=labels[k]) for k in classes]
        probabilities = self._call("predict_proba", rows)
        if probabilities.shape[1] != len(labels):
            raise ValueError(f"the model gives {probabilities.shape[1]} probabilities for {len(labels)} labels")
        if self._argmax:
            classes = probabilities.argmax(axis=1).tolist()
        else:
            classes = [self._index[c] for c in self._call("predict", rows).tolist()]
        return [
            Output(prediction=k, label=labels[k], probability=p[k], probabilities=dict(zip(labels, p, strict=True)))
            for k, p in zip(classes, probabilities.tolist(), strict=True)
        ]


def load(artifact: bytes, spec: ModelSpec) -> SklearnModel:
    """Load a skops artifact with skops' own trusted types plus exactly the spec's; never pickle."""
    return SklearnModel(spec, _loads(artifact, spec.trusted))


def _loads(artifact: bytes, trusted: Sequence[str]) -> Any:
    try:
        return skops.io.loads(artifact, trusted=list(trusted))
    except UntrustedTypesFoundException as e:
        untrusted = sorted(set(skops.io.get_untrusted_types(data=artifact)) - set(trusted))
        raise LoadError(
            f"the artifact holds types not trusted for this version: {', '.join(untrusted)}; check that you "
            "expect each, then add the version again with `--trust TYPE` for each"
        ) from e
    except Exception as e:  # a damaged or foreign file: the reason, not a traceback
        raise LoadError(f"not a loadable skops file: {type(e).__name__}: {e}") from e
