"""`mlapi models add | list | promote | remove`: the registry changes through the API.

`add` does its checks and the spec's inference here, on the user's machine, which has the model's libraries
(the API has none): the file's format, its untrusted types, the spec, and a local load of the artifact with
that spec. Only then is anything sent.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import skops.io
from pydantic import TypeAdapter, ValidationError

from mlapi import runtimes
from mlapi.models.spec import NAME_PATTERN, ModelSpec, SpecBody
from mlapi.schemas import ModelSummary, VersionInfo

DEFAULT_API = "http://127.0.0.1:8000"
# Uploads may be hundreds of megabytes and the API waits for a worker to load-check them.
TIMEOUT = httpx.Timeout(120.0, connect=10.0)
PICKLE_WARNING = "warning: unpickling runs code from the file: only for files you made yourself"


class CommandError(Exception):
    """A refusal: the message is printed to stderr and the command exits 1."""


@dataclass(frozen=True)
class Api:
    """Where the API is, and the key to send it."""

    url: str = DEFAULT_API
    key: str | None = None

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The API's answer; `CommandError` with the server's `detail` on an error status, or when unreachable."""
        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        try:
            with httpx.Client(base_url=self.url, timeout=TIMEOUT, headers=headers) as client:
                response = client.request(method, path, **kwargs)
        except httpx.TransportError as e:
            raise CommandError(
                f"cannot reach the API at {self.url} ({type(e).__name__}: {e}); is it running? "
                "Point --api or MLAPI_API_URL at it"
            ) from e
        if response.is_error:
            raise CommandError(f"{response.status_code} {response.reason_phrase}: {_detail(response)}")
        return response


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json()["detail"]
    except (ValueError, KeyError, TypeError):
        return response.text[:500] or "(no detail)"
    if isinstance(detail, list):  # a validation error: one line per problem, naming where
        return "; ".join(
            f"{'.'.join(str(p) for p in d.get('loc', []))}: {d.get('msg', d)}" if isinstance(d, dict) else str(d)
            for d in detail
        )
    return str(detail)


@dataclass(frozen=True)
class Upload:
    """What `add` sends: the skops artifact and its spec."""

    filename: str
    artifact: bytes
    spec: SpecBody


def prepare(
    name: str,
    artifact: Path,
    *,
    data: Path | None = None,
    target: str | None = None,
    task: str | None = None,
    trust: Sequence[str] = (),
    description: str | None = None,
    spec_file: Path | None = None,
    from_pickle: bool = False,
    warn: Callable[[str], None] = lambda message: print(message, file=sys.stderr),
) -> Upload:
    """Everything `add` does before the network: read, convert, check trust, infer the spec, load locally.

    Raises `CommandError` naming the problem: a bad name, a pickle (unless `from_pickle`), a file that is not
    skops, types not acknowledged with `trust`, a spec that cannot be inferred, an artifact that does not load
    with its spec.
    """
    _check_name(name)
    given = _read_spec(spec_file, description, data=data, target=target, task=task)
    raw, filename = _read_artifact(artifact, given.runtime if given else "sklearn", from_pickle, warn)
    untrusted = _untrusted(raw, [*trust, *(given.trusted if given else [])])
    try:
        estimator = skops.io.loads(raw, trusted=untrusted)
    except Exception as e:  # a damaged file: its reason, not a traceback
        raise CommandError(f"{artifact}: cannot load it with skops: {type(e).__name__}: {e}") from e
    if given is not None:
        spec = given.model_copy(update={"trusted": untrusted})
    else:
        spec = _infer(estimator, data, target, task, description or "", untrusted)
    try:
        runtimes.load(ModelSpec.model_validate({**spec.model_dump(), "name": name, "version": 1}), raw)
    except runtimes.LoadError as e:
        raise CommandError(f"{artifact} does not load with its spec: {e}") from e
    return Upload(filename=filename, artifact=raw, spec=spec)


def _check_name(name: str) -> None:
    """Refuse a bad name before it reaches a URL path."""
    if not re.fullmatch(NAME_PATTERN, name):
        raise CommandError(f"{name!r} is not a model name: lowercase letters, digits and '-', up to 63")


def _read_spec(
    path: Path | None, description: str | None, *, data: Path | None, target: str | None, task: str | None
) -> SpecBody | None:
    if path is None:
        return None
    if data is not None or target is not None or task is not None:
        raise CommandError("--spec replaces inference: --data, --target and --task do not apply with it")
    try:
        spec = SpecBody.model_validate_json(path.read_bytes())
    except OSError as e:
        raise CommandError(f"cannot read {path}: {e}") from e
    except ValidationError as e:
        raise CommandError(f"{path} is not a valid spec: {e}") from e
    return spec if description is None else spec.model_copy(update={"description": description})


def _read_artifact(path: Path, runtime: str, from_pickle: bool, warn: Callable[[str], None]) -> tuple[bytes, str]:
    """The artifact's skops bytes and the file name to upload them as."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise CommandError(f"cannot read {path}: {e}") from e
    reason = runtimes.check_format(runtime, raw)
    if reason is None:
        return raw, path.name
    if not from_pickle or runtime not in runtimes.RUNTIMES:
        raise CommandError(f"{path}: {reason}")
    warn(PICKLE_WARNING)
    import joblib  # type: ignore[import-untyped]  # scikit-learn's dependency; reads plain and compressed pickles

    try:
        model = joblib.load(io.BytesIO(raw))
    except Exception as e:  # anything unpickling raises
        raise CommandError(f"{path}: cannot unpickle it: {type(e).__name__}: {e}") from e
    try:
        converted = skops.io.dumps(model)
    except Exception as e:  # skops names the type it cannot persist
        raise CommandError(f"{path}: cannot convert it to skops: {type(e).__name__}: {e}") from e
    return converted, f"{path.stem}.skops"


def _untrusted(raw: bytes, acknowledged: Sequence[str]) -> list[str]:
    """The artifact's types beyond skops' trusted set; refused unless each was acknowledged."""
    try:
        untrusted = sorted(skops.io.get_untrusted_types(data=raw))
    except Exception as e:  # a damaged archive or schema
        raise CommandError(f"cannot read the artifact's types: {type(e).__name__}: {e}") from e
    missing = [t for t in untrusted if t not in acknowledged]
    if missing:
        listed = "\n".join(f"  {t}" for t in missing)
        flags = " ".join(f"--trust {t}" for t in missing)
        raise CommandError(
            "the artifact holds types that skops does not trust by default:\n"
            f"{listed}\nLoading one runs its code; if you expect each of them, pass {flags}"
        )
    return untrusted


def _infer(
    estimator: Any, data: Path | None, target: str | None, task: str | None, description: str, trusted: list[str]
) -> SpecBody:
    from mlapi.models.infer import InferError, infer_spec, read_data

    try:
        frame, info = read_data(data) if data is not None else (None, None)
        return infer_spec(estimator, frame, target, task, description, trusted, data_info=info)
    except OSError as e:
        raise CommandError(f"cannot read {data}: {e}") from e
    except InferError as e:
        raise CommandError(str(e)) from e


def add(api: Api, name: str, upload: Upload, *, promote: bool = False) -> VersionInfo:
    """Upload a prepared version; the server assigns its number and load-checks it on a worker first."""
    response = api.request(
        "POST",
        f"/models/{name}/versions",
        params={"promote": "true"} if promote else None,
        files={"artifact": (upload.filename, upload.artifact, "application/octet-stream")},
        data={"spec": upload.spec.model_dump_json()},
    )
    try:
        return VersionInfo.model_validate_json(response.content)
    except ValidationError as e:
        raise CommandError(f"the API's answer is not a version: {e}") from e


def list_models(api: Api) -> list[ModelSummary]:
    response = api.request("GET", "/models")
    try:
        return TypeAdapter(list[ModelSummary]).validate_json(response.content)
    except ValidationError as e:
        raise CommandError(f"the API's answer is not a list of models: {e}") from e


def table(models: Sequence[ModelSummary]) -> str:
    """`models list`'s output: one aligned line per model under a header."""
    rows = [["NAME", "VERSIONS", "DEFAULT", "RUNTIME", "TASK", "STATUS", "READY"]]
    for m in models:
        status = "ready" if m.ready > 0 else "no workers"
        versions = ",".join(map(str, m.versions))
        rows.append([m.name, versions, str(m.default_version), m.runtime, m.task, status, str(m.ready)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def promote(api: Api, name: str, version: int) -> None:
    api.request("PUT", f"/models/{name}/default", json={"version": version})


def remove(api: Api, name: str, version: int | None = None) -> None:
    """Remove one version, or the whole model when `version` is None."""
    api.request("DELETE", f"/models/{name}" if version is None else f"/models/{name}/versions/{version}")


def run(args: argparse.Namespace) -> int:
    """`mlapi models ...` from parsed arguments: 0 on success, 1 (with the reason on stderr) on refusal."""
    api = Api(
        url=args.api or os.environ.get("MLAPI_API_URL") or DEFAULT_API,
        key=args.api_key or os.environ.get("MLAPI_API_KEY") or None,
    )
    try:
        _run(api, args)
    except CommandError as e:
        print(f"mlapi models {args.action}: {e}", file=sys.stderr)
        return 1
    return 0


def _run(api: Api, args: argparse.Namespace) -> None:
    if args.action != "list":
        _check_name(args.name)
    if args.action == "add":
        upload = prepare(
            args.name, args.artifact, data=args.data, target=args.target, task=args.task, trust=args.trust,
            description=args.description, spec_file=args.spec, from_pickle=args.from_pickle,
        )  # fmt: skip
        info = add(api, args.name, upload, promote=args.promote)
        print(f"{info.model} version {info.version}" + (" (default)" if info.default else ""))
    elif args.action == "list":
        print(table(list_models(api)))
    elif args.action == "promote":
        promote(api, args.name, args.version)
        print(f"{args.name} version {args.version} is the default")
    elif args.action == "remove":
        remove(api, args.name, args.version)
        print(f"removed {args.name}" + ("" if args.version is None else f" version {args.version}"))
