"""The GPU suite's ``--cpu-smoke`` mode runs every step at toy size, so the suite never rots."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # about 20 s of CPU: a subprocess running every benchmark at toy size
def test_cpu_smoke_runs_every_step_with_finite_figures(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from gpu_suite import steps
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    expected = {step.name: [fig.name for fig in step.figures] for step in steps()}
    out = tmp_path / "suite.json"
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu_suite.py", "--cpu-smoke", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["mode"] == "cpu-smoke" and result["device"].startswith("cpu")
    assert [rec["step"] for rec in result["steps"]] == list(expected)
    for rec in result["steps"]:
        assert rec["status"] == "ok", (rec["step"], rec["note"])
        assert [fig["name"] for fig in rec["figures"]] == expected[rec["step"]]
        for fig in rec["figures"]:
            assert fig["value"] is not None and math.isfinite(fig["value"]), (rec["step"], fig)
    gpu_tests = result["steps"][0]
    assert gpu_tests["raw"]["passed"] > 0  # the gpu-marked tests were found (collected)
    printed = done.stdout
    assert "probe_1536" in printed and "cuml_max_val_auroc_gap" in printed  # the table
