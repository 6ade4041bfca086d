"""The GPU suite: its requirement check, and its ``--cpu-smoke`` mode (every step at toy size,
through the launcher the GPU machine runs), so the suite never rots."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def suite():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_suite
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return gpu_suite


def test_requirement_check_names_missing_old_and_broken_packages(suite, monkeypatch):
    import numpy

    wanted = ["surely-absent-package>=1", "numpy<1", "numpy>=1.0", "scikit-learn>=1"]
    monkeypatch.setattr(suite, "requirements", lambda section="install_requires": wanted)
    unmet = suite.unmet_requirements()
    assert unmet == [
        "surely-absent-package>=1: not installed",
        f"numpy<1: {numpy.__version__} installed",
    ]
    monkeypatch.setitem(suite.IMPORT_NAMES, "scikit-learn", "surely_absent_module")
    assert suite.unmet_requirements()[2].startswith(
        "scikit-learn>=1: import surely_absent_module failed (ModuleNotFoundError"
    )


def test_real_requirements_are_read_and_met_here(suite):
    names = [line.split(">")[0].split("<")[0] for line in suite.requirements()]
    assert {"torch", "zarr", "timm", "scikit-learn", "click"} <= set(names)
    assert suite.requirements("gpu") == ["cuml-cu13"]
    assert suite.unmet_requirements() == []  # this environment is the reference


def test_cuml_is_not_installed_when_told_not_to(suite, monkeypatch):
    monkeypatch.setattr(suite.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(suite.subprocess, "run", lambda *a, **k: pytest.fail("pip ran"))
    assert suite.ensure_cuml(install=False) == (
        "cuML is not installed (cuml-cu13) and --no-install was given"
    )


@pytest.mark.slow  # about 20 s of CPU: a subprocess running every benchmark at toy size
def test_cpu_smoke_runs_every_step_with_finite_figures(suite, tmp_path):
    expected = {step.name: [fig.name for fig in step.figures] for step in suite.steps()}
    out = tmp_path / "gpu_suite.json"
    env = {
        **os.environ,
        "OUT": str(tmp_path),
        "PYTHON": sys.executable,
        "GPU_WHEELS": "/nonexistent",
    }
    done = subprocess.run(  # through the launcher the GPU machine runs (no .whl/ here: no install)
        ["bash", "benchmarks/gpu_run.sh", "--cpu-smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stdout[-2000:]
    assert (tmp_path / "gpu_suite.log").read_text() == done.stdout
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
