"""The import-layer contract: the package's layers import only downward, and no module imports in a cycle.

Read from the syntax trees (imports inside functions count too), so a lazy import cannot
hide a dependency the layering forbids. The layers, bottom up, are those of
``lightning_split/__init__.py``'s docstring.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

PACKAGE = ROOT / "lightning_split"
LAYERS = {
    "planning": 0,
    "graph": 1,
    "transport": 2,
    "costs": 3,
    "serve": 4,
    "runtime": 5,
    "report": 6,
    "plot": 6,
    "cli": 7,
    "_registry": 8,
    "__init__": 8,
}
# What each layer may import from outside the standard library and the package.
THIRD_PARTY = {
    "planning": {"networkx", "scipy", "numpy"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports_of(path: Path) -> set[str]:
    """Absolute names this file imports (``from a.b import c`` gives ``a.b.c`` and ``a.b``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{path}: use absolute imports"
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def package_imports(module: str) -> set[str]:
    return {name for name in imports_of(MODULES[module]) if name in MODULES and name != module}


def test_every_module_has_a_layer():
    assert {layer_of(m) for m in MODULES} <= set(LAYERS), sorted({layer_of(m) for m in MODULES} - set(LAYERS))


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_the_layers(module: str):
    rank = LAYERS[layer_of(module)]
    upward = sorted(name for name in package_imports(module) if LAYERS[layer_of(name)] > rank)
    assert not upward, f"{module} (layer {layer_of(module)}) imports from layers above it: {upward}"


@pytest.mark.parametrize("layer", sorted(THIRD_PARTY))
def test_layers_use_only_their_third_party_packages(layer: str):
    allowed = THIRD_PARTY[layer] | set(sys.stdlib_module_names) | {"lightning_split"}
    for module in (m for m in MODULES if layer_of(m) == layer):
        used = {name.split(".")[0] for name in imports_of(MODULES[module])}
        assert used <= allowed, f"{module} imports {sorted(used - allowed)}"


def test_no_import_cycle_between_modules():
    graph = {module: package_imports(module) for module in MODULES}
    # a package's __init__ is imported by its submodules' import machinery, not by their code: only code edges count
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for name in sorted(graph[module]):
            if state.get(name) == 1:
                cycle = [*path[path.index(name) :], name]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if name not in state:
                visit(name, [*path, name])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_the_planner_loads_neither_lightning_nor_websockets_nor_torch():
    code = (
        "import sys, lightning_split.planning.planner, lightning_split.planning.profile; "
        "print(sorted(m for m in ('lightning', 'websockets', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
