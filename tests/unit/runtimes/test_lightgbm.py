"""The LightGBM runtime on small models trained here, each served through `mlapi.runtimes.load` and compared with
LightGBM's own answer; what loading refuses, damaged files included; what a model file tells about itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightgbm
import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from sklearn.linear_model import LogisticRegression

from mlapi import runtimes
from mlapi.contract import Output, Value
from mlapi.models.spec import Feature, ModelSpec
from mlapi.runtimes import LoadError, check_format
from mlapi.runtimes import lightgbm as runtime
from mlapi.runtimes.lightgbm import LightGBMModel

Data = tuple[pd.DataFrame, pd.Series]
QUIET: dict[str, Any] = {"verbose": -1, "n_jobs": 1}


def numbers(frame: pd.DataFrame) -> list[Feature]:
    return [Feature(name=str(c), kind="number", example=float(frame[c].iloc[0])) for c in frame.columns]


def make_spec(features: list[Feature], labels: list[str]) -> ModelSpec:
    task = "classification" if labels else "regression"
    return ModelSpec(name="m", version=1, runtime="lightgbm", task=task, labels=labels, features=features)


def serve(artifact: bytes, features: list[Feature], labels: list[str]) -> LightGBMModel:
    model = runtimes.load(make_spec(features, labels), artifact)
    assert isinstance(model, LightGBMModel)
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
def binary(cancer: Data) -> lightgbm.LGBMClassifier:
    x, y = cancer
    return lightgbm.LGBMClassifier(n_estimators=20, num_leaves=8, **QUIET).fit(x, y)


@pytest.fixture(scope="module")
def multiclass(iris: Data) -> lightgbm.LGBMClassifier:
    x, y = iris
    return lightgbm.LGBMClassifier(n_estimators=10, num_leaves=4, **QUIET).fit(x, y)


@pytest.fixture(scope="module")
def regressor(diabetes: Data) -> lightgbm.LGBMRegressor:
    x, y = diabetes
    return lightgbm.LGBMRegressor(n_estimators=20, num_leaves=8, **QUIET).fit(x, y)


def test_binary_classifier_answers_as_lightgbm(binary: lightgbm.LGBMClassifier, cancer: Data) -> None:
    x, _ = cancer
    labels = ["malignant", "benign"]
    artifact = dumped(binary)
    assert check_format("lightgbm", artifact) is None
    # The spec keeps the data's names (`mean radius`); LightGBM recorded `mean_radius`.
    outputs = serve(artifact, numbers(x), labels).predict(records(x))
    np.testing.assert_allclose(probabilities(outputs, labels), binary.predict_proba(x), rtol=0, atol=1e-6)
    assert [o.prediction for o in outputs] == np.asarray(binary.predict(x)).tolist()
    assert [o.label for o in outputs] == [labels[k] for k in binary.predict(x)]
    assert all(o.probability == max(o.probabilities.values()) for o in outputs if o.probabilities)


def test_multiclass_classifier_answers_as_lightgbm(multiclass: lightgbm.LGBMClassifier, iris: Data) -> None:
    x, _ = iris
    labels = ["setosa", "versicolor", "virginica"]
    outputs = serve(dumped(multiclass), numbers(x), labels).predict(records(x))
    np.testing.assert_allclose(probabilities(outputs, labels), multiclass.predict_proba(x), rtol=0, atol=1e-6)
    assert [o.prediction for o in outputs] == np.asarray(multiclass.predict(x)).tolist()


def test_regressor_answers_as_lightgbm(regressor: lightgbm.LGBMRegressor, diabetes: Data) -> None:
    x, _ = diabetes
    outputs = serve(dumped(regressor), numbers(x), []).predict(records(x))
    assert all(isinstance(o.prediction, float) and o.label is None and o.probabilities is None for o in outputs)
    np.testing.assert_allclose(np.array([o.prediction for o in outputs], dtype=float), regressor.predict(x), rtol=1e-6)


def test_a_booster_saved_to_a_file_answers_as_lightgbm(iris: Data, tmp_path: Path) -> None:
    x, y = iris
    params = {"objective": "multiclassova", "num_class": 3, "num_leaves": 4, "verbose": -1, "num_threads": 1}
    booster = lightgbm.train(params, lightgbm.Dataset(x, y), num_boost_round=5)
    booster.save_model(tmp_path / "model.txt")
    labels = ["setosa", "versicolor", "virginica"]
    outputs = serve((tmp_path / "model.txt").read_bytes(), numbers(x), labels).predict(records(x))
    np.testing.assert_allclose(probabilities(outputs, labels), booster.predict(x), rtol=0, atol=1e-6)


def test_no_rows_no_outputs(regressor: lightgbm.LGBMRegressor, diabetes: Data) -> None:
    assert serve(dumped(regressor), numbers(diabetes[0]), []).predict([]) == []


def categorical(cancer: Data) -> tuple[pd.DataFrame, pd.Series, lightgbm.LGBMClassifier]:
    x, y = cancer
    rng = np.random.default_rng(0)
    frame = x[["mean radius", "mean texture"]].copy()
    frame["site"] = pd.Categorical(rng.choice(["north", "south", "east"], len(frame)))
    target = (y == 1) & (frame["site"] != "east")
    model = lightgbm.LGBMClassifier(n_estimators=10, num_leaves=4, min_child_samples=5, **QUIET).fit(frame, target)
    return frame, target, model


def test_categories_are_served_by_value(cancer: Data) -> None:
    frame, _, model = categorical(cancer)
    # The spec lists the values in another order than the model's codes: they are mapped by value.
    site = Feature(name="site", kind="category", values=["south", "east", "north"], example=str(frame["site"].iloc[0]))
    served = serve(dumped(model), [*numbers(frame[["mean radius", "mean texture"]]), site], ["no", "yes"])
    rows = [{**row, "site": str(row["site"])} for row in records(frame)]
    outputs = served.predict(rows)
    np.testing.assert_allclose(probabilities(outputs, ["no", "yes"]), model.predict_proba(frame), rtol=0, atol=1e-6)
    unknown = Feature(name="site", kind="category", values=["east", "west"], example="east")
    with pytest.raises(LoadError, match=r"values \['west'\] of 'site' are not among the categories"):
        serve(dumped(model), [*numbers(frame[["mean radius", "mean texture"]]), unknown], ["no", "yes"])
    with pytest.raises(LoadError, match="trained on 1 pandas category columns, but the spec lists 0"):
        serve(dumped(model), numbers(frame.assign(site=0.0)), ["no", "yes"])


def test_a_category_the_model_was_not_trained_on_as_one_is_refused(
    regressor: lightgbm.LGBMRegressor, diabetes: Data
) -> None:
    features = numbers(diabetes[0])
    features[1] = Feature(name="sex", kind="category", values=["f", "m"], example="f")
    with pytest.raises(LoadError, match=r"\['sex'\] as categories.*encode the categories as numbers"):
        serve(dumped(regressor), features, [])


def test_features_that_differ_from_the_model_are_refused_by_name(
    regressor: lightgbm.LGBMRegressor, diabetes: Data
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
    model = lightgbm.LGBMRegressor(n_estimators=5, **QUIET).fit(x.to_numpy(), y)
    renamed = [Feature(name=f"x{i}", kind="number", example=0.0) for i in range(x.shape[1])]
    outputs = serve(dumped(model), renamed, []).predict([{f.name: 0.01 for f in renamed}])
    assert outputs[0].prediction == pytest.approx(float(model.predict(np.full((1, 10), 0.01))[0]), rel=1e-9)
    with pytest.raises(LoadError, match="the model takes 10 features, the spec lists 9"):
        serve(dumped(model), renamed[:9], [])


def test_a_wrong_number_of_labels_is_refused(
    binary: lightgbm.LGBMClassifier, multiclass: lightgbm.LGBMClassifier, cancer: Data, iris: Data
) -> None:
    with pytest.raises(LoadError, match=r"the model has 2 classes \(binary\).*3 labels"):
        serve(dumped(binary), numbers(cancer[0]), ["a", "b", "c"])
    with pytest.raises(LoadError, match=r"the model has 3 classes \(multiclass\).*2 labels"):
        serve(dumped(multiclass), numbers(iris[0]), ["a", "b"])


def test_a_task_other_than_the_objective_is_refused(
    binary: lightgbm.LGBMClassifier, regressor: lightgbm.LGBMRegressor, cancer: Data, diabetes: Data
) -> None:
    with pytest.raises(LoadError, match=r"the spec's task is regression.*binary is for classification"):
        serve(dumped(binary), numbers(cancer[0]), [])
    with pytest.raises(LoadError, match=r"the spec's task is classification.*regression is for regression"):
        serve(dumped(regressor), numbers(diabetes[0]), ["low", "high"])


def damaged(artifact: bytes, how: str) -> bytes:
    """A model file cut short or with one tree broken, as LightGBM's own loader would die on."""
    text = artifact.decode()
    if how == "tree":  # LightGBM aborts the process on this one: only the child process may read it
        return text.replace("leaf_value=", "leaf_valux=", 1).encode()  # the same length: the layout holds
    marks = {"header": "feature_infos=", "trees": "Tree=3", "parameters": "[objective:", "end": "end of parameters"}
    return artifact[: text.index(marks[how]) + 5]


@pytest.mark.parametrize("how", ["header", "trees", "parameters", "end", "tree"])
def test_a_damaged_file_is_refused_with_its_reason(how: str, multiclass: lightgbm.LGBMClassifier, iris: Data) -> None:
    with pytest.raises(LoadError, match="not a loadable LightGBM model") as refused:
        serve(damaged(dumped(multiclass), how), numbers(iris[0]), ["setosa", "versicolor", "virginica"])
    if how == "tree":
        assert "leaf_value" in str(refused.value)


@pytest.mark.parametrize(
    "garbage", [b"", b"hello", b"tree\nversion=v4\n", b"tree\nversion=v4\ntree_sizes=10\n\nTree=0\nx", b"\x80\x04"]
)
def test_garbage_is_refused_with_its_reason(garbage: bytes, iris: Data) -> None:
    with pytest.raises(LoadError, match=r"LightGBM model|empty"):
        serve(garbage, numbers(iris[0]), ["setosa", "versicolor", "virginica"])


def test_inspect_reports_features_task_and_classes(
    binary: lightgbm.LGBMClassifier,
    multiclass: lightgbm.LGBMClassifier,
    regressor: lightgbm.LGBMRegressor,
    cancer: Data,
    iris: Data,
    diabetes: Data,
) -> None:
    found = runtime.inspect_artifact(dumped(binary))
    assert found == ([str(c).replace(" ", "_") for c in cancer[0].columns], [0, 1], "classification", 30)
    found = runtime.inspect_artifact(dumped(multiclass))
    assert found == ([str(c).replace(" ", "_") for c in iris[0].columns], [0, 1, 2], "classification", 4)
    found = runtime.inspect_artifact(dumped(regressor))
    assert found == (list(diabetes[0].columns), None, "regression", 10)
    unnamed = lightgbm.LGBMRegressor(n_estimators=2, **QUIET).fit(diabetes[0].to_numpy(), diabetes[1])
    assert runtime.inspect_artifact(dumped(unnamed)) == (None, None, "regression", 10)
    with pytest.raises(LoadError, match="not a loadable LightGBM model"):
        runtime.inspect_artifact(damaged(dumped(multiclass), "tree"))


def test_dump_takes_only_lightgbm_models(iris: Data) -> None:
    x, y = iris
    assert runtime.dump(LogisticRegression(max_iter=1000).fit(x, y)) is None
    assert runtime.dump("model.txt") is None
    with pytest.raises(LoadError, match="LGBMClassifier cannot be saved"):
        runtime.dump(lightgbm.LGBMClassifier())
