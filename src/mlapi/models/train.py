"""`mlapi train`: fit a bundled model with a fixed seed, score it on a stratified holdout, write artifact and spec."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sklearn
import skops.io
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_iris
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder

from mlapi import runtimes
from mlapi.models.infer import classification_metrics, reference_profile
from mlapi.models.profile import PROFILE_FILE
from mlapi.models.spec import ARTIFACT_FILE, SPEC_FILE, DataInfo, Feature, ModelSpec, SpecBody

SEED = 42
DEFAULT_DIABETES_DATA = Path("../shared/data/diabetes_prediction_dataset.csv")


@dataclass
class Dataset:
    frame: pd.DataFrame
    target: np.ndarray
    features: list[Feature]
    labels: list[str]
    info: DataInfo
    description: str


def _number(name: str, frame: pd.DataFrame, description: str, example: float, **extra: object) -> Feature:
    column = frame[name]
    return Feature(
        name=name,
        kind="number",
        description=description,
        minimum=0,
        training_range=(float(column.min()), float(column.max())),
        example=example,
        **extra,
    )


def diabetes_dataset(path: Path) -> Dataset:
    raw = path.read_bytes()
    frame = pd.read_csv(path)
    target = frame.pop("diabetes").to_numpy()
    categories = {c: sorted(frame[c].unique().tolist()) for c in ("gender", "smoking_history")}
    features = [
        Feature(
            name="gender",
            kind="category",
            description="Gender of the patient",
            values=categories["gender"],
            example="Female",
        ),
        _number("age", frame, "Age in years; fractional below 2 years", 54.0, step=0.1, unit="years"),
        Feature(name="hypertension", kind="flag", description="1 if the patient has hypertension", example=0),
        Feature(name="heart_disease", kind="flag", description="1 if the patient has heart disease", example=0),
        Feature(
            name="smoking_history",
            kind="category",
            description="Smoking history as recorded; 'No Info' when unknown",
            values=categories["smoking_history"],
            example="never",
        ),
        _number("bmi", frame, "Body-mass index", 27.32, step=0.01, unit="kg/m²"),
        _number("HbA1c_level", frame, "Haemoglobin A1c, average blood sugar of 2-3 months", 6.6, step=0.1, unit="%"),
        _number("blood_glucose_level", frame, "Blood glucose level", 140, step=1, unit="mg/dL"),
    ]
    return Dataset(
        frame=frame,
        target=target,
        features=features,
        labels=["no diabetes", "diabetes"],
        info=DataInfo(source=path.name, sha256=hashlib.sha256(raw).hexdigest(), rows=len(frame)),
        description="Risk of diabetes from demographics, history and two blood measurements",
    )


def iris_dataset() -> Dataset:
    bunch = load_iris(as_frame=True)
    frame = bunch.data.rename(columns=lambda c: c.replace(" (cm)", "").replace(" ", "_"))
    first = frame.iloc[0]
    features = [
        _number(c, frame, f"{c.replace('_', ' ').capitalize()} in cm", float(first[c]), step=0.1, unit="cm")
        for c in frame.columns
    ]
    raw = frame.to_csv(index=False).encode()
    return Dataset(
        frame=frame,
        target=bunch.target.to_numpy(),
        features=features,
        labels=[str(n) for n in bunch.target_names],
        info=DataInfo(source="sklearn.datasets.load_iris", sha256=hashlib.sha256(raw).hexdigest(), rows=len(frame)),
        description="Species of an iris flower from its sepal and petal measurements",
    )


def build_pipeline(features: list[Feature]) -> Pipeline:
    categorical = [f.name for f in features if f.kind == "category"]
    numeric = [f.name for f in features if f.kind != "category"]
    transformers: list[tuple[str, object, list[str]]] = [("numeric", "passthrough", numeric)]
    if categorical:
        encoder = OneHotEncoder(handle_unknown="ignore", sparse_output=False)
        transformers.insert(0, ("categorical", encoder, categorical))
    return Pipeline(
        [
            ("features", ColumnTransformer(transformers)),
            ("classifier", HistGradientBoostingClassifier(random_state=SEED)),
        ]
    )


def score(pipeline: Pipeline, x: pd.DataFrame, y: np.ndarray) -> dict[str, float | int]:
    """Holdout metrics; the classes are 0..n-1, as the labels index them."""
    probabilities = pipeline.predict_proba(x)
    return classification_metrics(y, probabilities.argmax(axis=1), probabilities, probabilities.shape[1])


def train(name: str, dataset: Dataset, out_dir: Path, version: int = 1) -> ModelSpec:
    """Fit on a stratified 80 % split, score on the other 20 %, and write the model directory: the artifact, its
    spec, and the reference profile of the training split (which drift is measured against).

    The spec trusts exactly the types skops does not trust by default that the artifact holds (the bundled
    pipelines hold only scikit-learn's own); loading it back through `mlapi.runtimes.load` proves both match.
    """
    x_train, x_test, y_train, y_test = _split(dataset)
    pipeline = build_pipeline(dataset.features).fit(x_train, y_train)
    artifact = skops.io.dumps(pipeline)
    body = SpecBody(
        runtime="sklearn",
        task="classification",
        description=dataset.description,
        labels=dataset.labels,
        features=dataset.features,
        metrics=score(pipeline, x_test, y_test),
        data=dataset.info,
        trained_at=datetime.now(UTC).isoformat(timespec="seconds"),
        framework={"scikit-learn": sklearn.__version__, "skops": skops.__version__},
        trusted=sorted(skops.io.get_untrusted_types(data=artifact)),
    )
    directory = out_dir / name
    directory.mkdir(parents=True, exist_ok=True)
    (directory / ARTIFACT_FILE).write_bytes(artifact)
    (directory / SPEC_FILE).write_text(body.model_dump_json(indent=2) + "\n")
    spec = ModelSpec.read(directory, version)
    model = runtimes.load(spec, artifact)  # raises LoadError if the artifact and its spec do not serve together
    (directory / PROFILE_FILE).write_text(reference_profile(model, x_train).model_dump_json(indent=1) + "\n")
    return spec


def _split(dataset: Dataset) -> list[Any]:
    return train_test_split(  # type: ignore[no-any-return]
        dataset.frame, dataset.target, test_size=0.2, stratify=dataset.target, random_state=SEED
    )


def profile_only(name: str, dataset: Dataset, out_dir: Path) -> ModelSpec:
    """Write the reference profile of a bundled model trained earlier, from its training split, leaving its
    artifact (and so its sha256) alone: `mlapi migrate` adds the profile to the version it seeded."""
    directory = out_dir / name
    spec = ModelSpec.read(directory)
    model = runtimes.load(spec, (directory / ARTIFACT_FILE).read_bytes())
    (directory / PROFILE_FILE).write_text(reference_profile(model, _split(dataset)[0]).model_dump_json(indent=1) + "\n")
    return spec


def train_named(
    name: str, data: Path | None, out_dir: Path, version: int = 1, *, only_profile: bool = False
) -> ModelSpec:
    if name == "diabetes-risk":
        dataset = diabetes_dataset(data or DEFAULT_DIABETES_DATA)
    elif name == "iris":
        dataset = iris_dataset()
    else:
        raise SystemExit(f"unknown model {name!r}: mlapi train knows diabetes-risk and iris")
    return profile_only(name, dataset, out_dir) if only_profile else train(name, dataset, out_dir, version)
