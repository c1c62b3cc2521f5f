"""The XGBoost runtime on small models trained here, each served through `mlapi.runtimes.load` and compared with
XGBoost's own answer; what loading refuses; what a model file tells about itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import xgboost
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from sklearn.linear_model import LogisticRegression

from mlapi import runtimes
from mlapi.contract import Output, Value
from mlapi.models.spec import Feature, ModelSpec
from mlapi.runtimes import LoadError, check_format
from mlapi.runtimes import xgboost as runtime
from mlapi.runtimes.xgboost import XGBoostModel

Data = tuple[pd.DataFrame, pd.Series]


def numbers(frame: pd.DataFrame) -> list[Feature]:
    return [Feature(name=str(c), kind="number", example=float(frame[c].iloc[0])) for c in frame.columns]


def make_spec(features: list[Feature], labels: list[str]) -> ModelSpec:
    task = "classification" if labels else "regression"
    return ModelSpec(name="m", version=1, runtime="xgboost", task=task, labels=labels, features=features)


def serve(artifact: bytes, features: list[Feature], labels: list[str]) -> XGBoostModel:
    model = runtimes.load(make_spec(features, labels), artifact)
    assert isinstance(model, XGBoostModel)
    return model


def records(frame: pd.DataFrame) -> list[dict[str, Value]]:
    return frame.to_dict("records")  # type: ignore[return-value]


def probabilities(outputs: list[Output], labels: list[str]) -> np.ndarray:
    assert all(o.probabilities is not None for o in outputs)
    return np.array([[o.probabilities[label] for label in labels] for o in outputs])  # type: ignore[index]


def dumped(model: Any) -> bytes:
    artifact = runtime.dump(model)
    assert artifact is not None
    return artifact


@pytest.fixture(scope="module")
def cancer() -> Data:
    return load_breast_cancer(return_X_y=True, as_frame=True)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def iris() -> Data:
    return load_iris(return_X_y=True, as_frame=True)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def diabetes() -> Data:
    return load_diabetes(return_X_y=True, as_frame=True)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def binary(cancer: Data) -> xgboost.XGBClassifier:
    x, y = cancer
    return xgboost.XGBClassifier(n_estimators=20, max_depth=3, n_jobs=1).fit(x, y)


@pytest.fixture(scope="module")
def multiclass(iris: Data) -> xgboost.XGBClassifier:
    x, y = iris
    return xgboost.XGBClassifier(n_estimators=10, max_depth=2, n_jobs=1).fit(x, y)


@pytest.fixture(scope="module")
def regressor(diabetes: Data) -> xgboost.XGBRegressor:
    x, y = diabetes
    return xgboost.XGBRegressor(n_estimators=20, max_depth=3, n_jobs=1).fit(x, y)


def saved_json(model: xgboost.XGBModel, tmp_path: Path) -> bytes:
    path = tmp_path / "model.json"
    model.save_model(path)
    return path.read_bytes()


@pytest.mark.parametrize("form", ["dump", "json"])
def test_binary_classifier_answers_as_xgboost(
    form: str, binary: xgboost.XGBClassifier, cancer: Data, tmp_path: Path
) -> None:
    x, _ = cancer
    labels = ["malignant", "benign"]
    artifact = dumped(binary) if form == "dump" else saved_json(binary, tmp_path)
    assert check_format("xgboost", artifact) is None
    outputs = serve(artifact, numbers(x), labels).predict(records(x))
    np.testing.assert_allclose(probabilities(outputs, labels), binary.predict_proba(x), rtol=0, atol=1e-6)
    assert [o.prediction for o in outputs] == np.asarray(binary.predict(x)).tolist()
    assert [o.label for o in outputs] == [labels[k] for k in binary.predict(x)]
    assert all(o.probability == max(o.probabilities.values()) for o in outputs if o.probabilities)


@pytest.mark.parametrize("form", ["dump", "json"])
def test_multiclass_classifier_answers_as_xgboost(
    form: str, multiclass: xgboost.XGBClassifier, iris: Data, tmp_path: Path
) -> None:
    x, _ = iris
    labels = ["setosa", "versicolor", "virginica"]
    artifact = dumped(multiclass) if form == "dump" else saved_json(multiclass, tmp_path)
    outputs = serve(artifact, numbers(x), labels).predict(records(x))
    np.testing.assert_allclose(probabilities(outputs, labels), multiclass.predict_proba(x), rtol=0, atol=1e-6)
    assert [o.prediction for o in outputs] == np.asarray(multiclass.predict(x)).tolist()


@pytest.mark.parametrize("form", ["dump", "json"])
def test_regressor_answers_as_xgboost(
    form: str, regressor: xgboost.XGBRegressor, diabetes: Data, tmp_path: Path
) -> None:
    x, _ = diabetes
    artifact = dumped(regressor) if form == "dump" else saved_json(regressor, tmp_path)
    outputs = serve(artifact, numbers(x), []).predict(records(x))
    assert all(isinstance(o.prediction, float) and o.label is None and o.probabilities is None for o in outputs)
    np.testing.assert_allclose(np.array([o.prediction for o in outputs], dtype=float), regressor.predict(x), rtol=1e-6)


def test_softmax_answers_classes_without_probabilities(iris: Data) -> None:
    x, y = iris
    params = {"objective": "multi:softmax", "num_class": 3, "max_depth": 2, "nthread": 1}
    booster = xgboost.train(params, xgboost.DMatrix(x, label=y), num_boost_round=5)
    labels = ["setosa", "versicolor", "virginica"]
    outputs = serve(dumped(booster), numbers(x), labels).predict(records(x))
    assert all(o.probabilities is None and o.probability is None for o in outputs)
    assert [o.prediction for o in outputs] == booster.predict(xgboost.DMatrix(x)).astype(int).tolist()
    assert [o.label for o in outputs] == [labels[int(k)] for k in booster.predict(xgboost.DMatrix(x))]


def test_logitraw_margins_become_probabilities(cancer: Data) -> None:
    x, y = cancer
    params = {"objective": "binary:logitraw", "max_depth": 2, "nthread": 1}
    booster = xgboost.train(params, xgboost.DMatrix(x, label=y), num_boost_round=5)
    outputs = serve(dumped(booster), numbers(x), ["malignant", "benign"]).predict(records(x))
    margins = booster.predict(xgboost.DMatrix(x))
    expected = 1 / (1 + np.exp(-margins.astype(np.float64)))
    np.testing.assert_allclose([o.probabilities["benign"] for o in outputs if o.probabilities], expected, atol=1e-6)


def test_early_stopping_predicts_with_the_best_iteration_as_the_sklearn_api(cancer: Data) -> None:
    x, y = cancer
    model = xgboost.XGBClassifier(n_estimators=200, learning_rate=0.5, early_stopping_rounds=2, n_jobs=1)
    model.fit(x[:400], y[:400], eval_set=[(x[400:], y[400:])], verbose=False)
    assert model.best_iteration < 199
    labels = ["malignant", "benign"]
    outputs = serve(dumped(model), numbers(x), labels).predict(records(x))
    np.testing.assert_allclose(probabilities(outputs, labels), model.predict_proba(x), rtol=0, atol=1e-6)


def test_no_rows_no_outputs(regressor: xgboost.XGBRegressor, diabetes: Data) -> None:
    x, _ = diabetes
    assert serve(dumped(regressor), numbers(x), []).predict([]) == []


def test_categories_are_served_by_value(cancer: Data) -> None:
    x, y = cancer
    rng = np.random.default_rng(0)
    frame = x[["mean radius", "mean texture"]].copy()
    frame["site"] = pd.Categorical(rng.choice(["north", "south", "east"], len(frame)))
    model = xgboost.XGBClassifier(n_estimators=10, max_depth=3, enable_categorical=True, n_jobs=1)
    model.fit(frame, (y == 1) & (frame["site"] != "east"))
    # The spec lists the values in another order than the model's codes: XGBoost maps them by value.
    site = Feature(name="site", kind="category", values=["south", "east", "north"], example=str(frame["site"].iloc[0]))
    served = serve(dumped(model), [*numbers(frame[["mean radius", "mean texture"]]), site], ["no", "yes"])
    rows = [{**row, "site": str(row["site"])} for row in records(frame)]
    outputs = served.predict(rows)
    np.testing.assert_allclose(probabilities(outputs, ["no", "yes"]), model.predict_proba(frame), rtol=0, atol=1e-6)


def test_a_category_the_model_takes_as_a_number_is_refused(regressor: xgboost.XGBRegressor, diabetes: Data) -> None:
    x, _ = diabetes
    features = numbers(x)
    features[1] = Feature(name="sex", kind="category", values=["f", "m"], example="f")
    with pytest.raises(LoadError, match=r"\['sex'\] as categories.*encode the categories as numbers"):
        serve(dumped(regressor), features, [])


def test_features_that_differ_from_the_model_are_refused_by_name(
    regressor: xgboost.XGBRegressor, diabetes: Data
) -> None:
    x, _ = diabetes
    features = numbers(x)
    features[0] = Feature(name="years", kind="number", example=50.0)
    with pytest.raises(LoadError, match=r"the model takes \['age'\], which the spec lacks.*\['years'\]"):
        serve(dumped(regressor), features, [])
    with pytest.raises(LoadError, match="in this order"):
        serve(dumped(regressor), numbers(x)[::-1], [])


def test_a_model_without_names_checks_the_count(diabetes: Data) -> None:
    x, y = diabetes
    booster = xgboost.train({"max_depth": 2, "nthread": 1}, xgboost.DMatrix(x.to_numpy(), label=y), 5)
    renamed = [Feature(name=f"x{i}", kind="number", example=0.0) for i in range(x.shape[1])]
    outputs = serve(dumped(booster), renamed, []).predict([{f.name: 0.01 for f in renamed}])
    assert outputs[0].prediction == pytest.approx(float(booster.predict(xgboost.DMatrix(np.full((1, 10), 0.01)))[0]))
    with pytest.raises(LoadError, match="the model takes 10 features, the spec lists 9"):
        serve(dumped(booster), renamed[:9], [])


def test_a_wrong_number_of_labels_is_refused(
    binary: xgboost.XGBClassifier, multiclass: xgboost.XGBClassifier, cancer: Data, iris: Data
) -> None:
    with pytest.raises(LoadError, match=r"the model has 2 classes \(binary:logistic\).*3 labels"):
        serve(dumped(binary), numbers(cancer[0]), ["a", "b", "c"])
    with pytest.raises(LoadError, match=r"the model has 3 classes \(multi:softprob\).*2 labels"):
        serve(dumped(multiclass), numbers(iris[0]), ["a", "b"])


def test_a_task_other_than_the_objective_is_refused(
    binary: xgboost.XGBClassifier, regressor: xgboost.XGBRegressor, cancer: Data, diabetes: Data
) -> None:
    with pytest.raises(LoadError, match=r"the spec's task is regression.*binary:logistic is for classification"):
        serve(dumped(binary), numbers(cancer[0]), [])
    with pytest.raises(LoadError, match=r"the spec's task is classification.*reg:squarederror is for regression"):
        serve(dumped(regressor), numbers(diabetes[0]), ["low", "high"])


@pytest.mark.parametrize("form", ["dump", "json"])
@pytest.mark.parametrize("cut", [0.9, 0.5, 0.01])
def test_a_truncated_file_is_refused_with_its_reason(
    form: str, cut: float, binary: xgboost.XGBClassifier, cancer: Data, tmp_path: Path
) -> None:
    artifact = dumped(binary) if form == "dump" else saved_json(binary, tmp_path)
    broken = artifact[: int(len(artifact) * cut)]
    with pytest.raises(LoadError, match="XGBoost model") as refused:
        serve(broken, numbers(cancer[0]), ["malignant", "benign"])
    assert "Stack trace" not in str(refused.value)


@pytest.mark.parametrize(
    "garbage",
    [b"", b"hello", b'{"learner": 1}', b'{"learner": {"objective": []}}', b"\x80\x04garbage", b"{" + bytes(range(256))],
)
def test_garbage_is_refused_with_its_reason(garbage: bytes, cancer: Data) -> None:
    with pytest.raises(LoadError, match=r"XGBoost model|empty"):
        serve(garbage, numbers(cancer[0]), ["malignant", "benign"])


def test_inspect_reports_features_task_and_classes(
    binary: xgboost.XGBClassifier,
    multiclass: xgboost.XGBClassifier,
    regressor: xgboost.XGBRegressor,
    cancer: Data,
    iris: Data,
    diabetes: Data,
) -> None:
    found = runtime.inspect_artifact(dumped(binary))
    assert found == (list(cancer[0].columns), [0, 1], "classification", 30)
    found = runtime.inspect_artifact(dumped(multiclass))
    assert found == (list(iris[0].columns), [0, 1, 2], "classification", 4)
    found = runtime.inspect_artifact(dumped(regressor))
    assert found == (list(diabetes[0].columns), None, "regression", 10)
    unnamed = xgboost.XGBRegressor(n_estimators=2, n_jobs=1).fit(diabetes[0].to_numpy(), diabetes[1])
    assert runtime.inspect_artifact(dumped(unnamed)) == (None, None, "regression", 10)
    with pytest.raises(LoadError, match="not a loadable XGBoost model"):
        runtime.inspect_artifact(b'{"learner": 1}')


def test_dump_takes_only_xgboost_models(iris: Data) -> None:
    x, y = iris
    assert runtime.dump(LogisticRegression(max_iter=1000).fit(x, y)) is None
    assert runtime.dump("model.json") is None
    with pytest.raises(LoadError, match="XGBClassifier cannot be saved"):
        runtime.dump(xgboost.XGBClassifier())
