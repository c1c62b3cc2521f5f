"""What access control costs: req/s and latency with `MLAPI_API__AUTH` off, required, and required with a rate
limit (one that never refuses).

    .venv/bin/python scripts/auth_cost.py [--seconds 8] [--rounds 3] [--clients 64]

Starts one stack (Valkey, PostgreSQL, two workers, every row stored) and three API processes on it that differ
only in access control: `off`; `required`, with a key without a rate limit; `required` with a key limited to
1,000,000 requests a second (so every request pays the shared moving-window check in Redis and none is
refused). Then runs `hey` at `--clients` (64) for `--seconds` against `POST /predict` of each API in turn,
rotating the order every round and waiting for the queue to drain before each run. Prints one markdown table:
the median over the rounds of hey's req/s and of its p50 and p99. The machine is shared and noisy: read
ratios between rows of one run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from durable_cost import MODEL_DIR, wait_for

from mlapi.bench.load import LoadResult, Target, ensure_hey, run_hey
from mlapi.bench.systems import mlapi_apis
from mlapi.models.spec import ModelSpec

SETTINGS = {
    "off": ("off", None),
    "required": ("required", []),
    "required + rate limit": ("required", ["--rate", "1000000/s"]),
}
"""Each API: its MLAPI_API__AUTH, and the options of the key its requests carry (None: no key)."""


@contextmanager
def stack(work: Path) -> Iterator[dict[str, Target]]:
    """Valkey, PostgreSQL, the workers and one API per setting; yields each setting's predict target."""
    headers: dict[str, tuple[tuple[str, str], ...]] = {}

    def create_keys(env: dict[str, str]) -> None:
        for i, (name, (_, options)) in enumerate(SETTINGS.items()):
            if options is None:
                headers[name] = ()
                continue
            created = subprocess.run(
                [sys.executable, "-m", "mlapi", "keys", "create", f"cost-{i}", *options],
                env=env, capture_output=True, text=True, check=True,
            )  # fmt: skip
            headers[name] = (("Authorization", f"Bearer {created.stdout.split()[-1]}"),)

    variants = {name: {"MLAPI_API__AUTH": auth} for name, (auth, _) in SETTINGS.items()}
    body = json.dumps(ModelSpec.read(MODEL_DIR).example).encode()
    with mlapi_apis(MODEL_DIR, work, variants, create_keys) as urls:
        yield {name: Target(f"{url}/predict", body, headers[name]) for name, url in urls.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="hey's duration per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each setting")
    parser.add_argument("--clients", type=int, default=64, help="hey's concurrent clients")
    args = parser.parse_args()
    hey = ensure_hey()
    if hey is None:
        raise SystemExit("hey is needed: `make hey`, or apt-get install hey")
    results: dict[str, list[LoadResult]] = {name: [] for name in SETTINGS}
    with tempfile.TemporaryDirectory() as tmp, stack(Path(tmp)) as targets:
        names = list(targets)
        for round_ in range(args.rounds):
            for name in names[round_ % len(names) :] + names[: round_ % len(names)]:  # each goes first in turn
                backlog = targets[name].url.replace("/predict", "/backlog")
                wait_for(backlog, "the queue to drain", lambda b: b["total"] == 0)
                results[name].append(run_hey(hey, targets[name], args.clients, args.seconds, Path(tmp) / "body.json"))
    print(f"hey, {args.clients} clients, {args.seconds:g} s per run, median of {args.rounds} round(s) in rotating "
          "order; POST /predict, two workers, every row stored\n")  # fmt: skip
    print("| access control | req/s | p50 ms | p99 ms | non-2xx or failed |")
    print("|---|---:|---:|---:|---:|")
    for name, loads in results.items():
        rps = statistics.median(r.rps for r in loads)
        p50 = statistics.median(r.p50_ms for r in loads)
        p99 = statistics.median(r.p99_ms for r in loads)
        print(f"| {name} | {rps:,.0f} | {p50:.1f} | {p99:.1f} | {sum(r.errors for r in loads)} |")


if __name__ == "__main__":
    main()
