#!/usr/bin/env bash
# The container check CI runs (`make containers`): builds every image of the Dockerfile with podman, runs
# each service's test target, brings compose.yaml up, sends a prediction through the API, reads it back
# from /predictions, adds a user's own models (a scikit-learn classifier and regressor, and an XGBoost, a
# LightGBM and an ONNX model; trained here, uploaded with the host's `mlapi models add`) to the running stack
# and predicts with them, loads the web UI, scales the model workers
# to 3 and back to 1, and tears it all down. Needs the host's .venv (`make venv`) for the own-model step.
# Exits non-zero on any failure; every step has a time limit and the whole run has one too.
#
# Only this script knows about podman; the Dockerfile and compose.yaml are the ones Docker users run.
# What it does differently, and why:
#   - No image registry is reachable here, so the public base images are replaced by local stand-ins
#     (base-images.sh) passed in as PYTHON_IMAGE / REDIS_IMAGE / POSTGRES_IMAGE.
#   - pip inside the build gets this host's pip configuration as the `pip.conf` build secret, and the local
#     files it names (CA bundle, wheel folders) as read-only volumes.
#   - Without systemd, podman runs no healthcheck by itself, and podman-compose ignores
#     `condition: service_healthy` on podman < 4.6. So this script runs the compose healthchecks
#     (`podman healthcheck run`) in the background and starts the services in the order the depends_on
#     conditions give, waiting for each condition exactly as written in compose.yaml.
#
# The same check runs for arm64 (`make containers-arm64`: MLAPI_PLATFORM=linux/arm64, see platform.sh) on an
# x86 host, under QEMU user-mode emulation (setup-emulation.sh): the images are built with --platform
# linux/arm64 and tagged check-arm64, the test targets run the unit and integration tests only
# (MLAPI_CHECK_TEST_KINDS, default "integration unit" under emulation), the waits are longer (SLOW), and the
# stack is not scaled (MLAPI_CHECK_SCALE, default 0 under emulation: scaling is the same compose and podman
# code on both architectures, and three emulated workers cost minutes). Every container's architecture is
# checked.
#
# Settings (environment): MLAPI_CHECK_TIMEOUT_S (whole run, default 2400; 3600 emulated), MLAPI_CHECK_KEEP=1
# (leave the stack up on failure), MLAPI_CHECK_SKIP_TESTS=1 (skip the test targets), API_PORT / WEB_PORT (host
# ports; default 8000 / 9090 when free, else any free port).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
HERE="$ROOT/scripts/containers"
# shellcheck source=platform.sh
source "$HERE/platform.sh"
if [[ -z "${MLAPI_CHECK_INNER:-}" ]]; then
    export MLAPI_CHECK_INNER=1
    exec timeout --signal=TERM --kill-after=240 "${MLAPI_CHECK_TIMEOUT_S:-$([[ -n "$EMULATED" ]] && echo 3600 || echo 2400)}" "$0" "$@"
fi
cd "$ROOT"
# shellcheck source=common.sh
source "$HERE/common.sh"

PROJECT="mlapi-check$SUFFIX"
IMAGE_PREFIX=localhost/mlapi
TAG="check$SUFFIX"
# Under emulation Python runs 6-7 times slower: every wait and time limit is multiplied by SLOW.
SLOW=1
[[ -z "$EMULATED" ]] || SLOW=4
TEST_KINDS="${MLAPI_CHECK_TEST_KINDS-$([[ -n "$EMULATED" ]] && echo "integration unit" || true)}"
SCALE="${MLAPI_CHECK_SCALE:-$([[ -n "$EMULATED" ]] && echo 0 || echo 1)}"
export HTTP_TIMEOUT_S=$((20 * SLOW)) BUILD_TIMEOUT_S="${BUILD_TIMEOUT_S:-$((1500 * (SLOW > 1 ? 2 : 1)))}"
MODEL=diabetes-risk
# The user's own models, added at run time: names no bundled model has.
OWN_PREFIX=check  # the own models: check-<runtime>-<classifier|regressor>
HOST_PYTHON="$ROOT/.venv/bin/python"
HOST_MLAPI="$ROOT/.venv/bin/mlapi"
# The admin API key `migrate` creates from MLAPI_ADMIN_KEY: the smoke tests and the host's CLI send it.
ADMIN_KEY="mlapi_$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
export MLAPI_API_KEY="$ADMIN_KEY"
SAMPLE='{"gender":"Male","age":0,"hypertension":0,"heart_disease":0,"smoking_history":"current","bmi":0,"HbA1c_level":0,"blood_glucose_level":0}'

STARTED=$SECONDS
TIMINGS=()
WORK="$(mktemp -d /tmp/mlapi-check.XXXXXX)"
export WORK
HEALTH_PID=""
CREATED_NETWORK=""
COMPOSE_UP=""
FAILED=1

log() { printf '[check %(%H:%M:%S)T +%4ds] %s\n' -1 "$((SECONDS - STARTED))" "$*" >&2; }
fail() { log "FAIL: $*"; exit 1; }

# step NAME COMMAND...: runs a step and records how long it took.
step() {
    local name="$1" t0=$SECONDS
    shift
    log "== $name"
    "$@"
    TIMINGS+=("$(printf '%-34s %5ds' "$name" "$((SECONDS - t0))")")
}

compose() { timeout "${COMPOSE_TIMEOUT_S:-300}" "$PODMAN_COMPOSE" -p "$PROJECT" --env-file "$WORK/env" -f compose.yaml "$@"; }

has_web() { [[ -f src/mlapi/web/__init__.py ]]; }

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    [[ -n "$HEALTH_PID" ]] && kill "$HEALTH_PID" 2>/dev/null && wait "$HEALTH_PID" 2>/dev/null
    if [[ -n "$COMPOSE_UP" ]]; then
        if ((FAILED)); then
            log "failure: state and recent logs follow"
            podman ps -a --filter "label=io.podman.compose.project=$PROJECT" \
                --format '{{.Names}}  {{.Status}}' >&2 || true
            for c in $(podman ps -aq --filter "label=io.podman.compose.project=$PROJECT" 2>/dev/null); do
                printf -- '--- %s\n' "$(podman inspect --format '{{.Name}}' "$c")" >&2
                timeout 20 podman logs --tail 40 "$c" >&2 2>&1 || true
            done
        fi
        if ((FAILED)) && [[ -n "${MLAPI_CHECK_KEEP:-}" ]]; then
            log "MLAPI_CHECK_KEEP is set: the stack stays up (project $PROJECT, env $WORK/env)"
        else
            log "tearing down"
            local t0=$SECONDS
            COMPOSE_TIMEOUT_S=180 compose down --volumes --timeout 20 >"$WORK/down.log" 2>&1 \
                || { log "compose down failed:"; tail -n 20 "$WORK/down.log" >&2; rc=1; }
            # compose down removes the containers of the configuration it reads; extra replicas of a failed
            # scale step are removed here.
            local left
            left="$(podman ps -aq --filter "label=io.podman.compose.project=$PROJECT")"
            # shellcheck disable=SC2086 # one argument per container id
            [[ -z "$left" ]] || podman rm --force --time 10 $left >/dev/null 2>&1
            podman network rm "${PROJECT}_default" >/dev/null 2>&1
            podman volume rm "${PROJECT}_redis-data" "${PROJECT}_postgres-data" >/dev/null 2>&1
            TIMINGS+=("$(printf '%-34s %5ds' "compose down" "$((SECONDS - t0))")")
        fi
    fi
    [[ -n "$CREATED_NETWORK" && -z "${MLAPI_CHECK_KEEP:-}" ]] && podman network rm "$CREATED_NETWORK" >/dev/null 2>&1
    ((${#TIMINGS[@]})) && printf '\ntimings:\n' >&2 && printf '  %s\n' "${TIMINGS[@]}" >&2
    printf '  %-34s %5ds\n' "total" "$((SECONDS - STARTED))" >&2
    if ((FAILED)) && [[ -n "${MLAPI_CHECK_KEEP:-}" ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    if ((rc == 0)); then log "container check passed"; else log "container check FAILED (exit $rc)"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 143' INT TERM

# ---- setup -------------------------------------------------------------------------------------------------

setup() {
    PODMAN_COMPOSE="$("$HERE/setup-podman.sh")"
    "$HERE/base-images.sh"
}

# The build's options (common.sh): the host's pip configuration as a secret, the stand-in base image, the
# platform, and which kinds of tests the test targets run.
test_build_opts() {
    build_opts
    [[ -z "$TEST_KINDS" ]] || BUILD_OPTS+=(--build-arg "TEST_KINDS=$TEST_KINDS")
    if ! ((ONNX)); then
        BUILD_OPTS+=(--build-arg "TEST_DESELECT=onnx")
        log "NOT PROVED on $PLATFORM here: onnxruntime (it crashes on import under this QEMU); the model image does" \
            "not import it, the test targets deselect the tests matching 'onnx', no ONNX model is added"
    fi
    log "pip.conf for the build: $(tr '\n' ' ' <"$WORK/pip.conf")"
}

# ---- images ------------------------------------------------------------------------------------------------

build() {
    local target="$1" tag="$IMAGE_PREFIX-$1:$TAG" log="$WORK/build-$1.log"
    if ! timeout "${BUILD_TIMEOUT_S:-1500}" podman build "${BUILD_OPTS[@]}" --target "$target" -t "$tag" . >"$log" 2>&1; then
        grep -v '^WARNING: Location' "$log" | tail -n 60 >&2
        # A test target is built once more, so one flaky test is reported loudly but does not fail the run;
        # a failure that repeats does.
        [[ "$target" == *-test ]] || fail "podman build --target $target"
        log "FLAKY? $target failed (above); building it once more"
        timeout "${BUILD_TIMEOUT_S:-1500}" podman build "${BUILD_OPTS[@]}" --target "$target" -t "$tag" . >"$log" 2>&1 \
            || { grep -v '^WARNING: Location' "$log" | tail -n 60 >&2; fail "podman build --target $target, twice"; }
        log "FLAKY: $target failed once and passed the second time"
    fi
    grep -E '^[0-9]+ (passed|failed)|(passed|failed|error).* in [0-9.]+s|^run-tests.sh' "$log" >&2 || true
}

# Test files the Dockerfile's test targets do not select, so none is forgotten silently.
report_unselected_tests() {
    local globs selected=() f s hit
    globs="$(sed -n 's/^ARG [A-Z]*_TESTS="\(.*\)"$/\1/p' Dockerfile | tr '\n' ' ')"
    shopt -s nullglob
    # shellcheck disable=SC2206 # the globs are meant to expand here
    selected=($globs)
    shopt -u nullglob
    while IFS= read -r f; do
        hit=""
        for s in "${selected[@]}"; do [[ "$f" == "$s" || "$f" == "$s"/* ]] && hit=1 && break; done
        [[ -n "$hit" ]] || log "note: no test target runs $f (make test does)"
    done < <(find tests -name 'test_*.py' | sort)
}

images() {
    step "build api" build api
    step "build model" build model
    if has_web; then step "build web" build web; else log "no src/mlapi/web yet: no web image"; fi
    if [[ -z "${MLAPI_CHECK_SKIP_TESTS:-}" ]]; then
        report_unselected_tests
        step "build api-test (API tests)" build api-test
        step "build model-test (model tests)" build model-test
        if has_web; then
            step "build web-test (web tests)" build web-test
        fi
    fi
    local target arch
    for target in api model web; do
        podman image exists "$IMAGE_PREFIX-$target:$TAG" || continue
        arch="$(podman image inspect --format '{{.Os}}/{{.Architecture}}' "$IMAGE_PREFIX-$target:$TAG")"
        [[ "$arch" == "$PLATFORM" ]] || fail "$IMAGE_PREFIX-$target:$TAG is $arch, not $PLATFORM"
        log "image $IMAGE_PREFIX-$target:$TAG ($arch): $(podman image inspect --format '{{.Size}}' "$IMAGE_PREFIX-$target:$TAG" \
            | awk '{printf "%.0f MB", $1 / 1e6}')"
    done
}

# ---- compose -----------------------------------------------------------------------------------------------

free_port() {
    python3 - "$1" <<'PY'
import socket, sys
for port in (int(sys.argv[1]), 0):
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
            print(s.getsockname()[1])
            break
    except OSError:
        continue
PY
}

write_env() {
    API_PORT="${API_PORT:-$(free_port 8000)}"
    WEB_PORT="${WEB_PORT:-$(free_port 9090)}"
    [[ "$WEB_PORT" != "$API_PORT" ]] || WEB_PORT="$(free_port 0)"
    cat >"$WORK/env" <<EOF
POSTGRES_USER=mlapi
POSTGRES_PASSWORD=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
POSTGRES_DB=mlapi
REDIS_PASSWORD=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
MLAPI_ADMIN_KEY=$ADMIN_KEY
API_PORT=$API_PORT
WEB_PORT=$WEB_PORT
PUBLISH_ADDRESS=127.0.0.1
MLAPI_LOG_LEVEL=INFO
MLAPI_IMAGE_PREFIX=$IMAGE_PREFIX
MLAPI_TAG=$TAG
REDIS_IMAGE=$REDIS_STANDIN
POSTGRES_IMAGE=$POSTGRES_STANDIN
EOF
    log "API on 127.0.0.1:$API_PORT, web UI on 127.0.0.1:$WEB_PORT"
}

network() {
    if ! podman network exists shared_network; then
        podman network create shared_network >/dev/null
        CREATED_NETWORK=shared_network
    fi
}

containers_of() { podman ps -aq --filter "label=io.podman.compose.project=$PROJECT" --filter "label=io.podman.compose.service=$1"; }

# podman runs healthchecks from systemd timers; with no systemd, this loop is the timer.
health_driver() {
    local c
    trap - EXIT
    trap 'exit 0' TERM
    while :; do
        for c in $(podman ps -q --filter "label=io.podman.compose.project=$PROJECT" --filter health=starting \
            --filter health=healthy --filter health=unhealthy 2>/dev/null); do
            timeout $((15 * SLOW)) podman healthcheck run "$c" >/dev/null 2>&1 || true
        done
        sleep 4
    done
}

health_of() { podman inspect --format '{{.State.Health.Status}}' "$1" 2>/dev/null || echo gone; }

# wait_healthy SERVICE COUNT TIMEOUT: until COUNT containers of SERVICE run and report healthy.
wait_healthy() {
    local service="$1" want="$2" deadline=$((SECONDS + $3)) c healthy
    while ((SECONDS < deadline)); do
        healthy=0
        for c in $(containers_of "$service"); do
            [[ "$(health_of "$c")" == healthy ]] && healthy=$((healthy + 1))
            [[ "$(podman inspect --format '{{.State.Status}}' "$c")" == exited ]] \
                && fail "$service container $(podman inspect --format '{{.Name}}' "$c") exited"
        done
        ((healthy >= want)) && { log "$service: $healthy healthy"; return 0; }
        sleep 2
    done
    fail "$service: not $want healthy within $3 s"
}

# wait_completed SERVICE TIMEOUT: until the one-shot SERVICE exited, and it must have exited 0.
wait_completed() {
    local service="$1" c code
    c="$(containers_of "$service")"
    [[ -n "$c" ]] || fail "no $service container"
    code="$(timeout "$2" podman wait "$c")" || fail "$service did not finish within $2 s"
    ((code == 0)) || fail "$service exited with code $code"
    log "$service: exited 0"
}

up() {
    write_env
    network
    compose config >"$WORK/config.yaml" 2>"$WORK/config.log" || { cat "$WORK/config.log" >&2; fail "compose config"; }
    COMPOSE_UP=1
    health_driver &
    HEALTH_PID=$!
    # The order of compose.yaml's depends_on conditions.
    compose up -d --no-deps redis postgres >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log" >&2; fail "compose up redis postgres"; }
    wait_healthy redis 1 $((90 * SLOW))
    wait_healthy postgres 1 $((120 * SLOW))
    compose up -d --no-deps migrate >>"$WORK/up.log" 2>&1 || { cat "$WORK/up.log" >&2; fail "compose up migrate"; }
    wait_completed migrate $((120 * SLOW))
    compose up -d --no-deps api model >>"$WORK/up.log" 2>&1 || { cat "$WORK/up.log" >&2; fail "compose up api model"; }
    wait_healthy api 1 $((120 * SLOW))
    wait_healthy model 1 $((180 * SLOW))
    if has_web; then
        compose up -d --no-deps web >>"$WORK/up.log" 2>&1 || { cat "$WORK/up.log" >&2; fail "compose up web"; }
        wait_healthy web 1 $((120 * SLOW))
    fi
}

# Every container of the stack runs PLATFORM's binaries: its image's architecture, and `uname -m` inside it.
architectures() {
    local c name arch machine
    for c in $(podman ps -q --filter "label=io.podman.compose.project=$PROJECT"); do
        name="$(podman inspect --format '{{.Name}}' "$c")"
        arch="$(podman image inspect --format '{{.Os}}/{{.Architecture}}' "$(podman inspect --format '{{.Image}}' "$c")")"
        machine="$(timeout $((15 * SLOW)) podman exec "$c" uname -m)" || fail "podman exec $name uname -m"
        [[ "$arch" == "$PLATFORM" && "$machine" == "$MACHINE" ]] || fail "$name: image $arch, uname -m $machine"
        log "$name: $arch, uname -m $machine"
    done
}

# ---- smoke tests -------------------------------------------------------------------------------------------

http() { curl --silent --show-error --max-time "${HTTP_TIMEOUT_S:-20}" -H "Authorization: Bearer $ADMIN_KEY" "$@"; }
anonymous() { curl --silent --show-error --max-time "${HTTP_TIMEOUT_S:-20}" "$@"; }

# Auth is required by default: without a key only the health checks answer.
auth_required() {
    local code
    code="$(anonymous -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' -d "$SAMPLE" \
        "http://127.0.0.1:$API_PORT/predict")"
    ((code == 401)) || fail "POST /predict without a key answered $code, not 401"
    code="$(anonymous -o /dev/null -w '%{http_code}' "http://127.0.0.1:$API_PORT/readyz")"
    ((code == 200)) || fail "GET /readyz without a key answered $code"
    log "without a key: POST /predict 401, GET /readyz 200"
}

wait_ready() {
    local deadline=$((SECONDS + $1)) body
    while ((SECONDS < deadline)); do
        body="$(http "http://127.0.0.1:$API_PORT/readyz" 2>/dev/null || true)"
        [[ "$body" == *'"ready"'* ]] && { log "/readyz: $body"; return 0; }
        sleep 2
    done
    fail "/readyz not ready within $1 s: $body"
}

json() { python3 -c "import json, sys; d = json.load(sys.stdin); print($1)"; }

predict_and_read_back() {
    local answer id found
    answer="$(http --fail-with-body -H 'Content-Type: application/json' -d "$SAMPLE" \
        "http://127.0.0.1:$API_PORT/predict")" || fail "POST /predict: $answer"
    log "POST /predict: $answer"
    id="$(json 'd["id"]' <<<"$answer")"
    [[ "$(json 'd["model"]' <<<"$answer")" == "$MODEL" ]] || fail "prediction not from $MODEL"
    found="$(http --fail-with-body "http://127.0.0.1:$API_PORT/predictions?limit=100")" || fail "GET /predictions: $found"
    json "[i['status'] for i in d['items'] if i['id'] == '$id']" <<<"$found" | grep -q "'done'" \
        || fail "prediction $id is not listed as done in GET /predictions"
    log "GET /predictions lists $id as done"
}

load_web() {
    has_web || { log "no web service: page not loaded"; return 0; }
    local page jar="$WORK/web-cookies"
    page="$(anonymous --fail-with-body --location "http://127.0.0.1:$WEB_PORT/")" || fail "GET web /: $page"
    grep -q 'API key' <<<"$page" || fail "web / does not ask for an API key"
    # Sign in as a browser does: the key in a form, kept in the session cookie.
    page="$(anonymous --fail-with-body --location -c "$jar" -b "$jar" --data-urlencode "key=$ADMIN_KEY" \
        --data-urlencode "next=/predict" "http://127.0.0.1:$WEB_PORT/signin")" || fail "web sign-in: $page"
    grep -q 'Sign out' <<<"$page" || fail "web sign-in did not sign in"
    log "web UI: asks for a key, signs in"
    page="$(anonymous --fail-with-body --location -b "$jar" "http://127.0.0.1:$WEB_PORT/")" || fail "GET web /: $page"
    grep -qi '<html' <<<"$page" || fail "web / is not an HTML page"
    grep -qi "$MODEL\|HbA1c\|predict" <<<"$page" || fail "web / shows no prediction form"
    log "web UI: GET / -> $(wc -c <<<"$page") bytes of HTML with the prediction form"
    page="$(anonymous --fail-with-body --location -b "$jar" "http://127.0.0.1:$WEB_PORT/history")" \
        || fail "GET web /history: $page"
    grep -qi '<html' <<<"$page" || fail "web /history is not an HTML page"
    log "web UI: GET /history -> $(wc -c <<<"$page") bytes of HTML"
}

# Consumers in the group on the request stream of $MODEL's default version (one stream per model version).
live_consumers() {
    local version
    version="$(http "http://127.0.0.1:$API_PORT/models/$MODEL" | json 'd.get("default_version", 1)')" || version=1
    podman exec "$(containers_of redis | head -n1)" sh -c \
        "valkey-cli --no-raw XINFO CONSUMERS 'mlapi:{$MODEL}:requests:$version' mlapi-workers" 2>/dev/null \
        | grep -c '"name"' || true
}

# ---- the user's own models --------------------------------------------------------------------------------

# What a user does: train on their machine (the host), save in the library's own format, `mlapi models add`
# against the running API: a classifier and a regressor with scikit-learn (skops), and one model of each other
# runtime. Writes $WORK/own/NAME.{ARTIFACT,csv,json} and prints one line per model, `NAME TASK FILE`: the
# artifact, its data (features and `target`), and the first row's features with the host model's own answer
# for them, which the served model must repeat.
train_own_models() {
    mkdir -p "$WORK/own"
    timeout 300 "$HOST_PYTHON" - "$WORK/own" "$OWN_PREFIX" <<'PY'
import json, sys
from pathlib import Path

import lightgbm as lgb
import numpy as np
import skops.io as sio
import xgboost as xgb
from skl2onnx import to_onnx
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

out, prefix = Path(sys.argv[1]), sys.argv[2]
cancer = load_breast_cancer(as_frame=True).frame
classes = sorted(load_breast_cancer().target_names)
cancer["target"] = np.array(load_breast_cancer().target_names)[cancer["target"]]  # string labels; names with spaces
diabetes = load_diabetes(as_frame=True).frame
for runtime, task, frame in [
    ("sklearn", "classification", cancer), ("sklearn", "regression", diabetes),
    ("xgboost", "classification", cancer), ("lightgbm", "regression", diabetes), ("onnx", "classification", cancer),
]:  # fmt: skip
    name = f"{prefix}-{runtime}-{'classifier' if task == 'classification' else 'regressor'}"
    x, y = frame.drop(columns="target"), frame["target"]
    y_fit = y.map(classes.index) if runtime == "xgboost" else y  # a Booster learns class indices
    if runtime == "sklearn":
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)) if task == "classification" else LinearRegression()
    elif runtime == "xgboost":
        model = xgb.XGBClassifier(n_estimators=20, max_depth=3)
    elif runtime == "lightgbm":
        model = lgb.LGBMRegressor(n_estimators=20, verbose=-1)
    else:
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    model.fit(x, y_fit)
    expected = model.predict(x.iloc[:1])[0]
    if runtime == "sklearn":
        artifact = out / f"{name}.skops"
        sio.dump(model, artifact)
    elif runtime == "xgboost":
        artifact, expected = out / f"{name}.ubj", classes[int(expected)]  # UBJSON; NAME.json is the sample
        model.get_booster().save_model(artifact)
    elif runtime == "lightgbm":
        artifact = out / f"{name}.txt"
        model.booster_.save_model(artifact)
    else:
        artifact = out / f"{name}.onnx"
        artifact.write_bytes(to_onnx(model, x.to_numpy(np.float32)[:1]).SerializeToString())
    frame.to_csv(out / f"{name}.csv", index=False)
    sample = {k: float(v) for k, v in x.iloc[0].items()}
    answer = {"label": str(expected)} if task == "classification" else {"value": float(expected)}
    (out / f"{name}.json").write_text(json.dumps({"sample": sample, **answer}))
    print(name, task, artifact.name)
    print(f"{name}: {type(model).__name__} on {len(frame)} rows, {x.shape[1]} features", file=sys.stderr)
PY
}

# check_own_answer NAME TASK ANSWER: ANSWER is NAME's, of TASK, and what the host's model itself said.
check_own_answer() {
    python3 - "$WORK/own/$1.json" "$1" "$2" "$3" <<'PY'
import json, math, sys

expected, name, task, answer = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
problems = []
if answer.get("model") != name:
    problems.append(f"model {answer.get('model')!r}, not {name!r}")
if answer.get("task") != task:
    problems.append(f"task {answer.get('task')!r}, not {task!r}")
if str(answer.get("model_version", 1)) != "1":
    problems.append(f"version {answer.get('model_version')!r}, not 1")
value = answer.get("prediction")
if task == "regression":
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        problems.append(f"prediction {value!r} is not a number")
    elif not math.isclose(value, expected["value"], rel_tol=1e-6, abs_tol=1e-6):
        problems.append(f"prediction {value} where the model itself says {expected['value']}")
    if answer.get("label") is not None:
        problems.append("a regressor answered with a label")
elif answer.get("label") != expected["label"]:
    problems.append(f"label {answer.get('label')!r} where the model itself says {expected['label']!r}")
if problems:
    sys.exit(f"{name}: " + "; ".join(problems))
PY
}

# wait_loaded NAME TIMEOUT: until a live worker holds NAME version 1 loaded (`ready` >= 1).
wait_loaded() {
    local name="$1" deadline=$((SECONDS + $2)) body ready
    while ((SECONDS < deadline)); do
        body="$(http "http://127.0.0.1:$API_PORT/models/$name/versions/1" 2>/dev/null || true)"
        ready="$(json 'd.get("ready", 0)' <<<"$body" 2>/dev/null || echo 0)"
        ((ready >= 1)) && { log "$name v1: $ready worker(s) ready"; return 0; }
        sleep 1
    done
    fail "$name v1: no worker ready within $2 s: $body"
}

# add_own_model NAME TASK FILE: upload, wait until served, predict, find the prediction in the history.
add_own_model() {
    local name="$1" task="$2" file="$3" out answer id found
    out="$(timeout $((120 * SLOW)) "$HOST_MLAPI" models add "$name" "$WORK/own/$file" --data "$WORK/own/$name.csv" \
        --target target --api "http://127.0.0.1:$API_PORT" 2>&1)" || fail "mlapi models add $name: $out"
    log "mlapi models add $name: $out"
    wait_loaded "$name" $((60 * SLOW))
    answer="$(json 'json.dumps(d["sample"])' <"$WORK/own/$name.json" \
        | http --fail-with-body -H 'Content-Type: application/json' --data-binary @- \
            "http://127.0.0.1:$API_PORT/models/$name/predict")" || fail "POST /models/$name/predict: $answer"
    log "POST /models/$name/predict: $answer"
    check_own_answer "$name" "$task" "$answer" || fail "$name's answer"
    id="$(json 'd["id"]' <<<"$answer")"
    found="$(http --fail-with-body "http://127.0.0.1:$API_PORT/predictions?model=$name&limit=100")" \
        || fail "GET /predictions?model=$name: $found"
    json "[i['status'] for i in d['items'] if i['id'] == '$id']" <<<"$found" | grep -q "'done'" \
        || fail "prediction $id is not listed as done in GET /predictions?model=$name"
    log "GET /predictions?model=$name lists $id as done"
}

# Container ids with their start times: equal before and after means nothing was restarted.
starts() { podman ps -q --filter "label=io.podman.compose.project=$PROJECT" | sort | xargs -r podman inspect --format '{{.Id}} {{.State.StartedAt}}'; }

own_models() {
    [[ -x "$HOST_MLAPI" ]] || fail "no $HOST_MLAPI: run make venv first"
    local before
    before="$(starts)"
    local models name task file
    models="$(train_own_models)" || fail "training the own models on the host"
    while read -r name task file; do
        if [[ "$name" == *-onnx-* ]] && ! ((ONNX)); then
            log "NOT PROVED on $PLATFORM here: $name (onnxruntime under QEMU, MLAPI_CHECK_ONNX=0)"
            continue
        fi
        add_own_model "$name" "$task" "$file"
    done <<<"$models"
    [[ "$(starts)" == "$before" ]] || fail "a container was (re)started while the own models were added"
    log "own models served without restarting any container"
}

# podman-compose's `up --scale` adds replicas but removes none, so scaling down stops and removes the
# highest-numbered ones, as `docker compose up --scale` does; a worker must exit 0 on SIGTERM.
scale() {
    local n="$1" c name code t0 consumers
    compose up -d --no-deps --scale "model=$n" model >>"$WORK/up.log" 2>&1 || { tail -n 20 "$WORK/up.log" >&2; fail "scale model=$n"; }
    for c in $(containers_of model); do
        name="$(podman inspect --format '{{.Name}}' "$c")"
        ((${name##*_} > n)) || continue
        t0=$SECONDS
        timeout 60 podman stop --time 30 "$c" >/dev/null 2>&1 || fail "podman stop $name"
        code="$(podman inspect --format '{{.State.ExitCode}}' "$c")"
        ((code == 0)) || fail "$name exited with $code on SIGTERM"
        log "$name stopped on SIGTERM in $((SECONDS - t0)) s, exit 0"
        podman rm "$c" >/dev/null 2>&1
    done
    wait_healthy model "$n" $((180 * SLOW))
    local running
    running="$(podman ps -q --filter "label=io.podman.compose.project=$PROJECT" --filter "label=io.podman.compose.service=model" | wc -l)"
    ((running == n)) || fail "model: $running containers running after scaling to $n"
    consumers="$(live_consumers)"
    ((consumers == n)) || fail "model: $consumers consumers in the group $MODEL after scaling to $n"
    log "model scaled to $n: $running containers, $consumers consumers in the group"
}

# ---- main --------------------------------------------------------------------------------------------------

step "setup (podman, base images)" setup
test_build_opts
images
step "compose up (ordered by health)" up
step "API ready" wait_ready $((60 * SLOW))
step "architectures ($PLATFORM)" architectures
step "auth required" auth_required
step "predict + read back" predict_and_read_back
step "add own models, predict" own_models
step "web page" load_web
if ((SCALE)); then
    step "scale model to 3" scale 3
    step "predict with 3 workers" predict_and_read_back
    step "scale model to 1" scale 1
    step "predict with 1 worker" predict_and_read_back
else
    log "not scaling the model service (MLAPI_CHECK_SCALE=0; make containers scales on x86)"
fi
FAILED=0
