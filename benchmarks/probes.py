"""What the benchmark measures beyond req/s: CPU per process, batch sizes, the pipeline's own cost,
where a lone request's time goes, and history reads at scale."""

from __future__ import annotations

import asyncio
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import sqlalchemy as sa

from mlapi.storage.repository import Cursor, engine_for

if TYPE_CHECKING:  # the model libraries load only where a probe needs them
    from mlapi.runtimes.sklearn import SklearnModel

_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_of(stat: str) -> tuple[int, int]:
    """(parent pid, user + system ticks) from a /proc/<pid>/stat line."""
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[1]), int(fields[11]) + int(fields[12])


def cpu_seconds(pids: Iterable[int]) -> float:
    """User plus system CPU time of processes and their live children (PostgreSQL's backends), from /proc."""
    wanted = set(pids)
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent, ticks = _cpu_of((entry / "stat").read_text())
        except OSError:  # gone meanwhile
            continue
        if int(entry.name) in wanted or parent in wanted:
            total += ticks
    return total / _TICKS


def median_cpu_ms(fn: Callable[[], object], repeat: int) -> float:
    """CPU time, like the workers' cost it is compared with; wall time on a shared machine measures the neighbours."""
    fn()
    times = []
    for _ in range(repeat):
        started = time.thread_time()
        fn()
        times.append((time.thread_time() - started) * 1000)
    return statistics.median(times)


@dataclass
class PipelineCost:
    batch: int
    pipeline_ms: float
    """CPU time of `pipeline.predict_proba(DataFrame)` for the whole batch, as a user calls it."""
    lean_ms: float
    """CPU time of mlapi's runtime on the rows (`SklearnModel.scores`, the fast path) for the whole batch."""


def load_bundled(model_dir: Path) -> SklearnModel:
    """A bundled model as a worker holds it."""
    from mlapi import runtimes
    from mlapi.models.spec import ARTIFACT_FILE, ModelSpec
    from mlapi.runtimes.sklearn import SklearnModel

    model = runtimes.load(ModelSpec.read(model_dir), (model_dir / ARTIFACT_FILE).read_bytes())
    assert isinstance(model, SklearnModel)
    return model


def pipeline_costs(model_dir: Path, batches: Iterable[int], repeat: int) -> list[PipelineCost]:
    """Single-threaded, as every system under test predicts."""
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    with threadpool_limits(1):
        return _pipeline_costs(model_dir, batches, repeat)


def _pipeline_costs(model_dir: Path, batches: Iterable[int], repeat: int) -> list[PipelineCost]:
    import pandas as pd

    model = load_bundled(model_dir)
    sample = model.spec.example
    out = []
    for n in batches:
        rows = [dict(sample) for _ in range(n)]
        frame = pd.DataFrame(rows)
        out.append(
            PipelineCost(
                batch=n,
                pipeline_ms=median_cpu_ms(lambda f=frame: model.estimator.predict_proba(f), repeat),  # type: ignore[misc]
                lean_ms=median_cpu_ms(lambda r=rows: model.scores(r), repeat),  # type: ignore[misc]
            )
        )
    return out


@dataclass
class Breakdown:
    """Medians over sequential lone requests, in milliseconds, from the client and `Server-Timing`."""

    requests: int
    client_ms: float
    total_ms: float
    queue_ms: float
    predict_ms: float
    store_ms: float
    batch_rows: float

    @property
    def api_and_reply_ms(self) -> float:
        """Parsing, validation, the reply's way back and the response: the total less the worker's parts."""
        return self.total_ms - self.queue_ms - self.predict_ms - self.store_ms


def parse_server_timing(header: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in header.split(","):
        name, _, params = part.strip().partition(";")
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key == "dur":
                out[name] = float(value)
            elif key == "desc" and name == "batch":
                out[name] = float(value.strip('"').split()[0])
    return out


def lone_requests(url: str, body: bytes, n: int) -> Breakdown:
    timings: list[dict[str, float]] = []
    client: list[float] = []
    with httpx.Client(timeout=10.0) as http:
        for _ in range(n):
            started = time.perf_counter()
            response = http.post(url, content=body, headers={"Content-Type": "application/json"})
            client.append((time.perf_counter() - started) * 1000)
            response.raise_for_status()
            timings.append(parse_server_timing(response.headers.get("server-timing", "")))

    def median(key: str) -> float:
        return statistics.median(t.get(key, float("nan")) for t in timings)

    return Breakdown(
        requests=n, client_ms=statistics.median(client), total_ms=median("total"), queue_ms=median("queue"),
        predict_ms=median("predict"), store_ms=median("store"), batch_rows=median("batch"),
    )  # fmt: skip


async def _fetch(database_url: str, query: str, **params: Any) -> list[sa.Row[Any]]:
    engine = engine_for(database_url)
    try:
        async with engine.connect() as conn:
            return list(await conn.execute(sa.text(query), params))
    finally:
        await engine.dispose()


def stored_rows(database_url: str, since: datetime, until: datetime) -> int:
    """History rows of the requests the API accepted in the window."""
    records = asyncio.run(
        _fetch(
            database_url,
            "SELECT count(*) AS n FROM predictions WHERE created_at >= :since AND created_at < :until",
            since=since,
            until=until,
        )
    )
    return int(records[0].n)


class BatchProbe:
    """Sends a paced trickle of requests beside the load and keeps the batch size each was predicted in.

    The sizes come from the `Server-Timing` header, so they are the requests' view: how many rows shared
    the predict call of a request, weighted by request rather than by batch.
    """

    def __init__(self, url: str, body: bytes, interval_s: float = 0.05) -> None:
        self.url, self.body, self.interval_s = url, body, interval_s
        self.sizes: list[int] = []
        self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> BatchProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        with httpx.Client(timeout=30.0) as http:
            while not self._stop.wait(self.interval_s):  # paced like hey -q, so the probe stays a trickle
                try:
                    response = http.post(self.url, content=self.body, headers={"Content-Type": "application/json"})
                except httpx.HTTPError:
                    self.failed += 1
                    continue
                if response.status_code != 200:
                    self.failed += 1
                    continue
                batch = parse_server_timing(response.headers.get("server-timing", "")).get("batch")
                if batch is not None:
                    self.sizes.append(int(batch))

    def histogram(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for size in self.sizes:
            out[size] = out.get(size, 0) + 1
        return dict(sorted(out.items()))


_GENERATE = """
INSERT INTO predictions (id, model, model_version, status, features, prediction, label, probability,
                         probabilities, warnings, error, created_at, completed_at)
SELECT gen_random_uuid(), 'diabetes-risk', '1', 'done',
       jsonb_build_object('gender', (ARRAY['Female', 'Male'])[1 + i % 2], 'age', 20 + i % 60,
                          'hypertension', i % 7 / 6, 'heart_disease', i % 11 / 10, 'smoking_history', 'never',
                          'bmi', 20 + (i % 150) / 10.0, 'HbA1c_level', 4 + (i % 50) / 10.0,
                          'blood_glucose_level', 80 + i % 200),
       (i % 10 = 0)::int, CASE WHEN i % 10 = 0 THEN 'diabetes' ELSE 'no diabetes' END, 0.9,
       CASE WHEN i % 10 = 0 THEN '{"no diabetes": 0.1, "diabetes": 0.9}'::jsonb
            ELSE '{"no diabetes": 0.9, "diabetes": 0.1}'::jsonb END,
       '[]'::jsonb, NULL, t, t
FROM generate_series(CAST(:first AS bigint), CAST(:last AS bigint)) AS i,
     LATERAL (SELECT now() - i * interval '10 ms' AS t) AS ts
"""


async def _fill(database_url: str, rows: int, progress: Callable[[int], None]) -> str:
    """Make the table hold `rows` generated rows; returns the cursor of the page halfway down."""
    engine = engine_for(database_url)
    try:
        async with engine.begin() as conn:
            have = int((await conn.execute(sa.text("SELECT count(*) FROM predictions"))).scalar_one())
            if have > rows:
                await conn.execute(sa.text("TRUNCATE predictions"))
                have = 0
        chunk = 200_000
        for first in range(have + 1, rows + 1, chunk):
            last = min(rows, first + chunk - 1)
            async with engine.begin() as conn:
                await conn.execute(sa.text(_GENERATE), {"first": first, "last": last})
            progress(last)
        async with engine.begin() as conn:
            await conn.execute(sa.text("ANALYZE predictions"))
            query = "SELECT created_at, id FROM predictions ORDER BY created_at DESC, id DESC OFFSET :n LIMIT 1"
            middle = (await conn.execute(sa.text(query), {"n": rows // 2})).one()
        return Cursor(middle.created_at, str(middle.id)).encode()
    finally:
        await engine.dispose()


def fill_history(database_url: str, rows: int, progress: Callable[[int], None]) -> str:
    return asyncio.run(_fill(database_url, rows, progress))


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent, _ = _cpu_of((entry / "stat").read_text())
            except OSError:
                continue
            out.setdefault(parent, []).append(int(entry.name))
    return out


def tree(pids: Iterable[int]) -> list[int]:
    """The processes and all their descendants."""
    children = _children()
    out, todo = [], list(pids)
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


@dataclass
class Memory:
    pss_mb: float
    """Proportional set size: each shared page divided among the processes sharing it (forked workers, libraries)."""
    rss_mb: float
    """Resident set size: shared pages counted in full in every process."""
    processes: int


def memory(pids: Iterable[int]) -> Memory:
    """PSS and RSS of processes and all their descendants, from /proc/PID/smaps_rollup."""
    pss = rss = 0
    count = 0
    for pid in tree(pids):
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:  # gone, or a kernel thread
            continue
        count += 1
        for line in text.splitlines():
            if line.startswith("Pss:"):
                pss += int(line.split()[1])
            elif line.startswith("Rss:"):
                rss += int(line.split()[1])
    return Memory(pss / 1024, rss / 1024, count)


def redis_commands(url: str) -> dict[str, int]:
    """Calls of each command the server has run since it started (INFO commandstats)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


@dataclass
class PgCounters:
    wal_bytes: int
    """pg_current_wal_lsn() as a byte position."""
    rows_written: int
    """Rows inserted, updated and deleted in the database (pg_stat_database)."""
    predictions_inserted: int
    """Rows inserted into the history table (pg_stat_user_tables)."""


def pg_counters(database_url: str) -> PgCounters:
    rows = asyncio.run(
        _fetch(
            database_url,
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint AS wal, "
            "(SELECT tup_inserted + tup_updated + tup_deleted FROM pg_stat_database "
            " WHERE datname = current_database()) AS written, "
            "(SELECT coalesce(sum(n_tup_ins), 0) FROM pg_stat_user_tables WHERE relname = 'predictions') AS ins",
        )
    )
    return PgCounters(int(rows[0].wal), int(rows[0].written), int(rows[0].ins))


def pg_counters_after(database_url: str, before: PgCounters, stored: int, timeout_s: float = 15.0) -> PgCounters:
    """The counters once the statistics of the rows stored since `before` have reached pg_stat (backends
    report theirs up to 10 s after they go idle); the WAL position is exact at any time."""
    deadline = time.monotonic() + timeout_s
    while True:
        after = pg_counters(database_url)
        if after.predictions_inserted - before.predictions_inserted >= stored or time.monotonic() > deadline:
            return after
        time.sleep(0.5)
