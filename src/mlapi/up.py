"""`mlapi up`: the whole system on one machine, each service its own process, stopped together by Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import ExitStack
from dataclasses import dataclass

from mlapi.servers import PostgresServer, RedisServer
from mlapi.settings import Settings
from mlapi.storage.migrate import migrate

STOP_TIMEOUT_S = 8.0


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]


def _spawn(name: str, args: list[str], env: dict[str, str]) -> Child:
    process = subprocess.Popen([sys.executable, "-m", "mlapi", *args], env=env)
    print(f"  {name:<10} pid {process.pid}", flush=True)
    return Child(name, process)


def _stop(children: list[Child]) -> None:
    for child in children:
        if child.process.poll() is None:
            child.process.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            print(f"{child.name} did not stop in {STOP_TIMEOUT_S:.0f} s; killing it", flush=True)
            child.process.kill()
            child.process.wait()


def _supervise(children: list[Child]) -> None:
    """Block until SIGINT or SIGTERM; report children that exit meanwhile (an operator may stop a worker)."""
    signals = {signal.SIGINT, signal.SIGTERM, signal.SIGCHLD}
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    running = list(children)
    while True:
        received = signal.sigwait(signals)
        if received != signal.SIGCHLD:
            print("\nstopping...", flush=True)
            return
        for child in [c for c in running if c.process.poll() is not None]:
            running.remove(child)
            print(f"{child.name} (pid {child.process.pid}) exited with code {child.process.returncode}", flush=True)


def run_up(settings: Settings) -> None:
    data_dir = settings.up.data_dir.resolve()
    children: list[Child] = []
    with ExitStack() as servers:
        redis_url, database_url = settings.redis_url, settings.database_url
        if not redis_url:
            redis = RedisServer(data_dir / "redis", settings.up.redis_port).start()
            servers.callback(redis.stop)
            redis_url = redis.url
        if not database_url:
            postgres = PostgresServer(data_dir / "postgres", settings.up.postgres_port).start()
            servers.callback(postgres.stop)
            database_url = postgres.url
        settings = settings.model_copy(update={"redis_url": redis_url, "database_url": database_url})
        for line in migrate(settings.require_database_url(), settings.bundled_models_dir):
            print(line, flush=True)
        env = {**os.environ, "MLAPI_REDIS_URL": redis_url, "MLAPI_DATABASE_URL": database_url}
        print(f"mlapi: data in {data_dir}\n  redis      {redis_url}\n  postgres   {database_url}", flush=True)
        try:
            children.append(_spawn("api", ["api"], env))
            children += [_spawn(f"worker-{i + 1}", ["worker"], env) for i in range(settings.up.workers)]
            web = settings.up.web
            if web:
                children.append(_spawn("web", ["web"], env))
            api = f"http://{settings.api.host}:{settings.api.port}"
            print(f"\nAPI      {api}  (docs {api}/docs)", flush=True)
            if web:
                print(f"Web UI   http://{settings.web.host}:{settings.web.port}", flush=True)
            print("Ctrl-C stops everything.", flush=True)
            _supervise(children)
        except KeyboardInterrupt:
            print("\nstopping...", flush=True)
        finally:
            _stop(children)
