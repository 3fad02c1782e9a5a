"""Every module of the project imports, and every module any file names is installed.

A dependency the set-up does not declare fails here, by name, instead of hiding behind a
machine where it happened to be installed (or behind a skip). Imports inside functions count:
each file's syntax tree is read, not just its top-level imports.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

FOLDERS = ("lightning_split", "tests", "examples", "benchmarks")
FILES = sorted(p for folder in FOLDERS for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)


def local_names() -> set[str]:
    """Top-level names that are the project's own (packages, scripts, sibling helper modules)."""
    return {p.stem for p in FILES} | set(FOLDERS)


def imported_names(path: Path) -> set[str]:
    """Top-level module names of every absolute import in ``path``, at any depth of the file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_project_has_files_to_check():
    assert any(p.parts[-2] == "benchmarks" for p in FILES) and any(p.parts[-2] == "examples" for p in FILES)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_imported_module_is_installed(path: Path):
    missing = sorted(
        name
        for name in imported_names(path) - local_names() - set(sys.stdlib_module_names)
        if importlib.util.find_spec(name) is None
    )
    assert not missing, f"{path.relative_to(ROOT)} imports {missing}: declare them in pyproject.toml"


@pytest.mark.parametrize("path", [p for p in FILES if p.name != "conftest.py"], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_module_imports(path: Path, monkeypatch: pytest.MonkeyPatch):
    """Import the file as its script or package would see it: the repository and its folder on sys.path."""
    relative = path.relative_to(ROOT).with_suffix("")
    monkeypatch.syspath_prepend(str(ROOT))
    if path.parent.name == "benchmarks":
        monkeypatch.syspath_prepend(str(path.parent))
    importlib.import_module(".".join(relative.parts))
