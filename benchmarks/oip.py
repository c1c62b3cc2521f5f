"""The Open Inference Protocol's paths beside the JSON API: req/s and latency for one diabetes-risk row.

Four paths loaded in turn with the same clients for the same time, rotated within each round: the JSON API
(`POST /models/diabetes-risk/predict`), v2 REST with a JSON body, v2 REST with Triton's binary tensor
extension (binary outputs too, as tritonclient asks by default) and gRPC `ModelInfer` (raw contents). hey
speaks no gRPC, so one asyncio load generator drives all four alike (aiohttp; grpc.aio with the request
serialised once), each answer's status checked and its body read but not parsed.
"""

from __future__ import annotations

import asyncio
import resource
import time
from collections.abc import Awaitable, Callable

import aiohttp
import grpc
import numpy as np
import orjson
from tritonclient.grpc import service_pb2

from benchmarks.load import LoadResult
from mlapi.models.spec import ModelSpec
from mlapi.oip import codec

INFER = "/inference.GRPCInferenceService/ModelInfer"
Call = Callable[[], Awaitable[None]]


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
    return bytes(request.SerializeToString())


async def _measure(call: Call, clients: int, seconds: float) -> LoadResult:
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
    return LoadResult(
        concurrency=clients, seconds=elapsed, requests=len(ms) + failed, ok=len(ms), errors=failed,
        rps=len(ms) / elapsed, p50_ms=ms[len(ms) // 2] if ms else float("nan"),
        p99_ms=ms[int(len(ms) * 0.99)] if ms else float("nan"), tool="asyncio (aiohttp, grpc.aio)",
        client_cpu_s=used,
    )  # fmt: skip


async def _load(base: str, grpc_address: str, spec: ModelSpec, clients: int, seconds: float,
                rounds: int) -> dict[str, list[LoadResult]]:  # fmt: skip
    paths = {
        "JSON API": f"{base}/models/{spec.name}/predict",
        "v2 REST, JSON": f"{base}/v2/models/{spec.name}/infer",
        "v2 REST, binary": f"{base}/v2/models/{spec.name}/infer",
    }
    http_bodies = bodies(spec)
    request = grpc_request(spec)
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session, grpc.aio.insecure_channel(grpc_address) as ch:
        # bytes in, bytes out: the request is serialised once
        infer: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = ch.unary_unary(
            INFER
        )  # bytes in, bytes out: the request is serialised once

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
        runs: dict[str, list[LoadResult]] = {name: [] for name in calls}
        for round_ in range(rounds):
            names = list(calls)
            names = names[round_ % len(names) :] + names[: round_ % len(names)]  # each path leads one round
            for name in names:
                runs[name].append(await _measure(calls[name], clients, seconds))
    return runs


def measure(base: str, grpc_address: str, spec: ModelSpec, clients: int, seconds: float,
            rounds: int) -> dict[str, list[LoadResult]]:  # fmt: skip
    """Each path's load results, one per round."""
    return asyncio.run(_load(base, grpc_address, spec, clients, seconds, rounds))
