#!/usr/bin/env bash
# `make images`: the api, model and web images for each platform of MLAPI_PLATFORMS (default "linux/amd64
# linux/arm64"; arm64 builds under QEMU on an x86 host, setup-emulation.sh), each tagged
# PREFIX-SERVICE:TAG-ARCH, then joined under PREFIX-SERVICE:TAG by `podman manifest`, and `podman manifest
# inspect` must list exactly those platforms. Users with a registry push the lists (`podman manifest push
# --all`), or use `docker buildx build --platform linux/amd64,linux/arm64` (docs/deployment.md).
# Settings: MLAPI_PLATFORMS, MLAPI_IMAGE_PREFIX (default localhost/mlapi), MLAPI_TAG (default latest).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
HERE="$ROOT/scripts/containers"
cd "$ROOT"
PLATFORMS="${MLAPI_PLATFORMS:-linux/amd64 linux/arm64}"
PREFIX="${MLAPI_IMAGE_PREFIX:-localhost/mlapi}"
TAG="${MLAPI_TAG:-latest}"
SERVICES="api model web"
log() { printf '[images %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

WORK="$(mktemp -d /tmp/mlapi-images.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
"$HERE/setup-podman.sh" >/dev/null
started=$SECONDS
for platform in $PLATFORMS; do
    (
        export MLAPI_PLATFORM="$platform"
        # shellcheck source=platform.sh
        source "$HERE/platform.sh"
        # shellcheck source=common.sh
        source "$HERE/common.sh"
        "$HERE/base-images.sh"
        build_opts
        for service in $SERVICES; do
            t0=$SECONDS
            timeout 3600 podman build "${BUILD_OPTS[@]}" --target "$service" -t "$PREFIX-$service:$TAG-$ARCH" . \
                >"$WORK/build.log" 2>&1 || { tail -n 40 "$WORK/build.log" >&2; exit 1; }
            log "$PREFIX-$service:$TAG-$ARCH ($platform) built in $((SECONDS - t0)) s"
        done
    )
done
for service in $SERVICES; do
    list="$PREFIX-$service:$TAG"
    # A list of an earlier run (or an image with the same name) is replaced, not added to.
    podman manifest rm "$list" >/dev/null 2>&1 || podman rmi "$list" >/dev/null 2>&1 || true
    podman manifest create "$list" >/dev/null
    for platform in $PLATFORMS; do
        podman manifest add "$list" "containers-storage:$PREFIX-$service:$TAG-${platform#linux/}" >/dev/null
    done
    found="$(podman manifest inspect "$list" | python3 -c 'import json, sys
print(" ".join(sorted(m["platform"]["os"] + "/" + m["platform"]["architecture"] for m in json.load(sys.stdin)["manifests"])))')"
    [[ "$found" == "$(tr ' ' '\n' <<<"$PLATFORMS" | sort | xargs)" ]] \
        || { log "podman manifest inspect $list lists $found, not $PLATFORMS"; exit 1; }
    log "manifest list $list: $found"
done
log "images for $PLATFORMS in $((SECONDS - started)) s"
