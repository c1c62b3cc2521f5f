"""The ONNX runtime on small scikit-learn models converted here with skl2onnx, each served through
`mlapi.runtimes.load` and compared with scikit-learn's own answer (float32: within 1e-5 relative); what loading
refuses; what `inspect_artifact` reads from a graph."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pandas as pd
import pytest
from skl2onnx import convert_sklearn, to_onnx
from skl2onnx.common.data_types import FloatTensorType, Int64TensorType, StringTensorType
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_diabetes, load_iris
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.svm import SVC
from sklearn.tree import DecisionTreeRegressor

from mlapi import runtimes
from mlapi.contract import Value
from mlapi.models.spec import Feature, ModelSpec
from mlapi.runtimes import Inspection, LoadError, check_format
from mlapi.runtimes.onnx import OnnxModel, dump, inspect_artifact
from tests.conftest import DATASET

IRIS = load_iris(as_frame=True)
IRIS_LABELS = IRIS.target_names.tolist()
NO_ZIPMAP = pytest.mark.parametrize("zipmap", [True, False], ids=["zipmap", "tensor"])


def features_of(frame: pd.DataFrame) -> list[Feature]:
    """Text columns as categories, 0/1 integers as flags, other integers as whole numbers; the first row is the
    example."""
    first = frame.iloc[0]
    features = []
    for c in frame.columns:
        column = frame[c]
        if column.dtype == object or pd.api.types.is_string_dtype(column):
            features.append(Feature(name=c, kind="category", values=sorted(column.unique()), example=str(first[c])))
        elif pd.api.types.is_integer_dtype(column) and set(column.unique()) <= {0, 1}:
            features.append(Feature(name=c, kind="flag", example=int(first[c])))
        elif pd.api.types.is_integer_dtype(column):
            features.append(Feature(name=c, kind="number", integer=True, example=int(first[c])))
        else:
            features.append(Feature(name=c, kind="number", example=float(first[c])))
    return features


def spec_for(features: list[Feature], labels: list[str]) -> ModelSpec:
    task = "classification" if labels else "regression"
    return ModelSpec(name="m", version=1, runtime="onnx", task=task, labels=labels, features=features)


def serve(artifact: bytes, features: list[Feature], labels: list[str]) -> OnnxModel:
    model = runtimes.load(spec_for(features, labels), artifact)
    assert isinstance(model, OnnxModel)
    return model


def records(frame: pd.DataFrame) -> list[dict[str, Value]]:
    return frame.to_dict("records")  # type: ignore[return-value]


def options(estimator: Any, zipmap: bool) -> dict[int, dict[str, bool]] | None:
    return None if zipmap else {id(estimator): {"zipmap": False}}


def iris_classifier(zipmap: bool, *, text: bool = False) -> tuple[LogisticRegression, bytes]:
    """Class numbers 0..2, or the species' names with `text`; one float tensor input [N, 4]."""
    y = IRIS.target.map(dict(enumerate(IRIS_LABELS))) if text else IRIS.target
    classifier = LogisticRegression(max_iter=1000).fit(IRIS.data.to_numpy(), y)
    graph = to_onnx(classifier, IRIS.data.to_numpy()[:1].astype(np.float32), options=options(classifier, zipmap))
    return classifier, graph.SerializeToString()


def diabetes_risk(zipmap: bool) -> tuple[Pipeline, pd.DataFrame, bytes]:
    """A one-hot pipeline on a mixed frame (text, flags, whole and real numbers), one ONNX input per column."""
    frame = pd.read_csv(DATASET).sample(3000, random_state=0).reset_index(drop=True)
    x, y = frame.drop(columns="diabetes"), frame["diabetes"]
    text = ["gender", "smoking_history"]
    numbers = [c for c in x.columns if c not in text]
    transformer = ColumnTransformer(
        [("text", OneHotEncoder(handle_unknown="ignore"), text), ("numbers", StandardScaler(), numbers)]
    )
    pipeline = Pipeline([("features", transformer), ("classifier", LogisticRegression(max_iter=1000))]).fit(x, y)
    types = [
        (c, StringTensorType([None, 1]) if c in text else Int64TensorType([None, 1]))
        if c in text or pd.api.types.is_integer_dtype(x[c])
        else (c, FloatTensorType([None, 1]))
        for c in x.columns
    ]
    graph = convert_sklearn(pipeline, initial_types=types, options=options(pipeline, zipmap))
    return pipeline, x, graph.SerializeToString()


def diabetes_regressor(estimator: Any) -> tuple[Any, pd.DataFrame, bytes]:
    x, y = load_diabetes(as_frame=True, return_X_y=True)
    estimator.fit(x.to_numpy(), y)
    return estimator, x, to_onnx(estimator, x.to_numpy()[:1].astype(np.float32)).SerializeToString()


def assert_same_as_the_library(model: OnnxModel, estimator: Any, x: Any, rows: list[dict[str, Value]]) -> None:
    """Classes from the estimator's `predict`, probabilities from its `predict_proba`, within float32's precision."""
    outputs = model.predict(rows)
    labels = model.spec.labels
    assert [o.label for o in outputs] == [labels[k] for k in (o.prediction for o in outputs)]  # type: ignore[index]
    assert [o.label for o in outputs] == [c if isinstance(c, str) else labels[c] for c in estimator.predict(x).tolist()]
    got = np.array([[o.probabilities[label] for label in labels] for o in outputs if o.probabilities])
    np.testing.assert_allclose(got, estimator.predict_proba(x), rtol=1e-5, atol=1e-7)
    assert [o.probability for o in outputs] == [
        o.probabilities[o.label] for o in outputs if o.probabilities and o.label
    ]


@NO_ZIPMAP
def test_a_classifier_with_one_float_tensor_input(zipmap: bool) -> None:
    classifier, artifact = iris_classifier(zipmap)
    features = features_of(IRIS.data)
    model = serve(artifact, features, IRIS_LABELS)
    assert model.outputs.zipmap is zipmap
    assert model.classes == [0, 1, 2]
    assert_same_as_the_library(model, classifier, IRIS.data.to_numpy(), records(IRIS.data))
    options = model.session.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (1, 1)
    assert model.session.get_providers() == ["CPUExecutionProvider"]
    assert model.predict([]) == []


@NO_ZIPMAP
def test_a_classifier_with_text_class_labels(zipmap: bool) -> None:
    classifier, artifact = iris_classifier(zipmap, text=True)
    model = serve(artifact, features_of(IRIS.data), IRIS_LABELS)
    assert model.classes == IRIS_LABELS
    assert_same_as_the_library(model, classifier, IRIS.data.to_numpy(), records(IRIS.data))
    with pytest.raises(LoadError, match=r"the model's classes \['setosa', 'versicolor', 'virginica'\] do not match"):
        serve(artifact, features_of(IRIS.data), ["versicolor", "setosa", "virginica"])
    with pytest.raises(LoadError, match="do not match the spec's labels"):
        serve(artifact, features_of(IRIS.data), ["a", "b", "c"])


@NO_ZIPMAP
def test_a_mixed_pipeline_with_one_input_per_column(zipmap: bool) -> None:
    pipeline, x, artifact = diabetes_risk(zipmap)
    features = features_of(x)
    assert [f.kind for f in features] == [
        "category",
        "number",
        "flag",
        "flag",
        "category",
        "number",
        "number",
        "number",
    ]
    model = serve(artifact, features, ["no diabetes", "diabetes"])
    assert_same_as_the_library(model, pipeline, x, records(x))
    assert {o.label for o in model.predict(records(x))} == {"no diabetes", "diabetes"}


def test_a_mixed_pipeline_refuses_features_that_are_not_its_inputs() -> None:
    _, x, artifact = diabetes_risk(zipmap=True)
    features = features_of(x)
    without_bmi = [f for f in features if f.name != "bmi"]
    with pytest.raises(LoadError, match=r"the model takes inputs \['bmi'\], which the spec lacks"):
        serve(artifact, without_bmi, ["no", "yes"])
    extra = [*features, Feature(name="weight", kind="number", example=70.0)]
    with pytest.raises(LoadError, match=r"the spec lists \['weight'\], which the model does not take"):
        serve(artifact, extra, ["no", "yes"])
    gender_as_number = [
        Feature(name="gender", kind="number", example=1.0) if f.name == "gender" else f for f in features
    ]
    with pytest.raises(LoadError, match=r"input 'gender' takes tensor\(string\), but the spec's feature 'gender' is a"):
        serve(artifact, gender_as_number, ["no", "yes"])
    bmi_as_whole = [
        Feature(name="bmi", kind="category", values=["a"], example="a") if f.name == "bmi" else f for f in features
    ]
    with pytest.raises(LoadError, match=r"'bmi' takes tensor\(float\), but the spec's feature 'bmi' is a category"):
        serve(artifact, bmi_as_whole, ["no", "yes"])


@pytest.mark.parametrize("estimator", [LinearRegression(), DecisionTreeRegressor(max_depth=5, random_state=0)])
def test_a_regressor_with_one_float_tensor_input(estimator: Any) -> None:
    regressor, x, artifact = diabetes_regressor(estimator)
    model = serve(artifact, features_of(x), [])
    outputs = model.predict(records(x))
    assert all(isinstance(o.prediction, float) and o.label is None and o.probabilities is None for o in outputs)
    values = np.array([o.prediction for o in outputs], dtype=np.float64)
    np.testing.assert_allclose(values, regressor.predict(x.to_numpy()), rtol=1e-5)


def test_the_task_must_be_the_models() -> None:
    _, x, regressor = diabetes_regressor(LinearRegression())
    with pytest.raises(LoadError, match="the spec's task is classification, but the ONNX model's outputs are a regres"):
        serve(regressor, features_of(x), ["low", "high"])
    _, classifier = iris_classifier(zipmap=True)
    with pytest.raises(LoadError, match="the spec's task is regression, but the ONNX model's outputs are a classif"):
        serve(classifier, features_of(IRIS.data), [])


def test_a_tensor_model_refuses_a_spec_of_another_width_or_with_categories() -> None:
    _, artifact = iris_classifier(zipmap=True)
    features = features_of(IRIS.data)
    with pytest.raises(LoadError, match=r"the model's input 'X' takes 4 features per row, the spec lists 3"):
        serve(artifact, features[:3], IRIS_LABELS)
    colour = Feature(name="colour", kind="category", values=["red", "blue"], example="red")
    with pytest.raises(LoadError, match=r"the spec's feature 'colour' is a category"):
        serve(artifact, [*features[:3], colour], IRIS_LABELS)


def test_a_classifier_without_probabilities_answers_labels() -> None:
    classifier, artifact = iris_classifier(zipmap=False, text=True)
    graph = onnx.load_from_string(artifact)
    graph.graph.output.remove(next(o for o in graph.graph.output if o.name == "probabilities"))
    model = serve(graph.SerializeToString(), features_of(IRIS.data), IRIS_LABELS)
    assert model.outputs.probabilities is None
    outputs = model.predict(records(IRIS.data))
    assert [o.label for o in outputs] == classifier.predict(IRIS.data.to_numpy()).tolist()
    assert all(o.probabilities is None and o.probability is None for o in outputs)


# skl2onnx 1.20 reads SVC's `probA_`, deprecated in scikit-learn 1.9.
@pytest.mark.filterwarnings("ignore:Attribute `prob[AB]_` was deprecated:FutureWarning:sklearn")
@NO_ZIPMAP
def test_decision_scores_are_not_served_as_probabilities(zipmap: bool, caplog: pytest.LogCaptureFixture) -> None:
    # skl2onnx writes an SVC's decision values where the probabilities would be.
    svc = SVC().fit(IRIS.data.to_numpy(), IRIS.target)
    graph = to_onnx(svc, IRIS.data.to_numpy()[:1].astype(np.float32), options=options(svc, zipmap))
    model = serve(graph.SerializeToString(), features_of(IRIS.data), IRIS_LABELS)
    assert model.outputs.probabilities is None
    outputs = model.predict(records(IRIS.data))
    assert [o.prediction for o in outputs] == svc.predict(IRIS.data.to_numpy()).tolist()
    assert all(o.probabilities is None for o in outputs)
    assert "holds scores, not probabilities" in caplog.text


def test_broken_files_are_refused_with_the_reason() -> None:
    _, artifact = iris_classifier(zipmap=True)
    spec = spec_for(features_of(IRIS.data), IRIS_LABELS)
    with pytest.raises(LoadError, match=r"not a loadable ONNX model: INVALID_PROTOBUF: .*protobuf parsing failed"):
        runtimes.load(spec, artifact[: len(artifact) // 2])
    with pytest.raises(LoadError, match="not a loadable ONNX model: INVALID_PROTOBUF"):
        runtimes.load(spec, b"\x08" + bytes(range(40)))
    garbage = b"this is a text file, not a model at all"
    assert check_format("onnx", garbage) == (
        "not an ONNX model: export it to a `.onnx` file (e.g. with skl2onnx or onnxmltools)"
    )
    with pytest.raises(LoadError, match="not an ONNX model"):
        runtimes.load(spec, garbage)
    with pytest.raises(LoadError, match="not a loadable ONNX model"):
        inspect_artifact(artifact[:100])


def test_an_unsupported_opset_is_refused_with_onnxruntimes_reason() -> None:
    _, artifact = iris_classifier(zipmap=False)
    graph = onnx.load_from_string(artifact)
    for opset in graph.opset_import:
        opset.version = 99
    with pytest.raises(LoadError, match=r"not a loadable ONNX model: FAIL: ONNX Runtime only \*guarantees\*.*Opset 99"):
        runtimes.load(spec_for(features_of(IRIS.data), IRIS_LABELS), graph.SerializeToString())


def test_inspect_artifact() -> None:
    assert inspect_artifact(iris_classifier(zipmap=True)[1]) == Inspection(None, [0, 1, 2], "classification", 4)
    assert inspect_artifact(iris_classifier(zipmap=False, text=True)[1]) == Inspection(
        None, IRIS_LABELS, "classification", 4
    )
    _, x, artifact = diabetes_risk(zipmap=False)
    assert inspect_artifact(artifact) == Inspection(list(x.columns), [0, 1], "classification", 8)
    _, x, artifact = diabetes_regressor(LinearRegression())
    assert inspect_artifact(artifact) == Inspection(None, None, "regression", 10)


def test_dump_writes_an_in_memory_graph_only() -> None:
    classifier, artifact = iris_classifier(zipmap=True)
    graph = onnx.load_from_string(artifact)
    assert dump(graph) == graph.SerializeToString()
    assert dump(artifact) is None
    assert dump(classifier) is None
