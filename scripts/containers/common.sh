# shellcheck shell=bash
# Sourced by the container scripts after platform.sh, with ROOT (the repository) and WORK (a scratch folder) set:
# what building the images for PLATFORM needs, defined once for check.sh, images.sh and up-arm64.sh.

# pip_config: the host's pip configuration, for pip inside a build or a container: every setting
# `pip config list` shows (files and PIP_* variables), written to $WORK/pip.conf, plus PIP_VOLUMES, a
# read-only volume for each local path it names.
pip_config() {
    python3 - "$WORK/pip.conf" "$WORK/pip-volumes" <<'PY'
import os, subprocess, sys
out, volumes = sys.argv[1], sys.argv[2]
listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
settings = {}
for line in listed.splitlines():
    key, _, value = line.partition("=")
    section, _, name = key.rpartition(".")
    if section in (":env:", "global", "install") and name:
        settings.setdefault(name, value.strip().strip("'\""))
paths = set()
for value in settings.values():
    for token in value.split():
        path = token.removeprefix("file://")
        if path.startswith("/") and os.path.exists(path):
            path = os.path.realpath(path) if os.path.isdir(path) else path
            # A file index (`.../simple`) links to its files beside it.
            paths.add(os.path.dirname(path) if os.path.basename(path) == "simple" else path)
with open(out, "w") as f:
    f.write("[global]\n" + "".join(f"{k} = {v}\n" for k, v in sorted(settings.items())))
with open(volumes, "w") as f:
    f.write("".join(f"{p}\n" for p in sorted(paths)))
PY
    PIP_VOLUMES=()
    local path
    while IFS= read -r path; do PIP_VOLUMES+=(-v "$path:$path:ro"); done <"$WORK/pip-volumes"
}

# build_opts: BUILD_OPTS, podman build's options for PLATFORM: the stand-in base image (and the host's, where the
# dependency layers are installed), pip's configuration. BUILDPLATFORM is passed because podman 4.3 (Debian
# bookworm's) sets the TARGET* arguments but not the BUILD* ones Docker sets.
build_opts() {
    pip_config
    BUILD_OPTS=(--format docker --network host --pull=never --layers --platform "$PLATFORM"
        --build-arg "BUILDPLATFORM=linux/$HOST_ARCH"
        --build-arg "PYTHON_IMAGE=$PYTHON_STANDIN" --build-arg "BUILD_PYTHON_IMAGE=$BUILD_PYTHON_STANDIN"
        --secret "id=pip.conf,src=$WORK/pip.conf" "${PIP_VOLUMES[@]}")
    ((ONNX)) || BUILD_OPTS+=(--build-arg "MODEL_IMPORTS=mlapi.worker mlapi.runtimes.sklearn xgboost lightgbm")
    # The one test that trains from the full data set reads it beside the repository, as in a checkout.
    [[ -d "$ROOT/../shared/data" ]] && BUILD_OPTS+=(-v "$(cd "$ROOT/../shared/data" && pwd):/home/mlapi/shared/data:ro")
    return 0
}

