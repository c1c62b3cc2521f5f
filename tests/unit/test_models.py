"""The model runtime and training: the lean path matches the pipeline, artifacts load only trusted types."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import skops.io
from sklearn.base import BaseEstimator
from sklearn.pipeline import Pipeline

from mlapi.contract import Value
from mlapi.models.runtime import LoadedModel
from mlapi.models.spec import ModelSpec
from mlapi.models.train import train_named
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


@pytest.mark.parametrize("name", ["diabetes", "iris"])
def test_lean_path_matches_the_pipeline(name: str, request: pytest.FixtureRequest) -> None:
    model: LoadedModel = request.getfixturevalue(name)
    rows = random_rows(model.spec, 500)
    expected = model.pipeline.predict_proba(pd.DataFrame(rows))
    np.testing.assert_allclose(model.predict_proba(rows), expected, rtol=0, atol=1e-12)


def test_predictions_carry_class_label_and_probabilities(diabetes: LoadedModel) -> None:
    high_risk = {**diabetes.spec.example, "HbA1c_level": 8.8, "blood_glucose_level": 280, "age": 70}
    low, high = diabetes.predict([{**ORIGINAL_CLIENT_SAMPLE}, high_risk])
    assert (low.prediction, low.label) == (0, "no diabetes")
    assert (high.prediction, high.label) == (1, "diabetes")
    assert high.probability == pytest.approx(high.probabilities["diabetes"])
    assert sum(high.probabilities.values()) == pytest.approx(1.0)
    assert len(low.warnings) == 4 and high.warnings == []


def test_a_batch_predicts_like_single_rows(diabetes: LoadedModel) -> None:
    rows = random_rows(diabetes.spec, 64, seed=1)
    batch = diabetes.predict(rows)
    singles = [diabetes.predict([row])[0] for row in rows]
    assert [p.probability for p in batch] == pytest.approx([p.probability for p in singles], abs=1e-12)


def test_an_unknown_category_encodes_like_the_pipeline(diabetes: LoadedModel) -> None:
    row = {**diabetes.spec.example, "gender": "Unknown"}
    expected = diabetes.pipeline.predict_proba(pd.DataFrame([row]))
    np.testing.assert_allclose(diabetes.predict_proba([row]), expected, atol=1e-12)


class Smuggled(BaseEstimator):  # type: ignore[misc]
    """A type no artifact of ours holds: loading it would run code we did not vet."""

    def transform(self, x: object) -> object:
        return x


def test_artifacts_with_untrusted_types_are_refused(tmp_path: Path, iris: LoadedModel) -> None:
    directory = tmp_path / "iris"
    directory.mkdir()
    (directory / "spec.json").write_text(iris.spec.model_dump_json())
    skops.io.dump(Pipeline([("smuggled", Smuggled())]), directory / iris.spec.artifact)
    with pytest.raises(skops.io.exceptions.UntrustedTypesFoundException):
        LoadedModel.load(directory)


@pytest.mark.skipif(not DATASET.exists(), reason=f"the training data is not at {DATASET} (it is outside the repo)")
def test_training_is_reproducible_and_meets_the_bar(tmp_path: Path, diabetes: LoadedModel) -> None:
    spec = train_named("diabetes-risk", DATASET, tmp_path, "test")
    assert spec.metrics.roc_auc >= 0.97
    assert spec.metrics.holdout_rows == 20_000
    assert spec.data.rows == 100_000
    assert spec.metrics.roc_auc == pytest.approx(diabetes.spec.metrics.roc_auc, abs=1e-9)
    assert spec.data.sha256 == diabetes.spec.data.sha256
    retrained = LoadedModel.load(tmp_path / "diabetes-risk")
    rows = random_rows(spec, 50)
    np.testing.assert_allclose(retrained.predict_proba(rows), diabetes.predict_proba(rows), atol=1e-12)
