"""Tensors to rows and answers to tensors, for the Open Inference Protocol v2; no HTTP or gRPC here.

Each feature is one input of shape `[N]` or `[N, 1]`; an all-numeric model also takes one `input` of shape
`[N, F]` in spec order. Data arrive as raw little-endian bytes (Triton's binary extension, gRPC's
`raw_input_contents`; `BYTES` elements each prefixed by a 4-byte little-endian length) or as values (JSON,
gRPC's typed contents). Anything else raises `InvalidTensor`, whose message names the input.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlapi.contract import Result, Value
from mlapi.models.spec import Feature, ModelSpec

MATRIX = "input"
"""The one input of the `[N, F]` form, for models whose features are all numbers or flags."""
DTYPES = {
    "BOOL": np.dtype(np.bool_),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
"""The fixed-size datatypes inputs may have (with `BYTES`) and outputs have, as little-endian numpy types."""
ACCEPTS = {
    "category": ("BYTES",),
    "flag": ("INT64", "INT32", "BOOL"),
    "number": ("INT64", "INT32", "FP64", "FP32"),
    MATRIX: ("FP64", "FP32"),
}
"""The datatypes each kind of input takes, the one its metadata declares first."""
LENGTH = struct.Struct("<I")


class InvalidTensor(ValueError):
    """A request's tensors do not fit the model; the message names the input or output."""


@dataclass(frozen=True)
class Input:
    """An input tensor as a request carries it: raw bytes or (possibly nested) values."""

    name: str
    datatype: str
    shape: Sequence[int]
    data: bytes | Sequence[Any]


@dataclass(frozen=True)
class TensorMeta:
    name: str
    datatype: str
    shape: list[int]


@dataclass(frozen=True)
class Tensor:
    """An output tensor: flat data, `BYTES` as an object array of `bytes`."""

    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray[Any, Any]


# ---- metadata -----------------------------------------------------------------------------------------------


def _datatype(feature: Feature) -> str:
    return "FP64" if feature.kind == "number" and not feature.integer else ACCEPTS[feature.kind][0]


def inputs(spec: ModelSpec) -> list[TensorMeta]:
    return [TensorMeta(f.name, _datatype(f), [-1]) for f in spec.features]


def outputs(spec: ModelSpec) -> list[TensorMeta]:
    if spec.task == "regression":
        answer = [TensorMeta("prediction", "FP64", [-1])]
    else:
        answer = [
            TensorMeta("prediction", "INT64", [-1]),
            TensorMeta("label", "BYTES", [-1]),
            TensorMeta("probabilities", "FP64", [-1, len(spec.labels)]),
        ]
    return [*answer, TensorMeta("prediction_ids", "BYTES", [-1])]


def check_outputs(spec: ModelSpec, names: Sequence[str]) -> None:
    """Refuse requested outputs the model does not have, before anything is queued."""
    known = [o.name for o in outputs(spec)]
    for name in names:
        if name not in known:
            raise InvalidTensor(f"unknown output {name!r}; the model's outputs: {', '.join(known)}")
    if len(set(names)) != len(names):
        raise InvalidTensor("an output is requested twice")


# ---- inputs to rows -----------------------------------------------------------------------------------------


def _matrix_form(spec: ModelSpec, given: Sequence[Input]) -> bool:
    names = {f.name for f in spec.features}
    return (
        len(given) == 1
        and given[0].name == MATRIX
        and MATRIX not in names
        and all(f.kind != "category" for f in spec.features)
    )


def rows(spec: ModelSpec, given: Sequence[Input], max_rows: int) -> list[dict[str, Value]]:
    """The rows the tensors hold, by feature name; the values' ranges are the spec's to check."""
    if _matrix_form(spec, given):
        return _matrix_rows(spec, given[0], max_rows)
    features = {f.name: f for f in spec.features}
    by_name: dict[str, Input] = {}
    for tensor in given:
        if tensor.name not in features:
            known = ", ".join(features)
            raise InvalidTensor(f"unknown input {tensor.name!r}; the model's inputs: {known}")
        if tensor.name in by_name:
            raise InvalidTensor(f"input {tensor.name!r} is given twice")
        by_name[tensor.name] = tensor
    if missing := [name for name in features if name not in by_name]:
        raise InvalidTensor(f"missing input(s): {', '.join(map(repr, missing))}")
    columns: dict[str, list[Value]] = {}
    count: tuple[str, int] | None = None
    for name, feature in features.items():
        tensor = by_name[name]
        n = _rows_of(tensor, ACCEPTS[feature.kind], max_rows)
        if count is not None and n != count[1]:
            raise InvalidTensor(f"input {name!r} has {n} rows, input {count[0]!r} has {count[1]}")
        count = (name, n)
        columns[name] = _column(feature, tensor.name, _array(tensor, n))
    return [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]


def _matrix_rows(spec: ModelSpec, tensor: Input, max_rows: int) -> list[dict[str, Value]]:
    width = len(spec.features)
    n = _rows_of(tensor, ACCEPTS[MATRIX], max_rows, width)
    matrix = _array(tensor, n * width).reshape(n, width)
    columns = {f.name: _column(f, MATRIX, matrix[:, j]) for j, f in enumerate(spec.features)}
    return [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]


def _rows_of(tensor: Input, accepts: Sequence[str], max_rows: int, width: int | None = None) -> int:
    """The rows a tensor's shape declares: `[N]` or `[N, 1]` for a feature, `[N, width]` for the matrix."""
    name, shape = tensor.name, list(tensor.shape)
    if tensor.datatype not in accepts:
        raise InvalidTensor(f"input {name!r} has datatype {tensor.datatype!r}; it takes {' or '.join(accepts)}")
    forms = [[width]] if width else [[], [1]]
    if not (1 <= len(shape) <= 2 and shape[1:] in forms and all(d >= 0 for d in shape)):
        wanted = f"[N, {width}]" if width else "[N] or [N, 1]"
        raise InvalidTensor(f"input {name!r} has shape {shape}; it takes {wanted}")
    n = shape[0]
    if n == 0:
        raise InvalidTensor(f"input {name!r} has no rows")
    if n > max_rows:
        raise InvalidTensor(f"input {name!r} has {n} rows; at most {max_rows} per request")
    return n


def _array(tensor: Input, size: int) -> np.ndarray[Any, Any]:
    """A tensor's `size` elements, flat: a numpy array of its datatype, `BYTES` as objects (`bytes` or `str`)."""
    name, datatype, data = tensor.name, tensor.datatype, tensor.data
    if isinstance(data, bytes | bytearray | memoryview):
        array = _from_bytes(name, datatype, bytes(data))
    elif datatype == "BYTES":
        array = _objects(list(_leaves(name, data)))
    else:
        array = _from_values(name, datatype, data)
    if array.size != size:
        raise InvalidTensor(f"input {name!r} holds {array.size} values; its shape needs {size}")
    return array


def _from_bytes(name: str, datatype: str, raw: bytes) -> np.ndarray[Any, Any]:
    if datatype == "BYTES":
        return _objects(list(split_bytes(name, raw)))
    dtype = DTYPES[datatype]
    if len(raw) % dtype.itemsize:
        raise InvalidTensor(f"input {name!r} has {len(raw)} bytes, not a whole number of {datatype} elements")
    if datatype == "BOOL":
        flags = np.frombuffer(raw, np.uint8)
        if (flags > 1).any():
            raise InvalidTensor(f"input {name!r}: BOOL bytes must be 0 or 1")
        return flags.astype(np.bool_)
    return np.frombuffer(raw, dtype)


KINDS = {"BOOL": "b", "INT32": "iu", "INT64": "iu", "FP32": "iuf", "FP64": "iuf"}
"""The numpy kinds of values each datatype takes from JSON or typed contents (JSON has no 32-bit floats)."""


def _from_values(name: str, datatype: str, values: Sequence[Any]) -> np.ndarray[Any, Any]:
    try:
        array = np.asarray(values)
    except (ValueError, OverflowError) as e:
        raise InvalidTensor(f"input {name!r}: its data are not a regular array of numbers ({e})") from None
    if array.size and array.dtype.kind not in KINDS[datatype]:
        raise InvalidTensor(f"input {name!r}: its data do not all fit {datatype}")
    dtype = DTYPES[datatype]
    typed = array.astype(dtype).ravel()
    if dtype.kind == "i" and array.dtype != dtype and not np.array_equal(typed, array.ravel()):
        raise InvalidTensor(f"input {name!r}: a value is out of the range of {datatype}")
    return typed


def _leaves(name: str, values: Any) -> Iterator[str | bytes]:
    """The elements of (possibly nested) `BYTES` data, each text or bytes."""
    for value in values:
        if isinstance(value, str | bytes):
            yield value
        elif isinstance(value, list | tuple):
            yield from _leaves(name, value)
        else:
            raise InvalidTensor(f"input {name!r}: BYTES elements must be strings, not {type(value).__name__}")


def split_bytes(name: str, raw: bytes) -> Iterator[bytes]:
    """The elements of a raw `BYTES` tensor: each a 4-byte little-endian length, then that many bytes."""
    offset = 0
    while offset < len(raw):
        if offset + LENGTH.size > len(raw):
            raise InvalidTensor(f"input {name!r}: BYTES data end inside an element's 4-byte length")
        (length,) = LENGTH.unpack_from(raw, offset)
        offset += LENGTH.size
        if offset + length > len(raw):
            raise InvalidTensor(f"input {name!r}: a BYTES element of {length} bytes runs past the data's end")
        yield raw[offset : offset + length]
        offset += length


def _column(feature: Feature, name: str, array: np.ndarray[Any, Any]) -> list[Value]:
    """A feature's values from its tensor, as the JSON API would receive them."""
    if feature.kind == "category":
        try:
            return [v if isinstance(v, str) else v.decode() for v in array]
        except UnicodeDecodeError:
            raise InvalidTensor(f"input {name!r}: BYTES elements must be UTF-8 text") from None
    if feature.kind == "flag" or feature.integer:
        if array.dtype.kind == "f":
            whole = np.isfinite(array) & (np.floor(array) == array) & (np.abs(array) < 2.0**63)
            if not whole.all():
                row = int(np.argmin(whole))
                raise InvalidTensor(f"input {name!r}: {feature.name!r} takes whole numbers; row {row} is {array[row]}")
        return array.astype(np.int64).tolist()  # type: ignore[no-any-return]
    return array.astype(np.float64).tolist()  # type: ignore[no-any-return]


# ---- answers to outputs -------------------------------------------------------------------------------------


def encode(spec: ModelSpec, results: Sequence[Result], wanted: Sequence[str] = ()) -> list[Tensor]:
    """The answers as output tensors, those `wanted` (all when empty) in the order asked; `probabilities` only
    where the model gives them."""
    n = len(results)
    made: dict[str, Tensor] = {}
    for meta in outputs(spec):
        if wanted and meta.name not in wanted:
            continue
        if meta.name == "prediction":
            data = np.array([r.prediction for r in results], DTYPES[meta.datatype])
        elif meta.name == "label":
            data = _objects([(r.label or "").encode() for r in results])
        elif meta.name == "prediction_ids":
            data = _objects([r.id.encode() for r in results])
        elif all(r.probabilities is not None for r in results):
            data = np.array([[r.probabilities[label] for label in spec.labels] for r in results])  # type: ignore[index]
        else:
            continue
        made[meta.name] = Tensor(meta.name, meta.datatype, [n, *meta.shape[1:]], data.ravel())
    return [made[name] for name in (wanted or made) if name in made]


def _objects(items: Sequence[str | bytes]) -> np.ndarray[Any, Any]:
    """A flat object array (`np.array` would make one of fixed-width strings, dropping trailing NULs)."""
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


def to_bytes(tensor: Tensor) -> bytes:
    """A tensor's raw contents: little-endian elements, `BYTES` each after its 4-byte little-endian length."""
    if tensor.datatype == "BYTES":
        return b"".join(LENGTH.pack(len(item)) + item for item in tensor.data)
    return tensor.data.astype(DTYPES[tensor.datatype]).tobytes()


def to_values(tensor: Tensor) -> list[Any]:
    """A tensor's contents as JSON values, flat; `BYTES` as text."""
    if tensor.datatype == "BYTES":
        return [item.decode() for item in tensor.data]
    return tensor.data.tolist()  # type: ignore[no-any-return]
