"""`mlapi models add | list | promote | remove`, and what adding a version does before any network call.

`prepare` runs on the user's machine, which has the model's libraries (the API has none): it reads the file
and tells its runtime from its bytes (or saves an in-memory model in its runtime's format), checks a skops
file's untrusted types, infers the spec and loads the artifact with it as a worker would. Only then does
`mlapi.client.Client`, which the command line and notebooks share, send anything.
"""

from __future__ import annotations

import argparse
import importlib
import io
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from mlapi import runtimes
from mlapi.cli import columns
from mlapi.client import Client, ClientError, check_name
from mlapi.models.profile import Profile
from mlapi.models.spec import ModelSpec, SpecBody
from mlapi.schemas import ModelSummary

if TYPE_CHECKING:
    import pandas as pd

    from mlapi.runtimes import Inspection

PICKLE_WARNING = "warning: unpickling runs code from the file: only for files you made yourself"
EXTENSIONS = {"sklearn": "skops", "xgboost": "ubj", "lightgbm": "txt", "onnx": "onnx"}
"""File extension of each runtime's artifacts, for naming an in-memory model's upload."""
DUMP_ORDER = ("xgboost", "lightgbm", "onnx", "sklearn")
"""Runtimes asked in turn to save an in-memory model: scikit-learn last, as XGBoost's and LightGBM's models are
scikit-learn estimators too, which skops would save as such."""
FORMATS = (
    "a skops file (--runtime sklearn), an XGBoost model saved as JSON or UBJSON (xgboost), a LightGBM Booster's "
    "text file (lightgbm) or an ONNX model (onnx)"
)


@dataclass(frozen=True)
class Upload:
    """What adding a version sends: the artifact, the file name to send it as, and its spec."""

    filename: str
    artifact: bytes
    spec: SpecBody
    profile: Profile | None = None
    """The reference profile of `--data`, which drift is measured against."""


@dataclass(frozen=True)
class Artifact:
    """An artifact's bytes, its runtime, and what an in-memory model told about it."""

    raw: bytes
    filename: str
    runtime: str
    classes: list[Any] | None = None
    """An in-memory classifier's `classes_`."""
    own: bool = False
    """Saved here from an in-memory model: the types it holds are the user's own and trusted."""


def prepare(
    name: str,
    model: object,
    *,
    data: pd.DataFrame | str | Path | None = None,
    target: str | None = None,
    task: str | None = None,
    trust: Sequence[str] = (),
    description: str | None = None,
    spec: SpecBody | str | Path | None = None,
    runtime: str | None = None,
    from_pickle: bool = False,
    warn: Callable[[str], None] = lambda message: print(message, file=sys.stderr),
) -> Upload:
    """Everything adding a version does before the network: read or save, check trust, infer the spec, load.

    Raises `ClientError` naming the problem: a bad name, a file no runtime reads, a pickle (unless
    `from_pickle`), a file its runtime cannot open, types not acknowledged with `trust`, a spec that cannot be
    inferred, an artifact that does not load with its spec.
    """
    check_name(name)
    if from_pickle and runtime not in (None, "sklearn"):
        raise ClientError("--from-pickle converts a pickle to skops: it applies to the sklearn runtime only")
    given = _given_spec(spec, description, data=data, target=target, task=task)
    if given is not None and "runtime" in given.model_fields_set:
        if runtime is not None and runtime != given.runtime:
            raise ClientError(f"--runtime {runtime} conflicts with the spec's runtime {given.runtime!r}")
        runtime = given.runtime
    if isinstance(model, str | os.PathLike):
        artifact = _read(Path(model), runtime, from_pickle, warn)
    else:
        artifact = _dump(model, runtime, name)
    if reason := runtimes.unavailable(artifact.runtime):
        raise ClientError(reason)
    trusted = _trusted(artifact, trust, given.trusted if given else [])
    if given is not None:
        body = given.model_copy(update={"runtime": artifact.runtime, "trusted": trusted})
        try:
            runtimes.load(ModelSpec(**body.model_dump(), name=name, version=1), artifact.raw)
        except runtimes.LoadError as e:
            raise ClientError(f"{artifact.filename} does not load with its spec: {e}") from e
        return Upload(filename=artifact.filename, artifact=artifact.raw, spec=body)
    body, profile = _infer(name, artifact, trusted, data, target, task, description)
    return Upload(artifact.filename, artifact.raw, body, profile)


def _given_spec(
    spec: SpecBody | str | Path | None,
    description: str | None,
    *,
    data: object,
    target: str | None,
    task: str | None,
) -> SpecBody | None:
    if spec is None:
        return None
    if data is not None or target is not None or task is not None:
        raise ClientError("--spec replaces inference: --data, --target and --task do not apply with it")
    if not isinstance(spec, SpecBody):
        try:
            spec = SpecBody.model_validate_json(Path(spec).read_bytes())
        except OSError as e:
            raise ClientError(f"cannot read {spec}: {e}") from e
        except ValidationError as e:
            raise ClientError(f"{spec} is not a valid spec: {e}") from e
    return spec if description is None else spec.model_copy(update={"description": description})


def _read(path: Path, runtime: str | None, from_pickle: bool, warn: Callable[[str], None]) -> Artifact:
    """A file's bytes and runtime: the one given, else the one whose format the bytes have."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ClientError(f"cannot read {path}: {e}") from e
    if not raw:
        raise ClientError(f"{path} is empty")
    pickled = runtimes.PICKLE_REFUSAL in (runtimes.check_format("sklearn", raw) or "")
    runtime = runtime or runtimes.guess_runtime(raw) or ("sklearn" if pickled else None)
    if runtime is None:
        raise ClientError(f"cannot tell which runtime reads {path}: it is none of {FORMATS}")
    reason = runtimes.check_format(runtime, raw)
    if reason is None:
        return Artifact(raw, path.name, runtime)
    if not (from_pickle and pickled and runtime == "sklearn"):
        raise ClientError(f"{path}: {reason}")
    warn(PICKLE_WARNING)
    import joblib  # type: ignore[import-untyped]  # scikit-learn's dependency; reads plain and compressed pickles
    import skops.io

    try:
        model = joblib.load(io.BytesIO(raw))
    except Exception as e:  # anything unpickling raises
        raise ClientError(f"{path}: cannot unpickle it: {type(e).__name__}: {e}") from e
    try:
        converted = skops.io.dumps(model)
    except Exception as e:  # skops names the type it cannot persist
        raise ClientError(f"{path}: cannot convert it to skops: {type(e).__name__}: {e}") from e
    return Artifact(converted, f"{path.stem}.skops", "sklearn")


def _dump(model: object, runtime: str | None, name: str) -> Artifact:
    """An in-memory model saved by the first runtime (or the given one) whose `dump` takes it."""
    if runtime is not None and runtime not in runtimes.RUNTIMES:
        raise ClientError(f"unknown runtime {runtime!r}: known runtimes are {', '.join(sorted(runtimes.RUNTIMES))}")
    kind = type(model).__name__
    for candidate in [runtime] if runtime is not None else DUMP_ORDER:
        if runtimes.unavailable(candidate) is not None:  # its library is not installed: the model is not its
            continue
        dump: Callable[[object], bytes | None] = importlib.import_module(runtimes.RUNTIMES[candidate]).dump
        try:
            raw = dump(model)
        except Exception as e:  # the library names what it cannot save
            raise ClientError(f"cannot save the {kind} for the {candidate} runtime: {type(e).__name__}: {e}") from e
        if raw is not None:
            classes = getattr(model, "classes_", None)
            listed = None if classes is None else [c.item() if hasattr(c, "item") else c for c in classes]
            extension = "json" if candidate == "xgboost" and raw.startswith(b'{"') else EXTENSIONS[candidate]
            return Artifact(raw, f"{name}.{extension}", candidate, classes=listed, own=True)
    wanted = "an ONNX ModelProto, or a file" if runtime is None else f"a model of the {runtime} runtime"
    raise ClientError(
        f"cannot save a {kind}: pass a scikit-learn estimator or pipeline, an XGBoost or LightGBM model, {wanted}"
    )


def _trusted(artifact: Artifact, trust: Sequence[str], given: Sequence[str]) -> list[str]:
    """The types a skops artifact holds beyond skops' trusted set, each acknowledged; none for other runtimes."""
    if artifact.runtime != "sklearn":
        if trust:
            raise ClientError("--trust applies to skops files (the sklearn runtime) only")
        return []
    import skops.io

    try:
        untrusted = sorted(skops.io.get_untrusted_types(data=artifact.raw))
    except Exception as e:  # a damaged archive or schema
        raise ClientError(f"cannot read the artifact's types: {type(e).__name__}: {e}") from e
    missing = [] if artifact.own else [t for t in untrusted if t not in {*trust, *given}]
    if missing:
        listed = "\n".join(f"  {t}" for t in missing)
        flags = " ".join(f"--trust {t}" for t in missing)
        raise ClientError(
            "the artifact holds types that skops does not trust by default:\n"
            f"{listed}\nLoading one runs its code; if you expect each of them, pass {flags}"
        )
    return untrusted


def _inspect(artifact: Artifact, trusted: list[str]) -> Inspection:
    """What the artifact records about itself, read by its runtime; a file it cannot open is refused."""
    module = importlib.import_module(runtimes.RUNTIMES[artifact.runtime])
    try:
        if artifact.runtime == "sklearn":  # a skops file is read by loading it, with the types accepted
            found: Inspection = module.inspect_artifact(artifact.raw, trusted=trusted)
        else:
            found = module.inspect_artifact(artifact.raw)
    except runtimes.LoadError as e:
        raise ClientError(f"{artifact.filename}: {e}") from e
    except Exception as e:  # whatever the library raises on a damaged file: the reason, not a traceback
        raise ClientError(f"{artifact.filename}: cannot open it as a {artifact.runtime} model: {e}") from e
    return found


def _infer(
    name: str,
    artifact: Artifact,
    trusted: list[str],
    data: pd.DataFrame | str | Path | None,
    target: str | None,
    task: str | None,
    description: str | None,
) -> tuple[SpecBody, Profile | None]:
    from mlapi.models.infer import InferError, infer_version, read_data

    found = _inspect(artifact, trusted)
    try:
        frame, info = read_data(Path(data)) if isinstance(data, str | os.PathLike) else (data, None)
        return infer_version(
            found, artifact.raw, frame, target, runtime=artifact.runtime, task=task, classes=artifact.classes,
            description=description or "", trusted=trusted, data_info=info, name=name,
        )  # fmt: skip
    except OSError as e:
        raise ClientError(f"cannot read {data}: {e}") from e
    except InferError as e:
        raise ClientError(str(e)) from e
    except runtimes.LoadError as e:
        raise ClientError(f"{artifact.filename} does not load with the inferred spec: {e}") from e


def table(models: Sequence[ModelSummary]) -> str:
    """`models list`'s output: one aligned line per model under a header."""
    rows = [["NAME", "VERSIONS", "DEFAULT", "RUNTIME", "TASK", "STATUS", "READY"]]
    for m in models:
        status = "ready" if m.ready > 0 else "no workers"
        versions = ",".join(map(str, m.versions))
        rows.append([m.name, versions, str(m.default_version), m.runtime, m.task, status, str(m.ready)])
    return columns(rows)


def run(args: argparse.Namespace) -> int:
    """`mlapi models ...` from parsed arguments: 0 on success, 1 (with the reason on stderr) on refusal."""
    try:
        with Client(args.api, api_key=args.api_key) as client:
            _run(client, args)
    except ClientError as e:
        print(f"mlapi models {args.action}: {e}", file=sys.stderr)
        return 1
    return 0


def _run(client: Client, args: argparse.Namespace) -> None:
    if args.action == "add":
        info = client.add_model(
            args.name, args.artifact, data=args.data, target=args.target, task=args.task, promote=args.promote,
            trust=args.trust, description=args.description, spec=args.spec, runtime=args.runtime,
            from_pickle=args.from_pickle,
        )  # fmt: skip
        print(f"{info.model} version {info.version}" + (" (default)" if info.default else ""))
    elif args.action == "list":
        print(table(client.models()))
    elif args.action == "promote":
        client.promote(args.name, args.version)
        print(f"{args.name} version {args.version} is the default")
    elif args.action == "remove":
        client.remove(args.name, args.version)
        print(f"removed {args.name}" + ("" if args.version is None else f" version {args.version}"))
