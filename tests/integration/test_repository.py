"""The history on a real PostgreSQL: idempotent writes, keyset paging, filters, migrations."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import AsyncEngine

from mlapi.storage.repository import FEEDBACK_COLUMNS, Cursor, Filters, InvalidCursor, PredictionRepository
from mlapi.storage.tables import metadata, predictions

pytestmark = pytest.mark.integration
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def row(n: int, created_at: datetime | None = None, model: str = "diabetes-risk", **change: Any) -> dict[str, Any]:
    return {
        "id": str(uuid.UUID(int=n)),
        "model": model,
        "model_version": "1",
        "task": "classification",
        "status": "done",
        "features": {"age": n},
        "prediction": n % 2,
        "value": None,
        "label": ["no", "yes"][n % 2],
        "probability": 0.9,
        "probabilities": {"no": 0.1, "yes": 0.9},
        "warnings": [],
        "error": None,
        "created_at": created_at or T0 + timedelta(seconds=n),
        "completed_at": T0,
        "key": None,
        **change,
    }


async def test_writes_are_idempotent(repository: PredictionRepository) -> None:
    await repository.add([row(1), row(2)])
    await repository.add([row(2, prediction=1, label="changed"), row(3)])
    page, _ = await repository.page(Filters(), 10)
    assert [r["id"] for r in page] == [str(uuid.UUID(int=n)) for n in (3, 2, 1)]
    assert page[1]["label"] == "no"  # the first write wins; a redelivery changes nothing


async def test_get_returns_the_row_with_json_intact(repository: PredictionRepository) -> None:
    await repository.add([row(5, warnings=["bmi high"])])
    got = await repository.get(str(uuid.UUID(int=5)))
    assert got is not None
    assert got["features"] == {"age": 5} and got["warnings"] == ["bmi high"]
    assert await repository.get(str(uuid.UUID(int=6))) is None


async def test_keyset_pages_cover_every_row_once_even_with_equal_timestamps(repository: PredictionRepository) -> None:
    await repository.add([row(n, created_at=T0 + timedelta(seconds=n // 3)) for n in range(1, 12)])
    seen: list[str] = []
    cursor = None
    while True:
        page, cursor = await repository.page(Filters(), 4, cursor)
        seen += [r["id"] for r in page]
        if cursor is None:
            break
    assert len(seen) == 11 and len(set(seen)) == 11
    keys = [(r["created_at"], r["id"]) for r in (await repository.page(Filters(), 100))[0]]
    assert keys == sorted(keys, reverse=True)


async def test_filters(repository: PredictionRepository) -> None:
    await repository.add([row(n) for n in range(1, 7)] + [row(7, model="iris")])
    assert [r["id"] for r in (await repository.page(Filters(model="iris"), 10))[0]] == [str(uuid.UUID(int=7))]
    ones, _ = await repository.page(Filters(prediction=1, model="diabetes-risk"), 10)
    assert {r["prediction"] for r in ones} == {1} and len(ones) == 3
    window, _ = await repository.page(Filters(since=T0 + timedelta(seconds=2), until=T0 + timedelta(seconds=4)), 10)
    assert [r["created_at"] for r in window] == [T0 + timedelta(seconds=3), T0 + timedelta(seconds=2)]


async def test_a_regression_row_round_trips_its_value(repository: PredictionRepository) -> None:
    value = 0.1 + 0.2  # every bit survives: a double column, not a float4 or a rounded decimal
    regression = row(
        8, model="house-price", model_version="3", task="regression", prediction=None, value=value,
        label=None, probability=None, probabilities=None, features={"mean radius": 1.5},
    )  # fmt: skip
    await repository.add([regression, row(9)])
    got = await repository.get(str(uuid.UUID(int=8)))
    assert got is not None
    assert got["task"] == "regression" and got["value"] == value and got["prediction"] is None
    assert got["label"] is None and got["probabilities"] is None and got["features"] == {"mean radius": 1.5}
    assert got["model_version"] == "3"
    classified = await repository.get(str(uuid.UUID(int=9)))
    assert classified is not None and classified["task"] == "classification" and classified["value"] is None


async def test_an_unknown_task_is_refused(repository: PredictionRepository) -> None:
    with pytest.raises(sa.exc.IntegrityError, match="ck_predictions_task"):
        await repository.add([row(10, task="ranking")])
    assert await repository.get(str(uuid.UUID(int=10))) is None


def test_a_row_is_exactly_the_tables_columns_but_feedback() -> None:
    assert set(row(1)) == {c.name for c in predictions.columns} - set(FEEDBACK_COLUMNS)


def test_cursors_round_trip_and_reject_garbage() -> None:
    cursor = Cursor(T0, str(uuid.UUID(int=1)))
    assert Cursor.decode(cursor.encode()) == cursor
    for garbage in ("not-base64!", "bm9wZQ", "W10"):
        with pytest.raises(InvalidCursor):
            Cursor.decode(garbage)


async def test_the_migrations_build_the_tables_the_code_uses(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        diff = await conn.run_sync(lambda c: compare_metadata(MigrationContext.configure(c), metadata))
    assert diff == []


async def test_a_key_reads_only_its_own_rows_whatever_the_cursor(repository: PredictionRepository) -> None:
    await repository.add([row(n, key="alice" if n % 2 else "bob") for n in range(1, 11)])
    alice = Filters(key="alice")
    first, cursor = await repository.page(alice, 2)
    assert [r["key"] for r in first] == ["alice", "alice"] and cursor is not None
    rest, _ = await repository.page(alice, 10, cursor)
    assert {r["key"] for r in rest} == {"alice"} and len(first) + len(rest) == 5
    # A cursor pointing after bob's newest row still pages alice's rows only.
    bobs_newest = (await repository.page(Filters(key="bob"), 1))[0][0]
    forged = Cursor(bobs_newest["created_at"], str(bobs_newest["id"]))
    assert {r["key"] for r in (await repository.page(alice, 10, forged))[0]} == {"alice"}
    assert len((await repository.page(Filters(), 20))[0]) == 10  # no key: every row (an admin)
    assert await repository.get(str(uuid.UUID(int=1)), "bob") is None
    assert await repository.get(str(uuid.UUID(int=1)), "alice") is not None
    assert len(await repository.get_many([str(uuid.UUID(int=n)) for n in (1, 2, 3)], "alice")) == 2


async def test_paging_one_keys_history_uses_its_index(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await conn.execute(sa.text("SET enable_seqscan = off"))  # a tiny table: ask what the planner can use
        plan = await conn.execute(
            sa.text(
                "EXPLAIN SELECT * FROM predictions WHERE key = 'alice' AND (created_at, id) < (now(), "
                "'00000000-0000-0000-0000-000000000000') ORDER BY created_at DESC, id DESC LIMIT 51"
            )
        )
        text = "\n".join(r[0] for r in plan)
    assert "ix_predictions_key_created" in text and "Sort" not in text
