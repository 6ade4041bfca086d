"""The command line as a whole: every command documented with an example, fast start-up."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from cxrprobe.cli import main


@pytest.mark.parametrize("name", sorted(main.commands))
def test_every_command_has_help_with_an_example(name):
    result = CliRunner().invoke(main, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example:" in result.output
    assert f"cxrprobe {name}" in result.output.split("Example:")[1]


def test_top_level_help_lists_every_command_and_imports_no_torch():
    code = (
        "import sys; from click.testing import CliRunner; from cxrprobe.cli import main; "
        "r = CliRunner().invoke(main, ['--help']); assert r.exit_code == 0, r.output; "
        "print(r.output); print('TORCH', 'torch' in sys.modules, 'zarr' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert "TORCH False False" in out
    for name in main.commands:
        assert name in out


def test_library_errors_are_one_line_without_traceback(tmp_path):
    result = CliRunner().invoke(main, ["info", str(tmp_path / "missing.zarr")])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert result.output.count("Error:") == 1 and "missing.zarr" in result.output
