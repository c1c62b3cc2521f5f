# shellcheck shell=bash
# Sourced by the container scripts: which platform they build for, and the names that depend on it.
#   MLAPI_PLATFORM   linux/amd64 (default) or linux/arm64; any other architecture runs under QEMU as arm64 does
# Sets PLATFORM, ARCH (Debian's name: amd64, arm64), SUFFIX ("" for amd64, "-arm64" otherwise: the x86 names
# predate this), HOST_ARCH, EMULATED (1 when the host's CPU is not ARCH), and the local stand-ins of the public
# base images.
PLATFORM="${MLAPI_PLATFORM:-linux/amd64}"
ARCH="${PLATFORM#linux/}"
case "$ARCH" in
    amd64 | x86_64) ARCH=amd64 ;;
    arm64 | aarch64) ARCH=arm64 ;;
    *) echo "MLAPI_PLATFORM=$PLATFORM: only linux/amd64 and linux/arm64 are built" >&2; exit 2 ;;
esac
PLATFORM="linux/$ARCH"
SUFFIX=""
[[ "$ARCH" == amd64 ]] || SUFFIX="-$ARCH"
EMULATED=""
HOST_ARCH="$(dpkg --print-architecture 2>/dev/null || echo amd64)"
[[ "$ARCH" == "$HOST_ARCH" ]] || EMULATED=1
# The machine name of ARCH, as in wheel tags and qemu's binfmt entry.
MACHINE="$([[ "$ARCH" == amd64 ]] && echo x86_64 || echo aarch64)"
PYTHON_STANDIN="localhost/mlapi-standin/python:3.11-bookworm$SUFFIX"
REDIS_STANDIN="localhost/mlapi-standin/valkey:9-bookworm$SUFFIX"
POSTGRES_STANDIN="localhost/mlapi-standin/postgres:15-bookworm$SUFFIX"
# The Dockerfile installs the venv on the build machine, in the same base image for the host's platform
# (BUILD_PYTHON_IMAGE): under emulation, the host's own python stand-in.
BUILD_PYTHON_STANDIN="localhost/mlapi-standin/python:3.11-bookworm$([[ "$HOST_ARCH" == amd64 ]] || echo "-$HOST_ARCH")"
# onnxruntime's aarch64 wheel segfaults on import under QEMU 7.2 user-mode emulation (bookworm's qemu-user-static;
# not on arm64 hardware): under emulation the model image's import check (common.sh), the test targets and the
# own models (check.sh) leave ONNX out, and say so. MLAPI_CHECK_ONNX=1 tries it anyway (newer QEMU, native arm64).
ONNX="${MLAPI_CHECK_ONNX:-$([[ -n "$EMULATED" ]] && echo 0 || echo 1)}"
