"""The four systems under test, each started on free 127.0.0.1 ports and stopped when its block ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from mlapi.bench import mlserver
from mlapi.bench.load import Target
from mlapi.models.spec import ModelSpec
from mlapi.servers import PostgresServer, RedisServer, free_port
from mlapi.storage.migrate import migrate

READY_TIMEOUT_S = 120.0
MLAPI_WORKERS = 2
# Every system predicts single-threaded, as mlapi's workers limit themselves to: with OpenMP's default of a
# thread per core, a one-row predict on a busy machine waits at OpenMP barriers for tens of milliseconds.
SINGLE_THREADED = {**os.environ, "OMP_NUM_THREADS": "1"}


@dataclass
class Running:
    """A started system: where to send its load, and the processes whose CPU time is reported."""

    name: str
    target: Target
    base_url: str
    processes: dict[str, list[int]] = field(default_factory=dict)
    database_url: str | None = None


def _wait_ready(url: str, processes: list[subprocess.Popen[bytes]], what: str) -> None:
    """Start-up only: poll the readiness URL of servers we just launched."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        for p in processes:
            if p.poll() is not None:
                raise RuntimeError(f"{what} exited with code {p.returncode} during start-up")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} was not ready at {url} within {READY_TIMEOUT_S:.0f} s")


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for p in processes:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in processes:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _spawn(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:  # the child keeps its own descriptor
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)


@contextmanager
def fastapi_baseline(kind: str, model_dir: Path, work: Path) -> Iterator[Running]:
    port = free_port()
    process = _spawn([sys.executable, "-m", "mlapi.bench.baselines", kind, str(port), str(model_dir)],
                     work / f"{kind}.log", SINGLE_THREADED)  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_ready(f"{base}/openapi.json", [process], f"the {kind} baseline")
        body = json.dumps(ModelSpec.read(model_dir).example).encode()
        yield Running(kind, Target(f"{base}/predict", body), base, {"server": [process.pid]})
    finally:
        _stop([process])


@contextmanager
def mlserver_system(model_dir: Path, work: Path, venv: Path) -> Iterator[Running]:
    executable = mlserver.ensure_venv(venv)
    ports = (free_port(), free_port(), free_port())
    folder = mlserver.export_model(model_dir, work / "mlserver-model", ports)
    process = _spawn([str(executable), "start", str(folder)], work / "mlserver.log", SINGLE_THREADED)
    spec = ModelSpec.read(model_dir)
    try:
        base = f"http://127.0.0.1:{ports[0]}"
        _wait_ready(f"{base}/v2/models/{spec.name}/ready", [process], "MLServer")
        target = Target(f"{base}/v2/models/{spec.name}/infer", mlserver.v2_body(spec, spec.example))
        yield Running("mlserver", target, base, {"server": [process.pid]})
    finally:
        _stop([process])


@contextmanager
def _mlapi_servers(model_dir: Path, work: Path) -> Iterator[tuple[RedisServer, PostgresServer, dict[str, str]]]:
    """Redis and PostgreSQL in a throwaway data dir, migrated with `model_dir`'s model; and the environment of
    the mlapi processes on them (gRPC and access control off, as the peers have neither)."""
    with ExitStack() as stack:
        redis = RedisServer(work / "redis", free_port()).start()
        stack.callback(redis.stop)
        postgres = PostgresServer(work / "postgres", free_port()).start()
        stack.callback(postgres.stop)
        migrate("postgresql+asyncpg://" + postgres.url.removeprefix("postgresql://"), model_dir.parent)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("MLAPI_")},
            "MLAPI_REDIS_URL": redis.url,
            "MLAPI_DATABASE_URL": postgres.url,
            "MLAPI_BUNDLED_MODELS_DIR": str(model_dir.parent),
            "MLAPI_API__GRPC_PORT": "0",
            "MLAPI_API__AUTH": "off",
            "MLAPI_LOG_LEVEL": "WARNING",
        }
        yield redis, postgres, env


def _mlapi(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return _spawn([sys.executable, "-m", "mlapi", *args], log, env)


@contextmanager
def mlapi_stack(model_dir: Path, work: Path, grpc_port: int = 0) -> Iterator[Running]:
    """What `mlapi up` runs: the API, two workers, Redis and PostgreSQL, in a throwaway data dir; the API's gRPC
    service on `grpc_port` (0: off, as the benchmark measures HTTP)."""
    with ExitStack() as stack:
        redis, postgres, env = stack.enter_context(_mlapi_servers(model_dir, work))
        api_port = free_port()
        env |= {"MLAPI_API__PORT": str(api_port), "MLAPI_API__GRPC_PORT": str(grpc_port)}
        api = _mlapi(["api"], work / "api.log", env)
        workers = [_mlapi(["worker"], work / f"worker-{i + 1}.log", env) for i in range(MLAPI_WORKERS)]
        children = [api, *workers]
        stack.callback(_stop, children)
        base = f"http://127.0.0.1:{api_port}"
        _wait_ready(f"{base}/readyz", children, "the mlapi stack")
        body = json.dumps(ModelSpec.read(model_dir).example).encode()
        assert redis.process is not None
        postmaster = int((postgres.data_dir / "pgdata" / "postmaster.pid").read_text().split()[0])
        processes = {"api": [api.pid], "workers": [w.pid for w in workers], "redis": [redis.process.pid],
                     "postgres": [postmaster]}  # fmt: skip
        database_url = "postgresql+asyncpg://" + postgres.url.removeprefix("postgresql://")
        yield Running("mlapi", Target(f"{base}/predict", body), base, processes, database_url)


@contextmanager
def mlapi_apis(
    model_dir: Path, work: Path, variants: dict[str, dict[str, str]], before: Callable[[dict[str, str]], None]
) -> Iterator[dict[str, str]]:
    """One mlapi stack with one API process per variant, each with its own settings on top of the stack's
    (`variants[name]`), and two workers: what the cost scripts compare. `before(env)` runs once the servers
    are up, before any API starts (to create keys, say). Yields each variant's base URL once all are ready."""
    with ExitStack() as stack:
        _, _, env = stack.enter_context(_mlapi_servers(model_dir, work))
        env["MLAPI_API__MAX_BACKLOG"] = "0"  # only the variants' settings differ: no admission control
        before(env)
        children: list[subprocess.Popen[bytes]] = []
        stack.callback(_stop, children)
        urls = {}
        for i, (name, settings) in enumerate(variants.items()):
            port = free_port()
            children.append(_mlapi(["api"], work / f"api-{i}.log", {**env, **settings, "MLAPI_API__PORT": str(port)}))
            urls[name] = f"http://127.0.0.1:{port}"
        children += [_mlapi(["worker"], work / f"worker-{i + 1}.log", env) for i in range(MLAPI_WORKERS)]
        for name, url in urls.items():
            _wait_ready(f"{url}/readyz", children, f"the API {name}")
        yield urls
