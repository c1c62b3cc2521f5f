"""Keeps `make bench` (`python -m benchmarks`) working: a very short run against the floor baseline, paused
between its points as every system is, and the parsers it relies on.

The run uses hey when it is installed and the package's small httpx load generator otherwise; a test
never installs anything. It asserts that the report is written, nothing about speed.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from benchmarks import Plan, Point, Results, UnitCounts, capacity, run
from benchmarks.load import LoadResult, parse_hey
from benchmarks.probes import Memory, parse_server_timing
from benchmarks.report import MARKDOWN, PLOT, markdown
from mlapi.settings import Settings

HEY_OUTPUT = """
Summary:
  Total:\t2.0012 secs
  Slowest:\t0.0312 secs
  Fastest:\t0.0004 secs
  Average:\t0.0021 secs
  Requests/sec:\t4512.3456

Latency distribution:
  10% in 0.0008 secs
  50% in 0.0017 secs
  90% in 0.0035 secs
  99% in 0.0102 secs

Status code distribution:
  [200]\t9000 responses
  [503]\t20 responses

Error distribution:
  [4]\tPost "http://127.0.0.1:1/predict": dial tcp 127.0.0.1:1: connect: connection refused
"""


def test_parse_hey_reads_rate_percentiles_and_errors() -> None:
    result = parse_hey(HEY_OUTPUT, concurrency=16)
    assert (result.requests, result.ok, result.errors) == (9020, 9000, 24)
    assert result.rps == 4512.3456
    assert (result.p50_ms, result.p99_ms) == pytest.approx((1.7, 10.2))


def test_parse_server_timing() -> None:
    header = 'total;dur=3.21, queue;dur=0.40, predict;dur=0.35, store;dur=1.10, batch;desc="7 rows"'
    assert parse_server_timing(header) == {"total": 3.21, "queue": 0.4, "predict": 0.35, "store": 1.1, "batch": 7}


def test_short_bench_against_the_floor_writes_the_report(tmp_path: Path) -> None:
    plan = replace(
        Plan(), systems=("floor",), concurrencies=(1, 4), seconds=1.0, warmup_s=0.5, rewarm_s=0.2, history_rows=(),
        extras=False, out_dir=tmp_path, use_hey=shutil.which("hey") is not None, quick=True,
    )  # fmt: skip
    results = run(plan, Settings())
    assert [p.result.concurrency for p in results.points] == [1, 4]
    assert all(p.result.ok > 0 and p.result.errors == 0 for p in results.points)
    report = (tmp_path / MARKDOWN).read_text()
    assert "bare FastAPI floor" in report
    assert results.point("floor", 4) is not None and results.point("floor", 4).memory["server"].pss_mb > 0  # type: ignore[union-attr]
    assert (tmp_path / PLOT).read_bytes().startswith(b"\x89PNG")


def _point(system: str, rps: float, **extra: object) -> Point:
    result = LoadResult(concurrency=64, seconds=10.0, requests=int(rps * 10), ok=int(rps * 10), errors=0, rps=rps,
                        p50_ms=50.0, p99_ms=100.0, tool="hey", client_cpu_s=1.0)  # fmt: skip
    return Point(system, result, **extra)  # type: ignore[arg-type]


def test_the_report_names_the_best_peer_and_capacity_plans_from_the_counts(tmp_path: Path) -> None:
    """The report's and capacity.md's arithmetic on made-up points: which peer is best, and the plan's rows."""
    memory = {"server": Memory(300.0, 400.0, 3)}
    results = Results(replace(Plan(), concurrencies=(64,), out_dir=tmp_path, extras=False), "hey",
                      datetime.now(UTC), "test machine")  # fmt: skip
    results.points = [
        _point("mlserver", 700.0, cpu_s={"server": 7.0}, memory=memory),
        _point("litserve", 900.0, cpu_s={"server": 9.0}, memory=memory),
        _point("floor", 3000.0, cpu_s={"server": 6.0}),
        _point("mlapi", 1000.0, cpu_s={"api": 5.0, "workers": 4.0, "redis": 1.0, "postgres": 2.0}, persisted=10_000,
               memory={"api": Memory(100.0, 120.0, 1), "workers": Memory(150.0, 200.0, 2)},
               units=UnitCounts({"xadd": 10_000, "xreadgroup": 500}, wal_bytes=9_000_000, rows_written=20_000,
                                predictions_inserted=10_000)),
    ]  # fmt: skip
    best = results.best_peer(64)
    assert best is not None and best.system == "litserve"
    unit = capacity.unit(results)
    assert unit is not None
    assert (unit.api_cpu_us, unit.worker_cpu_us, unit.redis_commands, unit.pg_rows, unit.wal_bytes) == (
        500.0, 400.0, 1.05, 2.0, 900.0,
    )  # fmt: skip
    report_text = markdown(results)
    assert "the best peer** (LitServe, batching) | 64 | 1.11x" in report_text
    assert "✅ met: memory" in report_text  # 250 MB of PSS against LitServe's 300
    page = capacity.markdown(results)
    assert "| 100,000 | 72 | 58 |" in page  # 100 k/s x 500 µs / 70 % of a core; x 400 µs
