"""The typing rule (docs/adr/0015-mypy-strict.md): mypy --strict runs over the whole project in
`make test`, and every type-ignore comment names its error code and says why on its line."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from django.conf import settings

ROOT = Path(settings.BASE_DIR)
IGNORE = re.compile(r"#\s*type:\s*" r"ignore(?P<codes>\[[^\]]*\])?(?P<rest>.*)$")


def _checked_files() -> list[Path]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    files: list[Path] = []
    for entry in config["files"]:
        path = ROOT / entry
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return [f for f in files if "migrations" not in f.parts]


def test_mypy_covers_every_python_package_of_the_project() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    assert config["strict"] is True
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert packages <= set(config["files"]), packages - set(config["files"])


def test_make_test_runs_mypy_before_pytest() -> None:
    makefile = (ROOT / "Makefile").read_text()
    target = makefile[makefile.index("\ntest:") :]
    assert target.index("$(BIN)/mypy") < target.index("$(BIN)/pytest")


def test_every_type_ignore_names_its_code_and_why() -> None:
    bare = []
    for path in _checked_files():
        for number, line in enumerate(path.read_text().splitlines(), 1):
            match = IGNORE.search(line)
            if match is None:
                continue
            why = match["rest"].strip().lstrip("#").strip()
            if not match["codes"] or not why:
                bare.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not bare, "each type-ignore needs its [code] and a `# why` after it:\n" + "\n".join(bare)
