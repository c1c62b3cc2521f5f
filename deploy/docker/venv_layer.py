"""Install into the image's venv on the build machine, for the image's platform, and keep what changed as a layer.

    python3 venv_layer.py OUT -- REQUIREMENT... (pip install arguments: names, -r FILE, --no-deps, ...)
    python3 venv_layer.py - -- REQUIREMENT...   (install only: the venv is a new layer as a whole)

runs `uv pip install` into /opt/venv (VIRTUAL_ENV) with the pip configuration of /etc/pip.conf (the build's
`pip.conf` secret: indexes, find-links, constraints, CA bundle, mapped to uv's options), byte-compiled, and
copies the files it added or changed to OUT/opt/venv, so the Dockerfile's stage for the target platform
takes them with `COPY --from=STAGE OUT/ /`. Python wheels and .pyc files are just files: when the target
platform is not the build machine's (TARGETARCH against this Python's machine: linux/arm64 images built on
x86), uv picks the target's wheels (`--python-platform`, manylinux for this image's glibc) and builds nothing
from source, so no pip or Python runs under emulation; on the build machine's own platform it is a plain
install.
The base image is the same on both platforms (same Python, same paths), so the venv's interpreter link and
the scripts' `#!/opt/venv/bin/python` hold in the target image. A removed file cannot be expressed as a copied
layer: if the install removed any (an upgrade of something an earlier layer installed), this fails.
"""

from __future__ import annotations

import configparser
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

VENV = Path(os.environ.get("VIRTUAL_ENV", "/opt/venv"))
MACHINES = {"amd64": "x86_64", "arm64": "aarch64"}
LISTS = {
    "index-url": "--default-index",
    "extra-index-url": "--index",
    "find-links": "--find-links",
    "constraint": "--constraint",
    "trusted-host": "--allow-insecure-host",
}
"""pip settings (each a list of words) and the uv option each word becomes."""
ENVIRONMENT = {"cert": "SSL_CERT_FILE", "timeout": "UV_HTTP_TIMEOUT", "default-timeout": "UV_HTTP_TIMEOUT"}
PIP_ONLY = {"disable-pip-version-check", "no-cache-dir", "root-user-action", "progress-bar", "quiet", "verbose"}
"""pip settings about pip itself, with nothing to say to uv."""


def snapshot(root: Path) -> dict[str, tuple[int, int, int, str]]:
    """Every path under root: (kind, size, mtime, link target), kind 0 file, 1 directory, 2 symlink."""
    found: dict[str, tuple[int, int, int, str]] = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(directory, name)
            st = os.lstat(path)
            if os.path.islink(path):
                found[path] = (2, 0, 0, os.readlink(path))
            elif name in dirs:
                found[path] = (1, 0, 0, "")
            else:
                found[path] = (0, st.st_size, st.st_mtime_ns, "")
    return found


def uv_options() -> tuple[list[str], dict[str, str]]:
    """pip's configuration (/etc/pip.conf, sections global and install) as uv options and environment."""
    config = configparser.ConfigParser()
    config.read(os.environ.get("PIP_CONFIG_FILE", "/etc/pip.conf"))
    settings: dict[str, str] = {}
    for section in ("global", "install"):
        if config.has_section(section):
            settings.update(config.items(section))
    args = ["--index-strategy", "unsafe-best-match"]  # pip considers every index alike
    env: dict[str, str] = {}
    for key, value in settings.items():
        words = value.split()
        if key in LISTS:
            if key == "constraint":
                words = [w for w in words if os.path.exists(w)]
            args += [a for w in words for a in (LISTS[key], w)]
        elif key == "no-index" and value.strip().lower() in ("1", "true", "yes", "on"):
            args += ["--no-index"]
        elif key in ENVIRONMENT:
            env[ENVIRONMENT[key]] = value.strip()
        elif key not in PIP_ONLY:
            print(f"venv_layer: pip setting {key} not passed to uv", file=sys.stderr)
    return args, env


def target_options() -> list[str]:
    """--python-platform when the target platform (TARGETARCH) is not the build machine's, else nothing."""
    target = os.environ.get("TARGETARCH", "")
    machine = MACHINES.get(target)
    assert machine or not target, f"no wheels platform for TARGETARCH={target}"
    if not machine or machine == platform.machine():
        return []
    libc, version = platform.libc_ver()
    assert libc == "glibc", f"this base image's C library is {libc!r}, not glibc"
    major, minor = version.split(".")[:2]
    # Same base image on both platforms, so the same glibc; nothing is compiled for the wrong machine.
    return ["--python-platform", f"{machine}-manylinux_{major}_{minor}", "--no-build"]


def main(out: Path, requirements: list[str]) -> None:
    before = snapshot(VENV)
    args, env = uv_options()
    command = ["uv", "pip", "install", "--python", str(VENV / "bin" / "python"), "--compile-bytecode", "--no-cache"]
    command += target_options() + args + requirements
    print("venv_layer:", " ".join(command), file=sys.stderr, flush=True)
    subprocess.run(command, check=True, env={**os.environ, **env})
    if str(out) == "-":
        return
    shutil.rmtree(out, ignore_errors=True)  # the layer of the stage this one is built on
    after = snapshot(VENV)
    removed = sorted(set(before) - set(after))
    assert not removed, f"the install removed {len(removed)} paths an earlier layer holds: {removed[:10]}"
    changed = [p for p, state in after.items() if before.get(p) != state and not (state[0] == 1 and p in before)]
    for path in sorted(changed):
        target = out / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        kind = after[path][0]
        if kind == 1:
            target.mkdir(exist_ok=True)
            shutil.copystat(path, target)
        elif kind == 2:
            os.symlink(os.readlink(path), target)
        else:
            try:
                os.link(path, target)
            except OSError:
                shutil.copy2(path, target)
    print(f"venv_layer: {len(changed)} paths added or changed, in {out}", file=sys.stderr)


if __name__ == "__main__":
    separator = sys.argv.index("--")
    main(Path(sys.argv[1]), sys.argv[separator + 1 :])
