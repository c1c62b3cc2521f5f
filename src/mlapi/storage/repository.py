"""The predictions repository: idempotent batch writes and keyset-paged history reads."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from mlapi.storage.quality import count_bins
from mlapi.storage.tables import predictions

FEEDBACK_COLUMNS = ("truth", "truth_value", "feedback_at")
"""Written by feedback, never by the workers."""
COLUMNS = [c.name for c in predictions.columns if c.name not in FEEDBACK_COLUMNS]
_JSON_COLUMNS = {"features", "probabilities", "warnings"}


def _array_type(column: sa.Column[Any]) -> str:
    if column.name in _JSON_COLUMNS:
        return "jsonb"
    return str(column.type.compile(dialect=postgresql.dialect()))  # type: ignore[no-untyped-call]


# One statement for a whole batch, whatever its size: the rows travel as one array per column, so the
# statement text never changes and PostgreSQL plans it once. A redelivered message inserts nothing, and so
# counts nothing into the drift rollup, which the same statement adds the inserted rows to.
_INSERT = sa.text(
    f"WITH new AS (INSERT INTO predictions ({', '.join(COLUMNS)}) SELECT * FROM unnest("
    + ", ".join(f"CAST(:{c.name} AS {_array_type(c)}[])" for c in predictions.columns if c.name in COLUMNS)
    + ") ON CONFLICT (id) DO NOTHING RETURNING *)"
    + count_bins("new")
)


_OUTAGE_SQLSTATES = ("08", "57P", "53", "40001", "40P01")
"""Connection exceptions, the server shutting down or starting, insufficient resources; and a transaction the
server rolled back to be tried again (a serialization failure or a deadlock)."""


def database_unreachable(e: BaseException) -> bool:
    """Whether a database error means the server is away for now (try again later), rather than a statement or
    a row it refuses."""
    if isinstance(e, OSError | sa.exc.OperationalError | sa.exc.InterfaceError | sa.exc.TimeoutError):
        return True
    if isinstance(e, sa.exc.DBAPIError):
        state = str(getattr(e.orig, "sqlstate", None) or "")
        return e.connection_invalidated or state.startswith(_OUTAGE_SQLSTATES)
    return False


def engine_for(url: str) -> AsyncEngine:
    """A pool whose connection attempts give up after 5 s (asyncpg's default is 60), so a database that hangs
    is an error callers can handle, not a stall."""
    return create_async_engine(url, pool_size=5, max_overflow=10, pool_recycle=1800, connect_args={"timeout": 5})


class InvalidCursor(ValueError):
    pass


@dataclass(frozen=True)
class Cursor:
    """Position after the last row of a page, in the history's order (newest first)."""

    created_at: datetime
    id: str

    def encode(self) -> str:
        raw = json.dumps([self.created_at.isoformat(), self.id]).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        try:
            created_at, id_ = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
            return cls(datetime.fromisoformat(created_at), str(id_))
        except (binascii.Error, ValueError, TypeError) as e:
            raise InvalidCursor(f"malformed cursor {text!r}") from e


@dataclass(frozen=True)
class Filters:
    key: str | None = None
    """Only the rows this API key made (the caller's own, or an admin's choice); None: every row."""
    model: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    prediction: int | None = None
    labelled: bool | None = None
    """Only predictions with (True) or without (False) ground truth."""


class PredictionRepository:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        # Every method runs one statement, which PostgreSQL makes a transaction of its own: in autocommit
        # it costs one round trip instead of three (BEGIN, the statement, COMMIT or ROLLBACK).
        self._single = engine.execution_options(isolation_level="AUTOCOMMIT")

    async def add(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert history rows in one statement and one transaction; rows whose id exists are left alone."""
        if not rows:
            return
        params = {
            c: [json.dumps(r[c]) if c in _JSON_COLUMNS and r[c] is not None else r[c] for r in rows] for c in COLUMNS
        }
        async with self._single.connect() as conn:
            await conn.execute(_INSERT, params)

    async def get(self, prediction_id: str, key: str | None = None) -> Mapping[str, Any] | None:
        """A row by id; with `key`, only if that key made it (another key's row is as absent as a missing one)."""
        rows = await self.get_many([prediction_id], key)
        return rows[0] if rows else None

    async def get_many(self, ids: Sequence[str], key: str | None = None) -> list[dict[str, Any]]:
        """The rows of these ids that exist (and, with `key`, that key made), in no particular order."""
        query = sa.select(predictions).where(predictions.c.id.in_(ids))
        if key is not None:
            query = query.where(predictions.c.key == key)
        async with self._single.connect() as conn:
            return [dict(r) for r in (await conn.execute(query)).mappings()]

    async def page(
        self, filters: Filters, limit: int, after: Cursor | None = None
    ) -> tuple[list[dict[str, Any]], Cursor | None]:
        """Newest first; returns the page and the cursor of the next one (None on the last page)."""
        t = predictions.c
        query = sa.select(predictions).order_by(t.created_at.desc(), t.id.desc()).limit(limit + 1)
        if after is not None:
            query = query.where(
                sa.tuple_(t.created_at, t.id)
                < sa.tuple_(sa.literal(after.created_at, t.created_at.type), sa.literal(after.id, t.id.type))
            )
        if filters.key is not None:
            query = query.where(t.key == filters.key)
        if filters.model is not None:
            query = query.where(t.model == filters.model)
        if filters.since is not None:
            query = query.where(t.created_at >= filters.since)
        if filters.until is not None:
            query = query.where(t.created_at < filters.until)
        if filters.prediction is not None:
            query = query.where(t.prediction == filters.prediction)
        if filters.labelled is not None:
            query = query.where(t.feedback_at.isnot(None) if filters.labelled else t.feedback_at.is_(None))
        async with self._single.connect() as conn:
            rows = [dict(r) for r in (await conn.execute(query)).mappings()]
        if len(rows) <= limit:
            return rows, None
        last = rows[limit - 1]
        return rows[:limit], Cursor(last["created_at"], str(last["id"]))

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))
