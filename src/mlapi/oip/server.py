"""The Open Inference Protocol v2 over gRPC: `GRPCInferenceService`, served by `grpc.aio` on the API's event loop.

Inputs arrive in `raw_input_contents` or in the typed contents; outputs go in `raw_output_contents`. The core's
errors become status codes (`handler.ERRORS`): bad input is INVALID_ARGUMENT, never INTERNAL.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from google.protobuf.message import Message
from grpc import aio

from mlapi.api.access import Caller, check_idempotency_key, credential
from mlapi.api.dataplane import DataPlane, Idempotent
from mlapi.oip import codec
from mlapi.oip.codec import InvalidTensor
from mlapi.oip.handler import FAILURES, Handler, InferRequest, check_parameters, message, status
from mlapi.oip.proto import grpc_predict_v2_pb2 as pb
from mlapi.oip.proto.grpc_predict_v2_pb2_grpc import (
    GRPCInferenceServiceServicer,
    add_GRPCInferenceServiceServicer_to_server,
)

log = logging.getLogger("mlapi.api")

STOP_GRACE_S = 5.0
"""Calls in flight at shutdown get this long to finish (uvicorn's own graceful shutdown is as long)."""
CONTENTS = {
    "BOOL": "bool_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
"""The typed contents field of each datatype inputs may have."""

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)
Context = aio.ServicerContext[Any, Any]


def _translated(
    call: Callable[[Servicer, Req, Context], Awaitable[Resp]],
) -> Callable[[Servicer, Req, Context], Awaitable[Resp]]:
    """Answer the core's errors with their status code and message."""

    @functools.wraps(call)
    async def answer(self: Servicer, request: Req, context: Context) -> Resp:
        try:
            return await call(self, request, context)
        except FAILURES as e:
            await context.abort(status(e)[1], message(e))
            raise  # abort raises; this line is never reached

    return answer


def _metadata(context: Context) -> dict[str, str]:
    return {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}


class Servicer(GRPCInferenceServiceServicer):
    """The health calls are open; every other call carries an API key in its metadata (`authorization: Bearer
    <key>`, or `x-api-key`) when auth is required."""

    def __init__(self, handler: Handler) -> None:
        self.oip = handler

    async def _caller(self, context: Context) -> Caller:
        metadata = _metadata(context)
        return await self.oip.dp.authenticate(credential(metadata.get("authorization"), metadata.get("x-api-key")))

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @_translated
    async def ServerReady(self, request: pb.ServerReadyRequest, context: Context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=not await self.oip.ready())

    @_translated
    async def ModelReady(self, request: pb.ModelReadyRequest, context: Context) -> pb.ModelReadyResponse:
        caller = await self._caller(context)
        return pb.ModelReadyResponse(ready=await self.oip.model_ready(request.name, request.version, caller) is None)

    @_translated
    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Context) -> pb.ServerMetadataResponse:
        await self._caller(context)
        return pb.ServerMetadataResponse(**self.oip.server_metadata())

    @_translated
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Context) -> pb.ModelMetadataResponse:
        meta = self.oip.model_metadata(request.name, request.version, await self._caller(context))

        def tensors(metas: list[codec.TensorMeta]) -> list[pb.ModelMetadataResponse.TensorMetadata]:
            return [
                pb.ModelMetadataResponse.TensorMetadata(name=m.name, datatype=m.datatype, shape=m.shape) for m in metas
            ]

        return pb.ModelMetadataResponse(
            name=meta.name, versions=meta.versions, platform=meta.platform,
            inputs=tensors(meta.inputs), outputs=tensors(meta.outputs),
        )  # fmt: skip

    @_translated
    async def ModelInfer(self, request: pb.ModelInferRequest, context: Context) -> pb.ModelInferResponse:
        caller = await self._caller(context)
        idempotent = None
        if (key := _metadata(context).get("idempotency-key")) is not None:
            route = f"grpc:ModelInfer/{request.model_name}/{request.model_version}"
            idempotent = Idempotent(route, check_idempotency_key(key))
        for output in request.outputs:
            check_parameters("output", output.name, output.parameters)
        wanted = [o.name for o in request.outputs]
        answer = await self.oip.infer(
            request.model_name,
            request.model_version,
            InferRequest(_inputs(request), wanted, request.id),
            caller,
            idempotent,
        )
        return pb.ModelInferResponse(
            model_name=answer.model_name, model_version=answer.model_version, id=answer.id,
            outputs=[pb.ModelInferResponse.InferOutputTensor(name=t.name, datatype=t.datatype, shape=t.shape)
                     for t in answer.outputs],
            raw_output_contents=[codec.to_bytes(t) for t in answer.outputs],
        )  # fmt: skip


def _inputs(request: pb.ModelInferRequest) -> list[codec.Input]:
    """Each input with its raw contents (in `raw_input_contents`, in the inputs' order) or its typed contents."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidTensor(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs")
    inputs = []
    for i, tensor in enumerate(request.inputs):
        check_parameters("input", tensor.name, tensor.parameters)
        data: bytes | list[Any]
        if raw:
            if tensor.HasField("contents"):
                raise InvalidTensor(f"input {tensor.name!r} has contents, and raw_input_contents are given too")
            data = raw[i]
        else:
            field = CONTENTS.get(tensor.datatype)
            data = list(getattr(tensor.contents, field)) if field else []
        inputs.append(codec.Input(tensor.name, tensor.datatype, list(tensor.shape), data))
    return inputs


async def start(dp: DataPlane, host: str, port: int) -> aio.Server:
    """Serve the protocol on `host:port` on the running event loop; refuse to start if the port is taken."""
    server = aio.server(
        options=[
            ("grpc.so_reuseport", 0),  # a port another process holds is an error, not a shared port
            ("grpc.max_receive_message_length", dp.settings.api.max_body_bytes),
        ]
    )
    add_GRPCInferenceServiceServicer_to_server(Servicer(Handler(dp)), server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        server.add_insecure_port(address)
    except RuntimeError as e:
        raise SystemExit(f"gRPC cannot listen on {address} ({e}); move it with MLAPI_API__GRPC_PORT (0: off)") from None
    await server.start()
    log.info("gRPC (Open Inference Protocol v2) on %s", address)
    return server
