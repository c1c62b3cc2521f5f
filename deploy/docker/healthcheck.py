#!/usr/bin/env python3
"""Container health check: `mlapi-healthcheck api|web|worker` exits 0 when the service in this container is alive.

api and web: their HTTP port answers (`/healthz` for the API). worker: it has no port, so it is alive when the
worker in this container has a heartbeat in `mlapi:workers` (`queue.ALL_WORKERS`) no older than
`MLAPI_WORKER__LIVENESS_MS`, the rule `/readyz` applies.
Liveness only: readiness of the whole system is the API's `/readyz`.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import urllib.request

from mlapi import queue
from mlapi.settings import Settings

TIMEOUT_S = 3.0


def http_alive(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            return int(response.status) < 500
    except OSError as e:
        print(f"{url}: {e}", file=sys.stderr)
        return False


async def worker_alive(settings: Settings) -> bool:
    # Every worker beats into one sorted set whatever it serves, so no model or registry is read here. The worker
    # names its consumer `<host name>-<pid>` unless told a name; a container's host name is its own.
    own = settings.worker.consumer
    prefix = f"{socket.gethostname()}-"
    redis = queue.connect(settings.require_redis_url(), read_timeout_s=TIMEOUT_S)
    try:
        for name in await queue.live_workers(redis, queue.ALL_WORKERS, settings.worker.liveness_ms):
            if name == own if own else name.startswith(prefix):
                return True
        print(f"no worker of this container ({own or prefix + '*'}) beat lately", file=sys.stderr)
        return False
    finally:
        await redis.aclose()


def main(argv: list[str]) -> int:
    service = argv[1] if len(argv) > 1 else ""
    settings = Settings()
    if service == "api":
        return 0 if http_alive(f"http://127.0.0.1:{settings.api.port}/healthz") else 1
    if service == "web":
        return 0 if http_alive(f"http://127.0.0.1:{settings.web.port}/") else 1
    if service == "worker":
        return 0 if asyncio.run(asyncio.wait_for(worker_alive(settings), 2 * TIMEOUT_S)) else 1
    print("usage: mlapi-healthcheck api|web|worker", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
