"""Study pre-flight: before any step runs (and in --dry-run) every file or folder the config names
must exist and every option combination a command refuses is refused, all problems at once, each
once, naming the step and the config key. The single commands are the reference for what is
refused: each one's own error message must be in the study's list."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from cxrprobe.cli import main
from cxrprobe.data.synthetic import generate_dataset
from cxrprobe.workflow.config import load_study
from cxrprobe.workflow.plan import build_plan
from cxrprobe.workflow.preflight import plan_problems

ARCH = "vit_base_patch16_224"
HEAD = """
out = "run"
methods = ["probe"]
[preprocess]
size = 28
[probe]
grid = [0.1, 1.0]
{probe}
[[datasets]]
name = "syn"
adapter = "generic"
root = "{root}"
options = {{ split = "random", {options} }}
[[inits]]
name = "a"
init = "random"
arch = "{arch}"
"""


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """A tiny image cache, so the single commands reach their option checks."""
    folder = tmp_path_factory.mktemp("tiny")
    generate_dataset(folder / "data", n=30, size=32, seed=0)
    runner = CliRunner()
    for args in (
        ["manifest", "generic", "--root", folder / "data", "--split", "random"],
        ["preprocess", "--manifest", folder / "m.parquet", "--root", folder / "data"],
    ):
        out = ["--out", folder / ("m.parquet" if args[0] == "manifest" else "c.zarr")]
        result = runner.invoke(main, [str(a) for a in [*args, *out]])
        assert result.exit_code == 0, result.output
    return folder / "c.zarr"


def _error(args: list[str]) -> str:
    """The one-line error of a single command that must fail."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code in (1, 2), result.output
    return result.output.rsplit("Error: ", 1)[1].strip()


def _listed(output: str) -> list[str]:
    return re.findall(r"^  - (step .*)$", output, flags=re.M)


def _write(
    folder: Path, probe: str = "", options: str = "seed = 0", root: str = "data", more: str = ""
):
    path = folder / "study.toml"
    path.write_text(HEAD.format(probe=probe, options=options, root=root, arch=ARCH) + more)
    return path


def test_dry_run_and_run_list_every_problem_once_as_the_commands_refuse(tmp_path, cache):
    weights = tmp_path / "random.safetensors"
    weights.write_bytes(b"")
    path = _write(
        tmp_path,
        probe='val_split = ["train"]',
        options="val_fraction = 0.6, test_fraction = 0.5",
        root="no_such_data",
        more=f"""
[[inits]]
name = "b"
init = "imagenet"
arch = "{ARCH}"
weights = "{tmp_path / "missing.safetensors"}"
[[inits]]
name = "c"
init = "{tmp_path / "missing_ckpt.safetensors"}"
arch = "{ARCH}"
[[inits]]
name = "d"
init = "random"
weights = "{weights}"
""",
    )
    extract = ["extract", "--images", cache, "--out", tmp_path / "e.zarr"]
    refused = {  # step, config key, the single command's own message
        ("syn/manifest", "dataset 'syn' options"): _error(
            ["manifest", "generic", "--root", cache.parent / "data", "--split", "random"]
            + ["--val-fraction", "0.6", "--test-fraction", "0.5", "--out", tmp_path / "m.parquet"]
        ),
        ("syn/a/probe (and 3 later steps)", "[probe]"): _error(
            ["probe", "--store", cache, "--val-split", "train", "--out", tmp_path / "p.json"]
        ),
        ("syn/b/extract", "init 'b'"): _error([*extract, "--init", "imagenet", "--arch", ARCH]),
        ("syn/c/extract", "init 'c'"): _error(
            [*extract, "--init", tmp_path / "missing_ckpt.safetensors", "--arch", ARCH]
        ),
        ("syn/d/extract", "init 'd'"): _error([*extract, "--init", "random", "--weights", weights]),
    }
    missing = {
        ("syn/manifest (and 1 later step)", "dataset 'syn' root"): (
            tmp_path / "no_such_data",
            "folder",
        ),
        ("syn/b/extract", "init 'b' weights"): (tmp_path / "missing.safetensors", "file"),
    }
    expected = [f"step {s}: {key}: {message}" for (s, key), message in refused.items()]
    expected += [
        f"step {s}: {key} = '{p}': {kind} not found; give the path of an existing {kind}"
        for (s, key), (p, kind) in missing.items()
    ]

    dry = CliRunner().invoke(main, ["study", str(path), "--dry-run"])
    assert dry.exit_code == 2, dry.output
    assert "13 steps: 13 to run" in dry.output  # the plan is printed first
    assert sorted(_listed(dry.output)) == sorted(expected)
    assert f"{path}: {len(expected)} problem(s) to fix before the study can run" in dry.output

    ran = CliRunner().invoke(main, ["study", str(path)])
    assert ran.exit_code == 2, ran.output
    assert sorted(_listed(ran.output)) == sorted(expected)
    assert not (tmp_path / "run").exists()  # nothing ran, not even the run record


def test_files_and_folders_of_the_wrong_kind_and_table_paths(tmp_path):
    (tmp_path / "root_file").write_text("not a folder")
    (tmp_path / "chex").mkdir()
    path = _write(
        tmp_path,
        probe='split_csv = "splits.csv"',
        options='labels_csv = "labels_here.csv"',
        root="root_file",
        more="""
[[datasets]]
name = "chex"
adapter = "chexpert"
root = "chex"
options = { findings = "no-such-set" }
""",
    )
    result = CliRunner().invoke(main, ["study", str(path), "--dry-run"])
    assert result.exit_code == 2, result.output
    listed = _listed(result.output)
    expected = [
        f"step syn/manifest (and 1 later step): dataset 'syn' root = '{tmp_path / 'root_file'}': "
        "not a folder; give the path of the folder",
        f"step syn/manifest: dataset 'syn' options labels_csv = '{tmp_path / 'labels_here.csv'}': "
        "file not found; give the path of an existing file",
        f"step syn/a/probe (and 1 later step): [probe] split_csv = '{tmp_path / 'splits.csv'}': "
        "file not found; give the path of an existing file",
    ]
    assert listed[:3] == expected
    (findings,) = listed[3:]
    assert findings.startswith("step chex/manifest: dataset 'chex' options findings: --findings:")
    assert "unknown finding or set 'no-such-set'" in findings


OTHER = """
[[inits]]
name = "m"
pretrain = { dataset = "syn", from = "a" }
[[datasets]]
name = "other"
adapter = "generic"
root = "data"
options = { split = "random" }
"""


def test_what_earlier_steps_write_and_steps_already_done_are_not_problems(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    path = _write(tmp_path, more=OTHER)
    path.write_text(path.read_text().replace('["probe"]', '["probe", "finetune"]'))
    result = CliRunner().invoke(main, ["study", str(path), "--dry-run"])
    # m is --init run:RUN_DIR of syn/a/finetune, which has not run yet: no problem.
    assert result.exit_code == 0, result.output
    assert f"--init run:{tmp_path / 'run' / 'syn' / 'a' / 'finetune'}" in result.output

    steps = build_plan(load_study(path, main.commands), main.commands)
    root.rmdir()
    readers = [s.key for s in steps if "root" in s.settings]
    assert readers == [f"{d}/{s}" for d in ("syn", "other") for s in ("manifest", "preprocess")]
    assert plan_problems(steps, main.commands) == [
        f"step {d}/manifest (and 1 later step): dataset '{d}' root = '{root}': folder not found; "
        "give the path of an existing folder"
        for d in ("syn", "other")
    ]
    assert plan_problems(steps, main.commands, done=set(readers)) == []
