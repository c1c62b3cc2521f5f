"""`mlapi up`: the whole system on one machine, each service its own process, restarted when it dies (as
compose's `restart: unless-stopped`) and stopped together by Ctrl-C."""

from __future__ import annotations

import errno
import ipaddress
import os
import select
import signal
import socket
import subprocess
import sys
import time
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType

from mlapi.servers import PostgresServer, RedisServer
from mlapi.settings import Settings

STOP_TIMEOUT_S = 8.0
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 10.0
STABLE_AFTER_S = 30.0
"""A service that stayed up this long before it died is restarted after the first backoff again."""
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""Ctrl-C, a service manager, a closed terminal."""
EMBEDDED_HOST = "127.0.0.1"
"""The interface the embedded servers bind (mlapi.servers)."""


@dataclass(frozen=True)
class Port:
    """A port `mlapi up` will listen on, and the setting that moves it."""

    port: int
    host: str
    what: str
    setting: str
    host_setting: str | None = None


def planned_ports(settings: Settings) -> list[Port]:
    ports = [Port(settings.api.port, settings.api.host, "the API", "MLAPI_API__PORT", "MLAPI_API__HOST")]
    if settings.api.grpc_port:
        ports.append(Port(settings.api.grpc_port, settings.api.host, "the API's gRPC service", "MLAPI_API__GRPC_PORT",
                          "MLAPI_API__HOST"))  # fmt: skip
    if settings.up.web:
        ports.append(Port(settings.web.port, settings.web.host, "the web UI", "MLAPI_WEB__PORT", "MLAPI_WEB__HOST"))
    if not settings.redis_url:
        ports.append(Port(settings.up.redis_port, EMBEDDED_HOST, "the embedded Redis", "MLAPI_UP__REDIS_PORT"))
    if not settings.database_url and not postgres_running(settings):
        ports.append(
            Port(settings.up.postgres_port, EMBEDDED_HOST, "the embedded PostgreSQL", "MLAPI_UP__POSTGRES_PORT")
        )
    return ports


def postgres_dir(settings: Settings) -> Path:
    return settings.up.data_dir.resolve() / "postgres"


def postgres_running(settings: Settings) -> bool:
    """Whether our own PostgreSQL, left by an `mlapi up` that was killed, holds its port: it is reused, no clash."""
    try:
        lines = (postgres_dir(settings) / "pgdata" / "postmaster.pid").read_text().splitlines()
        pid, port = int(lines[0]), int(lines[3])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return False
    return port == settings.up.postgres_port


def _bind_error(host: str, port: int) -> OSError | None:
    """Bind as the server will (asyncio's create_server: every address of the host, SO_REUSEADDR)."""
    try:
        addresses = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        return e
    unavailable: OSError | None = None
    bound = False
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
                bound = True
            except OSError as e:
                if e.errno != errno.EADDRNOTAVAIL:  # asyncio skips an address family the machine lacks
                    return e
                unavailable = e
    return None if bound else unavailable


def port_problems(ports: list[Port]) -> list[str]:
    """Why `mlapi up` could not listen on these ports; empty when it can."""
    problems, seen = [], dict[int, Port]()
    for p in ports:
        if (other := seen.setdefault(p.port, p)) is not p:
            problems.append(f"port {p.port} is set for both {other.what} and {p.what}; move one with {p.setting}")
        elif (error := _bind_error(p.host, p.port)) is None:
            continue
        elif error.errno == errno.EADDRINUSE:
            problems.append(
                f"port {p.port} ({p.what}) is already in use; free it or move {p.what} with {p.setting}={p.port + 1}"
            )
        else:
            where = f"{p.host_setting} and {p.setting}" if p.host_setting else p.setting
            problems.append(f"{p.what} cannot listen on {p.host}:{p.port} ({error.strerror}); check {where}")
    return [f"mlapi up: {problem}" for problem in problems]


def local_url(host: str, port: int) -> str:
    """The URL a browser or a client on this machine uses to reach a server bound to `host`."""
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def auth_default(settings: Settings) -> tuple[str, str]:
    """The API's auth mode under `mlapi up` and the line saying so: as set (`MLAPI_API__AUTH`), else `off` on a
    loopback address (nobody else can reach it) and `required` on any other."""
    host = settings.api.host
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if "auth" in settings.api.model_fields_set:
        auth = settings.api.auth
        reason = "MLAPI_API__AUTH"
    else:
        auth = "off" if loopback else "required"
        reason = f"default on {'a loopback' if loopback else 'a non-loopback'} address ({host})"
    if auth == "off":
        return (
            auth,
            f"Auth     off ({reason}): anyone who reaches the API may use it; MLAPI_API__AUTH=required turns it on",
        )
    return auth, f"Auth     required ({reason}): make a key with `mlapi keys create NAME --admin`"


def next_backoff(previous_s: float, uptime_s: float) -> float:
    """Wait before a restart: doubling for a service that keeps dying quickly, back to the first once it held."""
    if previous_s == 0 or uptime_s >= STABLE_AFTER_S:
        return FIRST_BACKOFF_S
    return min(previous_s * 2, MAX_BACKOFF_S)


def _exit_description(code: int) -> str:
    if code < 0:
        with suppress(ValueError):
            return f"exited with code {code} ({signal.Signals(-code).name})"
    return f"exited with code {code}"


@dataclass
class Service:
    """One child process of `mlapi up`, started again under the same name when it dies."""

    name: str
    args: list[str]
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    backoff_s: float = 0.0
    restart_at: float | None = None

    def start(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "mlapi", *self.args], env=self.env)
        self.started_at, self.restart_at = time.monotonic(), None
        print(f"  {self.name:<10} pid {self.process.pid}", flush=True)

    def check(self, now: float) -> None:
        """Report an exit and schedule the restart; start it again once its backoff is over."""
        if self.restart_at is not None:
            if now >= self.restart_at:
                self.start()
            return
        if self.process is None or (code := self.process.poll()) is None:
            return
        self.backoff_s = next_backoff(self.backoff_s, now - self.started_at)
        self.restart_at = now + self.backoff_s
        print(
            f"{self.name} (pid {self.process.pid}) {_exit_description(code)}; restarting in {self.backoff_s:g} s",
            flush=True,
        )


class Signals:
    """SIGINT, SIGTERM and SIGHUP ask to stop, SIGCHLD reports a child's exit; each wakes `wait` at once.

    Handlers plus a wakeup fd rather than a blocked signal mask: children inherit the mask, and a restarted
    worker or API must still stop on SIGTERM.
    """

    def __enter__(self) -> Signals:
        self.stopping = False
        self._read, self._write = socket.socketpair()
        self._read.setblocking(False)
        self._write.setblocking(False)
        self._previous_fd = signal.set_wakeup_fd(self._write.fileno(), warn_on_full_buffer=False)
        self._previous = {s: signal.signal(s, self._received) for s in (*STOP_SIGNALS, signal.SIGCHLD)}
        return self

    def _received(self, signum: int, frame: FrameType | None) -> None:
        if signum != signal.SIGCHLD:
            self.stopping = True

    def wait(self, timeout_s: float | None) -> None:
        select.select([self._read], [], [], timeout_s)
        with suppress(BlockingIOError):
            while self._read.recv(4096):
                pass

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        signal.set_wakeup_fd(self._previous_fd)
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._read.close()
        self._write.close()


def _supervise(services: list[Service], signals: Signals) -> None:
    """Keep every service running until asked to stop."""
    while not signals.stopping:
        for service in services:
            service.check(time.monotonic())
        due = [s.restart_at for s in services if s.restart_at is not None]
        signals.wait(max(0.0, min(due) - time.monotonic()) if due else None)
    print("\nstopping...", flush=True)


def _stop(services: list[Service]) -> None:
    running = [(s.name, s.process) for s in services if s.process is not None and s.process.poll() is None]
    for _, process in running:
        process.send_signal(signal.SIGTERM)
    for name, process in running:
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            print(f"{name} did not stop in {STOP_TIMEOUT_S:.0f} s; killing it", flush=True)
            process.kill()
            process.wait()


def run_up(settings: Settings) -> None:
    if problems := port_problems(planned_ports(settings)):
        raise SystemExit("\n".join(problems))
    for number in STOP_SIGNALS:  # during start-up each stops it as Ctrl-C does, stopping the servers started
        signal.signal(number, signal.default_int_handler)
    try:
        _run(settings)
    except KeyboardInterrupt:
        print("\nstopped during start-up", flush=True)


def _run(settings: Settings) -> None:
    data_dir = settings.up.data_dir.resolve()
    with ExitStack() as servers:
        redis_url, database_url = settings.redis_url, settings.database_url
        if not redis_url:
            redis = RedisServer(data_dir / "redis", settings.up.redis_port).start()
            servers.callback(redis.stop)
            redis_url = redis.url
        if not database_url:
            postgres = PostgresServer(postgres_dir(settings), settings.up.postgres_port).start()
            servers.callback(postgres.stop)
            database_url = postgres.url
        settings = settings.model_copy(update={"redis_url": redis_url, "database_url": database_url})
        from mlapi.storage.migrate import migrate  # here: alembic logs on import, noise before a port message

        for line in migrate(settings.require_database_url(), settings.bundled_models_dir):
            print(line, flush=True)
        auth, auth_line = auth_default(settings)
        env = {**os.environ, "MLAPI_REDIS_URL": redis_url, "MLAPI_DATABASE_URL": database_url, "MLAPI_API__AUTH": auth}
        print(f"mlapi: data in {data_dir}\n  redis      {redis_url}\n  postgres   {database_url}", flush=True)
        api = local_url(settings.api.host, settings.api.port)
        services = [Service("api", ["api"], env)]
        services += [Service(f"worker-{i + 1}", ["worker"], env) for i in range(settings.up.workers)]
        if settings.up.web:
            # The web UI talks to the API started here, wherever MLAPI_API__PORT moved it.
            web_api = {} if "api_url" in settings.web.model_fields_set else {"MLAPI_WEB__API_URL": api}
            services.append(Service("web", ["web"], {**env, **web_api}))
        with Signals() as signals:
            try:
                for service in services:
                    service.start()
                print(f"\nAPI      {api}  (docs {api}/docs)", flush=True)
                if settings.api.grpc_port:
                    grpc = local_url(settings.api.host, settings.api.grpc_port).removeprefix("http://")
                    print(f"gRPC     {grpc}  (Open Inference Protocol v2)", flush=True)
                print(auth_line, flush=True)
                if settings.up.web:
                    print(f"Web UI   {local_url(settings.web.host, settings.web.port)}", flush=True)
                print("Ctrl-C stops everything; a service that dies is restarted.", flush=True)
                _supervise(services, signals)
            finally:
                _stop(services)
