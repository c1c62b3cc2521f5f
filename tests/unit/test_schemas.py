"""One definition of the prediction result: `contract.Output`. The HTTP schemas, the history table and the
worker's history rows are checked against it here, so none of them can drift alone."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from mlapi.api.routes.history import record
from mlapi.contract import OUTPUT_FIELDS, Output, Result
from mlapi.runtimes import Runtime
from mlapi.runtimes.sklearn import SklearnModel
from mlapi.schemas import PredictionOut, PredictionRecord
from mlapi.storage.repository import COLUMNS, FEEDBACK_COLUMNS
from mlapi.storage.tables import predictions
from mlapi.worker.batching import Planner
from tests.unit.test_batching import delivery, regressor

TABLE = {c.name for c in predictions.columns} - set(FEEDBACK_COLUMNS)
"""What the workers write: every column but the ground truth feedback sets."""


def history_rows(runtime: Runtime, *rows: dict[str, Any]) -> list[dict[str, Any]]:
    """The `predictions` rows the worker writes for these feature rows (valid or not)."""
    key = (runtime.spec.name, runtime.spec.version)
    return Planner({key: runtime}, max_deliveries=3).plan([delivery(key, list(rows))], datetime.now(UTC)).rows


def test_the_output_fields_are_the_models_answer() -> None:
    assert OUTPUT_FIELDS == ("prediction", "label", "probability", "probabilities")
    assert set(OUTPUT_FIELDS) <= set(Result.__struct_fields__)


@pytest.mark.parametrize("schema", [PredictionOut, PredictionRecord])
def test_the_http_schemas_carry_every_output_field(schema: type[PredictionOut | PredictionRecord]) -> None:
    assert set(OUTPUT_FIELDS) <= set(schema.model_fields)
    assert {"id", "model", "model_version", "task", "warnings", "created_at"} <= set(schema.model_fields)


@pytest.mark.parametrize("schema", [PredictionOut, PredictionRecord])
def test_the_http_schemas_take_a_class_index_and_a_value_alike(schema: type[PredictionOut | PredictionRecord]) -> None:
    """`prediction` is an int for a classifier and a float for a regressor; neither may be coerced."""
    common = {
        "id": "r", "model": "m", "model_version": "1", "created_at": datetime.now(UTC), "warnings": [],
        "status": "done", "features": {}, "label": None, "probability": None, "probabilities": None,
        "error": None, "completed_at": None,
    }  # fmt: skip
    index = schema.model_validate({**common, "task": "classification", "prediction": 2})
    value = schema.model_validate({**common, "task": "regression", "prediction": 2.0})
    assert type(index.prediction) is int and type(value.prediction) is float


def test_the_table_has_a_column_for_every_output_field() -> None:
    assert set(OUTPUT_FIELDS) <= TABLE
    # `prediction` is an integer column (a class); a regressor's value has its own column.
    assert str(predictions.c.prediction.type) == "INTEGER"
    assert "value" in TABLE and predictions.c.value.type.python_type is float


def test_the_repository_writes_every_column() -> None:
    assert set(COLUMNS) == TABLE


def test_the_workers_history_rows_are_exactly_the_tables_columns(iris: SklearnModel) -> None:
    model = regressor()
    done = history_rows(iris, iris.spec.example) + history_rows(model, model.spec.example)
    failed = history_rows(iris, {"sepal_length": 1.0}) + history_rows(model, {})
    assert [r["status"] for r in done + failed] == ["done", "done", "failed", "failed"]
    for row in done + failed:
        assert set(row) == TABLE


def test_a_stored_row_reads_back_as_the_models_output(iris: SklearnModel) -> None:
    """Worker row -> `GET /predictions/{id}`: a class index from `prediction`, a regressor's value from `value`."""
    model = regressor()
    for runtime in (iris, model):
        [output] = runtime.predict([runtime.spec.example])
        [row] = history_rows(runtime, runtime.spec.example)
        shown = record(row)
        assert Output(**{name: getattr(shown, name) for name in OUTPUT_FIELDS}) == output
        assert shown.task == runtime.spec.task and shown.model_version == "1"
