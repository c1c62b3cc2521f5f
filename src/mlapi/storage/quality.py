"""What the history says about the models, in SQL: ground truth, live quality, drift counts and chart statistics.

Every read takes its filters as arguments (model, version, window), so a further filter (the API key that made
the prediction) is added here once. Drift reads the `drift_counts` rollup, which `binned_rows` fills: in the
statement that stores history rows (`PredictionRepository.add`), and here when a profile is added later.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from mlapi.storage.tables import model_versions

ORIGIN = "TIMESTAMPTZ '2000-01-03 00:00:00+00'"
"""Where time buckets start (a Monday at midnight UTC, so days and weeks are whole UTC days and weeks)."""
LOG_LOSS_EPS = 2.220446049250313e-16
"""Probabilities are clipped to [eps, 1 - eps] for the log loss, as scikit-learn clips them (float64's eps)."""
PERCENTILES = (0.5, 0.9, 0.95, 0.99)
EARLIEST = datetime(1, 1, 2, tzinfo=UTC)
"""Before any row (and within what every time zone's conversion can express)."""


def binned_rows(source: str) -> str:
    """A query of every answered row of `source` (columns of `predictions`) in the bins of its version's profile:
    (model, version, minute, feature, bin), one row per profiled column, plus bin -1 for a number outside the
    training range. The bins are `mlapi.models.profile.Column`'s: `width_bucket` over a number's edges, a
    category value's position in `values` (else the `other` bin after them); feature '' is the prediction."""
    return f"""
    SELECT s.model, v.version, date_bin('1 minute', s.created_at, {ORIGIN}) AS minute, c.col->>'name' AS feature,
           b.bin
    FROM {source} AS s
    JOIN model_versions AS v ON v.model = s.model AND v.version::text = s.model_version
    CROSS JOIN LATERAL jsonb_array_elements(v.profile -> 'columns') AS c(col)
    CROSS JOIN LATERAL (
        SELECT CASE WHEN c.col->>'name' = '' THEN coalesce(to_jsonb(s.label), to_jsonb(s.value))
                    ELSE s.features -> (c.col->>'name') END #>> '{{}}' AS x
    ) AS i
    CROSS JOIN LATERAL (
        SELECT CASE WHEN c.col->>'kind' = 'number'
                    THEN width_bucket(i.x::float8, ARRAY(SELECT jsonb_array_elements_text(c.col->'edges')::float8))
                    ELSE coalesce(
                        (SELECT e.o::int - 1 FROM jsonb_array_elements_text(c.col->'values') WITH ORDINALITY AS e(v, o)
                         WHERE e.v = i.x),
                        jsonb_array_length(c.col->'values'))
               END AS bin
        UNION ALL
        SELECT -1 WHERE c.col->>'kind' = 'number'
                    AND (i.x::float8 < (c.col->>'minimum')::float8 OR i.x::float8 > (c.col->>'maximum')::float8)
    ) AS b
    WHERE s.status = 'done' AND i.x IS NOT NULL"""


def count_bins(source: str) -> str:
    """Add `source`'s rows to the drift rollup. Keys are taken in order, so concurrent workers lock rollup rows
    in the same order and never deadlock each other."""
    return f"""
    INSERT INTO drift_counts (model, version, minute, feature, bin, n)
    SELECT model, version, minute, feature, bin, count(*) FROM ({binned_rows(source)}) AS t
    GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5
    ON CONFLICT (model, version, minute, feature, bin) DO UPDATE SET n = drift_counts.n + EXCLUDED.n"""


async def add_profile(conn: AsyncConnection, model: str, version: int, profile: Mapping[str, Any]) -> None:
    """Give a version without one its profile, and count the history it already has into the rollup. Writers
    wait meanwhile (SHARE lock), so every row is counted once: before, here; after, by its own statement."""
    await conn.execute(sa.text("LOCK TABLE predictions IN SHARE MODE"))
    t = model_versions.c
    updated = await conn.execute(
        sa.update(model_versions).where(t.model == model, t.version == version, t.profile.is_(None))
        .values(profile=profile).returning(t.version)
    )  # fmt: skip
    if updated.first() is not None:
        old = "(SELECT * FROM predictions WHERE model = :model AND model_version = :version)"
        await conn.execute(sa.text(count_bins(old)), {"model": model, "version": str(version)})


@dataclass(frozen=True)
class Window:
    """The rows a statistic covers: one model (and version), created in [since, until); with `key`, only the rows
    that API key made."""

    model: str | None
    since: datetime
    until: datetime
    version: int | None = None
    prediction: int | None = None
    key: str | None = None

    def where(self, table: str = "predictions") -> tuple[str, dict[str, Any]]:
        clauses = [f"{table}.created_at >= :since", f"{table}.created_at < :until"]
        params: dict[str, Any] = {"since": self.since, "until": self.until}
        if self.model is not None:
            clauses.append(f"{table}.model = :model")
            params["model"] = self.model
        if self.version is not None:
            clauses.append(f"{table}.model_version = :version")
            params["version"] = str(self.version)
        if self.prediction is not None:
            clauses.append(f"{table}.prediction = :prediction")
            params["prediction"] = self.prediction
        if self.key is not None:
            clauses.append(f"{table}.key = :key")
            params["key"] = self.key
        return " AND ".join(clauses), params


@dataclass(frozen=True)
class Truth:
    """Ground truth for one prediction: a class index or a value."""

    id: str
    truth: int | None
    value: float | None


_CLASSIFIER_QUALITY = sa.text(f"""
WITH r AS (
    SELECT date_bin(:width, created_at, {ORIGIN}) AS b, truth AS y, prediction AS p,
           (probabilities ->> (CAST(:labels AS text[]))[truth + 1])::float8 AS p_true,
           (probabilities ->> (CAST(:labels AS text[]))[2])::float8 AS s,
           (SELECT sum(e.v::float8 ^ 2) FROM jsonb_each_text(probabilities) AS e(k, v)) AS sq
    FROM predictions
    WHERE model = :model AND model_version = :version AND feedback_at IS NOT NULL AND status = 'done'
      AND created_at >= :since AND created_at < :until AND (CAST(:key AS text) IS NULL OR key = :key)
), ranked AS (
    -- Average ranks of the positive class's score, over the window and within each bucket (ties share a rank).
    SELECT r.*, rank() OVER (ORDER BY s) + (count(*) OVER (PARTITION BY s) - 1) / 2.0 AS rank_all,
           rank() OVER (PARTITION BY b ORDER BY s) + (count(*) OVER (PARTITION BY b, s) - 1) / 2.0 AS rank_b
    FROM r
), g AS (
    SELECT CASE WHEN grouping(b) = 1 THEN NULL ELSE b END AS bucket, count(*) AS n,
           avg((p = y)::int)::float8 AS accuracy,
           (avg(sq - 2 * p_true + 1) / :classes)::float8 AS brier,
           avg(-ln(least(greatest(p_true, {LOG_LOSS_EPS}), 1 - {LOG_LOSS_EPS})))::float8 AS log_loss,
           count(*) FILTER (WHERE y = 1) AS pos, count(*) FILTER (WHERE y = 0) AS neg,
           CASE WHEN grouping(b) = 1 THEN sum(rank_all) FILTER (WHERE y = 1)
                ELSE sum(rank_b) FILTER (WHERE y = 1) END AS pos_ranks,
           count(s) = count(*) AS scored
    FROM ranked GROUP BY GROUPING SETS ((b), ())
)
SELECT bucket, n, accuracy, brier, log_loss,
       CASE WHEN :classes = 2 AND scored AND pos > 0 AND neg > 0
            THEN ((pos_ranks - pos * (pos + 1) / 2.0) / (pos * neg))::float8 END AS roc_auc
FROM g ORDER BY bucket NULLS FIRST
""")

_CONFUSION = sa.text(f"""
SELECT CASE WHEN grouping(b) = 1 THEN NULL ELSE b END AS bucket, y, p, count(*) AS n
FROM (SELECT date_bin(:width, created_at, {ORIGIN}) AS b, truth AS y, prediction AS p FROM predictions
      WHERE model = :model AND model_version = :version AND feedback_at IS NOT NULL AND status = 'done'
        AND created_at >= :since AND created_at < :until AND (CAST(:key AS text) IS NULL OR key = :key)) AS r
GROUP BY GROUPING SETS ((b, y, p), (y, p))
""")

_REGRESSOR_QUALITY = sa.text(f"""
SELECT CASE WHEN grouping(b) = 1 THEN NULL ELSE b END AS bucket, count(*) AS n,
       avg(abs(value - truth_value)) AS mae, sqrt(avg((value - truth_value) ^ 2)) AS rmse,
       CASE WHEN count(*) > 1 AND var_pop(truth_value) > 0
            THEN 1 - sum((value - truth_value) ^ 2) / (count(*) * var_pop(truth_value)) END AS r2
FROM (SELECT date_bin(:width, created_at, {ORIGIN}) AS b, value, truth_value FROM predictions
      WHERE model = :model AND model_version = :version AND feedback_at IS NOT NULL AND status = 'done'
        AND created_at >= :since AND created_at < :until AND (CAST(:key AS text) IS NULL OR key = :key)) AS r
GROUP BY GROUPING SETS ((b), ()) ORDER BY bucket NULLS FIRST
""")


class QualityRepository:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._single = engine.execution_options(isolation_level="AUTOCOMMIT")

    async def targets(self, ids: Sequence[str], key: str | None) -> dict[str, dict[str, Any]]:
        """The stored rows feedback names, by id (of those `key` made, with a key): model, version, task, status."""
        query = sa.text(
            "SELECT id::text AS id, model, model_version, task, status FROM predictions "
            "WHERE id = ANY(CAST(:ids AS uuid[])) AND (CAST(:key AS text) IS NULL OR key = :key)"
        )
        async with self._single.connect() as conn:
            rows = (await conn.execute(query, {"ids": list(ids), "key": key})).mappings().all()
        return {r["id"]: dict(r) for r in rows}

    async def set_truth(self, items: Sequence[Truth]) -> dict[str, datetime]:
        """Store ground truth for every item in one statement (all or nothing); the latest wins. Returns each
        id's feedback time."""
        query = sa.text(
            "UPDATE predictions AS p SET truth = t.truth, truth_value = t.value, feedback_at = clock_timestamp() "
            "FROM unnest(CAST(:ids AS uuid[]), CAST(:truths AS integer[]), CAST(:values AS float8[])) "
            "AS t(id, truth, value) WHERE p.id = t.id RETURNING p.id::text AS id, p.feedback_at"
        )
        params = {"ids": [i.id for i in items], "truths": [i.truth for i in items], "values": [i.value for i in items]}
        async with self._single.connect() as conn:
            rows = (await conn.execute(query, params)).all()
        return {r.id: r.feedback_at for r in rows}

    async def versions(self, window: Window) -> list[int]:
        """The versions of the window's model that answered in it."""
        where, params = window.where()
        query = sa.text(f"SELECT DISTINCT model_version FROM predictions WHERE {where}")
        async with self._single.connect() as conn:
            found = (await conn.execute(query, params)).scalars().all()
        return sorted(int(v) for v in found if v.isdigit())

    async def classifier_quality(
        self, window: Window, labels: Sequence[str], width: timedelta
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Per bucket and overall (bucket None): labelled count, accuracy, Brier score, log loss, ROC AUC; and
        the confusion counts (bucket, true class, predicted class, n) to derive F1 from."""
        params = self._params(window, width) | {"labels": list(labels), "classes": len(labels)}
        async with self._single.connect() as conn:
            figures = (await conn.execute(_CLASSIFIER_QUALITY, params)).mappings().all()
            confusion = (await conn.execute(_CONFUSION, params)).mappings().all()
        return [dict(r) for r in figures], [dict(r) for r in confusion]

    async def regressor_quality(self, window: Window, width: timedelta) -> list[dict[str, Any]]:
        """Per bucket and overall (bucket None): labelled count, MAE, RMSE and R²."""
        async with self._single.connect() as conn:
            rows = (await conn.execute(_REGRESSOR_QUALITY, self._params(window, width))).mappings().all()
        return [dict(r) for r in rows]

    @staticmethod
    def _params(window: Window, width: timedelta) -> dict[str, Any]:
        return {"model": window.model, "version": str(window.version), "since": window.since,
                "until": window.until, "width": width, "key": window.key}  # fmt: skip

    async def drift_versions(self, window: Window) -> list[int]:
        """The versions of the window's model with rows counted for drift in it."""
        query = sa.text(
            "SELECT DISTINCT version FROM drift_counts WHERE model = :model AND minute >= :since AND minute < :until"
        )
        async with self._single.connect() as conn:
            found = await conn.execute(query, {"model": window.model, "since": window.since, "until": window.until})
        return sorted(found.scalars().all())

    async def bin_counts(self, window: Window) -> dict[str, dict[int, int]]:
        """Rows of a model version per profiled column and bin, over the minutes starting in the window."""
        query = sa.text(
            "SELECT feature, bin, sum(n)::bigint AS n FROM drift_counts WHERE model = :model AND version = :version "
            "AND minute >= :since AND minute < :until GROUP BY feature, bin"
        )
        params = {"model": window.model, "version": window.version, "since": window.since, "until": window.until}
        out: dict[str, dict[int, int]] = {}
        async with self._single.connect() as conn:
            for feature, bin_, n in (await conn.execute(query, params)).all():
                out.setdefault(feature, {})[bin_] = int(n)
        return out

    async def profile(self, model: str, version: int) -> dict[str, Any] | None:
        query = sa.text("SELECT profile FROM model_versions WHERE model = :model AND version = :version")
        async with self._single.connect() as conn:
            found: dict[str, Any] | None = (await conn.execute(query, {"model": model, "version": version})).scalar()
        return found

    async def first_created(self, window: Window) -> datetime | None:
        """When the oldest row matching the window's filters (not its start) was created."""
        where, params = Window(
            window.model, EARLIEST, window.until, window.version, window.prediction, window.key
        ).where()
        query = sa.text(f"SELECT min(created_at) FROM predictions WHERE {where}")
        async with self._single.connect() as conn:
            found: datetime | None = (await conn.execute(query, params)).scalar()
        return found

    async def stats(self, window: Window, width: timedelta, bins: int) -> dict[str, Any]:
        """Counts per time bucket and series (a class's label, `value` for a regressor, `failed`, `queued`), the
        histogram of the predicted class's probability per label and of regressors' values, and latency percentiles."""
        where, params = window.where()
        params |= {"width": width, "bins": bins}
        over_time = f"""
            SELECT date_bin(:width, created_at, {ORIGIN}) AS bucket,
                   CASE WHEN status <> 'done' THEN status WHEN task = 'regression' THEN 'value'
                        ELSE coalesce(label, 'class ' || prediction) END AS series, count(*) AS n
            FROM predictions WHERE {where} GROUP BY 1, 2 ORDER BY 1, 2"""
        probability = f"""
            SELECT coalesce(label, 'class ' || prediction) AS series,
                   least(width_bucket(probability, 0, 1, :bins), :bins) AS bin, count(*) AS n
            FROM predictions WHERE {where} AND status = 'done' AND probability IS NOT NULL
            GROUP BY 1, 2 ORDER BY 1, 2"""
        values = f"""
            WITH r AS (SELECT value FROM predictions WHERE {where} AND status = 'done' AND task = 'regression'),
                 m AS (SELECT min(value) AS lo, max(value) AS hi FROM r)
            SELECT m.lo, m.hi, CASE WHEN m.hi = m.lo THEN 1 ELSE least(width_bucket(r.value, m.lo, m.hi, :bins), :bins)
                   END AS bin, count(*) AS n
            FROM r, m GROUP BY 1, 2, 3 ORDER BY 3"""
        latency = f"""
            SELECT count(*) AS n, percentile_cont(CAST(:percentiles AS float8[])) WITHIN GROUP
                   (ORDER BY extract(epoch FROM completed_at - created_at) * 1000) AS ms
            FROM predictions WHERE {where} AND status = 'done' AND completed_at IS NOT NULL"""
        queries = {"over_time": over_time, "probability": probability, "values": values, "latency": latency}
        params["percentiles"] = list(PERCENTILES)

        async def run(query: str) -> list[sa.RowMapping]:
            async with self._single.connect() as conn:  # each on its own connection: PostgreSQL runs them at once
                return list((await conn.execute(sa.text(query), params)).mappings().all())

        found = await asyncio.gather(*(run(q) for q in queries.values()))
        out: dict[str, Any] = dict(zip(queries, found, strict=True))
        out["latency"] = out["latency"][0]
        return out
