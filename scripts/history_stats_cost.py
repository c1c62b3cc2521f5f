"""What drift, statistics and quality cost at 1 M rows in the window, on a throwaway embedded PostgreSQL.

Inserts N predictions of diabetes-risk (version 1, seeded with its reference profile) spread over the last 24
hours with `generate_series`, labels a share of them, counts them into the drift rollup with the workers' own
SQL (as a profile added later does), then times each read as the API runs it (median of a few runs):

    .venv/bin/python scripts/history_stats_cost.py [--rows 1000000] [--labelled 0.3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from mlapi.models.profile import psi
from mlapi.servers import PostgresServer, free_port
from mlapi.settings import Settings
from mlapi.storage.migrate import migrate
from mlapi.storage.quality import QualityRepository, Window, count_bins
from mlapi.storage.registry import RegistryRepository
from mlapi.storage.repository import engine_for

INSERT = """
INSERT INTO predictions (id, model, model_version, task, status, features, prediction, label, probability,
                         probabilities, warnings, created_at, completed_at, truth, feedback_at)
SELECT gen_random_uuid(), 'diabetes-risk', '1', 'classification', 'done',
       jsonb_build_object('gender', (ARRAY['Female', 'Male'])[1 + (i % 2)], 'age', round((random() * 80)::numeric, 1),
                          'hypertension', (random() < 0.08)::int, 'heart_disease', (random() < 0.04)::int,
                          'smoking_history', (ARRAY['No Info', 'never', 'former', 'current'])[1 + (i % 4)],
                          'bmi', round((15 + random() * 30)::numeric, 2),
                          'HbA1c_level', round((3.5 + random() * 5.5)::numeric, 1),
                          'blood_glucose_level', 80 + (i % 220)),
       (p > 0.5)::int, CASE WHEN p > 0.5 THEN 'diabetes' ELSE 'no diabetes' END, greatest(p, 1 - p),
       jsonb_build_object('no diabetes', 1 - p, 'diabetes', p), '[]'::jsonb, at, at + interval '4 ms',
       CASE WHEN labelled THEN (random() < p)::int END, CASE WHEN labelled THEN at + interval '1 hour' END
FROM (SELECT i, random() AS p, random() < :labelled AS labelled, now() - (i * (interval '24 hours' / :rows)) AS at
      FROM generate_series(1, :rows) AS i) AS s
"""


async def timed(what: str, run: Callable[[], Awaitable[Any]], repeat: int = 3) -> None:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        await run()
        times.append(time.perf_counter() - started)
    print(f"{what:<58} {statistics.median(times) * 1000:8.0f} ms  (runs: {', '.join(f'{t:.2f}' for t in times)} s)")


async def measure(url: str, rows: int, labelled: float) -> None:
    engine = engine_for(url)
    try:
        async with engine.begin() as conn:
            started = time.perf_counter()
            await conn.execute(sa.text(INSERT), {"rows": rows, "labelled": labelled})
            print(f"inserted {rows:,} rows in {time.perf_counter() - started:.1f} s")
            started = time.perf_counter()
            await conn.execute(sa.text(count_bins("predictions")))
            seconds = time.perf_counter() - started
            print(f"counted them into the drift rollup in {seconds:.1f} s (the workers do this per batch)")
        async with engine.connect() as conn:
            await conn.execute(sa.text("COMMIT"))
            for table in ("predictions", "drift_counts"):
                await conn.execute(sa.text(f"VACUUM ANALYZE {table}"))
            found = (await conn.execute(sa.text(
                "SELECT count(*), count(feedback_at), (SELECT count(*) FROM drift_counts) FROM predictions"
            ))).one()  # fmt: skip
        print(f"{found[0]:,} rows, {found[1]:,} labelled, {found[2]:,} rollup rows\n")
        repository = QualityRepository(engine)
        profile = (await RegistryRepository(engine).snapshot())["diabetes-risk"].versions[1].profile
        assert profile is not None
        until = datetime.now(UTC) + timedelta(minutes=1)
        window = Window("diabetes-risk", until - timedelta(hours=25), until)

        async def drift() -> None:
            counts = await repository.bin_counts(Window(window.model, window.since, window.until, 1))
            for column in profile.columns:
                psi([counts.get(column.name, {}).get(i, 0) for i in range(len(column.shares))], column.shares)

        labels = ["no diabetes", "diabetes"]
        await timed("drift (rollup sum + PSI of 9 columns)", drift)
        await timed("stats, whole window, no filter", lambda: repository.stats(
            Window(None, window.since, window.until), timedelta(hours=1), 10))  # fmt: skip
        await timed("stats, one model version", lambda: repository.stats(
            Window(window.model, window.since, window.until, 1), timedelta(hours=1), 10))  # fmt: skip
        await timed(f"quality of one version ({labelled:.0%} labelled), hourly buckets",
                    lambda: repository.classifier_quality(
                        Window(window.model, window.since, window.until, 1), labels, timedelta(hours=1)))  # fmt: skip
        await timed("versions that answered in the window", lambda: repository.versions(window))
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--labelled", type=float, default=0.3, help="share of the rows given feedback")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = PostgresServer(Path(tmp), free_port()).start()
        try:
            settings = Settings(database_url=server.url)
            migrate(settings.require_database_url(), settings.bundled_models_dir)
            asyncio.run(measure(settings.require_database_url(), args.rows, args.labelled))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
