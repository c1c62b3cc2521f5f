"""A loaded model: `load()` once, `predict(rows)` on many rows, no HTTP anywhere.

The trained artifact is a scikit-learn `Pipeline(ColumnTransformer, classifier)`. Calling the pipeline
on a DataFrame costs milliseconds per call whatever the batch size, almost all of it DataFrame and
column-transformer overhead; so the fitted encoders are compiled here into a plain NumPy encoding and
the classifier is called directly. Tests check that both paths give the same probabilities.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import skops.io
from sklearn.compose import ColumnTransformer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder

from mlapi.contract import Value
from mlapi.models.spec import ModelSpec

# Types an artifact may contain beyond skops' defaults; anything else is refused at load.
TRUSTED_TYPES = [
    "sklearn._loss.link.Interval",
    "sklearn._loss.link.LogitLink",
    "sklearn._loss.link.MultinomialLogit",
    "sklearn._loss.loss.HalfBinomialLoss",
    "sklearn._loss.loss.HalfMultinomialLoss",
    "sklearn.compose._column_transformer.ColumnTransformer",
    "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
    "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingClassifier",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.pipeline.Pipeline",
    "sklearn.preprocessing._encoders.OneHotEncoder",
    "sklearn.preprocessing._function_transformer.FunctionTransformer",
    "sklearn.utils._bunch.Bunch",
]


@dataclass(frozen=True)
class Prediction:
    prediction: int
    label: str
    probability: float
    """Probability of the predicted class."""
    probabilities: dict[str, float]
    warnings: list[str]


Encoder = Callable[[Sequence[dict[str, Value]], np.ndarray], None]


def _one_hot(columns: list[str], encoder: OneHotEncoder, start: int) -> tuple[Encoder, int]:
    if encoder.drop is not None:
        raise ValueError("one-hot encoders with `drop` are not supported")
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


def compile_encoder(transformer: ColumnTransformer) -> tuple[list[Encoder], int]:
    """Encoders that write the transformer's output for rows of dicts, and the output width."""
    encoders: list[Encoder] = []
    width = 0
    for name, step, columns in transformer.transformers_:
        if name == "remainder" and step == "drop":
            continue
        if isinstance(step, OneHotEncoder):
            encoder, width = _one_hot(list(columns), step, width)
        elif step == "passthrough" or (isinstance(step, FunctionTransformer) and step.func is None):
            encoder, width = _passthrough(list(columns), width)
        else:
            raise ValueError(f"unsupported transformer {name!r}: {step!r}")
        encoders.append(encoder)
    return encoders, width


class LoadedModel:
    """A model spec with its trained pipeline, ready to predict batches of validated rows."""

    def __init__(self, spec: ModelSpec, pipeline: Pipeline) -> None:
        self.spec = spec
        self.pipeline = pipeline
        transformer, self.classifier = pipeline.steps[0][1], pipeline.steps[-1][1]
        if len(pipeline.steps) != 2 or not isinstance(transformer, ColumnTransformer):
            raise ValueError("expected Pipeline(ColumnTransformer, classifier)")
        if self.classifier.classes_.tolist() != list(range(len(spec.labels))):
            raise ValueError(f"classes {self.classifier.classes_.tolist()} do not match labels {spec.labels}")
        self._encoders, self._width = compile_encoder(transformer)

    @classmethod
    def load(cls, directory: Path) -> LoadedModel:
        spec = ModelSpec.read(directory)
        pipeline = skops.io.load(directory / spec.artifact, trusted=TRUSTED_TYPES)
        return cls(spec, pipeline)

    def encode(self, rows: Sequence[dict[str, Value]]) -> np.ndarray:
        out = np.zeros((len(rows), self._width), dtype=np.float64)
        for encoder in self._encoders:
            encoder(rows, out)
        return out

    def predict_proba(self, rows: Sequence[dict[str, Value]]) -> np.ndarray:
        return self.classifier.predict_proba(self.encode(rows))  # type: ignore[no-any-return]

    def predict(self, rows: Sequence[dict[str, Value]]) -> list[Prediction]:
        if not rows:
            return []
        probabilities = self.predict_proba(rows)
        labels = self.spec.labels
        classes = probabilities.argmax(axis=1)
        return [
            Prediction(
                prediction=int(k),
                label=labels[k],
                probability=float(p[k]),
                probabilities=dict(zip(labels, p.tolist(), strict=True)),
                warnings=self.spec.warnings(row),
            )
            for row, k, p in zip(rows, classes.tolist(), probabilities, strict=True)
        ]
