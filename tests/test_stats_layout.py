"""``cxrprobe.stats`` has no import circle, and ``compare`` on the CPU needs neither
scikit-learn nor torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import cxrprobe.stats

STATS = Path(cxrprobe.stats.__file__).parent


def _stats_imports(path: Path) -> set[str]:
    """The ``cxrprobe.stats`` modules ``path`` imports, at top level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        found |= {n.split(".")[2] for n in names if n.startswith("cxrprobe.stats.")}
    return found


def test_no_import_circle_in_stats():
    graph = {p.stem: _stats_imports(p) for p in STATS.glob("*.py") if p.stem != "__init__"}
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        assert module not in path, "import circle: " + " -> ".join([*path, module])
        if module in done:
            return
        for dep in sorted(graph[module]):
            visit(dep, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])


@pytest.mark.parametrize("command", ["compare", "evaluate"])
def test_a_cpu_comparison_imports_neither_sklearn_nor_torch(tmp_path, command):
    """The whole command on the CPU: numpy and scipy do the work, so it starts fast."""
    code = (
        "import sys, numpy as np\n"
        "from cxrprobe.stats.predictions import Predictions, write_predictions\n"
        "t = np.array([[0.0], [1.0], [0.0], [1.0]])\n"
        "p = Predictions(['x'], list('abcd'), t, np.array([[.1], [.8], [.4], [.3]]), 'probability')\n"
        f"path = write_predictions(p, {str(tmp_path / 'p.json')!r})\n"
        "from cxrprobe.cli import main\n"
        "files = [str(path)] * (2 if sys.argv[1] == 'compare' else 1)\n"
        "try:\n"
        "    main([sys.argv[1], *files, '-B', '40', '--device', 'cpu'])\n"
        "except SystemExit as exit:\n"
        "    assert exit.code == 0, exit.code\n"
        "print('MODULES', 'sklearn' in sys.modules, 'torch' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, command], capture_output=True, text=True, check=True
    )
    assert "MODULES False False" in out.stdout, out.stdout + out.stderr
