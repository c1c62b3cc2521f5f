#!/usr/bin/env bash
# Installs and configures podman for the container check on a machine without a Docker engine
# (Debian, root, no systemd). Idempotent: does nothing that is already done.
#   podman, runc, debootstrap            from Debian's packages
#   /etc/containers/containers.conf      runc + cgroupfs + file events, ulimits the services need
#   podman-compose                       from PyPI, into a tools venv (printed on stdout)
set -euo pipefail

CACHE="${MLAPI_DEPLOY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mlapi-deploy}"
TOOLS="$CACHE/tools"
PODMAN_COMPOSE_VERSION="${PODMAN_COMPOSE_VERSION:-1.6.0}"

log() { printf '[setup-podman %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

missing=()
for tool in podman:podman runc:runc debootstrap:debootstrap iptables:iptables; do
    command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
if ((${#missing[@]})); then
    [[ $(id -u) -eq 0 ]] || { log "need root to install: ${missing[*]}"; exit 1; }
    log "apt-get install ${missing[*]}"
    timeout 300 apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" uidmap slirp4netns fuse-overlayfs netavark aardvark-dns >&2
fi

conf=/etc/containers/containers.conf
if ! grep -q '^# mlapi: podman without systemd' "$conf" 2>/dev/null; then
    [[ -e "$conf" ]] && cp "$conf" "$conf.bak.$(date +%s)"
    log "writing $conf"
    mkdir -p /etc/containers
    cat >"$conf" <<'CONF'
# mlapi: podman without systemd (written by scripts/containers/setup-podman.sh)
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
fi

if [[ ! -x "$TOOLS/bin/podman-compose" ]] \
    || [[ "$("$TOOLS/bin/podman-compose" --version 2>/dev/null | grep -o 'podman-compose version [0-9.]*')" \
        != "podman-compose version $PODMAN_COMPOSE_VERSION" ]]; then
    log "pip install podman-compose==$PODMAN_COMPOSE_VERSION into $TOOLS"
    python3 -m venv "$TOOLS"
    timeout 300 "$TOOLS/bin/pip" install --quiet "podman-compose==$PODMAN_COMPOSE_VERSION" >&2
fi

podman info --format '{{.Host.OCIRuntime.Name}} {{.Host.CgroupManager}} {{.Host.EventLogger}}' >&2
echo "$TOOLS/bin/podman-compose"
