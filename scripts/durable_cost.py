"""What durable acceptance costs: req/s and latency with `MLAPI_API__DURABLE_ACCEPT` off, async and all.

    .venv/bin/python scripts/durable_cost.py [--seconds 8] [--rounds 2] [--clients 64]

Starts one stack (Valkey with `appendonly yes` and `appendfsync everysec`, PostgreSQL, two workers, every row
stored) and three API processes on it, one per setting, with admission control off so that only durability
differs. Then runs `hey` at `--clients` (64) for `--seconds` against `POST /predict` (waiting) and
`POST /predict?wait=false` of each API in turn, alternating the settings within each round and waiting for
the queue to drain before each run. Prints one markdown table: the median over the rounds of hey's req/s and
of its p50 and p99. The machine is shared and noisy: read ratios between rows of one run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from mlapi.bench.load import LoadResult, Target, ensure_hey, run_hey
from mlapi.bench.systems import mlapi_apis
from mlapi.models.spec import ModelSpec
from mlapi.settings import PACKAGE_DIR

SETTINGS = ("off", "async", "all")
MODEL_DIR = PACKAGE_DIR / "models" / "registry" / "diabetes-risk"


def wait_for(url: str, what: str, ok: Callable[[Any], bool] | None = None, timeout_s: float = 120) -> None:
    """A script, not a test: poll a URL until it answers 200 (and `ok` holds for its JSON, when given)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            response = httpx.get(url, timeout=5)
            if response.status_code == 200 and (ok is None or ok(response.json())):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"timed out waiting for {what} ({url})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="hey's duration per run")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each setting and endpoint")
    parser.add_argument("--clients", type=int, default=64, help="hey's concurrent clients")
    args = parser.parse_args()
    hey = ensure_hey()
    if hey is None:
        raise SystemExit("hey is needed: `make hey`, or apt-get install hey")
    body = json.dumps(ModelSpec.read(MODEL_DIR).example).encode()
    results: dict[tuple[str, str], list[LoadResult]] = {}
    variants = {setting: {"MLAPI_API__DURABLE_ACCEPT": setting} for setting in SETTINGS}
    with tempfile.TemporaryDirectory() as tmp, mlapi_apis(MODEL_DIR, Path(tmp), variants, lambda env: None) as urls:
        for _ in range(args.rounds):
            for mode, query in (("waiting", ""), ("wait=false", "?wait=false")):
                for setting, url in urls.items():
                    wait_for(f"{url}/backlog", "the queue to drain", lambda b: b["total"] == 0)
                    target = Target(f"{url}/predict{query}", body)
                    load = run_hey(hey, target, args.clients, args.seconds, Path(tmp) / "body.json")
                    results.setdefault((mode, setting), []).append(load)
    print(f"hey, {args.clients} clients, {args.seconds:g} s per run, median of {args.rounds} round(s); Valkey with "
          "appendonly yes, appendfsync everysec; two workers, every row stored\n")  # fmt: skip
    print("| request | durable_accept | req/s | p50 ms | p99 ms | non-2xx or failed |")
    print("|---|---|---:|---:|---:|---:|")
    for (mode, setting), loads in results.items():
        rps = statistics.median(r.rps for r in loads)
        p50 = statistics.median(r.p50_ms for r in loads)
        p99 = statistics.median(r.p99_ms for r in loads)
        print(f"| {mode} | {setting} | {rps:,.0f} | {p50:.1f} | {p99:.1f} | {sum(r.errors for r in loads)} |")


if __name__ == "__main__":
    main()
