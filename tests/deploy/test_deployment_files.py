"""compose.yaml, .env.example and the Kubernetes base agree with the issue's promises and with the code.

The files are run for real by `make containers` and `make kubernetes`; these checks are the fast, offline
part: a service that lost its healthcheck, a variable missing from .env.example, a KEDA trigger that no
longer reads the API's backlog, or a deployment file that names a model (models are added at run time) fails
here first.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml  # type: ignore[import-untyped]  # no types-PyYAML in the dev extra

from mlapi import queue
from mlapi.api.app import create_app
from mlapi.servers import RedisServer
from mlapi.settings import Settings
from tests.deploy.scripts import load_script

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "compose.yaml"
KUBERNETES = REPO / "deploy" / "kubernetes"
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
    assert services["api"]["ports"][0].endswith(":8000") and services["api"]["ports"][1].endswith(":8001")
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
    for secret in ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "MLAPI_ADMIN_KEY"):
        assert re.search(rf"\$\{{{secret}:\?", COMPOSE.read_text()), secret


def test_compose_and_kubernetes_require_api_keys(services: dict[str, Any]) -> None:
    assert services["api"]["environment"]["MLAPI_API__AUTH"] == "${MLAPI_API__AUTH:-required}"
    assert "MLAPI_ADMIN_KEY" in services["migrate"]["environment"]  # the first admin key, from a secret
    assert load(KUBERNETES / "base" / "configmap.yaml")["data"]["MLAPI_API__AUTH"] == "required"
    secret = load(KUBERNETES / "overlays" / "example" / "secret.yaml")["stringData"]
    assert len(secret["MLAPI_ADMIN_KEY"]) >= 32
    # KEDA's trigger carries no key: the backlog stays open unless an operator closes it.
    assert load(KUBERNETES / "base" / "configmap.yaml")["data"]["MLAPI_API__METRICS_ACCESS"] == "open"


def test_keda_scales_the_workers_on_the_backlog_the_api_reports() -> None:
    docs = load_all(KUBERNETES / "base" / "model.yaml")
    [scaled] = [d for d in docs if d["kind"] == "ScaledObject"]
    # One trigger for all models: a trigger per stream would miss every model added at run time.
    [trigger] = scaled["spec"]["triggers"]
    assert trigger["type"] == "metrics-api"
    assert trigger.get("metricType", "AverageValue") == "AverageValue"  # backlog per worker
    meta = trigger["metadata"]
    assert meta["valueLocation"] == "total"
    assert 0 <= float(meta.get("activationTargetValue", "0")) < float(meta["targetValue"])
    # KEDA's operator calls from its own namespace: SERVICE.NAMESPACE.svc, on the API Service's port.
    url = urlsplit(meta["url"])
    service_name, _namespace, svc = (url.hostname or "").split(".")[:3]
    assert (url.scheme, url.path, svc) == ("http", "/backlog", "svc")
    [service] = [d for d in load_all(KUBERNETES / "base" / "api.yaml") if d["kind"] == "Service"]
    assert service["metadata"]["name"] == service_name
    assert url.port in [p["port"] for p in service["spec"]["ports"]]
    assert "authenticationRef" not in trigger  # GET /backlog needs no credentials


def test_the_api_serves_the_backlog_keda_reads() -> None:
    [scaled] = [d for d in load_all(KUBERNETES / "base" / "model.yaml") if d["kind"] == "ScaledObject"]
    path = urlsplit(scaled["spec"]["triggers"][0]["metadata"]["url"]).path
    # Building the app opens no connection: the URLs only have to be well formed.
    settings = Settings(redis_url="redis://127.0.0.1:1/0", database_url="postgresql://u:p@127.0.0.1:1/db")
    operation = create_app(settings).openapi()["paths"][path]["get"]
    assert not operation.get("security"), "KEDA's trigger sends no credentials"


def test_the_example_overlay_keeps_the_backlog_url_in_its_namespace() -> None:
    overlay = load(KUBERNETES / "overlays" / "example" / "kustomization.yaml")
    [replacement] = overlay["replacements"]
    assert replacement["source"] == {"kind": "Service", "name": "mlapi-api", "fieldPath": "metadata.namespace"}
    [target] = replacement["targets"]
    assert target["select"]["kind"] == "ScaledObject"
    assert target["options"] == {"delimiter": ".", "index": 1}


def bundled_models() -> list[str]:
    return sorted(p.parent.name for p in Settings().bundled_models_dir.glob("*/spec.json"))


def deployment_files() -> list[Path]:
    return [COMPOSE, REPO / ".env.example", *sorted(KUBERNETES.rglob("*.yaml"))]


@pytest.mark.parametrize("path", deployment_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_deployment_file_names_a_model_or_a_stream(path: Path) -> None:
    """Models and versions are added at run time; a file that names one pins the deployment to today's."""
    models = bundled_models()
    assert models, "no bundled model found: the check below would prove nothing"
    text = path.read_text()
    assert not re.findall(rf"\b({'|'.join(map(re.escape, models))})\b", text)
    assert not re.findall(r"\bmlapi:(?:\{|[a-z-]+:)", text), "a Redis key name (they live in mlapi.queue)"
    assert "MLAPI_WORKER__MODELS" not in text, "workers serve every model of the registry"


@pytest.mark.integration
async def test_worker_healthcheck_follows_this_containers_heartbeat(redis_server: RedisServer) -> None:
    healthcheck = load_script("healthcheck")
    settings = Settings(redis_url=redis_server.url)
    named = Settings(redis_url=redis_server.url, worker={"consumer": "worker-7"})
    redis = queue.connect(redis_server.url)
    try:
        await redis.delete(queue.ALL_WORKERS)
        assert not await healthcheck.worker_alive(settings)
        # Another container's worker does not count; this container's (host name, any pid) does.
        await queue.heartbeat(redis, "elsewhere-1", [], [])
        assert not await healthcheck.worker_alive(settings)
        await queue.heartbeat(redis, f"{socket.gethostname()}-42", [("some-model", 3)], ["sklearn"])
        assert await healthcheck.worker_alive(settings)
        assert not await healthcheck.worker_alive(named)
        await queue.heartbeat(redis, "worker-7", [], [])
        assert await healthcheck.worker_alive(named)
        # A beat older than the liveness window is not alive.
        await redis.zadd(queue.ALL_WORKERS, {"worker-7": 1})
        assert not await healthcheck.worker_alive(named)
        await queue.leave(redis, f"{socket.gethostname()}-42")
        assert not await healthcheck.worker_alive(settings)
    finally:
        await redis.delete(queue.ALL_WORKERS)
        await redis.aclose()


def test_api_probes_use_the_health_endpoints() -> None:
    docs = load_all(REPO / "deploy" / "kubernetes" / "base" / "api.yaml")
    [deployment] = [d for d in docs if d["kind"] == "Deployment"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_the_api_exposes_the_grpc_port_it_listens_on() -> None:
    docs = load_all(REPO / "deploy" / "kubernetes" / "base" / "api.yaml")
    [deployment] = [d for d in docs if d["kind"] == "Deployment"]
    [service] = [d for d in docs if d["kind"] == "Service"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    config = load(REPO / "deploy" / "kubernetes" / "base" / "configmap.yaml")["data"]
    grpc_port = int(config["MLAPI_API__GRPC_PORT"])
    assert {"name": "grpc", "containerPort": grpc_port, "protocol": "TCP"} in container["ports"]
    assert any(p["targetPort"] == "grpc" and p["port"] == grpc_port for p in service["spec"]["ports"])
    compose = load(COMPOSE)["services"]["api"]
    assert compose["environment"]["MLAPI_API__GRPC_PORT"] == str(grpc_port)
    assert f"EXPOSE 8000 {grpc_port}" in (REPO / "Dockerfile").read_text()
