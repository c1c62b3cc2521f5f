"""The systems under test, each started on free 127.0.0.1 ports in its own session (so that the whole process
tree can be paused while another system is measured) and stopped when its block ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from benchmarks import peers, probes
from benchmarks.load import Target
from mlapi.models.spec import ModelSpec
from mlapi.servers import PostgresServer, RedisServer, free_port
from mlapi.storage.migrate import migrate

READY_TIMEOUT_S = 120.0
MLAPI_WORKERS = 2
ROOT = Path(__file__).resolve().parent.parent
"""The repository: on the path of the processes that run the benchmark's own modules."""
# Every system predicts single-threaded, as mlapi's workers limit themselves to: with OpenMP's default of a
# thread per core, a one-row predict on a busy machine waits at OpenMP barriers for tens of milliseconds.
SINGLE_THREADED = {**os.environ, "OMP_NUM_THREADS": "1"}
FEATURES_OFF = {"MLAPI_API__AUTH": "off", "MLAPI_API__DURABLE_ACCEPT": "off", "MLAPI_API__MAX_BACKLOG": "0"}
"""What the targets are measured with: no access control, no durable acceptance, no admission control."""
PAUSED_WATCHDOG_S = 3600
"""The workers' predict watchdog, longer than any pause (it changes nothing while a worker runs)."""


@dataclass
class Running:
    """A started system: where to send its load, the processes whose CPU time and memory are reported, and
    the process groups paused while another system is measured."""

    name: str
    target: Target
    base_url: str
    processes: dict[str, list[int]] = field(default_factory=dict)
    database_url: str | None = None
    redis_url: str | None = None
    groups: list[int] = field(default_factory=list)
    ready_url: str = ""
    config: str = ""
    """The configuration chosen, for the report (the peers' workers and options)."""

    def pause(self) -> None:
        _signal_all(self.groups, signal.SIGSTOP)

    def resume(self) -> None:
        _signal_all(self.groups, signal.SIGCONT)
        if self.ready_url:
            _wait_ready(self.ready_url, [], self.name)


def _signal_all(groups: list[int], sig: signal.Signals) -> None:
    """Signal each process group, and every descendant of its leader, in case a server moved one to a group of
    its own."""
    for group in groups:
        with suppress(ProcessLookupError):
            os.killpg(group, sig)
    for pid in probes.tree(groups):
        with suppress(ProcessLookupError):
            os.kill(pid, sig)


def _wait_ready(url: str, processes: list[subprocess.Popen[bytes]], what: str) -> None:
    """Start-up and resumption only: poll the readiness URL of servers we launched."""
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
    """Stop each process's whole group (a server's workers too), paused or not."""
    descendants = probes.tree(p.pid for p in processes)
    _signal_all([p.pid for p in processes], signal.SIGCONT)
    _signal_all([p.pid for p in processes], signal.SIGTERM)
    for p in processes:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        with suppress(ProcessLookupError):  # children that outlived their parent
            os.killpg(p.pid, signal.SIGKILL)
    for pid in descendants:  # and any that left the group
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def spawn(
    args: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """A process in a session of its own: its group is the unit that is paused and stopped."""
    with log.open("ab") as out:  # the child keeps its own descriptor
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)


def _with_benchmarks(env: dict[str, str]) -> dict[str, str]:
    """An environment in which `python -m benchmarks...` finds this folder wherever the run started."""
    path = [str(ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    return {**env, "PYTHONPATH": os.pathsep.join(path)}


@contextmanager
def _server(
    name: str, args: list[str], work: Path, ready: str, target: Target, base: str, *, config: str = "",
    env: dict[str, str] | None = None, cwd: Path | None = None,
) -> Iterator[Running]:  # fmt: skip
    process = spawn(args, work / f"{name}.log", env or SINGLE_THREADED, cwd)
    try:
        _wait_ready(ready, [process], name)
        yield Running(name, target, base, {"server": [process.pid]}, groups=[process.pid], ready_url=ready,
                      config=config)  # fmt: skip
    finally:
        _stop([process])


def _example(model_dir: Path) -> dict[str, Any]:
    return dict(ModelSpec.read(model_dir).example)


def fastapi_baseline(kind: str, model_dir: Path, work: Path) -> AbstractContextManager[Running]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = [sys.executable, "-m", "benchmarks.baselines", kind, str(port), str(model_dir)]
    target = Target(f"{base}/predict", json.dumps(_example(model_dir)).encode())
    return _server(kind, args, work, f"{base}/openapi.json", target, base, env=_with_benchmarks(SINGLE_THREADED))


def mlserver_system(model_dir: Path, work: Path, venvs: Path) -> AbstractContextManager[Running]:
    executable = peers.ensure_venv(peers.PEERS["mlserver"], venvs)
    ports = (free_port(), free_port(), free_port())
    folder = peers.mlserver_folder(model_dir, work / "mlserver-model", ports)
    spec = ModelSpec.read(model_dir)
    base = f"http://127.0.0.1:{ports[0]}"
    target = Target(f"{base}/v2/models/{spec.name}/infer", peers.v2_body(spec, spec.example))
    config = f"adaptive batching {peers.MLSERVER_MAX_BATCH_SIZE} rows / {peers.MLSERVER_MAX_BATCH_TIME_S * 1000:g} ms"
    return _server("mlserver", [str(executable), "start", str(folder)], work,
                   f"{base}/v2/models/{spec.name}/ready", target, base, config=config)  # fmt: skip


def bentoml_system(model_dir: Path, work: Path, venvs: Path, workers: int) -> AbstractContextManager[Running]:
    executable = peers.ensure_venv(peers.PEERS["bentoml"], venvs)
    spec = ModelSpec.read(model_dir)
    model = peers.export_pipeline(model_dir, work / "bentoml-model")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**SINGLE_THREADED, "BENCH_MODEL": str(model), "BENCH_LABELS": json.dumps(list(spec.labels)),
           "BENCH_WORKERS": str(workers), "BENCH_MAX_BATCH": str(peers.BATCH_ROWS),
           "BENCH_MAX_LATENCY_MS": str(peers.BENTOML_MAX_LATENCY_MS), "BENTOML_HOME": str(work / "bentoml-home"),
           "BENTOML_DO_NOT_TRACK": "True"}  # fmt: skip
    args = [str(executable), "serve", "bentoml_app:Pipeline", "--host", "127.0.0.1", "--port", str(port)]
    target = Target(f"{base}/predict", peers.bentoml_body(spec.example))
    config = f"{workers} worker(s), batchable, {peers.BATCH_ROWS} rows, max latency {peers.BENTOML_MAX_LATENCY_MS} ms"
    return _server("bentoml", args, work, f"{base}/readyz", target, base, config=config, env=env,
                   cwd=peers.APPS)  # fmt: skip


def litserve_system(
    model_dir: Path, work: Path, venvs: Path, workers: int, fast_queue: bool
) -> AbstractContextManager[Running]:
    python = peers.ensure_venv(peers.PEERS["litserve"], venvs)
    spec = ModelSpec.read(model_dir)
    model = peers.export_pipeline(model_dir, work / "litserve-model")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = [str(python), str(peers.APPS / "litserve_app.py"), str(model), json.dumps(list(spec.labels)), str(port),
            str(workers), "1" if fast_queue else "0", str(peers.BATCH_ROWS),
            str(peers.LITSERVE_BATCH_TIMEOUT_S)]  # fmt: skip
    target = Target(f"{base}/predict", json.dumps(spec.example).encode())
    config = (f"{workers} worker(s), fast_queue {'on' if fast_queue else 'off'}, batching {peers.BATCH_ROWS} rows / "
              f"{peers.LITSERVE_BATCH_TIMEOUT_S * 1000:g} ms")  # fmt: skip
    return _server("litserve", args, work, f"{base}/health", target, base, config=config)


@contextmanager
def _mlapi_servers(model_dir: Path, work: Path) -> Iterator[tuple[RedisServer, PostgresServer, dict[str, str]]]:
    """Redis and PostgreSQL in a throwaway data dir, migrated with `model_dir`'s model; and the environment of
    the mlapi processes on them (gRPC, access control, durable acceptance and admission control off)."""
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
            "MLAPI_LOG_LEVEL": "WARNING",
            # The workers' watchdog ends a worker whose event loop has not run for predict_timeout_s of wall
            # time (30 s), which is what a pause while the other systems are measured looks like to it.
            "MLAPI_WORKER__PREDICT_TIMEOUT_S": str(PAUSED_WATCHDOG_S),
            **FEATURES_OFF,
        }
        yield redis, postgres, env


def _mlapi(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return spawn([sys.executable, "-m", "mlapi", *args], log, env)


def _asyncpg(url: str) -> str:
    return "postgresql+asyncpg://" + url.removeprefix("postgresql://")


@contextmanager
def mlapi_stack(model_dir: Path, work: Path) -> Iterator[Running]:
    """What `mlapi up` runs: the API, two workers, Redis and PostgreSQL, in a throwaway data dir. Paused: the
    API and the workers (Redis and PostgreSQL idle meanwhile)."""
    with ExitStack() as stack:
        redis, postgres, env = stack.enter_context(_mlapi_servers(model_dir, work))
        api_port = free_port()
        env |= {"MLAPI_API__PORT": str(api_port)}
        api = _mlapi(["api"], work / "api.log", env)
        workers = [_mlapi(["worker"], work / f"worker-{i + 1}.log", env) for i in range(MLAPI_WORKERS)]
        children = [api, *workers]
        stack.callback(_stop, children)
        base = f"http://127.0.0.1:{api_port}"
        _wait_ready(f"{base}/readyz", children, "the mlapi stack")
        body = json.dumps(_example(model_dir)).encode()
        assert redis.process is not None
        postmaster = int((postgres.data_dir / "pgdata" / "postmaster.pid").read_text().split()[0])
        processes = {"api": [api.pid], "workers": [w.pid for w in workers], "redis": [redis.process.pid],
                     "postgres": [postmaster]}  # fmt: skip
        yield Running("mlapi", Target(f"{base}/predict", body), base, processes, _asyncpg(postgres.url), redis.url,
                      groups=[c.pid for c in children], ready_url=f"{base}/readyz",
                      config=f"API, {MLAPI_WORKERS} workers")  # fmt: skip


@dataclass
class Apis:
    """One stack with one API process per variant: each variant's base URL, and the stack's database."""

    urls: dict[str, str]
    database_url: str


@contextmanager
def mlapi_apis(
    model_dir: Path, work: Path, variants: dict[str, dict[str, str]], before: Callable[[dict[str, str]], None]
) -> Iterator[Apis]:
    """One mlapi stack with one API process per variant, each with its own settings on top of the stack's
    (`variants[name]`), and two workers. `before(env)` runs once the servers are up, before any API starts
    (to create keys, say)."""
    with ExitStack() as stack:
        _, postgres, env = stack.enter_context(_mlapi_servers(model_dir, work))
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
        yield Apis(urls, _asyncpg(postgres.url))


def wait_for(url: str, what: str, ok: Callable[[Any], bool] | None = None, timeout_s: float = 120) -> None:
    """Poll a URL until it answers 200 (and `ok` holds for its JSON, when given): the queue drained, say."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            response = httpx.get(url, timeout=5)
            if response.status_code == 200 and (ok is None or ok(response.json())):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"timed out waiting for {what} ({url})")
