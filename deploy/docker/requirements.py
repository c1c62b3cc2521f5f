"""Write each image's dependency list from pyproject.toml, so installing them is a layer that source edits keep.

`python requirements.py pyproject.toml OUT_DIR` writes OUT_DIR/{core,api,model,web,test}.txt: the core
dependencies, each service's extra (each installed over core), and what the test images add: the test tools
and the embedded servers. Extras that name the project itself (`mlapi[model]`) are expanded.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

NOT_IN_IMAGES = {"mypy", "ruff", "pandas-stubs", "playwright"}
"""What the test images leave out: lint tools, and the browser tests' driver (the images have no browser;
those tests run in `make test`)."""


def _name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    assert match, f"unparsable requirement {requirement!r}"
    return match.group(0).lower().replace("_", "-")


def expand(project: dict[str, object], extras: list[str]) -> list[str]:
    """The requirements of the given extras, with the project's own extras expanded in place."""
    name = _name(str(project["name"]))
    optional = project.get("optional-dependencies", {})
    assert isinstance(optional, dict)
    found: list[str] = []
    pending = list(extras)
    seen: set[str] = set()
    while pending:
        extra = pending.pop(0)
        if extra in seen:
            continue
        seen.add(extra)
        for requirement in optional.get(extra, []):
            if _name(requirement) == name:
                inner = re.search(r"\[([^\]]*)\]", requirement)
                pending += [e.strip() for e in inner.group(1).split(",")] if inner else []
            elif requirement not in found:
                found.append(requirement)
    return found


def main(pyproject: Path, out: Path) -> None:
    project = tomllib.loads(pyproject.read_text())["project"]
    core = list(project.get("dependencies", []))
    api = expand(project, ["api"])
    model = expand(project, ["model", "runtimes"])  # the model image serves every runtime
    web = expand(project, ["web"])
    given = set(core + api + model + web)
    test = [r for r in expand(project, ["embedded", "dev"]) if r not in given and _name(r) not in NOT_IN_IMAGES]
    out.mkdir(parents=True, exist_ok=True)
    for name, requirements in {"core": core, "api": api, "model": model, "web": web, "test": test}.items():
        (out / f"{name}.txt").write_text("".join(f"{r}\n" for r in requirements))
        print(f"{name}: {' '.join(requirements) or '-'}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
