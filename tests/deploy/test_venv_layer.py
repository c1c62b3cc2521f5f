"""deploy/docker/venv_layer.py, which installs the images' venvs on the build machine for the target platform:
pip's configuration (the build's pip.conf secret) reaches uv, and wheels for another platform are chosen only
when the platforms differ."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from tests.deploy.scripts import load_script


def load() -> ModuleType:
    return load_script("venv_layer")


def test_pip_configuration_becomes_uv_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("numpy<3\n")
    conf = tmp_path / "pip.conf"
    conf.write_text(
        "[global]\nindex-url = https://index.invalid/simple\n"
        "extra-index-url = file:///a/simple file:///b/simple\nfind-links = /wheels\n"
        f"constraint = {constraints} /no/such/file\ncert = /ca.pem\ndefault-timeout = 180\n"
        "[install]\ntrusted-host = index.invalid\n"
    )
    monkeypatch.setenv("PIP_CONFIG_FILE", str(conf))
    args, env = load().uv_options()
    assert args[:2] == ["--index-strategy", "unsafe-best-match"]  # pip looks at every index alike
    pairs = list(zip(args[2::2], args[3::2], strict=True))
    assert ("--default-index", "https://index.invalid/simple") in pairs
    assert [v for k, v in pairs if k == "--index"] == ["file:///a/simple", "file:///b/simple"]
    assert ("--find-links", "/wheels") in pairs
    assert [v for k, v in pairs if k == "--constraint"] == [str(constraints)]  # a missing file is left out
    assert ("--allow-insecure-host", "index.invalid") in pairs
    assert env == {"SSL_CERT_FILE": "/ca.pem", "UV_HTTP_TIMEOUT": "180"}


def test_no_configuration_means_uv_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIP_CONFIG_FILE", str(tmp_path / "absent.conf"))
    assert load().uv_options() == (["--index-strategy", "unsafe-best-match"], {})


def test_another_platform_gets_its_wheels_and_builds_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    venv_layer = load()
    monkeypatch.setenv("TARGETARCH", "arm64")
    monkeypatch.setenv("BUILDARCH", "amd64")
    options = venv_layer.target_options()
    assert options[0] == "--python-platform" and options[1].startswith("aarch64-manylinux_2_")
    assert "--no-build" in options
    monkeypatch.setenv("TARGETARCH", "amd64")
    assert venv_layer.target_options() == []  # the build machine's own platform: a plain install
