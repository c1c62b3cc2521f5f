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
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx

from mlapi.bench.load import LoadResult, Target, ensure_hey, run_hey
from mlapi.models.spec import ModelSpec
from mlapi.servers import PostgresServer, RedisServer, free_port
from mlapi.settings import PACKAGE_DIR
from mlapi.storage.migrate import migrate

SETTINGS = ("off", "async", "all")
WORKERS = 2
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


@contextmanager
def stack(work: Path) -> Iterator[dict[str, str]]:
    """Valkey, PostgreSQL, the workers and one API per setting; yields each setting's base URL."""
    with ExitStack() as exits:
        redis = RedisServer(work / "redis", free_port()).start()
        exits.callback(redis.stop)
        postgres = PostgresServer(work / "postgres", free_port()).start()
        exits.callback(postgres.stop)
        migrate("postgresql+asyncpg://" + postgres.url.removeprefix("postgresql://"), MODEL_DIR.parent)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("MLAPI_")},
            "MLAPI_REDIS_URL": redis.url,
            "MLAPI_DATABASE_URL": postgres.url,
            "MLAPI_BUNDLED_MODELS_DIR": str(MODEL_DIR.parent),
            "MLAPI_LOG_LEVEL": "WARNING",
            "MLAPI_API__MAX_BACKLOG": "0",
            "MLAPI_API__GRPC_PORT": "0",  # three API processes side by side, measured over HTTP only
            "MLAPI_API__AUTH": "off",
        }
        children: list[subprocess.Popen[bytes]] = []
        exits.callback(stop, children)
        urls = {}
        for setting in SETTINGS:
            port = free_port()
            api_env = {**env, "MLAPI_API__PORT": str(port), "MLAPI_API__DURABLE_ACCEPT": setting}
            children.append(spawn(["api"], work / f"api-{setting}.log", api_env))
            urls[setting] = f"http://127.0.0.1:{port}"
        children += [spawn(["worker"], work / f"worker-{i + 1}.log", env) for i in range(WORKERS)]
        for setting, url in urls.items():
            wait_for(f"{url}/readyz", f"the API with durable acceptance {setting}")
        yield urls


def spawn(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "mlapi", *args], stdout=out, stderr=subprocess.STDOUT, env=env)


def stop(children: list[subprocess.Popen[bytes]]) -> None:
    for child in children:
        child.terminate()
    for child in children:
        child.wait(15)


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
    with tempfile.TemporaryDirectory() as tmp, stack(Path(tmp)) as urls:
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
