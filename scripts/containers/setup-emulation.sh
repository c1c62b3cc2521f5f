#!/usr/bin/env bash
# Lets this machine run the binaries of MLAPI_PLATFORM (linux/arm64 on an x86 host) with QEMU user-mode
# emulation, for the arm64 images' build and run (root, Debian). Idempotent; does nothing for the host's own
# platform. binfmt_misc's F flag makes the kernel open the interpreter once, so it works inside containers
# and chroots without copying qemu into them.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=platform.sh
source "$HERE/platform.sh"
log() { printf '[setup-emulation %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

[[ -n "$EMULATED" ]] || exit 0
entry=/proc/sys/fs/binfmt_misc/qemu-$MACHINE
if [[ ! -e /proc/sys/fs/binfmt_misc/status ]]; then
    log "mount binfmt_misc"
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
if ! command -v "qemu-$MACHINE-static" >/dev/null || ! command -v update-binfmts >/dev/null; then
    [[ $(id -u) -eq 0 ]] || { log "need root to install qemu-user-static binfmt-support"; exit 1; }
    log "apt-get install qemu-user-static binfmt-support"
    timeout 300 apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq --no-install-recommends \
        qemu-user-static binfmt-support >&2
fi
if ! grep -qx enabled "$entry" 2>/dev/null; then
    log "update-binfmts --enable qemu-$MACHINE"
    update-binfmts --enable "qemu-$MACHINE" >&2 || true
fi
grep -qx enabled "$entry" 2>/dev/null || { log "no binfmt_misc handler for $MACHINE ($entry)"; exit 1; }
grep -q '^flags:.*F' "$entry" || { log "$entry lacks the F flag: binaries in containers would not find qemu"; exit 1; }
log "$PLATFORM runs under $(sed -n 's/^interpreter //p' "$entry") ($(sed -n 's/^flags: //p' "$entry"))"
