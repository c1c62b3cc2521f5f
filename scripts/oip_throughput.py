"""What the Open Inference Protocol paths cost against the JSON API: req/s and latency for one diabetes-risk row.

    .venv/bin/python scripts/oip_throughput.py [--seconds 5] [--rounds 3] [--clients 16]

Starts one stack (Valkey, PostgreSQL, the API with its gRPC service, two workers, every row stored), then
loads four paths in turn with the same `--clients` concurrent clients for `--seconds` each, the paths rotated
within each round: the JSON API (`POST /models/diabetes-risk/predict`), v2 REST with a JSON body, v2 REST with
Triton's binary tensor extension (binary outputs too, as tritonclient asks by default) and gRPC `ModelInfer`
(raw contents). One asyncio load generator for all four (aiohttp; grpc.aio with the request serialised once),
each answer's status checked and its body read but not parsed. Prints one markdown table: the median over the
rounds of req/s, p50 and p99, and the generator's own CPU per request (it shares the machine). The machine is
shared and noisy: read ratios between rows of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
import httpx
import numpy as np
import orjson
from tritonclient.grpc import service_pb2

from mlapi.bench.systems import mlapi_stack
from mlapi.models.spec import ModelSpec
from mlapi.oip import codec
from mlapi.servers import free_port
from mlapi.settings import PACKAGE_DIR

MODEL_DIR = PACKAGE_DIR / "models" / "registry" / "diabetes-risk"
INFER = "/inference.GRPCInferenceService/ModelInfer"
Call = Callable[[], Awaitable[None]]


@dataclass
class Run:
    rps: float
    p50_ms: float
    p99_ms: float
    failed: int
    client_cpu_ms: float
    """The load generator's CPU time per answered request."""


def tensors(spec: ModelSpec) -> list[codec.Tensor]:
    """The spec's example as one-row tensors, each of the datatype the model's metadata declares."""
    made = []
    for meta in codec.inputs(spec):
        value = spec.example[meta.name]
        data = np.array([str(value).encode()], dtype=object) if meta.datatype == "BYTES" else np.array([value])
        made.append(codec.Tensor(meta.name, meta.datatype, [1], data))
    return made


def bodies(spec: ModelSpec) -> dict[str, tuple[bytes, dict[str, str]]]:
    """Each HTTP path's body and headers."""
    example = tensors(spec)
    as_json = [{"name": t.name, "datatype": t.datatype, "shape": t.shape, "data": codec.to_values(t)} for t in example]
    raw = [codec.to_bytes(t) for t in example]
    binary = [
        {"name": t.name, "datatype": t.datatype, "shape": t.shape, "parameters": {"binary_data_size": len(r)}}
        for t, r in zip(example, raw, strict=True)
    ]
    header = orjson.dumps({"inputs": binary, "parameters": {"binary_data_output": True}})
    json_type = {"Content-Type": "application/json"}
    return {
        "JSON API": (orjson.dumps(spec.example), json_type),
        "v2 REST, JSON": (orjson.dumps({"inputs": as_json}), json_type),
        "v2 REST, binary": (header + b"".join(raw), {"Inference-Header-Content-Length": str(len(header))}),
    }


def grpc_request(spec: ModelSpec) -> bytes:
    request = service_pb2.ModelInferRequest(model_name=spec.name)
    for tensor in tensors(spec):
        request.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        request.raw_input_contents.append(codec.to_bytes(tensor))
    return request.SerializeToString()


async def measure(call: Call, clients: int, seconds: float) -> Run:
    latencies: list[float] = []
    failed = 0
    deadline = time.monotonic() + seconds

    async def client() -> None:
        nonlocal failed
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                await call()
            except Exception:  # a failed request counts; the load goes on
                failed += 1
                continue
            latencies.append(time.perf_counter() - started)

    cpu = resource.getrusage(resource.RUSAGE_SELF)
    began = time.monotonic()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.monotonic() - began
    after = resource.getrusage(resource.RUSAGE_SELF)
    used = (after.ru_utime - cpu.ru_utime) + (after.ru_stime - cpu.ru_stime)
    ms = sorted(x * 1000 for x in latencies)
    return Run(len(ms) / elapsed, ms[len(ms) // 2], ms[int(len(ms) * 0.99)], failed, used * 1000 / max(1, len(ms)))


async def load(base: str, grpc_address: str, spec: ModelSpec, args: argparse.Namespace) -> dict[str, list[Run]]:
    paths = {
        "JSON API": f"{base}/models/{spec.name}/predict",
        "v2 REST, JSON": f"{base}/v2/models/{spec.name}/infer",
        "v2 REST, binary": f"{base}/v2/models/{spec.name}/infer",
    }
    http_bodies = bodies(spec)
    request = grpc_request(spec)
    connector = aiohttp.TCPConnector(limit=args.clients)
    async with aiohttp.ClientSession(connector=connector) as session, grpc.aio.insecure_channel(grpc_address) as ch:
        infer = ch.unary_unary(INFER)  # bytes in, bytes out: the request is serialised once

        def http_call(name: str) -> Call:
            body, headers = http_bodies[name]

            async def call() -> None:
                async with session.post(paths[name], data=body, headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"{name}: HTTP {response.status}")

            return call

        async def grpc_call() -> None:
            await infer(request)

        calls: dict[str, Call] = {name: http_call(name) for name in paths}
        calls["gRPC ModelInfer"] = grpc_call
        answer = service_pb2.ModelInferResponse.FromString(await infer(request))
        assert [o.name for o in answer.outputs] == [o.name for o in codec.outputs(spec)], answer
        for call in calls.values():
            await call()  # each path answers 200 before it is measured
        runs: dict[str, list[Run]] = {name: [] for name in calls}
        for round_ in range(args.rounds):
            names = list(calls)
            names = names[round_ % len(names) :] + names[: round_ % len(names)]  # each path leads one round
            for name in names:
                runs[name].append(await measure(calls[name], args.clients, args.seconds))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each path's run")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each path, rotated")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    args = parser.parse_args()
    spec = ModelSpec.read(MODEL_DIR)
    grpc_port = free_port()
    with tempfile.TemporaryDirectory() as tmp, mlapi_stack(MODEL_DIR, Path(tmp), grpc_port) as stack:
        assert httpx.get(f"{stack.base_url}/v2/health/ready").status_code == 200
        runs = asyncio.run(load(stack.base_url, f"127.0.0.1:{grpc_port}", spec, args))
    print(f"{args.clients} concurrent clients, {args.seconds:g} s per run, median of {args.rounds} rotated round(s); "
          "one row of diabetes-risk per request; two workers, every row stored\n")  # fmt: skip
    print("| path | req/s | p50 ms | p99 ms | failed | client CPU ms/req |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, results in runs.items():
        median = {k: statistics.median(getattr(r, k) for r in results) for k in ("rps", "p50_ms", "p99_ms")}
        cpu = statistics.median(r.client_cpu_ms for r in results)
        print(f"| {name} | {median['rps']:,.0f} | {median['p50_ms']:.1f} | {median['p99_ms']:.1f} | "
              f"{sum(r.failed for r in results)} | {cpu:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
