"""``cxrprobe datasets`` and ``cxrprobe manifest`` through click's CliRunner."""

from __future__ import annotations

import json

import fixtures_data as fx
import pytest
from click.testing import CliRunner

from cxrprobe.cli import main
from cxrprobe.data.adapters import ADAPTERS
from cxrprobe.data.manifest import manifest_hash, read_manifest


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_datasets_lists_every_adapter(runner):
    result = runner.invoke(main, ["datasets"])
    assert result.exit_code == 0
    for name in ADAPTERS:
        assert name in result.output
    as_json = json.loads(runner.invoke(main, ["datasets", "--json"]).output)
    vindr = next(d for d in as_json["datasets"] if d["name"] == "vindr")
    assert vindr["findings"] == ADAPTERS["vindr"].findings and "aggregation" in vindr["options"]
    assert len(as_json["findings"]) > 20


def test_manifest_writes_parquet_run_record_and_prevalence(runner, tmp_path):
    root = tmp_path / "nih"
    root.mkdir()
    fx.write_chestxray14(root, folders="none")
    out = tmp_path / "out" / "nih.parquet"
    result = runner.invoke(
        main,
        ["manifest", "chestxray14", "--root", str(root), "-o", str(out), "--split", "official",
         "--val-frac", "0.2", "--views", "frontal"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    df = read_manifest(out)
    assert len(df) == 8 and set(df["split"]) == {"train", "val", "test"}
    record = json.loads((out.parent / "nih.run.json").read_text())
    assert record["config"]["manifest_hash"] == manifest_hash(df)
    assert record["config"]["options"]["val_frac"] == 0.2
    assert record["config"]["counts"]["test"]["n_images"] == (df["split"] == "test").sum()
    assert "nodule_mass" in result.output and "n_patients" in result.output


def test_manifest_generic_with_column_map(runner, tmp_path):
    fx.write_generic(tmp_path)
    out = tmp_path / "hospital.parquet"
    result = runner.invoke(
        main,
        ["manifest", "generic", "--root", str(tmp_path), "--column-map", str(tmp_path / "map.json"),
         "-o", str(out), "--uncertain", "one"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert read_manifest(out).set_index("image_id").at["a/1.png", "nodule_mass"] == 1


@pytest.mark.parametrize(
    "args, code, message",
    [
        (
            ["manifest", "nih", "--root", "{root}", "-o", "{out}"],
            2,
            "unknown dataset 'nih'; known: chestxray14",
        ),
        (
            ["manifest", "chestxray14", "--root", "{root}/missing", "-o", "{out}"],
            1,
            "is not a folder; check --root",
        ),
        (
            ["manifest", "chestxray14", "--root", "{root}", "-o", "{out}"],
            1,
            "no Data_Entry_2017*.csv",
        ),
        (
            ["manifest", "chexpert", "--root", "{root}", "-o", "{out}", "--aggregation", "any"],
            2,
            "--aggregation does not apply to chexpert",
        ),
        (
            ["manifest", "chestxray14", "--root", "{root}", "-o", "{out}", "--test-frac", "0.9"],
            2,
            "sum to less than 1",
        ),
    ],
)
def test_manifest_errors_are_one_clear_line(runner, tmp_path, args, code, message):
    args = [a.format(root=tmp_path, out=tmp_path / "m.parquet") for a in args]
    result = runner.invoke(main, args)
    assert result.exit_code == code
    assert message in result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, AssertionError)
    assert not (tmp_path / "m.parquet").exists()


def test_commands_have_help_with_an_example(runner):
    for command in ("datasets", "manifest"):
        result = runner.invoke(main, [command, "--help"])
        assert result.exit_code == 0 and "Example:" in result.output
