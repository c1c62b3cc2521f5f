"""`mlapi up`'s checks before it starts anything, and its restart backoff, against real sockets."""

from __future__ import annotations

import socket
from pathlib import Path

from mlapi.servers import free_port
from mlapi.settings import ApiSettings, Settings, UpSettings, WebSettings
from mlapi.up import FIRST_BACKOFF_S, MAX_BACKOFF_S, STABLE_AFTER_S, Port, next_backoff, planned_ports, port_problems


def test_the_planned_ports_are_those_up_will_listen_on(tmp_path: Path) -> None:
    everything = Settings(
        redis_url=None, database_url=None, api=ApiSettings(port=8001, grpc_port=8002),
        web=WebSettings(host="0.0.0.0", port=9091),
        up=UpSettings(data_dir=tmp_path, redis_port=16379, postgres_port=15432, web=True),
    )  # fmt: skip
    assert [(p.port, p.host, p.setting) for p in planned_ports(everything)] == [
        (8001, "127.0.0.1", "MLAPI_API__PORT"),
        (8002, "127.0.0.1", "MLAPI_API__GRPC_PORT"),
        (9091, "0.0.0.0", "MLAPI_WEB__PORT"),
        (16379, "127.0.0.1", "MLAPI_UP__REDIS_PORT"),
        (15432, "127.0.0.1", "MLAPI_UP__POSTGRES_PORT"),
    ]
    external = Settings(
        redis_url="redis://elsewhere:6379/0", database_url="postgresql://elsewhere/db", up=UpSettings(web=False)
    )
    assert [p.setting for p in planned_ports(external)] == ["MLAPI_API__PORT", "MLAPI_API__GRPC_PORT"]
    no_grpc = external.model_copy(update={"api": ApiSettings(grpc_port=0)})
    assert [p.setting for p in planned_ports(no_grpc)] == ["MLAPI_API__PORT"]


def test_free_ports_raise_no_problem() -> None:
    assert port_problems([Port(free_port(), "127.0.0.1", "the API", "MLAPI_API__PORT")]) == []


def test_a_port_in_use_is_named_with_its_service_and_setting() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        problems = port_problems([Port(port, "127.0.0.1", "the API", "MLAPI_API__PORT")])
    assert problems == [
        f"mlapi up: port {port} (the API) is already in use; free it or move the API with MLAPI_API__PORT={port + 1}"
    ]


def test_a_listener_on_every_interface_blocks_the_loopback_address() -> None:
    with socket.create_server(("0.0.0.0", 0)) as taken:
        port = taken.getsockname()[1]
        [problem] = port_problems([Port(port, "127.0.0.1", "the web UI", "MLAPI_WEB__PORT")])
    assert f"port {port} (the web UI) is already in use" in problem


def test_one_port_for_two_services_is_refused() -> None:
    port = free_port()
    ports = [
        Port(port, "127.0.0.1", "the API", "MLAPI_API__PORT"),
        Port(port, "127.0.0.1", "the web UI", "MLAPI_WEB__PORT"),
    ]
    assert port_problems(ports) == [
        f"mlapi up: port {port} is set for both the API and the web UI; move one with MLAPI_WEB__PORT"
    ]


def test_a_host_that_is_not_this_machine_is_named() -> None:
    port = free_port()
    [problem] = port_problems([Port(port, "192.0.2.1", "the API", "MLAPI_API__PORT", "MLAPI_API__HOST")])
    assert problem == (
        f"mlapi up: the API cannot listen on 192.0.2.1:{port} (Cannot assign requested address); "
        "check MLAPI_API__HOST and MLAPI_API__PORT"
    )


def test_backoff_doubles_for_a_service_that_keeps_dying_and_resets_once_it_held() -> None:
    waits, previous = [], 0.0
    for _ in range(7):
        previous = next_backoff(previous, uptime_s=1.0)
        waits.append(previous)
    assert waits == [FIRST_BACKOFF_S, 1.0, 2.0, 4.0, 8.0, MAX_BACKOFF_S, MAX_BACKOFF_S]
    assert next_backoff(MAX_BACKOFF_S, uptime_s=STABLE_AFTER_S) == FIRST_BACKOFF_S
