"""`mlapi up`: the whole system from one command; Ctrl-C stops it all; the history survives a restart."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from mlapi.servers import free_port
from tests.conftest import ORIGINAL_CLIENT_SAMPLE, wait_until

pytestmark = pytest.mark.e2e


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


def test_up_serves_stops_on_ctrl_c_and_keeps_history(tmp_path: Path) -> None:
    api_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLAPI_")}
    env.update(
        MLAPI_UP__DATA_DIR=str(tmp_path / "data"), MLAPI_UP__REDIS_PORT=str(free_port()),
        MLAPI_UP__POSTGRES_PORT=str(free_port()), MLAPI_API__PORT=str(api_port), MLAPI_UP__WEB="false",
    )  # fmt: skip
    url = f"http://127.0.0.1:{api_port}"
    log = tmp_path / "up.log"

    def ready() -> bool:
        try:
            return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    first = up(tmp_path, env, log)
    try:
        wait_until(ready, 90, "mlapi up to be ready")
        prediction = httpx.post(f"{url}/predict", json=ORIGINAL_CLIENT_SAMPLE, timeout=30).json()
        output = log.read_text()
        assert output.count("worker-") == 2 and f"{url}/docs" in output
    finally:
        interrupt(first)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/healthz", timeout=2)
    for port in (env["MLAPI_UP__REDIS_PORT"], env["MLAPI_UP__POSTGRES_PORT"]):  # its servers are gone too
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", int(port)), timeout=2):
            pass

    second = up(tmp_path, env, log)
    try:
        wait_until(ready, 90, "mlapi up to be ready again")
        record = httpx.get(f"{url}/predictions/{prediction['id']}", timeout=10).json()
        assert record["status"] == "done" and record["prediction"] == prediction["prediction"]
    finally:
        interrupt(second)
