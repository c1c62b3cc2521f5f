"""The scikit-learn runtime on small models trained here, each served through `mlapi.runtimes.load` and compared
with the library's own answer; the fast path against the generic one; what loading refuses."""

from __future__ import annotations

import io
import pickle
import random
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import skops.io
from sklearn.base import BaseEstimator
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import FixedThresholdClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.svm import LinearSVC

from mlapi import runtimes
from mlapi.contract import Value
from mlapi.models.spec import Feature, ModelSpec
from mlapi.models.train import train_named
from mlapi.runtimes import LoadError, check_format, unavailable
from mlapi.runtimes.sklearn import SklearnModel
from tests.conftest import DATASET, ORIGINAL_CLIENT_SAMPLE


def random_rows(spec: ModelSpec, n: int, seed: int = 0) -> list[dict[str, Value]]:
    """Rows over every category and across (and beyond) each training range."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        row: dict[str, Value] = {}
        for f in spec.features:
            if f.kind == "category":
                assert f.values
                row[f.name] = rng.choice(f.values)
            elif f.kind == "flag":
                row[f.name] = rng.randint(0, 1)
            else:
                _, high = f.training_range or (0.0, 100.0)
                row[f.name] = round(rng.uniform(0, high * 1.2), 2)
        rows.append(row)
    return rows


def features_of(frame: pd.DataFrame) -> list[Feature]:
    """Text columns as categories, everything else as numbers; the first row is the example."""
    first = frame.iloc[0]
    return [
        Feature(name=str(c), kind="category", values=sorted(frame[c].unique().tolist()), example=str(first[c]))
        if frame[c].dtype == object or pd.api.types.is_string_dtype(frame[c])
        else Feature(name=str(c), kind="number", example=float(first[c]))
        for c in frame.columns
    ]


def serve(estimator: Any, features: list[Feature], labels: list[str], **spec: Any) -> SklearnModel:
    """The estimator saved with skops and loaded as a worker loads it, trusting what skops flags."""
    artifact = skops.io.dumps(estimator)
    trusted = sorted(skops.io.get_untrusted_types(data=artifact))
    task = "classification" if labels else "regression"
    model_spec = ModelSpec(name="m", version=1, task=task, labels=labels, features=features, trusted=trusted, **spec)
    model = runtimes.load(model_spec, artifact)
    assert isinstance(model, SklearnModel)
    return model


def records(frame: pd.DataFrame) -> list[dict[str, Value]]:
    return frame.to_dict("records")  # type: ignore[return-value]


def breast_cancer() -> tuple[pd.DataFrame, pd.Series[Any]]:
    """Thirty numeric features named like `mean radius`, and text classes."""
    bunch = load_breast_cancer(as_frame=True)
    return bunch.data, bunch.target.map(dict(enumerate(bunch.target_names.tolist())))


def mixed(n: int = 400) -> tuple[pd.DataFrame, pd.Series[Any]]:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "colour": rng.choice(["red", "green", "blue"], n),
            "size": rng.normal(10, 3, n).round(2),
            "weight": rng.normal(50, 10, n).round(1),
        }
    )
    score = frame["size"] + 4 * (frame["colour"] == "red") + rng.normal(0, 2, n)
    return frame, pd.Series(np.where(score > 11.5, "yes", "no"))


def assert_same_as_the_library(model: SklearnModel, estimator: Any, x: Any, rows: list[dict[str, Value]]) -> None:
    """Classes from the estimator's `predict`, probabilities from its `predict_proba`, for the same rows."""
    outputs = model.predict(rows)
    expected = estimator.predict_proba(x)
    assert [o.label for o in outputs] == [str(c) for c in estimator.predict(x)]
    assert [o.prediction for o in outputs] == expected.argmax(axis=1).tolist()
    got = np.array([[o.probabilities[label] for label in model.spec.labels] for o in outputs if o.probabilities])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    assert [o.probability for o in outputs] == pytest.approx(expected.max(axis=1).tolist(), abs=1e-12)


def test_a_numeric_pipeline_fitted_on_a_frame() -> None:
    x, y = breast_cancer()
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x, y)
    model = serve(pipeline, features_of(x), ["benign", "malignant"])
    assert not model.fast
    assert_same_as_the_library(model, pipeline, x.head(80), records(x.head(80)))


@pytest.mark.parametrize(("numeric", "fast"), [("passthrough", True), (StandardScaler(), False)])
def test_a_mixed_pipeline_with_one_hot_encoding(numeric: Any, fast: bool) -> None:
    x, y = mixed()
    transformer = ColumnTransformer(
        [
            ("text", OneHotEncoder(handle_unknown="ignore", sparse_output=False), ["colour"]),
            ("n", numeric, ["size", "weight"]),
        ]
    )
    pipeline = Pipeline([("features", transformer), ("classifier", LogisticRegression(max_iter=1000))]).fit(x, y)
    model = serve(pipeline, features_of(x), ["no", "yes"])
    assert model.fast is fast
    assert_same_as_the_library(model, pipeline, x.tail(100), records(x.tail(100)))


def test_a_plain_estimator_fitted_on_an_array_answers_with_the_labels_of_its_class_numbers() -> None:
    bunch = load_iris()
    forest = RandomForestClassifier(n_estimators=10, random_state=0).fit(bunch.data, bunch.target)
    features = [
        Feature(name=n, kind="number", example=float(v))
        for n, v in zip(bunch.feature_names, bunch.data[0], strict=True)
    ]
    model = serve(forest, features, bunch.target_names.tolist())
    assert model.spec.trusted == ["sklearn.tree._tree.Tree"]
    rows = [dict(zip(bunch.feature_names, r, strict=True)) for r in bunch.data.tolist()]
    outputs = model.predict(rows)
    assert [o.prediction for o in outputs] == forest.predict(bunch.data).tolist()
    assert [o.label for o in outputs] == bunch.target_names[forest.predict(bunch.data)].tolist()
    assert outputs[-1].probabilities == dict(
        zip(model.spec.labels, forest.predict_proba(bunch.data[-1:])[0], strict=True)
    )


def test_a_classifier_without_probabilities() -> None:
    x, y = breast_cancer()
    pipeline = make_pipeline(StandardScaler(), LinearSVC()).fit(x, y)
    model = serve(pipeline, features_of(x), ["benign", "malignant"])
    outputs = model.predict(records(x))
    assert [o.label for o in outputs] == pipeline.predict(x).tolist()
    assert [o.prediction for o in outputs] == [model.spec.labels.index(label) for label in pipeline.predict(x)]
    assert all(o.probability is None and o.probabilities is None for o in outputs)


def test_a_tuned_threshold_decides_the_class_not_the_most_probable_one() -> None:
    x, y = breast_cancer()
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    classifier = FixedThresholdClassifier(pipeline, threshold=0.9, pos_label="malignant").fit(x, y)
    model = serve(classifier, features_of(x), ["benign", "malignant"])
    outputs = model.predict(records(x))
    assert [o.label for o in outputs] == classifier.predict(x).tolist()
    assert sum(o.probability is not None and o.probability < 0.5 for o in outputs) > 0  # where argmax would differ


def test_a_regressor_answers_its_value() -> None:
    x, y = load_diabetes(as_frame=True, return_X_y=True)
    ridge = make_pipeline(StandardScaler(), Ridge()).fit(x, y)
    model = serve(ridge, features_of(x), [])
    outputs = model.predict(records(x.head(50)))
    np.testing.assert_allclose(
        np.array([o.prediction for o in outputs], dtype=float), ridge.predict(x.head(50)), rtol=1e-12
    )
    assert all(isinstance(o.prediction, float) and o.label is None and o.probabilities is None for o in outputs)


@pytest.mark.parametrize("name", ["diabetes", "iris"])
def test_the_fast_path_matches_the_generic_path_and_the_pipeline(name: str, request: pytest.FixtureRequest) -> None:
    model: SklearnModel = request.getfixturevalue(name)
    generic = SklearnModel(model.spec, model.estimator, fast=False)
    assert model.fast and not generic.fast
    rows = random_rows(model.spec, 500)
    fast_scores = model.scores(rows)
    np.testing.assert_allclose(fast_scores, generic.scores(rows), rtol=0, atol=1e-12)
    np.testing.assert_allclose(fast_scores, model.estimator.predict_proba(pd.DataFrame(rows)), rtol=0, atol=1e-12)
    assert model.predict(rows) == generic.predict(rows)


def test_predictions_carry_class_label_and_probabilities(diabetes: SklearnModel) -> None:
    high_risk = {**diabetes.spec.example, "HbA1c_level": 8.8, "blood_glucose_level": 280, "age": 70}
    low, high = diabetes.predict([{**ORIGINAL_CLIENT_SAMPLE}, high_risk])
    assert (low.prediction, low.label) == (0, "no diabetes")
    assert (high.prediction, high.label) == (1, "diabetes")
    assert high.probabilities is not None
    assert high.probability == pytest.approx(high.probabilities["diabetes"])
    assert sum(high.probabilities.values()) == pytest.approx(1.0)


def test_a_batch_predicts_like_single_rows(diabetes: SklearnModel) -> None:
    rows = random_rows(diabetes.spec, 64, seed=1)
    batch = diabetes.predict(rows)
    singles = [diabetes.predict([row])[0] for row in rows]
    assert [p.probability for p in batch] == pytest.approx([p.probability for p in singles], abs=1e-12)


def test_an_unknown_category_encodes_like_the_pipeline(diabetes: SklearnModel) -> None:
    row = {**diabetes.spec.example, "gender": "Unknown"}
    expected = diabetes.estimator.predict_proba(pd.DataFrame([row]))
    np.testing.assert_allclose(diabetes.scores([row]), expected, atol=1e-12)


class Smuggled(BaseEstimator):  # type: ignore[misc]
    """A type no artifact of ours holds: loading it would run code nobody vetted."""

    def transform(self, x: object) -> object:
        return x


def test_types_not_trusted_for_the_version_are_refused_by_name(iris: SklearnModel) -> None:
    artifact = skops.io.dumps(Pipeline([("smuggled", Smuggled()), ("classifier", iris.estimator)]))
    with pytest.raises(LoadError, match=r"not trusted for this version: .*test_sklearn\.Smuggled"):
        runtimes.load(iris.spec, artifact)
    bundled = skops.io.dumps(iris.estimator)  # skops' defaults do not cover the trees of gradient boosting
    with pytest.raises(LoadError, match=r"not trusted .*: sklearn\.ensemble\._hist_gradient_boosting\.predictor"):
        runtimes.load(iris.spec.model_copy(update={"trusted": []}), bundled)


def test_features_that_do_not_match_the_spec_are_refused() -> None:
    x, y = mixed()
    pipeline = make_pipeline(
        ColumnTransformer([("text", OneHotEncoder(handle_unknown="ignore"), ["colour"])], remainder="passthrough"),
        LogisticRegression(),
    ).fit(x, y)
    renamed = [f.model_copy(update={"name": "mass"}) if f.name == "weight" else f for f in features_of(x)]
    with pytest.raises(LoadError, match=r"takes \['weight'\], which the spec lacks; the spec lists \['mass'\]"):
        serve(pipeline, renamed, ["no", "yes"])
    with pytest.raises(LoadError, match="in this order"):
        serve(pipeline, features_of(x)[::-1], ["no", "yes"])
    forest = RandomForestClassifier(n_estimators=2).fit(x[["size", "weight"]].to_numpy(), y)
    with pytest.raises(LoadError, match="takes 2 features, the spec lists 3"):
        serve(forest, features_of(x), ["no", "yes"])


def test_classes_and_task_that_do_not_match_the_spec_are_refused() -> None:
    x, y = mixed()
    features = features_of(x[["size", "weight"]])
    classifier = LogisticRegression().fit(x[["size", "weight"]], y)
    with pytest.raises(LoadError, match=r"classes \['no', 'yes'\] do not match the spec's labels \['yes', 'no'\]"):
        serve(classifier, features, ["yes", "no"])
    with pytest.raises(LoadError, match="task is regression, but the artifact holds a classification model"):
        serve(classifier, features, [])
    regressor = Ridge().fit(x[["size", "weight"]], x["size"] * 2)
    with pytest.raises(LoadError, match="task is classification, but the artifact holds a regression model"):
        serve(regressor, features, ["no", "yes"])


def test_a_damaged_artifact_or_an_unknown_runtime_is_refused(iris: SklearnModel) -> None:
    artifact = skops.io.dumps(iris.estimator)
    with pytest.raises(LoadError, match="not a skops file: a damaged zip"):
        runtimes.load(iris.spec, artifact[: len(artifact) // 2])
    with pytest.raises(
        LoadError, match="unknown runtime 'tensorflow': known runtimes are lightgbm, onnx, sklearn, xgboost"
    ):
        runtimes.load(iris.spec.model_copy(update={"runtime": "tensorflow"}), artifact)


def test_check_format_refuses_pickles_and_garbage(iris: SklearnModel, tmp_path: Path) -> None:
    assert check_format("sklearn", skops.io.dumps(iris.estimator)) is None
    refusal = check_format("sklearn", pickle.dumps(iris.estimator))
    assert refusal is not None and "never loaded on a server" in refusal and "--from-pickle" in refusal
    import joblib  # type: ignore[import-untyped]

    joblib.dump(iris.estimator, tmp_path / "model.joblib.gz", compress=3)
    assert "as joblib writes" in (check_format("sklearn", (tmp_path / "model.joblib.gz").read_bytes()) or "")
    assert "not a skops file" in (check_format("sklearn", b"GIF89a garbage") or "")
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("readme.txt", "hello")
    assert check_format("sklearn", archive.getvalue()) == "not a skops file: a zip archive without schema.json"
    assert check_format("sklearn", b"") == "the artifact is empty"
    assert (
        check_format("tensorflow", b"x")
        == "unknown runtime 'tensorflow': known runtimes are lightgbm, onnx, sklearn, xgboost"
    )


def test_this_process_can_run_the_sklearn_runtime_and_names_unknown_ones() -> None:
    assert unavailable("sklearn") is None
    assert (
        unavailable("tensorflow") == "unknown runtime 'tensorflow': known runtimes are lightgbm, onnx, sklearn, xgboost"
    )


def test_a_classifier_that_fails_on_its_example_row_is_refused() -> None:
    x, y = mixed()
    model = HistGradientBoostingClassifier(max_iter=5).fit(x[["size", "weight"]], y)
    spec = features_of(x[["size", "weight"]])
    text_example = [spec[0].model_copy(update={"example": "big"}), spec[1]]
    with pytest.raises(LoadError, match="fails on the spec's example row: ValueError"):
        serve(model, text_example, ["no", "yes"])


@pytest.mark.skipif(not DATASET.exists(), reason=f"the training data is not at {DATASET} (it is outside the repo)")
def test_training_is_reproducible_and_meets_the_bar(tmp_path: Path, diabetes: SklearnModel) -> None:
    spec = train_named("diabetes-risk", DATASET, tmp_path, 1)
    assert spec.metrics["roc_auc"] >= 0.97
    assert spec.metrics["holdout_rows"] == 20_000
    assert 0 < spec.metrics["brier"] < 0.05
    assert spec.data is not None and spec.data.rows == 100_000
    assert spec.metrics["roc_auc"] == pytest.approx(diabetes.spec.metrics["roc_auc"], abs=1e-9)
    assert spec.data == diabetes.spec.data
    assert spec.trusted == diabetes.spec.trusted
    retrained = runtimes.load(spec, (tmp_path / "diabetes-risk" / "model.skops").read_bytes())
    assert isinstance(retrained, SklearnModel)
    rows = random_rows(spec, 50)
    np.testing.assert_allclose(retrained.scores(rows), diabetes.scores(rows), atol=1e-12)


def test_the_runtime_registry_imports_no_ml_library() -> None:
    libraries = ("sklearn", "skops", "numpy", "pandas")
    code = f"import sys, mlapi.runtimes; print(sorted(m for m in {libraries} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
