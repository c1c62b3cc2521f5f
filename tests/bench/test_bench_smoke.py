"""Keeps `make bench` (`python -m benchmarks`) working: a very short run against the floor baseline, paused
between its points as every system is, and the parsers it relies on.

The run uses hey when it is installed and the package's small httpx load generator otherwise; a test
never installs anything. It asserts that the report is written, nothing about speed.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from benchmarks import Plan, run
from benchmarks.load import parse_hey
from benchmarks.probes import parse_server_timing
from benchmarks.report import MARKDOWN, PLOT
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
