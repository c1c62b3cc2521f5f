"""What the main table does not show, on one more stack once the systems are stopped: what each optional
feature costs (one API process per setting), the Open Inference Protocol's paths beside the JSON one, and each
runtime through the whole stack."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks import oip, runtimes
from benchmarks.load import LoadGenerator, LoadResult, Target
from benchmarks.systems import mlapi_apis, wait_for
from mlapi.models.spec import ModelSpec
from mlapi.servers import free_port

if TYPE_CHECKING:
    from benchmarks import Plan

BACKLOG = "10000"
"""MLAPI_API__MAX_BACKLOG when admission control is on: the product's default."""
FEATURES = {
    "all off (the targets' setting)": {},
    "auth required (a key, no rate limit)": {"MLAPI_API__AUTH": "required"},
    "durable acceptance (MLAPI_API__DURABLE_ACCEPT=async)": {"MLAPI_API__DURABLE_ACCEPT": "async"},
    f"admission control (MLAPI_API__MAX_BACKLOG={BACKLOG})": {"MLAPI_API__MAX_BACKLOG": BACKLOG},
}
OIP = "oip"


@dataclass
class Extras:
    features: dict[str, LoadResult] = field(default_factory=dict)
    oip: dict[str, LoadResult] = field(default_factory=dict)
    runtimes: list[runtimes.Row] = field(default_factory=list)


def _median(results: list[LoadResult]) -> LoadResult:
    first = results[0]
    return LoadResult(
        concurrency=first.concurrency, seconds=sum(r.seconds for r in results),
        requests=sum(r.requests for r in results), ok=sum(r.ok for r in results),
        errors=sum(r.errors for r in results), rps=statistics.median(r.rps for r in results),
        p50_ms=statistics.median(r.p50_ms for r in results), p99_ms=statistics.median(r.p99_ms for r in results),
        tool=first.tool, client_cpu_s=sum(r.client_cpu_s for r in results),
    )  # fmt: skip


def measure(plan: Plan, load: LoadGenerator, model_dir: Path, work: Path) -> Extras:
    out = Extras()
    spec = ModelSpec.read(model_dir)
    body = json.dumps(spec.example).encode()
    grpc_port = free_port()
    variants = {**FEATURES, OIP: {"MLAPI_API__GRPC_PORT": str(grpc_port)}}
    keys: dict[str, tuple[tuple[str, str], ...]] = {}

    def create_key(env: dict[str, str]) -> None:
        created = subprocess.run([sys.executable, "-m", "mlapi", "keys", "create", "bench"], env=env,
                                 capture_output=True, text=True, check=True)  # fmt: skip
        keys["auth"] = (("Authorization", f"Bearer {created.stdout.split()[-1]}"),)

    print("starting one more mlapi stack: the features' cost, the protocol's paths, the runtimes ...", flush=True)
    with mlapi_apis(model_dir, work, variants, create_key) as apis:
        drained = f"{apis.urls[next(iter(FEATURES))]}/backlog"  # the queue all the APIs share
        targets = {name: Target(f"{apis.urls[name]}/predict", body, keys["auth"] if "auth" in name else ())
                   for name in FEATURES}  # fmt: skip
        for target in targets.values():
            load.run(target, 16, plan.warmup_s)
        runs: dict[str, list[LoadResult]] = {name: [] for name in FEATURES}
        names = list(FEATURES)
        for r in range(plan.rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:  # each goes first in turn
                wait_for(drained, "the queue to drain", lambda b: b["total"] == 0)
                runs[name].append(load.run(targets[name], plan.top, plan.extras_seconds))
                result = runs[name][-1]
                print(f"  {name:<56} {result.rps:8,.0f} req/s  p99 {result.p99_ms:6.1f} ms  errors {result.errors}",
                      flush=True)  # fmt: skip
        out.features = {name: _median(results) for name, results in runs.items()}
        paths = oip.measure(apis.urls[OIP], f"127.0.0.1:{grpc_port}", spec, plan.top, plan.extras_seconds, plan.rounds)
        out.oip = {name: _median(results) for name, results in paths.items()}
        for name, result in out.oip.items():
            print(f"  OIP {name:<20} {result.rps:8,.0f} req/s  p99 {result.p99_ms:6.1f} ms  errors {result.errors}",
                  flush=True)  # fmt: skip
        out.runtimes = runtimes.measure(apis.urls[next(iter(FEATURES))], load, plan.top, plan.extras_seconds,
                                        plan.runtime_repeats)  # fmt: skip
    return out
