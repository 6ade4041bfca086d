"""A study and its equivalent single commands leave the same files: the library writes outputs and
run records, not the command line."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from cxrprobe.cli import main
from cxrprobe.data.synthetic import generate_dataset

CONFIG = """
out = "{out}"
seed = 0
device = "cpu"

[preprocess]
size = 56
workers = 1

[probe]
grid = [0.01, 1.0]
train_fraction = [0.5, 1.0]
repeats = 1

[finetune]
epochs = 1
batch_size = 16

[compare]
resamples = 50

[[datasets]]
name = "syn"
adapter = "generic"
root = "data"
options = {{ split = "random", val_fraction = 0.25, test_fraction = 0.35, seed = 1 }}

[[inits]]
name = "p14"
init = "random"
arch = "vit_base_patch14_dinov2"
model_kwargs = {{ depth = 1, embed_dim = 32, num_heads = 2 }}
methods = ["probe", "finetune"]
"""
STUDY_OWN = {"run.json", ".steps"}  # the study's own record and step records
REPORT_RECORD = "report.run.json"  # `cxrprobe report`'s record (the study's is its run.json)


def _tree(root: Path) -> set[str]:
    """Every file under ``root``, relative, with the study's own top-level records left out and
    each store's random id in its done-record folder replaced by ``ID``."""
    files = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    return {
        re.sub(r"/progress-[0-9a-f]+/", "/progress-ID/", f)
        for f in files
        if f.split("/")[0] not in {*STUDY_OWN, REPORT_RECORD}
    }


def _records(root: Path) -> dict[str, dict]:
    return {
        f: json.loads((root / f).read_text())
        for f in _tree(root)
        if f.endswith("run.json") and "/" in f
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("parity")
    generate_dataset(folder / "data", n=60, size=64, seed=3)
    for name in ("study", "single"):
        (folder / f"{name}.toml").write_text(CONFIG.format(out=name))
    runner = CliRunner()
    ran = runner.invoke(main, ["study", str(folder / "study.toml")])
    assert ran.exit_code == 0, ran.output
    listed = runner.invoke(main, ["study", str(folder / "single.toml"), "--dry-run"])
    assert listed.exit_code == 0, listed.output
    commands = [
        shlex.split(line.strip())
        for line in listed.output.splitlines()
        if line.startswith("    cxrprobe ")
    ]
    assert [c[1] for c in commands] == [
        "manifest",
        "preprocess",
        "extract",
        "probe",
        "probe",
        "finetune",
        "compare",
    ]
    for args in [*commands, ["cxrprobe", "report", str(folder / "single")]]:
        single = runner.invoke(main, args[1:])
        assert single.exit_code == 0, f"{shlex.join(args)}\n{single.output}"
    return folder


def test_study_and_single_commands_leave_the_same_files(runs):
    study, single = _tree(runs / "study"), _tree(runs / "single")
    assert study == single
    top = {p.name for p in (runs / "study").iterdir()}
    assert top - {p.name for p in (runs / "single").iterdir()} == STUDY_OWN
    assert {p.name for p in (runs / "single").iterdir()} - top == {REPORT_RECORD}
    assert {"report.json", "report.md", "syn"} <= top
    for expected in (  # every stage's run record, beside its output, in both trees
        "syn/manifest.run.json",
        "syn/images_56.zarr.cxrprobe/run.json",
        "syn/images_56.zarr.cxrprobe/failures.json",
        "syn/p14/embeddings.zarr.cxrprobe/run.json",
        "syn/p14/embeddings.zarr.cxrprobe/failures.json",
        "syn/p14/probe/predictions.run.json",
        "syn/p14/curve.run.json",
        "syn/p14/finetune/run.json",
    ):
        assert expected in study, expected
    assert any(f.startswith("syn/compare/") and f.endswith(".json.run.json") for f in study)


def test_run_records_name_the_same_command_and_settings(runs):
    study, single = _records(runs / "study"), _records(runs / "single")
    assert study.keys() == single.keys()
    for name, record in study.items():
        other = single[name]
        assert record["command"] == other["command"], name
        assert record["config"].keys() == other["config"].keys(), name
        assert record["command"].startswith("cxrprobe "), name


def test_report_keeps_the_studys_own_record(runs):
    run = runs / "study"
    before = (run / "run.json").read_bytes()
    result = CliRunner().invoke(main, ["report", str(run)])
    assert result.exit_code == 0, result.output
    assert (run / "run.json").read_bytes() == before
    assert json.loads(before)["command"] == "cxrprobe study"
    assert json.loads((run / "report.run.json").read_text())["command"] == "cxrprobe report"


def test_the_printed_compare_names_the_models_as_the_study(runs):
    """The study names the models by their cells; its printed command passes the same names
    (--name-a / --name-b), so the hand-run report has the same names and verdict."""
    folder = runs / "study" / "syn" / "compare"
    compared = [p for p in sorted(folder.glob("*_vs_*.json")) if not p.name.endswith(".run.json")]
    assert compared
    for path in compared:
        study = json.loads(path.read_text())
        single = json.loads((runs / "single" / "syn" / "compare" / path.name).read_text())
        assert study["names"] == {key: study["cells"][key] for key in ("a", "b")}
        assert single["names"] == study["names"] and single["verdict"] == study["verdict"]
