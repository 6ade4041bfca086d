"""The command line as a whole: every command documented with an example, fast start-up."""

from __future__ import annotations

import subprocess
import sys

import click
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


def _params(name: str, args: list[str]) -> dict:
    return main.commands[name].make_context(name, args).params


@pytest.mark.parametrize(
    "name, old, new",
    [
        ("finetune", ["--num-workers", "0"], ["--workers", "0"]),
        ("finetune", ["--no-class-weights"], ["--class-weight", "none"]),
        ("finetune", ["--class-weights"], ["--class-weight", "pos_weight"]),
        ("manifest", ["--output", "m.parquet"], ["--out", "m.parquet"]),
        ("manifest", ["--val-frac=0.3"], ["--val-fraction", "0.3"]),
        ("manifest", ["--test-frac", "0.3"], ["--test-fraction", "0.3"]),
    ],
)
def test_old_option_spellings_parse_as_the_new_ones_with_a_warning(name, old, new, capsys):
    required = {
        "finetune": ["--init", "random", "--out", "run"],
        "manifest": ["generic", "--root", "data", "-o", "x"],
    }
    base = required[name]
    assert _params(name, [*base, *old]) == _params(name, [*base, *new])
    warning = capsys.readouterr().err
    assert (
        f"{old[0].split('=')[0]} is deprecated" in warning and f"use {' '.join(new[:1])}" in warning
    )
    assert _params(name, [*base, *new])  # the new spelling warns about nothing
    assert capsys.readouterr().err == ""


def test_option_names_agree_across_commands():
    flags = {
        name: {o for p in command.params for o in getattr(p, "opts", [])}
        for name, command in main.commands.items()
    }
    retired = {"--num-workers", "--output", "--val-frac", "--test-frac", "--class-weights"}
    assert not {n: f & retired for n, f in flags.items() if f & retired}
    for name, command in main.commands.items():
        for param in command.params:
            long = [o for o in getattr(param, "opts", []) if o.startswith("--")]
            if "workers" in str(param.name):
                assert long == ["--workers"], (name, param.opts)
            if "frac" in str(param.name):
                assert long[0].endswith("-fraction"), (name, param.opts)
    assert "-o" in flags["manifest"] and "--out" in flags["manifest"]
    weights = {n: _option(n, "class_weight").type.choices for n in ("probe", "finetune")}
    assert weights["probe"] == weights["finetune"] == ("none", "pos_weight")


def _option(command: str, name: str) -> click.Option:
    return next(p for p in main.commands[command].params if p.name == name)


def test_choices_and_init_help_come_from_the_library_registries():
    from cxrprobe.cache.embeddings import DTYPES
    from cxrprobe.data.preprocess import ASPECTS, PRESETS, RESAMPLES
    from cxrprobe.finetune.recipe import PRECISIONS
    from cxrprobe.finetune.schedule import SCHEDULES
    from cxrprobe.models import INITS
    from cxrprobe.probe.backends import BACKENDS
    from cxrprobe.probe.run import METHODS

    expected = {
        ("probe", "backend"): tuple(BACKENDS),
        ("probe", "method"): tuple(METHODS),
        ("preprocess", "preset"): tuple(PRESETS),
        ("preprocess", "aspect"): tuple(ASPECTS),
        ("preprocess", "resample"): tuple(RESAMPLES),
        ("extract", "preset"): tuple(PRESETS),
        ("finetune", "aspect"): tuple(ASPECTS),
        ("extract", "dtype"): tuple(DTYPES),
        ("finetune", "schedule"): tuple(SCHEDULES),
        ("finetune", "precision"): tuple(PRECISIONS),
    }
    for (command, name), names in expected.items():
        assert _option(command, name).type.choices == names, (command, name)
    for command in ("extract", "finetune"):
        text = CliRunner().invoke(main, [command, "--help"]).output
        for init in INITS.values():
            assert f"{init.name}: {init.description}" in text
    bad = CliRunner().invoke(main, ["probe", "--store", "s", "--out", "o.json", "--backend", "x"])
    assert bad.exit_code == 2 and "'x' is not one of 'torch', 'sklearn', 'cuml'" in bad.output


def _example_lines(command: click.Command) -> list[str]:
    """The command lines of a docstring's ``Example:`` block, as written (``\\b`` markers out)."""
    block = (command.help or "").split("Example:", 1)[1]
    return [line.strip() for line in block.splitlines() if line.strip() not in ("", "\b")]


@pytest.mark.parametrize("name", ["", *sorted(main.commands)])
def test_every_example_line_is_printed_intact_by_help(name):
    command = main.commands[name] if name else main
    lines = _example_lines(command)
    starts = [line for k, line in enumerate(lines) if k == 0 or not lines[k - 1].endswith("\\")]
    assert lines and all(line.startswith(("cxrprobe ", "torchrun ")) for line in starts), lines
    printed = CliRunner().invoke(main, [*([name] if name else []), "--help"]).output
    shown = {line.strip() for line in printed.split("Example:", 1)[1].splitlines()}
    assert [line for line in lines if line not in shown] == []  # not re-wrapped or joined


@pytest.mark.parametrize("alpha", ["2", "1", "0", "-1"])
@pytest.mark.parametrize("name", ["compare", "evaluate", "report"])
def test_alpha_outside_zero_one_is_a_usage_error(name, alpha, tmp_path):
    args = [
        str(tmp_path / p.name)
        for p in main.commands[name].params
        if p.param_type_name == "argument"
    ]
    result = CliRunner().invoke(main, [name, *args, "--alpha", alpha])
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--alpha'" in result.output and "0<x<1" in result.output
