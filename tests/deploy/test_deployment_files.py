"""compose.yaml, .env.example and the Kubernetes base agree with the issue's promises and with the code.

The files are run for real by `make containers` and `make kubernetes`; these checks are the fast, offline
part: a service that lost its healthcheck, a variable missing from .env.example, or a KEDA trigger watching
a stream the workers no longer use fails here first.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]  # no types-PyYAML in the dev extra

from mlapi import queue
from mlapi.models.spec import read_registry
from mlapi.settings import PACKAGE_DIR

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "compose.yaml"
MLAPI_SERVICES = ["migrate", "api", "model", "web"]


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_all(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    services: dict[str, Any] = load(COMPOSE)["services"]
    return services


def test_compose_runs_every_service(services: dict[str, Any]) -> None:
    assert set(services) == {"redis", "postgres", "migrate", "api", "model", "web"}


def test_data_stores_persist_and_report_health(services: dict[str, Any]) -> None:
    redis, postgres = services["redis"], services["postgres"]
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert any(v.endswith(":/data") for v in redis["volumes"])
    assert any(v.endswith(":/var/lib/postgresql/data") for v in postgres["volumes"])
    for service in ("redis", "postgres", "api", "model", "web"):
        assert services[service]["healthcheck"]["test"], service


def test_start_order_comes_from_healthchecks(services: dict[str, Any]) -> None:
    def conditions(name: str) -> dict[str, str]:
        return {dep: spec["condition"] for dep, spec in services[name]["depends_on"].items()}

    assert conditions("migrate") == {"postgres": "service_healthy"}
    for worker_or_api in ("api", "model"):
        assert conditions(worker_or_api) == {
            "redis": "service_healthy",
            "postgres": "service_healthy",
            "migrate": "service_completed_successfully",
        }
    assert conditions("web") == {"api": "service_healthy"}
    assert services["migrate"]["restart"] == "no"


def test_model_workers_scale(services: dict[str, Any]) -> None:
    model = services["model"]
    assert "ports" not in model and "container_name" not in model
    assert model["build"]["target"] == "model"


def test_api_and_web_publish_their_ports_and_join_the_shared_network(services: dict[str, Any]) -> None:
    assert services["api"]["ports"][0].endswith(":8000")
    assert services["web"]["ports"][0].endswith(":9090")
    assert load(COMPOSE)["networks"]["shared_network"] == {"external": True}
    for name in ("api", "web"):
        assert "shared_network" in services[name]["networks"]


def test_mlapi_containers_are_locked_down(services: dict[str, Any]) -> None:
    for name in MLAPI_SERVICES:
        service = services[name]
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"], name


def test_every_variable_compose_reads_is_in_env_example() -> None:
    used = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", COMPOSE.read_text()))
    example = (REPO / ".env.example").read_text()
    listed = set(re.findall(r"^#?\s*([A-Z_][A-Z0-9_]*)=", example, re.M))
    assert used - listed == set()
    # Secrets are required from .env, never defaulted in compose.yaml.
    for secret in ("POSTGRES_PASSWORD", "REDIS_PASSWORD"):
        assert re.search(rf"\$\{{{secret}:\?", COMPOSE.read_text()), secret


def test_keda_watches_the_workers_streams_and_group() -> None:
    docs = load_all(REPO / "deploy" / "kubernetes" / "base" / "model.yaml")
    [scaled] = [d for d in docs if d["kind"] == "ScaledObject"]
    triggers = [t["metadata"] for t in scaled["spec"]["triggers"] if t["type"] == "redis-streams"]
    assert {t["consumerGroup"] for t in triggers} == {queue.GROUP}
    models = read_registry(PACKAGE_DIR / "models" / "registry")
    assert {t["stream"] for t in triggers} == {queue.request_stream(m) for m in models}
    assert any("lagCount" in t for t in triggers) and any("pendingEntriesCount" in t for t in triggers)


def test_api_probes_use_the_health_endpoints() -> None:
    docs = load_all(REPO / "deploy" / "kubernetes" / "base" / "api.yaml")
    [deployment] = [d for d in docs if d["kind"] == "Deployment"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
