"""Spec inference on the user's machine, for every runtime: what an artifact records (its runtime's
`inspect_artifact`) plus a sample of data; metrics computed from the answers of the runtime the workers run,
checked against scikit-learn's metric functions on each library's own predictions."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
import skops.io
import xgboost as xgb
from skl2onnx import to_onnx
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_diabetes, load_iris
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import (
    accuracy_score,
    brier_score_loss,
    f1_score,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
    roc_auc_score,
)
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder

from mlapi import runtimes
from mlapi.models.infer import InferError, infer_spec
from mlapi.models.spec import SpecBody
from mlapi.runtimes import Inspection


def churn(n: int = 200) -> pd.DataFrame:
    """A frame with every kind of column: a number, a 0/1 flag, a whole number, text, and a text target."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "mean radius": rng.normal(14, 3, n).round(2),
            "smoker": rng.integers(0, 2, n),
            "children": rng.integers(0, 5, n),
            "city": rng.choice(["Oslo", "Bergen", "Tromsø"], n),
        }
    )
    score = frame["mean radius"] + 3 * frame["smoker"] - frame["children"] + rng.normal(0, 2, n)
    frame["churned"] = np.where(score > 14, "yes", "no")
    return frame


def churn_model(frame: pd.DataFrame) -> Any:
    encode = ColumnTransformer([("city", OneHotEncoder(handle_unknown="ignore"), ["city"])], remainder="passthrough")
    return make_pipeline(encode, LogisticRegression(max_iter=1000)).fit(frame.drop(columns="churned"), frame["churned"])


def inspect(runtime: str, artifact: bytes, trusted: Sequence[str] = ()) -> Inspection:
    """What the runtime's module reads from an artifact, as `mlapi models add` asks it."""
    module = importlib.import_module(runtimes.RUNTIMES[runtime])
    found = module.inspect_artifact(artifact, trusted=trusted) if trusted else module.inspect_artifact(artifact)
    assert isinstance(found, Inspection)
    return found


def infer(
    runtime: str, artifact: bytes, data: pd.DataFrame | None, target: str | None = None, **given: Any
) -> SpecBody:
    return infer_spec(inspect(runtime, artifact), artifact, data, target, runtime=runtime, **given)


def infer_sklearn(model: Any, data: pd.DataFrame | None, target: str | None = None, **given: Any) -> SpecBody:
    """The spec of a fitted scikit-learn model, inferred from its skops file."""
    artifact = skops.io.dumps(model)
    trusted = skops.io.get_untrusted_types(data=artifact)
    found = inspect("sklearn", artifact, trusted)
    return infer_spec(found, artifact, data, target, runtime="sklearn", trusted=trusted, **given)


def binary_metrics(y: np.ndarray, probability: np.ndarray) -> dict[str, Any]:
    """scikit-learn's own metrics of a binary classifier's probabilities of class 1, thresholded at 1/2."""
    predicted = (probability > 0.5).astype(int)
    return {
        "accuracy": pytest.approx(accuracy_score(y, predicted)),
        "f1": pytest.approx(f1_score(y, predicted)),
        "roc_auc": pytest.approx(roc_auc_score(y, probability)),
        "brier": pytest.approx(brier_score_loss(y, probability)),
        "holdout_rows": len(y),
    }


def regression_scores(y: np.ndarray, predicted: np.ndarray, rel: float = 1e-6) -> dict[str, Any]:
    return {
        "mae": pytest.approx(mean_absolute_error(y, predicted), rel=rel),
        "rmse": pytest.approx(np.sqrt(mean_squared_error(y, predicted)), rel=rel),
        "r2": pytest.approx(r2_score(y, predicted), rel=rel),
        "holdout_rows": len(y),
    }


# scikit-learn


def test_kinds_ranges_example_labels_and_metrics_come_from_the_data() -> None:
    frame = churn()
    model = churn_model(frame)
    spec = infer_sklearn(model, frame, "churned", description="Who leaves")
    radius, smoker, children, city = spec.features
    assert [f.name for f in spec.features] == ["mean radius", "smoker", "children", "city"]
    assert (radius.kind, radius.integer, radius.minimum, radius.maximum) == ("number", False, None, None)
    assert radius.training_range == (frame["mean radius"].min(), frame["mean radius"].max())
    assert smoker.kind == "flag"
    assert (children.kind, children.integer, children.training_range) == ("number", True, (0.0, 4.0))
    assert (city.kind, city.values) == ("category", ["Bergen", "Oslo", "Tromsø"])
    assert spec.example == frame.drop(columns="churned").iloc[0].to_dict()
    assert (spec.task, spec.labels, spec.description) == ("classification", ["no", "yes"], "Who leaves")
    x, y = frame.drop(columns="churned"), (frame["churned"] == "yes").to_numpy(dtype=int)
    assert spec.metrics == binary_metrics(y, model.predict_proba(x)[:, 1])
    assert spec.metrics["accuracy"] == pytest.approx(model.score(x, frame["churned"]))
    assert 0.7 < spec.metrics["accuracy"] < 1 and spec.metrics["roc_auc"] > 0.8
    assert spec.data is not None and spec.data.rows == 200 and spec.data.source == "data frame"
    assert spec.framework.keys() == {"scikit-learn", "skops", "numpy"}


def test_multiclass_metrics_are_one_vs_rest_macro_and_the_mean_squared_error_of_the_one_hot() -> None:
    x, y = load_iris(as_frame=True, return_X_y=True)
    model = LogisticRegression(max_iter=1000).fit(x, y)
    spec = infer_sklearn(model, x.assign(species=y), "species")
    probabilities = model.predict_proba(x)
    assert spec.labels == ["0", "1", "2"]
    assert spec.metrics["roc_auc"] == pytest.approx(roc_auc_score(y, probabilities, multi_class="ovr"))
    assert spec.metrics["f1"] == pytest.approx(f1_score(y, model.predict(x), average="macro"))
    assert spec.metrics["brier"] == pytest.approx(np.mean((probabilities - np.eye(3)[y]) ** 2))
    assert 0 < spec.metrics["brier"] < 0.1


def test_feature_names_come_from_the_artifact_where_it_records_them() -> None:
    frame = churn()
    model = LogisticRegression().fit(frame[["children", "mean radius"]], frame["churned"])
    spec = infer_sklearn(model, frame, "churned")
    assert [f.name for f in spec.features] == ["children", "mean radius"]  # the model's order; others ignored
    with pytest.raises(InferError, match=r"the data lacks columns the model takes: \['mean radius'\]"):
        infer_sklearn(model, frame.drop(columns="mean radius"))


def test_without_recorded_names_the_data_columns_are_the_features_in_order() -> None:
    frame = churn()[["smoker", "mean radius", "churned"]]
    model = LogisticRegression().fit(frame[["smoker", "mean radius"]].to_numpy(), frame["churned"])
    spec = infer_sklearn(model, frame, "churned")
    assert [(f.name, f.kind) for f in spec.features] == [("smoker", "flag"), ("mean radius", "number")]
    assert spec.metrics["accuracy"] == pytest.approx(
        model.score(frame[["smoker", "mean radius"]].to_numpy(), frame["churned"])
    )
    with pytest.raises(InferError, match="the model takes 2 features, but the data has 3 columns"):
        infer_sklearn(model, churn()[["smoker", "mean radius", "children"]])
    with pytest.raises(InferError, match=r"does not record its feature names: pass --data"):
        infer_sklearn(model, None)


def test_without_data_every_feature_is_a_number_with_example_zero() -> None:
    frame = churn()
    model = LinearRegression().fit(frame[["mean radius", "children"]], frame["smoker"])
    spec = infer_sklearn(model, None)
    assert [(f.kind, f.example, f.training_range) for f in spec.features] == [("number", 0.0, None)] * 2
    assert (spec.task, spec.labels, spec.metrics, spec.data) == ("regression", [], {}, None)
    with pytest.raises(InferError, match="--target needs --data"):
        infer_sklearn(model, None, "smoker")


def test_a_model_that_does_not_say_its_task_needs_one_and_a_conflicting_task_is_refused() -> None:
    frame = churn()
    silent = Inspection(features=None, classes=None, task=None, n_features=4)
    with pytest.raises(InferError, match="cannot tell whether the model is a classifier or a regressor: pass --task"):
        infer_spec(silent, b"", frame, "churned", runtime="onnx")
    with pytest.raises(InferError, match="unknown task 'ranking'"):
        infer_spec(silent, b"", frame, "churned", runtime="onnx", task="ranking")
    model = LinearRegression().fit(frame[["mean radius"]], frame["children"])
    with pytest.raises(InferError, match="--task classification conflicts with the artifact, which holds a regression"):
        infer_sklearn(model, frame, task="classification")


def test_regression_metrics_leave_out_rows_without_a_target() -> None:
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"x": rng.uniform(0, 10, 300)})
    frame["y"] = 3 * frame["x"] + rng.normal(0, 1, 300)
    frame.loc[5, "y"] = np.nan  # rows without a true answer are left out of the metrics
    known = frame.dropna()
    model = LinearRegression().fit(known[["x"]], known["y"])
    spec = infer_sklearn(model, frame, "y")
    assert spec.metrics == regression_scores(known["y"].to_numpy(), model.predict(known[["x"]]))
    assert spec.metrics["holdout_rows"] == 299 and spec.metrics["r2"] > 0.95


def test_a_class_target_with_gaps_still_matches_integer_classes() -> None:
    frame = churn()
    frame["left"] = (frame["churned"] == "yes").astype(float)
    frame.loc[0, "left"] = np.nan  # pandas reads such a column as floats: 1.0 must still be class 1
    model = LogisticRegression().fit(frame.loc[1:, ["mean radius"]], frame.loc[1:, "left"].astype(int))
    spec = infer_sklearn(model, frame.drop(columns="churned"), "left")
    assert spec.labels == ["0", "1"] and spec.metrics["holdout_rows"] == 199


def test_rows_missing_a_feature_are_left_out_of_the_metrics_as_the_api_would_refuse_them() -> None:
    frame = churn()
    model = churn_model(frame)
    frame.loc[[3, 7], "mean radius"] = np.nan
    spec = infer_sklearn(model, frame, "churned")
    kept = frame.dropna()
    y = (kept["churned"] == "yes").to_numpy(dtype=int)
    assert spec.metrics == binary_metrics(y, model.predict_proba(kept.drop(columns="churned"))[:, 1])
    assert spec.metrics["holdout_rows"] == 198


# XGBoost and LightGBM Boosters record class numbers, not labels: those come from the target, or `classes_`.


def iris_frame() -> tuple[pd.DataFrame, np.ndarray]:
    """Iris with its species named, the names in an order that is not the class numbers' (to catch a mix-up)."""
    x, y = load_iris(as_frame=True, return_X_y=True)
    x.columns = ["sepal length", "sepal width", "petal length", "petal width"]
    names = np.array(["setosa", "versicolor", "virginica"])
    return x.assign(species=names[y]), y.to_numpy()


def test_an_xgboost_booster_takes_its_labels_from_the_sorted_target_and_its_features_from_the_data() -> None:
    frame, y = iris_frame()
    x = frame.drop(columns="species")
    booster = xgb.train(
        {"objective": "multi:softprob", "num_class": 3, "max_depth": 2}, xgb.DMatrix(x.to_numpy(), label=y), 8
    )
    artifact = bytes(booster.save_raw("json"))
    spec = infer("xgboost", artifact, frame, "species")
    assert (spec.runtime, spec.task, spec.labels) == (
        "xgboost",
        "classification",
        ["setosa", "versicolor", "virginica"],
    )
    assert [f.name for f in spec.features] == list(x.columns)
    assert spec.framework.keys() == {"xgboost", "numpy"}
    probabilities = booster.predict(xgb.DMatrix(x.to_numpy()))
    assert spec.metrics == {
        "accuracy": pytest.approx(accuracy_score(y, probabilities.argmax(axis=1))),
        "f1": pytest.approx(f1_score(y, probabilities.argmax(axis=1), average="macro")),
        "roc_auc": pytest.approx(roc_auc_score(y, probabilities, multi_class="ovr"), rel=1e-6),
        "brier": pytest.approx(np.mean((probabilities - np.eye(3)[y]) ** 2), rel=1e-5),
        "holdout_rows": 150,
    }
    with pytest.raises(InferError, match=r"the model takes 4 features, but the data has 5 columns besides the target"):
        infer("xgboost", artifact, frame.assign(extra=1.0), "species")


def test_a_booster_s_class_count_must_match_the_target_s_distinct_values() -> None:
    frame, y = iris_frame()
    x = frame.drop(columns="species")
    booster = lgb.train(
        {"objective": "binary", "verbose": -1, "num_leaves": 4}, lgb.Dataset(x, label=(y == 2).astype(int)), 10
    )
    artifact = booster.model_to_string().encode()
    with pytest.raises(InferError, match=r"the model has 2 classes and records no labels, but the target 'species' "
                       r"holds 3 distinct values \(setosa, versicolor, virginica\)"):  # fmt: skip
        infer("lightgbm", artifact, frame, "species")
    # Without a target or classes, the labels are the class numbers: what the Booster was trained on.
    assert infer("lightgbm", artifact, frame.drop(columns="species")).labels == ["0", "1"]
    target = frame.assign(virginica=(y == 2).astype(int)).drop(columns="species")
    assert infer("lightgbm", artifact, target, "virginica").labels == ["0", "1"]


def test_a_lightgbm_classifier_in_memory_gives_its_classes_and_the_metrics_are_the_library_s() -> None:
    frame = churn()
    x = frame[["mean radius", "smoker", "children"]]
    model = lgb.LGBMClassifier(n_estimators=20, num_leaves=4, verbose=-1).fit(x, frame["churned"])
    artifact = model.booster_.model_to_string().encode()
    spec = infer("lightgbm", artifact, frame.drop(columns="city"), "churned", classes=model.classes_)
    assert (spec.labels, [f.name for f in spec.features]) == (["no", "yes"], list(x.columns))
    y = (frame["churned"] == "yes").to_numpy(dtype=int)
    assert spec.metrics == binary_metrics(y, np.asarray(model.predict_proba(x))[:, 1])
    # The in-memory model's classes win over the target's values; a count that does not match is refused.
    assert infer("lightgbm", artifact, None, classes=["stays", "leaves"]).labels == ["stays", "leaves"]
    with pytest.raises(InferError, match=r"the model has 2 classes, but its `classes_` lists 3"):
        infer("lightgbm", artifact, None, classes=["a", "b", "c"])


def test_booster_regressors_metrics_are_the_library_s_own() -> None:
    x, y = load_diabetes(as_frame=True, return_X_y=True)
    frame = x.assign(progress=y)
    lgb_model = lgb.train({"objective": "regression", "verbose": -1}, lgb.Dataset(x, label=y), 20)
    spec = infer("lightgbm", lgb_model.model_to_string().encode(), frame, "progress")
    assert (spec.task, spec.labels) == ("regression", [])
    assert spec.metrics == regression_scores(y.to_numpy(), np.asarray(lgb_model.predict(x)))
    xgb_model = xgb.XGBRegressor(n_estimators=20, max_depth=3).fit(x, y)
    spec = infer("xgboost", bytes(xgb_model.get_booster().save_raw("ubj")), frame, "progress")
    assert [f.name for f in spec.features] == list(x.columns)  # recorded, as it was fitted on a frame
    assert spec.metrics == regression_scores(y.to_numpy(), xgb_model.predict(x), rel=1e-5)


# ONNX: a float tensor input (features named by the data) or one input per column (named by the graph).


def test_an_onnx_float_tensor_model_takes_its_feature_names_from_the_data_and_its_labels_from_the_graph() -> None:
    frame, y = iris_frame()
    x = frame.drop(columns="species")
    model = LogisticRegression(max_iter=1000).fit(x.to_numpy(dtype=np.float32), frame["species"])
    artifact = to_onnx(model, x.to_numpy(dtype=np.float32)[:1]).SerializeToString()
    spec = infer("onnx", artifact, frame, "species")
    assert (spec.task, spec.labels) == ("classification", ["setosa", "versicolor", "virginica"])
    assert [f.name for f in spec.features] == list(x.columns)
    assert spec.framework.keys() == {"onnxruntime", "onnx", "numpy"}
    probabilities = model.predict_proba(x.to_numpy(dtype=np.float32))
    assert spec.metrics["accuracy"] == pytest.approx(accuracy_score(y, probabilities.argmax(axis=1)))
    assert spec.metrics["roc_auc"] == pytest.approx(roc_auc_score(y, probabilities, multi_class="ovr"), rel=1e-5)
    assert spec.metrics["brier"] == pytest.approx(np.mean((probabilities - np.eye(3)[y]) ** 2), rel=1e-4)
    with pytest.raises(InferError, match="the model takes 4 features, but the data has 3 columns"):
        infer("onnx", artifact, frame.drop(columns="petal width"), "species")


def test_an_onnx_model_with_one_input_per_column_names_its_features() -> None:
    frame = churn().rename(columns={"mean radius": "radius"})  # skl2onnx would name its input `mean_radius`
    x = frame.drop(columns="churned")
    model = churn_model(frame)
    columns = x.assign(**{c: x[c].astype(np.float32) for c in ["radius", "smoker", "children"]})
    artifact = to_onnx(model, columns[:1], options={"zipmap": False}).SerializeToString()
    spec = infer("onnx", artifact, frame.assign(extra=1.0)[["extra", *reversed(x.columns), "churned"]], "churned")
    assert [f.name for f in spec.features] == list(x.columns)  # the graph's inputs, in its order
    assert (spec.labels, spec.features[3].values) == (["no", "yes"], ["Bergen", "Oslo", "Tromsø"])
    y = (frame["churned"] == "yes").to_numpy(dtype=int)
    probability = model.predict_proba(x)[:, 1]
    assert spec.metrics == {
        "accuracy": pytest.approx(accuracy_score(y, probability > 0.5)),
        "f1": pytest.approx(f1_score(y, probability > 0.5)),
        "roc_auc": pytest.approx(roc_auc_score(y, probability), rel=1e-4),
        "brier": pytest.approx(brier_score_loss(y, probability), rel=1e-4),
        "holdout_rows": 200,
    }
    with pytest.raises(InferError, match=r"the data lacks columns the model takes: \['radius'\]"):
        infer("onnx", artifact, churn(), "churned")
