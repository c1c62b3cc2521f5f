"""`mlapi up`: the whole system from one command; Ctrl-C stops it all; the history survives a restart."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from mlapi.servers import free_port
from tests.conftest import ORIGINAL_CLIENT_SAMPLE, wait_until

pytestmark = pytest.mark.e2e
SERVERS = ("MLAPI_UP__REDIS_PORT", "MLAPI_UP__POSTGRES_PORT")
"""The settings of the embedded servers' ports."""


def up_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLAPI_")}
    env.update(
        MLAPI_UP__DATA_DIR=str(tmp_path / "data"), MLAPI_UP__REDIS_PORT=str(free_port()),
        MLAPI_UP__POSTGRES_PORT=str(free_port()), MLAPI_API__PORT=str(free_port()), MLAPI_UP__WEB="false",
        MLAPI_API__GRPC_PORT=str(free_port()),
    )  # fmt: skip
    return {**env, **extra}


def up(data_dir: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "mlapi", "up"], env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as a terminal would give it
        )  # fmt: skip


def interrupt(process: subprocess.Popen[bytes]) -> None:
    """Ctrl-C: SIGINT to the whole foreground process group."""
    os.killpg(process.pid, signal.SIGINT)
    assert process.wait(30) == 0


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def listening(port: str | int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", int(port)), timeout=2):
            return True
    except OSError:
        return False


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def started(log: Path, name: str) -> list[int]:
    """The pids `mlapi up` reported for a service, first start first."""
    return [int(pid) for pid in re.findall(rf"^  {name} +pid (\d+)$", log.read_text(), re.MULTILINE)]


def test_up_serves_stops_on_ctrl_c_and_keeps_history(tmp_path: Path) -> None:
    env = up_env(tmp_path)
    api_port = int(env["MLAPI_API__PORT"])
    url = f"http://127.0.0.1:{api_port}"
    log = tmp_path / "up.log"

    first = up(tmp_path, env, log)
    try:
        wait_until(lambda: ready(url), 90, "mlapi up to be ready")
        prediction = httpx.post(f"{url}/predict", json=ORIGINAL_CLIENT_SAMPLE, timeout=30).json()
        output = log.read_text()
        assert output.count("worker-") == 2 and f"{url}/docs" in output
        assert f"gRPC     127.0.0.1:{env['MLAPI_API__GRPC_PORT']}" in output and listening(env["MLAPI_API__GRPC_PORT"])
    finally:
        interrupt(first)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/healthz", timeout=2)
    assert not any(listening(env[setting]) for setting in SERVERS)  # its servers are gone too

    second = up(tmp_path, env, log)
    try:
        wait_until(lambda: ready(url), 90, "mlapi up to be ready again")
        record = httpx.get(f"{url}/predictions/{prediction['id']}", timeout=10).json()
        assert record["status"] == "done" and record["prediction"] == prediction["prediction"]
    finally:
        interrupt(second)


@pytest.mark.parametrize(
    ("setting", "what"), [("MLAPI_API__PORT", "the API"), ("MLAPI_API__GRPC_PORT", "the API's gRPC service")]
)
def test_up_refuses_a_taken_port_and_starts_nothing(tmp_path: Path, setting: str, what: str) -> None:
    env = up_env(tmp_path, MLAPI_UP__WEB="true", MLAPI_WEB__PORT=str(free_port()))
    taken = int(env[setting])
    log = tmp_path / "up.log"
    with socket.create_server(("127.0.0.1", taken)):  # another program listens on that port
        process = up(tmp_path, env, log)
        try:
            code = process.wait(20)
        except subprocess.TimeoutExpired:
            interrupt(process)  # it started after all: stop what it started before failing
            raise
    output = log.read_text()
    assert code != 0
    assert f"port {taken} ({what}) is already in use" in output and f"{setting}={taken + 1}" in output
    assert " pid " not in output  # no service was started
    assert not (tmp_path / "data").exists()  # no server was started, not even initialised
    others = {"MLAPI_API__PORT", "MLAPI_API__GRPC_PORT", "MLAPI_WEB__PORT", *SERVERS} - {setting}
    assert not any(listening(env[s]) for s in others)


def test_up_restarts_a_killed_worker_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    # One worker, so the prediction after the restart can only be served by the restarted worker.
    env = up_env(tmp_path, MLAPI_UP__WORKERS="1", MLAPI_API__REQUEST_TIMEOUT_S="60")
    url = f"http://127.0.0.1:{env['MLAPI_API__PORT']}"
    log = tmp_path / "up.log"
    process = up(tmp_path, env, log)
    try:
        wait_until(lambda: ready(url), 90, "mlapi up to be ready")
        [first] = started(log, "worker-1")
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: len(started(log, "worker-1")) == 2, 15, "worker-1 to be started again")
        assert f"worker-1 (pid {first}) exited with code -9 (SIGKILL); restarting in" in log.read_text()
        second = started(log, "worker-1")[1]
        wait_until(lambda: ready(url), 30, "mlapi up to be ready after the restart")
        response = httpx.post(f"{url}/predict", json=ORIGINAL_CLIENT_SAMPLE, timeout=90)
        assert response.status_code == 200 and alive(second)
    finally:
        stopping = time.monotonic()
        interrupt(process)
    assert time.monotonic() - stopping < 15
    assert not any(alive(pid) for pid in [*started(log, "api"), first, second])
    assert not any(listening(env[setting]) for setting in ("MLAPI_API__PORT", *SERVERS))
