"""Package layering: which subpackages may import which (checked on the import statements)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import cxrprobe

PACKAGE = Path(cxrprobe.__file__).parent
# subpackage → packages it must never import (directly or lazily inside a function)
FORBIDDEN = {
    "data": ("cxrprobe.cache", "cxrprobe.probe", "cxrprobe.finetune"),
    "finetune": ("cxrprobe.probe",),
    "probe": ("cxrprobe.finetune",),
}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import statement in ``path``, top level or not."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module))
    return found


def test_the_scan_sees_lazy_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef f():\n    from cxrprobe.cache.store import RowStore\n")
    assert imported_modules(module) == [(1, "os"), (4, "cxrprobe.cache.store")]


@pytest.mark.parametrize("subpackage", sorted(FORBIDDEN))
def test_subpackage_does_not_import_what_it_must_not(subpackage):
    bad = [
        f"{path.relative_to(PACKAGE)}:{line}: {module}"
        for path in sorted((PACKAGE / subpackage).rglob("*.py"))
        for line, module in imported_modules(path)
        if module.startswith(FORBIDDEN[subpackage])
    ]
    assert not bad, f"cxrprobe.{subpackage} must not import {FORBIDDEN[subpackage]}:\n" + "\n".join(
        bad
    )
