"""Runtimes: each loads one kind of artifact once and predicts batches of validated rows, with no HTTP in sight.

A runtime is one module of this package, chosen by the spec's `runtime` field, with three functions:
`load(artifact: bytes, spec: ModelSpec) -> Runtime` (on a worker), and on the user's machine
`inspect_artifact(artifact: bytes) -> Inspection` (what the file records about itself, for the spec) and
`dump(model: object) -> bytes | None` (an in-memory model of its library in the runtime's format; None for
another library's). Only that module imports its ML library, so the API can import this package (to sniff
uploads and to tell which runtimes a process can run) without any.
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import zipfile
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol, cast

from mlapi.contract import Output, Value
from mlapi.models.spec import ModelSpec, Task

RUNTIMES: dict[str, str] = {
    "sklearn": "mlapi.runtimes.sklearn",
    "xgboost": "mlapi.runtimes.xgboost",
    "lightgbm": "mlapi.runtimes.lightgbm",
    "onnx": "mlapi.runtimes.onnx",
}
"""Module of each runtime, by the name a spec gives in `runtime`."""

_BASE = [("numpy", "numpy"), ("pandas", "pandas")]
# What each runtime imports, as (import name, distribution name), and the extra that installs it.
_REQUIRES: dict[str, tuple[list[tuple[str, str]], str]] = {
    "sklearn": ([("sklearn", "scikit-learn"), ("skops", "skops"), *_BASE], "model"),
    "xgboost": ([("xgboost", "xgboost-cpu"), *_BASE], "xgboost"),
    "lightgbm": ([("lightgbm", "lightgbm"), *_BASE], "lightgbm"),
    "onnx": ([("onnxruntime", "onnxruntime"), ("onnx", "onnx"), *_BASE], "onnx"),
}


class Inspection(NamedTuple):
    """What a model records about itself, for inferring its spec and checking it against one."""

    features: list[str] | None
    """Names of the inputs it was trained on, in order, where it records them."""
    classes: list[Any] | None
    """A classifier's classes, in the order of its probability columns, where it records them."""
    task: Task | None
    """What the model says it is, where it says."""
    n_features: int | None = None
    """How many inputs it takes, where it says."""


PICKLE_REFUSAL = (
    "pickle files are never loaded on a server; convert it on your machine with `mlapi models add --from-pickle`"
)
# Magic numbers of the compressions joblib writes; a compressed joblib file is a pickle inside.
_COMPRESSED = {
    b"\x1f\x8b": "gzip",
    b"BZh": "bz2",
    b"\xfd7zXZ": "xz",
    b"\x5d\x00": "lzma",
    b"\x04\x22\x4d\x18": "lz4",
}


class Runtime(Protocol):
    """A loaded model version: `predict` answers a batch of validated rows, one `Output` per row, in order."""

    spec: ModelSpec

    def predict(self, rows: Sequence[dict[str, Value]]) -> list[Output]: ...


class LoadError(Exception):
    """An artifact that cannot be served with its spec; the message says why and what to do."""


def load(spec: ModelSpec, artifact: bytes) -> Runtime:
    """Load an artifact with its runtime and prove it runs by predicting the spec's example row.

    Raises `LoadError` naming the reason: an unknown or unavailable runtime, a file of the wrong format, a
    type not trusted for this version, features, classes or task that do not match the spec, or a model that
    fails on its own example.
    """
    reason = unavailable(spec.runtime) or check_format(spec.runtime, artifact)
    if reason:
        raise LoadError(reason)
    module = importlib.import_module(RUNTIMES[spec.runtime])
    loader = cast(Callable[[bytes, ModelSpec], Runtime], module.load)
    try:
        runtime = loader(artifact, spec)
        outputs = runtime.predict([spec.example])
    except LoadError:
        raise
    except Exception as e:  # whatever the library raises, the user gets the reason, not a traceback
        raise LoadError(f"the model fails on the spec's example row: {type(e).__name__}: {e}") from e
    _check_output(spec, outputs)
    return runtime


def _check_output(spec: ModelSpec, outputs: list[Output]) -> None:
    if len(outputs) != 1:
        raise LoadError(f"the model answered {len(outputs)} results for one row")
    (out,) = outputs
    if spec.task == "classification" and out.label not in spec.labels:
        raise LoadError(f"the model answered {out.label!r}, which is not one of the labels {spec.labels}")
    if spec.task == "regression" and not isinstance(out.prediction, float):
        raise LoadError(f"the regressor answered {out.prediction!r} where a number was expected")


def unavailable(runtime: str) -> str | None:
    """Why this process cannot load artifacts of `runtime`, or None when it can; imports no ML library."""
    if runtime not in RUNTIMES:
        return _unknown(runtime)
    modules, extra = _REQUIRES[runtime]
    for module, distribution in modules:
        if _find(module) is None:
            if module == extra:  # a plugin
                return f"runtime {runtime!r}: its module {module!r} is not importable here"
            return f"runtime {runtime!r} needs the {distribution} package: pip install 'mlapi[{extra}]'"
    return None


def _find(module: str) -> object | None:
    try:
        return importlib.util.find_spec(module)
    except ModuleNotFoundError:  # a dotted name whose parent package is missing
        return None


def check_format(runtime: str, artifact: bytes) -> str | None:
    """Why `artifact` is not a file `runtime` loads, or None; a cheap look at the bytes, no ML import."""
    sniff = _SNIFFERS.get(runtime, _plugin if runtime in RUNTIMES else None)
    if sniff is None:
        return _unknown(runtime)
    if not artifact:
        return "the artifact is empty"
    return sniff(artifact)


def _unknown(runtime: str) -> str:
    return f"unknown runtime {runtime!r}: known runtimes are {', '.join(sorted(RUNTIMES))}"


def _skops(artifact: bytes) -> str | None:
    if artifact.startswith(b"\x80"):
        return f"this is a pickle or joblib file: {PICKLE_REFUSAL}"
    compression = next((c for magic, c in _COMPRESSED.items() if artifact.startswith(magic)), None)
    if artifact[:1] == b"\x78" and int.from_bytes(artifact[:2], "big") % 31 == 0:  # a valid zlib header
        compression = "zlib"
    if compression is not None:
        return f"this is a {compression}-compressed file, as joblib writes: {PICKLE_REFUSAL}"
    if not artifact.startswith(b"PK"):
        return "not a skops file: save the model with `skops.io.dump(model, 'model.skops')`"
    try:
        with zipfile.ZipFile(io.BytesIO(artifact)) as archive:
            names = set(archive.namelist())
    except zipfile.BadZipFile as e:
        return f"not a skops file: a damaged zip archive ({e})"
    if "schema.json" not in names:
        return "not a skops file: a zip archive without schema.json"
    return None


def _xgboost(artifact: bytes) -> str | None:
    head = artifact[: 1 << 16]
    if head.lstrip()[:1] == b"{" and b"learner" in head:  # JSON, or UBJSON (whose object marker is `{` too)
        return None
    return "not an XGBoost model: save it with `booster.save_model('model.json')` (or `.ubj`)"


def _lightgbm(artifact: bytes) -> str | None:
    if artifact.startswith(b"tree\n") and b"version=" in artifact[:256]:
        return None
    return "not a LightGBM model: save the Booster as text with `booster.save_model('model.txt')`"


def _onnx(artifact: bytes) -> str | None:
    # A ModelProto starts with field 1 (ir_version, a varint: tag 0x08); the loader checks the rest.
    if artifact[:1] == b"\x08" and len(artifact) > 16:
        return None
    return "not an ONNX model: export it to a `.onnx` file (e.g. with skl2onnx or onnxmltools)"


def _plugin(artifact: bytes) -> str | None:
    return None  # a plugin's loader checks its own format


_SNIFFERS: dict[str, Callable[[bytes], str | None]] = {
    "sklearn": _skops,
    "xgboost": _xgboost,
    "lightgbm": _lightgbm,
    "onnx": _onnx,
}


def register(name: str, module: str) -> None:
    """Add a runtime from an operator-installed module with `load(artifact, spec) -> Runtime` (the setting
    `MLAPI_WORKER__RUNTIME_PLUGINS`). Its artifacts reach workers only through the registry directly: the API
    takes uploads for the built-in runtimes, whose formats it can check."""
    if name in _SNIFFERS:
        raise ValueError(f"runtime {name!r} is built in")
    RUNTIMES[name] = module
    _REQUIRES[name] = ([(module, module)], module)


def guess_runtime(artifact: bytes) -> str | None:
    """The runtime whose format the bytes have, or None; skops files are checked first."""
    return next((name for name, sniff in _SNIFFERS.items() if artifact and sniff(artifact) is None), None)
