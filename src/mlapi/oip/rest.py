"""The Open Inference Protocol v2 over HTTP (`/v2/...`), with Triton's binary tensor extension.

Errors are the protocol's `{"error": "..."}` (the prediction ids too where a client needs them); the JSON API's
own error format is untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

import msgspec
import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute

from mlapi.api.access import Caller, check_idempotency_key
from mlapi.api.dataplane import Idempotent
from mlapi.api.errors import error_headers, json_response
from mlapi.api.routes import CallerDep, DataPlaneDep, caller
from mlapi.api.routes.predict import IdempotencyKey
from mlapi.oip import codec
from mlapi.oip.codec import InvalidTensor
from mlapi.oip.handler import FAILURES, Handler, InferRequest, InferResponse, check_parameters, message, status

HEADER_LENGTH = "Inference-Header-Content-Length"
"""Triton's binary extension: the length of the JSON header that starts the body; raw tensors follow it."""


class _Route(APIRoute):
    """Answers the core's errors in the protocol's format, whichever route raised them."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        route = super().get_route_handler()

        async def answer(request: Request) -> Response:
            try:
                return await route(request)
            except FAILURES as e:
                code, _ = status(e)
                body: dict[str, Any] = {"error": message(e)}
                if ids := getattr(e, "ids", None):
                    body["ids"] = ids
                return json_response(body, code, error_headers(code, e))

        return answer


router = APIRouter(prefix="/v2", tags=["Open Inference Protocol v2"], route_class=_Route)


async def _handler(dp: DataPlaneDep) -> Handler:
    return Handler(dp)


HandlerDep = Annotated[Handler, Depends(_handler)]


class _Output(msgspec.Struct):
    name: str
    parameters: dict[str, Any] = {}


class _Input(msgspec.Struct):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] = {}
    data: list[Any] | None = None


class _Request(msgspec.Struct):
    inputs: list[_Input]
    id: str = ""
    parameters: dict[str, Any] = {}
    outputs: list[_Output] = []


_decoder = msgspec.json.Decoder(_Request)


@router.get("", dependencies=[Depends(caller)])
async def server_metadata(oip: HandlerDep) -> Response:
    return json_response(oip.server_metadata())


@router.get("/health/live")
async def live() -> Response:
    return json_response({"live": True})


@router.get("/health/ready")
async def ready(oip: HandlerDep) -> Response:
    if reasons := await oip.ready():
        return json_response({"error": "; ".join(reasons)}, 503)
    return json_response({"ready": True})


@router.get("/models/{name}")
async def model_metadata(oip: HandlerDep, caller: CallerDep, name: str) -> Response:
    return _metadata(oip, name, "", caller)


@router.get("/models/{name}/versions/{version}")
async def version_metadata(oip: HandlerDep, caller: CallerDep, name: str, version: str) -> Response:
    return _metadata(oip, name, version, caller)


@router.get("/models/{name}/ready")
async def model_ready(oip: HandlerDep, caller: CallerDep, name: str) -> Response:
    return await _ready(oip, name, "", caller)


@router.get("/models/{name}/versions/{version}/ready")
async def version_ready(oip: HandlerDep, caller: CallerDep, name: str, version: str) -> Response:
    return await _ready(oip, name, version, caller)


@router.post("/models/{name}/infer")
async def model_infer(
    oip: HandlerDep, caller: CallerDep, name: str, request: Request, idempotency_key: IdempotencyKey = None
) -> Response:
    return await _infer(oip, name, "", request, caller, idempotency_key)


@router.post("/models/{name}/versions/{version}/infer")
async def version_infer(
    oip: HandlerDep, caller: CallerDep, name: str, version: str, request: Request,
    idempotency_key: IdempotencyKey = None,
) -> Response:  # fmt: skip
    return await _infer(oip, name, version, request, caller, idempotency_key)


def _metadata(oip: Handler, name: str, version: str, caller: Caller) -> Response:
    meta = oip.model_metadata(name, version, caller)
    return json_response(msgspec.to_builtins(meta))


async def _ready(oip: Handler, name: str, version: str, caller: Caller) -> Response:
    if reason := await oip.model_ready(name, version, caller):
        return json_response({"error": reason}, 503)
    return json_response({"name": name, "ready": True})


async def _infer(
    oip: Handler, name: str, version: str, request: Request, caller: Caller, idempotency_key: str | None
) -> Response:
    spec = oip.version(name, version).spec  # an unknown model is a 404 before the body is read
    oip.dp.permit(caller, model=spec.name)  # and one the key may not use a 403
    idempotent = None
    if idempotency_key is not None:
        idempotent = Idempotent(request.url.path, check_idempotency_key(idempotency_key))
    body = await request.body()
    header, binary = _split(request, body)
    try:
        parsed = _decoder.decode(header)
    except msgspec.DecodeError as e:  # ValidationError included: it says where, e.g. `$.inputs[0].shape`
        raise InvalidTensor(f"malformed inference request: {e}") from None
    binary_outputs = _binary_outputs(parsed)
    answer = await oip.infer(
        name,
        version,
        InferRequest(_inputs(parsed, binary), [o.name for o in parsed.outputs], parsed.id),
        caller,
        idempotent,
    )
    return _response(answer, binary_outputs)


def _split(request: Request, body: bytes) -> tuple[bytes, bytes]:
    """The JSON header and the raw tensors after it (none without the binary extension)."""
    if (encoding := request.headers.get("content-encoding", "identity")) != "identity":
        raise InvalidTensor(f"Content-Encoding {encoding!r} is not supported: send the body uncompressed")
    declared = request.headers.get(HEADER_LENGTH)
    if declared is None:
        return body, b""
    if not (declared.isascii() and declared.isdigit() and int(declared) <= len(body)):
        raise InvalidTensor(f"{HEADER_LENGTH} must be a length within the body's {len(body)} bytes, not {declared!r}")
    return body[: int(declared)], body[int(declared) :]


def _inputs(parsed: _Request, binary: bytes) -> list[codec.Input]:
    """Each input with its data: JSON values, or its slice of the raw tensors that follow the header."""
    inputs, offset = [], 0
    for tensor in parsed.inputs:
        check_parameters("input", tensor.name, tensor.parameters)
        size = tensor.parameters.get("binary_data_size")
        data: bytes | list[Any]
        if size is None:
            if tensor.data is None:
                raise InvalidTensor(f"input {tensor.name!r} has neither `data` nor `binary_data_size`")
            data = tensor.data
        elif tensor.data is not None or not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidTensor(f"input {tensor.name!r}: `binary_data_size` must be a byte count, without `data`")
        elif offset + size > len(binary):
            raise InvalidTensor(f"input {tensor.name!r}: its {size} bytes run past the body's end")
        else:
            data, offset = binary[offset : offset + size], offset + size
        inputs.append(codec.Input(tensor.name, tensor.datatype, tensor.shape, data))
    if offset != len(binary):
        raise InvalidTensor(f"the body has {len(binary) - offset} bytes after the inputs' binary data")
    return inputs


def _binary_outputs(parsed: _Request) -> set[str] | bool:
    """The outputs to answer as raw tensors: named ones, or True for every output."""
    everything = parsed.parameters.get("binary_data_output") is True
    if not parsed.outputs:
        return everything
    binary = set()
    for output in parsed.outputs:
        check_parameters("output", output.name, output.parameters)
        wanted = output.parameters.get("binary_data")
        if wanted is True or (everything and wanted is not False):
            binary.add(output.name)
    return binary


def _response(answer: InferResponse, binary: set[str] | bool) -> Response:
    """JSON, or with any output in binary a JSON header followed by those outputs' raw contents, in order."""
    outputs, raw = [], []
    for tensor in answer.outputs:
        out: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}
        if binary is True or (binary and tensor.name in binary):
            raw.append(codec.to_bytes(tensor))
            out["parameters"] = {"binary_data_size": len(raw[-1])}
        else:
            out["data"] = codec.to_values(tensor)
        outputs.append(out)
    body = {"model_name": answer.model_name, "model_version": answer.model_version, "id": answer.id,
            "outputs": outputs}  # fmt: skip
    if not raw:
        return json_response(body)
    header = orjson.dumps(body)
    return Response(
        header + b"".join(raw), 200, {HEADER_LENGTH: str(len(header))}, media_type="application/octet-stream"
    )
