"""The test targets' runner (deploy/docker/run-tests.sh): TEST_KINDS picks the kinds of tests a target runs, as
the arm64 targets built under emulation pass `integration unit`; nothing is dropped silently."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RUNNER = REPO / "deploy" / "docker" / "run-tests.sh"
SELECTION = "tests/e2e/test_api* tests/integration/test_queue* tests/unit/test_spec* tests/unit/runtimes tests/no_such*"


def run(tmp_path: Path, selection: str, **env: str) -> subprocess.CompletedProcess[str]:
    """run-tests.sh with a `python` that prints the pytest arguments it was given instead of running them."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "python"
    fake.write_text('#!/bin/sh\necho "$@"\n')
    fake.chmod(0o755)
    environment = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTEST_ARGS": "-q", **env}
    return subprocess.run(
        ["sh", str(RUNNER), selection], cwd=REPO, env=environment, capture_output=True, text=True, timeout=30
    )


def selected(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [a for a in result.stdout.splitlines()[-1].split() if a.startswith("tests/")]


def test_by_default_every_kind_runs(tmp_path: Path) -> None:
    result = run(tmp_path, SELECTION)
    assert result.returncode == 0, result.stderr
    paths = selected(result)
    assert {p.split("/")[1] for p in paths} == {"e2e", "integration", "unit"}
    assert "tests/unit/runtimes" in paths


def test_test_kinds_keeps_only_those_kinds(tmp_path: Path) -> None:
    result = run(tmp_path, SELECTION, TEST_KINDS="integration unit")
    assert result.returncode == 0, result.stderr
    paths = selected(result)
    assert paths and not [p for p in paths if p.startswith("tests/e2e/")]
    assert {p.split("/")[1] for p in paths} == {"integration", "unit"}


def test_a_target_with_no_test_of_its_kinds_fails(tmp_path: Path) -> None:
    result = run(tmp_path, "tests/e2e/test_api*", TEST_KINDS="integration unit")
    assert result.returncode == 1
    assert "no integration unit tests found" in result.stderr
