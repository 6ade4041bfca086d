"""Package layering: which floors may import which, and no import circle between modules.

Both are checked on the import statements themselves (top level or inside a function), so a lazy
import counts as much as a top-level one. docs/architecture.md states the same rules.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import cxrprobe

PACKAGE = Path(cxrprobe.__file__).parent
TOP_LEVEL = ("errors", "progress", "devices", "provenance", "outputs", "weights", "hub",
             "finetuned", "architectures", "models")  # fmt: skip
LIBRARY = ("top", "data", "stats", "cache", "probe", "finetune")
# floor → the floors its modules may import (its own floor is always allowed)
ALLOWED = {
    "top": {"top"},
    "data": {"top"},
    "stats": {"top", "data"},  # the finding vocabulary and named sets (--findings)
    "cache": {"top", "data", "stats"},
    "probe": {"top", "data", "stats", "cache"},
    "finetune": {"top", "data", "stats", "cache"},
    "workflow": set(LIBRARY),
    "cli": {*LIBRARY, "workflow"},
}


def modules(root: Path) -> dict[str, Path]:
    """Every module of the package at ``root`` by dotted name (a package by its own name)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = (root.name, *path.relative_to(root).with_suffix("").parts)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _raw_imports(name: str, path: Path) -> Iterator[tuple[int, str, tuple[str, ...]]]:
    """(line, module, names) of every import statement, relative ones made absolute."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, ()
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + _is_package(path)]
                module = ".".join([*base, module] if module else base)
            yield node.lineno, module, tuple(alias.name for alias in node.names)


def _reexports(package: str, found: dict[str, Path]) -> dict[str, str]:
    """Names a package's ``__init__`` imports from its own submodules: name → submodule."""
    names = {}
    for _, module, imported in _raw_imports(package, found[package]):
        if module.startswith(package + ".") and module in found:
            names.update(dict.fromkeys(imported, module))
    return names


def import_edges(root: Path) -> dict[str, dict[str, int]]:
    """module → {module it imports: first line}, within the package at ``root``.

    ``from pkg import name`` leads to the submodule ``pkg.name``, or to the submodule ``pkg``'s
    ``__init__`` re-exports ``name`` from; a package's imports of its own submodules (its
    re-exports) are left out.
    """
    found = modules(root)
    reexports = {name: _reexports(name, found) for name, path in found.items() if _is_package(path)}

    def resolve(module: str) -> str | None:
        while module and module not in found:
            module = module.rpartition(".")[0]
        return module or None

    edges: dict[str, dict[str, int]] = {}
    for name, path in found.items():
        out = edges.setdefault(name, {})
        for line, module, imported in _raw_imports(name, path):
            targets = [resolve(module)]
            if module in reexports:
                targets = [
                    f"{module}.{item}" if f"{module}.{item}" in found
                    else reexports[module].get(item, module)
                    for item in imported
                ] or targets  # fmt: skip
            for target in targets:
                own = _is_package(path) and target is not None and target.startswith(name + ".")
                if target is not None and target != name and not own:
                    out.setdefault(target, line)
    return edges


def find_circles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """The import circles: one path ``a → … → a`` per strongly connected group of modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in edges.get(node, {}):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while not group or group[-1] != node:
                group.append(stack.pop())
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return [_circle_path(group, edges) for group in groups]


def _circle_path(group: list[str], edges: dict[str, dict[str, int]]) -> list[str]:
    """A shortest circle through the group's first module (breadth first)."""
    start, members = group[0], set(group)
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for target in sorted(edges.get(node, {})):
            if target == start:
                return [*paths[node], start]
            if target in members and target not in paths:
                paths[target] = [*paths[node], target]
                queue.append(target)
    return group


def floor(module: str) -> str:
    """The floor of a module of cxrprobe: ``top`` for the top-level modules, else its subpackage."""
    parts = module.split(".")
    return "top" if len(parts) == 1 or parts[1] in TOP_LEVEL else parts[1]


EDGES = import_edges(PACKAGE)


def test_the_scan_sees_lazy_relative_and_reexported_imports(tmp_path):
    root = tmp_path / "pkg"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("from pkg.a import thing\n")
    (root / "a.py").write_text("import os\n\ndef f():\n    from pkg.sub import helper\n")
    (root / "sub" / "__init__.py").write_text("from .b import helper\n")
    (root / "sub" / "b.py").write_text("from .. import a\nfrom pkg import thing\n")
    assert import_edges(root) == {
        "pkg": {},  # its re-export of pkg.a is no edge
        "pkg.a": {"pkg.sub.b": 4},  # lazy, and through the re-export to the defining module
        "pkg.sub": {},
        "pkg.sub.b": {"pkg.a": 1},  # relative, and `thing` is re-exported from pkg.a
    }


def test_the_circle_finder_finds_a_planted_circle(tmp_path):
    root = tmp_path / "pkg"
    root.mkdir()
    (root / "__init__.py").write_text("from pkg import a, b, c\n")  # package → submodules: none
    (root / "a.py").write_text("from pkg.b import x\n")
    (root / "b.py").write_text("def x():\n    from pkg import c\n")
    (root / "c.py").write_text("import pkg.a\n")
    (root / "d.py").write_text("import pkg.a\n")
    assert find_circles(import_edges(root)) == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]
    (root / "c.py").write_text("import pkg.d\n")  # c → d → a → b → c: still one
    assert find_circles(import_edges(root)) == [["pkg.a", "pkg.b", "pkg.c", "pkg.d", "pkg.a"]]
    (root / "d.py").write_text("import os\n")
    assert find_circles(import_edges(root)) == []


def test_no_import_circle_between_modules():
    circles = [" → ".join(circle) for circle in find_circles(EDGES)]
    assert not circles, "import circles (lazy imports included):\n" + "\n".join(circles)


def test_every_module_has_a_floor():
    floors = {floor(module) for module in EDGES}
    assert floors <= set(ALLOWED), f"modules outside the known floors: {floors - set(ALLOWED)}"
    listed = {path.stem for path in PACKAGE.glob("*.py") if path.stem != "__init__"}
    assert listed == set(TOP_LEVEL), "TOP_LEVEL must list exactly the top-level modules"


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_floor_imports_only_the_floors_below(layer):
    bad = [
        f"{modules(PACKAGE)[module].relative_to(PACKAGE)}:{line}: imports {target}"
        for module, targets in EDGES.items()
        if floor(module) == layer
        for target, line in targets.items()
        if floor(target) != layer and floor(target) not in ALLOWED[layer]
    ]
    allowed = sorted(ALLOWED[layer] - {layer})
    assert not bad, f"cxrprobe {layer} may import only {allowed}:\n" + "\n".join(bad)


def test_the_floor_check_would_see_an_upward_import(tmp_path):
    root = tmp_path / "cxrprobe"
    (root / "data").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "data" / "__init__.py").write_text("")
    (root / "data" / "m.py").write_text("def f():\n    from cxrprobe.cache.store import RowStore\n")
    (root / "cache").mkdir()
    (root / "cache" / "__init__.py").write_text("")
    (root / "cache" / "store.py").write_text("RowStore = None\n")
    edges = import_edges(root)
    assert edges["cxrprobe.data.m"] == {"cxrprobe.cache.store": 2}
    assert "cache" not in ALLOWED[floor("cxrprobe.data.m")]
