"""Render each kustomization with `kubectl kustomize` and validate what it renders, offline.

- Kubernetes kinds: against the schemas `kubernetes-validate` ships, strictly (unknown fields are errors),
  for the oldest and the newest Kubernetes release named in KUBERNETES_VERSIONS.
- KEDA kinds (custom resources, which no Kubernetes schema covers): against deploy/kubernetes/schemas/.
- This project's own rules: probes, resources and a locked-down security context on every container; the
  objects that HPA, KEDA, Services and PodDisruptionBudgets point at exist; autoscaled Deployments set no
  replicas; KEDA scales the workers on the API's `GET /backlog` (`total`, summed over every model version) through
  the API's Service, and nothing names a model or a Redis key, since models are added at run time.

`python validate.py DIR...` prints one line per check and exits 1 on any failure.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "deploy" / "kubernetes" / "schemas"
KUBERNETES_VERSIONS = ["1.29.0", "1.37.0"]
CUSTOM_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda-scaledobject.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "keda-triggerauthentication.json",
}
WORKLOADS = {"Deployment", "Job"}

Doc = dict[str, Any]


def render(directory: Path) -> list[Doc]:
    result = subprocess.run(
        ["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=120, check=False
    )
    if result.returncode != 0:
        raise SystemExit(f"kubectl kustomize {directory} failed:\n{result.stderr}")
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def bundled_models() -> list[str]:
    """The models the package seeds into the registry; the manifests must not name them."""
    registry = ROOT / "src" / "mlapi" / "models" / "registry"
    return sorted(p.parent.name for p in registry.glob("*/spec.json"))


class Report:
    def __init__(self, name: str) -> None:
        self.name = name
        self.failures: list[str] = []
        self.passed = 0

    def check(self, ok: bool, what: str) -> None:
        if ok:
            self.passed += 1
        else:
            self.failures.append(what)
            print(f"  FAIL {what}")


def ident(doc: Doc) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def containers(doc: Doc) -> Iterator[Doc]:
    yield from doc["spec"]["template"]["spec"].get("containers", [])


def validate_schemas(docs: list[Doc], report: Report) -> None:
    for doc in docs:
        custom = CUSTOM_SCHEMAS.get((doc["apiVersion"], doc["kind"]))
        if custom:
            schema = json.loads((SCHEMAS / custom).read_text())
            errors = list(jsonschema.Draft202012Validator(schema).iter_errors(doc))
            detail = "; ".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)
            report.check(not errors, f"{ident(doc)} against {custom}: {detail}")
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
                report.check(True, "")
            except kubernetes_validate.ValidationError as e:
                report.check(False, f"{ident(doc)} against Kubernetes {version}: {e.message} at {list(e.path)}")
            except kubernetes_validate.SchemaNotFoundError as e:
                report.check(False, f"{ident(doc)}: no schema for Kubernetes {version}: {e}")


def check_containers(docs: list[Doc], report: Report) -> None:
    for doc in (d for d in docs if d["kind"] in WORKLOADS):
        pod = doc["spec"]["template"]["spec"]
        report.check(pod.get("securityContext", {}).get("runAsNonRoot") is True, f"{ident(doc)}: runAsNonRoot")
        report.check(pod.get("automountServiceAccountToken") is False, f"{ident(doc)}: no service account token")
        for c in containers(doc):
            where = f"{ident(doc)} container {c['name']}"
            resources = c.get("resources", {})
            for kind in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    report.check(resource in resources.get(kind, {}), f"{where}: resources.{kind}.{resource}")
            security = c.get("securityContext", {})
            report.check(security.get("readOnlyRootFilesystem") is True, f"{where}: readOnlyRootFilesystem")
            report.check(security.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation")
            report.check(security.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: drops all capabilities")
            if doc["kind"] == "Deployment":
                for probe in ("livenessProbe", "readinessProbe"):
                    report.check(probe in c, f"{where}: {probe}")
    api = next((d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-api")), None)
    report.check(api is not None, "an API Deployment exists")
    if api:
        c = next(containers(api))
        report.check(c["livenessProbe"].get("httpGet", {}).get("path") == "/healthz", "API liveness on /healthz")
        report.check(c["readinessProbe"].get("httpGet", {}).get("path") == "/readyz", "API readiness on /readyz")


def by_kind(docs: list[Doc], kind: str) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def check_autoscaling(docs: list[Doc], report: Report) -> None:
    deployments = by_kind(docs, "Deployment")
    autoscaled = set()
    for scaler in [*by_kind(docs, "HorizontalPodAutoscaler").values(), *by_kind(docs, "ScaledObject").values()]:
        target = scaler["spec"]["scaleTargetRef"]["name"]
        autoscaled.add(target)
        report.check(target in deployments, f"{ident(scaler)} targets Deployment {target}")
    for so in by_kind(docs, "ScaledObject").values():
        report.check(so["spec"].get("minReplicaCount", 0) >= 1, f"{ident(so)} keeps at least one worker")
    for name in autoscaled & deployments.keys():
        report.check("replicas" not in deployments[name]["spec"], f"Deployment/{name} is autoscaled: no replicas")


def check_selectors(docs: list[Doc], report: Report) -> None:
    pod_labels = [d["spec"]["template"]["metadata"]["labels"] for d in by_kind(docs, "Deployment").values()]
    selectors = [(d, d["spec"]["selector"]) for d in by_kind(docs, "Service").values()]
    selectors += [(d, d["spec"]["selector"]["matchLabels"]) for d in by_kind(docs, "PodDisruptionBudget").values()]
    for doc, selector in selectors:
        matches = any(all(labels.get(k) == v for k, v in selector.items()) for labels in pod_labels)
        report.check(matches, f"{ident(doc)} selects the pods of a Deployment")


def check_sources(docs: list[Doc], report: Report, complete: bool) -> None:
    """ConfigMaps, Secrets and TriggerAuthentications referred to exist (Secrets only in a complete render)."""
    configmaps, secrets = by_kind(docs, "ConfigMap"), by_kind(docs, "Secret")
    for doc in (d for d in docs if d["kind"] in WORKLOADS):
        for source in (s for c in containers(doc) for s in c.get("envFrom", [])):
            if "configMapRef" in source:
                name = source["configMapRef"]["name"]
                report.check(name in configmaps, f"{ident(doc)} reads ConfigMap {name}")
            if "secretRef" in source and complete:
                name = source["secretRef"]["name"]
                report.check(name in secrets, f"{ident(doc)} reads Secret {name}")
    auths = by_kind(docs, "TriggerAuthentication")
    for so in by_kind(docs, "ScaledObject").values():
        for trigger in so["spec"]["triggers"]:
            ref = trigger.get("authenticationRef", {}).get("name")
            report.check(ref is None or ref in auths, f"{ident(so)} trigger {trigger.get('name')}: {ref} exists")
    for ref in (r for a in auths.values() for r in a["spec"].get("secretTargetRef", []) if complete):
        secret = secrets.get(ref["name"], {})
        keys = {**secret.get("data", {}), **secret.get("stringData", {})}
        report.check(ref["key"] in keys, f"TriggerAuthentication: Secret {ref['name']} has key {ref['key']}")


def number(value: object) -> float | None:
    try:
        return float(str(value))
    except ValueError:
        return None


BACKLOG_PATH = "/backlog"
BACKLOG_VALUE = "total"


def check_keda_backlog(docs: list[Doc], report: Report) -> None:
    """Workers scale on the API's backlog summed over all models, fetched through the API's Service."""
    services = by_kind(docs, "Service")
    api_pods = [
        d["spec"]["template"]["metadata"]["labels"]
        for d in by_kind(docs, "Deployment").values()
        if d["metadata"]["name"].endswith("-api")
    ]
    for so in by_kind(docs, "ScaledObject").values():
        where = ident(so)
        triggers = so["spec"]["triggers"]
        report.check(
            all(t["type"] != "redis-streams" for t in triggers), f"{where}: no per-stream trigger (streams come and go)"
        )
        backlog = [t for t in triggers if t["type"] == "metrics-api"]
        report.check(len(backlog) == 1, f"{where}: one metrics-api trigger on the backlog")
        for trigger in backlog:
            meta, name = trigger["metadata"], f"{where} trigger {trigger.get('name')}"
            report.check(meta.get("valueLocation") == BACKLOG_VALUE, f"{name}: valueLocation {BACKLOG_VALUE}")
            report.check(meta.get("format", "json") == "json", f"{name}: format json")
            report.check(trigger.get("metricType", "AverageValue") == "AverageValue", f"{name}: backlog per worker")
            target, activation = number(meta.get("targetValue")), number(meta.get("activationTargetValue", "0"))
            ordered = target is not None and activation is not None and 0 <= activation < target
            report.check(ordered, f"{name}: 0 <= activationTargetValue < targetValue")
            check_backlog_url(meta.get("url", ""), so, services, api_pods, name, report)


def check_backlog_url(
    url: str, so: Doc, services: dict[str, Doc], api_pods: list[dict[str, str]], name: str, report: Report
) -> None:
    """`http://SERVICE.NAMESPACE.svc[.cluster.local]:PORT/backlog`: KEDA's operator calls it from its own
    namespace, so the URL names the namespace, which must be the ScaledObject's (once an overlay sets one)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").split(".")
    report.check(parts.scheme == "http" and parts.path == BACKLOG_PATH, f"{name}: {url} is http://...{BACKLOG_PATH}")
    named = len(host) >= 3 and host[2] == "svc" and host[3:] in ([], ["cluster", "local"])
    report.check(named, f"{name}: {url} names a Service as SERVICE.NAMESPACE.svc")
    if not named:
        return
    namespace = so["metadata"].get("namespace")
    if namespace:
        report.check(host[1] == namespace, f"{name}: {url} is in the ScaledObject's namespace {namespace}")
    service = services.get(host[0])
    report.check(service is not None, f"{name}: Service {host[0]} exists")
    if service is None:
        return
    ports = [p["port"] for p in service["spec"]["ports"]]
    report.check((parts.port or 80) in ports, f"{name}: Service {host[0]} has port {parts.port or 80}")
    selector = service["spec"]["selector"]
    selects_api = any(all(labels.get(k) == v for k, v in selector.items()) for labels in api_pods)
    report.check(selects_api, f"{name}: Service {host[0]} selects the API's pods")


def check_names_no_model(docs: list[Doc], report: Report) -> None:
    """Models and their streams come and go at run time: no manifest may name one (nor any Redis key)."""
    models = bundled_models()
    # mlapi's Redis keys look like `mlapi:{model}:...` or `mlapi:requests:...`; `mlapi:PASSWORD@` in a URL does not.
    keys = r"\bmlapi:(?:\{|[a-z-]+:)"
    pattern = re.compile("|".join([keys, *(rf"\b{re.escape(m)}\b" for m in models)]))

    def strings(value: Any) -> Iterator[str]:
        if isinstance(value, dict):
            for k, v in value.items():
                yield str(k)
                yield from strings(v)
        elif isinstance(value, list):
            for v in value:
                yield from strings(v)
        elif isinstance(value, str):
            yield value

    for doc in docs:
        found = sorted({m.group(0) for s in strings(doc) for m in pattern.finditer(s)})
        report.check(not found, f"{ident(doc)} names a model or a Redis key: {', '.join(found)}")


def main(directories: list[str]) -> int:
    failed = False
    for directory in map(Path, directories):
        report = Report(str(directory))
        docs = render(directory)
        print(f"{directory}: {len(docs)} objects ({', '.join(sorted({d['kind'] for d in docs}))})")
        # A base leaves the Secret to its overlays, so references into it are checked on complete renders only.
        complete = any(d["kind"] == "Secret" for d in docs)
        validate_schemas(docs, report)
        check_containers(docs, report)
        check_autoscaling(docs, report)
        check_selectors(docs, report)
        check_sources(docs, report, complete)
        check_keda_backlog(docs, report)
        check_names_no_model(docs, report)
        print(f"  {report.passed} checks ok, {len(report.failures)} failed")
        failed = failed or bool(report.failures)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
