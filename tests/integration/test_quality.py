"""Ground truth, quality, drift counts and statistics in SQL on a real PostgreSQL, against scikit-learn and NumPy."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from sklearn.metrics import (
    accuracy_score,
    brier_score_loss,
    f1_score,
    log_loss,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
    roc_auc_score,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from mlapi.api.quality import f1
from mlapi.models.profile import PREDICTION, PROFILE_FILE, Profile
from mlapi.models.spec import ModelSpec, SpecBody
from mlapi.settings import PACKAGE_DIR
from mlapi.storage.quality import QualityRepository, Truth, Window, add_profile
from mlapi.storage.registry import RegistryRepository
from mlapi.storage.repository import PredictionRepository

pytestmark = pytest.mark.integration
T0 = datetime(2026, 1, 1, tzinfo=UTC)
BUNDLED = ModelSpec.read(PACKAGE_DIR / "models" / "registry" / "diabetes-risk")
PROFILE = Profile.model_validate_json(
    (PACKAGE_DIR / "models" / "registry" / "diabetes-risk" / PROFILE_FILE).read_bytes()
)


def row(n: int, p1: float, *, age: float = 54.0, model: str = "diabetes-risk", version: str = "1") -> dict[str, Any]:
    prediction = int(p1 >= 0.5)
    return {
        "id": str(uuid.UUID(int=n)), "model": model, "model_version": version, "task": "classification",
        "status": "done", "features": {**BUNDLED.example, "age": age}, "prediction": prediction, "value": None,
        "label": BUNDLED.labels[prediction], "probability": max(p1, 1 - p1),
        "probabilities": {"no diabetes": 1 - p1, "diabetes": p1}, "warnings": [], "error": None,
        "created_at": T0 + timedelta(minutes=n % 120), "completed_at": T0 + timedelta(minutes=n % 120, seconds=n % 7),
        "key": None,
    }  # fmt: skip


async def counts(engine: AsyncEngine, feature: str) -> dict[int, int]:
    async with engine.connect() as conn:
        found = await conn.execute(
            sa.text("SELECT bin, sum(n) FROM drift_counts WHERE feature = :f GROUP BY bin"), {"f": feature}
        )
        return {b: int(n) for b, n in found.all()}


async def test_stored_rows_are_counted_into_the_profiles_bins_once(
    repository: PredictionRepository, engine: AsyncEngine
) -> None:
    ages = [0.05, 10.0, 54.0, 54.0, 79.9, 80.0, 95.0]
    rows = [row(n, 0.7, age=a) for n, a in enumerate(ages, 1)]
    await repository.add(rows)
    await repository.add(rows)  # a redelivery stores nothing and counts nothing
    [age] = [c for c in PROFILE.columns if c.name == "age"]
    expected = np.bincount(np.searchsorted(age.edges, ages, side="right"), minlength=len(age.shares))
    got = await counts(engine, "age")
    assert [got.get(i, 0) for i in range(len(age.shares))] == expected.tolist()
    assert got[-1] == 2  # 0.05 and 95 are outside the training range [0.08, 80]
    assert await counts(engine, PREDICTION) == {1: len(ages)}  # every answer is `diabetes`, the second value
    assert await counts(engine, "gender") == {0: len(ages)}  # the example's `Female`


async def test_classifier_quality_matches_scikit_learn(repository: PredictionRepository, engine: AsyncEngine) -> None:
    rng = np.random.default_rng(7)
    p1 = rng.uniform(size=400).round(2)  # ties in the score, as AUC must handle
    truth = (rng.uniform(size=400) < p1).astype(int)
    await repository.add([row(n, float(p)) for n, p in enumerate(p1)])
    quality = QualityRepository(engine)
    labelled = range(0, 400, 4)  # three in four stay unlabelled
    await quality.set_truth([Truth(str(uuid.UUID(int=n)), 1 - int(truth[n]), None) for n in labelled])
    await quality.set_truth([Truth(str(uuid.UUID(int=n)), int(truth[n]), None) for n in labelled])  # latest wins
    window = Window("diabetes-risk", T0, T0 + timedelta(days=1), 1)
    figures, confusion = await quality.classifier_quality(window, BUNDLED.labels, timedelta(hours=1))
    y, p = truth[list(labelled)], p1[list(labelled)]
    overall = figures[0]
    assert overall["bucket"] is None and overall["n"] == len(y)
    assert overall["accuracy"] == pytest.approx(accuracy_score(y, p >= 0.5), abs=1e-9)
    assert overall["roc_auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-9)
    assert overall["brier"] == pytest.approx(brier_score_loss(y, p), abs=1e-9)
    assert overall["log_loss"] == pytest.approx(log_loss(y, np.c_[1 - p, p]), abs=1e-9)
    matrix = {(c["y"], c["p"]): c["n"] for c in confusion if c["bucket"] is None}
    assert f1(matrix, 2) == pytest.approx(f1_score(y, p >= 0.5), abs=1e-9)
    assert [f["bucket"] for f in figures[1:]] == [T0, T0 + timedelta(hours=1)]
    assert sum(f["n"] for f in figures[1:]) == len(y)


async def test_regressor_quality_matches_scikit_learn(repository: PredictionRepository, engine: AsyncEngine) -> None:
    rng = np.random.default_rng(8)
    actual = rng.normal(100, 20, size=50)
    predicted = actual + rng.normal(0, 5, size=50)
    rows = [
        row(n, 0.5, model="progress") | {"task": "regression", "prediction": None, "label": None, "probability": None,
                                         "probabilities": None, "value": float(v)}
        for n, v in enumerate(predicted)
    ]  # fmt: skip
    await repository.add(rows)
    quality = QualityRepository(engine)
    await quality.set_truth([Truth(str(uuid.UUID(int=n)), None, float(v)) for n, v in enumerate(actual)])
    [overall, *_] = await quality.regressor_quality(
        Window("progress", T0, T0 + timedelta(days=1), 1), timedelta(days=1)
    )
    assert overall["n"] == 50
    assert overall["mae"] == pytest.approx(mean_absolute_error(actual, predicted), rel=1e-9)
    assert overall["rmse"] == pytest.approx(mean_squared_error(actual, predicted) ** 0.5, rel=1e-9)
    assert overall["r2"] == pytest.approx(r2_score(actual, predicted), rel=1e-9)


async def test_a_profile_added_later_counts_the_history_before_it(
    repository: PredictionRepository, engine: AsyncEngine
) -> None:
    registry = RegistryRepository(engine)
    name = f"late-{uuid.uuid4().hex[:8]}"
    body = SpecBody.model_validate(BUNDLED.model_dump(exclude={"name", "version"}))
    spec = await registry.add_version(name, body, uuid.uuid4().bytes, promote=True)
    await repository.add([row(n, 0.2, model=name, version=str(spec.version)) for n in range(5)])
    assert await counts(engine, PREDICTION) == {}
    async with engine.begin() as conn:
        await add_profile(conn, name, spec.version, PROFILE.model_dump(mode="json"))
    async with engine.begin() as conn:
        await add_profile(conn, name, spec.version, PROFILE.model_dump(mode="json"))  # has one: nothing happens
    assert await counts(engine, PREDICTION) == {0: 5}
    await repository.add([row(9, 0.2, model=name, version=str(spec.version))])
    assert await counts(engine, PREDICTION) == {0: 6}
    await registry.remove_model(name)  # its artifact is no model: nothing else in the session may try to serve it


async def test_statistics_cover_the_whole_window(repository: PredictionRepository, engine: AsyncEngine) -> None:
    p1 = [0.05 * n for n in range(1, 20)]
    await repository.add([row(n, p) for n, p in enumerate(p1)])
    found = await QualityRepository(engine).stats(
        Window("diabetes-risk", T0, T0 + timedelta(days=1)), timedelta(hours=1), 10
    )
    assert sum(r["n"] for r in found["over_time"]) == len(p1)
    assert sum(r["n"] for r in found["probability"]) == len(p1)
    latency = found["latency"]
    assert latency["n"] == len(p1)
    seconds = [n % 7 for n in range(len(p1))]
    assert latency["ms"][0] == pytest.approx(float(np.percentile(seconds, 50)) * 1000)
