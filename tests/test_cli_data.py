"""``cxrprobe datasets`` and ``cxrprobe manifest`` through click's CliRunner."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import fixtures_data as fx
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from cxrprobe.cli import main
from cxrprobe.data.adapters import ADAPTERS
from cxrprobe.data.manifest import finding_columns, label_policies, manifest_hash, read_manifest
from cxrprobe.errors import ConfigError
from tests.conftest import REAL_DATA

_KEY = b"cxrprobe.label_policies"


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
         "--val-fraction", "0.2", "--views", "frontal"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    df = read_manifest(out)
    assert len(df) == 8 and set(df["split"]) == {"train", "val", "test"}
    record = json.loads((out.parent / "nih.run.json").read_text())
    assert record["config"]["manifest_hash"] == manifest_hash(df)
    assert record["config"]["options"]["val_frac"] == 0.2
    assert record["config"]["counts"]["test"]["n_images"] == (df["split"] == "test").sum()
    assert "nodule_mass" in result.output and "n_patients" in result.output
    assert result.output.rstrip().endswith(f"and {out.parent / 'nih.run.json'}")


def test_datasets_lists_the_named_sets(runner):
    from cxrprobe.data.finding_sets import finding_sets

    result = runner.invoke(main, ["datasets"])
    assert result.exit_code == 0
    for name, named in finding_sets().items():
        assert f"{name:<18} {len(named.findings):>2} findings  {named.dataset}" in result.output
    as_json = json.loads(runner.invoke(main, ["datasets", "--json"]).output)
    listed = {s["name"]: s["findings"] for s in as_json["finding_sets"]}
    assert listed == {name: list(s.findings) for name, s in finding_sets().items()}
    vocabulary = {f["id"]: f["derived_from"] for f in as_json["findings"]}
    assert vocabulary["nodule_mass"] == ["nodule", "mass"] and vocabulary["nodule"] == []


def test_manifest_keeps_only_the_findings_asked_for(runner, tmp_path):
    fx.write_chestxray14(tmp_path, folders="none")
    out = tmp_path / "nih.parquet"
    spec = "mass, cardiomegaly,nodule"
    result = runner.invoke(
        main,
        ["manifest", "chestxray14", "--root", str(tmp_path), "-o", str(out), "--findings", spec],
    )
    assert result.exit_code == 0, result.output
    df = read_manifest(out)
    assert finding_columns(df) == ["cardiomegaly", "nodule", "mass"]
    raw = pd.read_csv(tmp_path / "Data_Entry_2017_v2020.csv").set_index("Image Index")
    for finding, name in (("nodule", "Nodule"), ("mass", "Mass")):
        expected = raw["Finding Labels"].str.split("|").map(lambda names, n=name: n in names)
        assert (df.set_index("image_id")[finding] == expected.astype(float)).all()
    config = json.loads((tmp_path / "nih.run.json").read_text())["config"]
    assert config["options"]["findings"] == spec
    assert config["findings"] == ["cardiomegaly", "nodule", "mass"]


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
            [
                "manifest",
                "chestxray14",
                "--root",
                "{root}",
                "-o",
                "{out}",
                "--test-fraction",
                "0.9",
            ],
            2,
            "--val-fraction 0.1 and --test-fraction 0.9 must each be in [0, 1) and sum to less "
            "than 1",
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


@pytest.mark.parametrize(
    "spec, message",
    [
        ("study-vindr", "does not provide lung_opacity (in study-vindr); it provides: no_finding,"),
        ("efusion", "unknown finding or set 'efusion' (did you mean 'pleural_effusion'?)"),
    ],
)
def test_manifest_refuses_findings_it_cannot_keep(runner, tmp_path, spec, message):
    fx.write_chestxray14(tmp_path, folders="none")
    out = tmp_path / "m.parquet"
    args = ["manifest", "chestxray14", "--root", str(tmp_path), "-o", str(out), "--findings", spec]
    result = runner.invoke(main, args)
    assert result.exit_code == 2 and message in result.output, result.output
    assert not out.exists()


def test_commands_have_help_with_an_example(runner):
    for command in ("datasets", "manifest"):
        result = runner.invoke(main, [command, "--help"])
        assert result.exit_code == 0 and "Example:" in result.output


def test_manifest_old_option_spellings_still_work_with_a_warning(runner, tmp_path):
    fx.write_chestxray14(tmp_path, folders="none")
    args = ["manifest", "chestxray14", "--root", str(tmp_path), "--split", "random"]
    new, old = tmp_path / "new.parquet", tmp_path / "old.parquet"
    fresh = runner.invoke(
        main, [*args, "--out", str(new), "--val-fraction", "0.25", "--test-fraction", "0.25"]
    )
    legacy = runner.invoke(
        main, [*args, "--output", str(old), "--val-frac=0.25", "--test-frac", "0.25"]
    )
    assert fresh.exit_code == 0 and legacy.exit_code == 0, legacy.output
    assert manifest_hash(read_manifest(old)) == manifest_hash(read_manifest(new))
    for was, now in (
        ("--output", "--out"),
        ("--val-frac", "--val-fraction"),
        ("--test-frac", "--test-fraction"),
    ):
        assert f"Warning: {was} is deprecated and goes in the next release; use {now}" in (
            legacy.output
        )
    assert "deprecated" not in fresh.output


# --- the dataset folder in the current directory; official splits without test images ----------


def test_manifest_from_the_folder_holding_the_dataset(runner, tmp_path, monkeypatch):
    """``--root chexpert`` run beside a folder called chexpert: the adapter's packaged map is
    used, and the manifest equals one built from elsewhere with the absolute root."""
    for name, adapter in ADAPTERS.items():  # fresh instances: no label map cached yet
        monkeypatch.setitem(ADAPTERS, name, dataclasses.replace(adapter))
    fx.write_chexpert(tmp_path / "chexpert")
    monkeypatch.chdir(tmp_path)
    args = ["manifest", "chexpert", "--split", "random"]
    result = runner.invoke(main, [*args, "--root", "chexpert", "-o", "m.parquet"])
    assert result.exit_code == 0, result.output
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    reference = runner.invoke(
        main, [*args, "--root", str(tmp_path / "chexpert"), "-o", "m.parquet"]
    )
    assert reference.exit_code == 0, reference.output
    assert manifest_hash(read_manifest(tmp_path / "m.parquet")) == manifest_hash(
        read_manifest(elsewhere / "m.parquet")
    )
    monkeypatch.chdir(tmp_path)
    listed = runner.invoke(main, ["datasets"])
    assert listed.exit_code == 0 and "chexpert" in listed.output, listed.output


def test_datasets_turns_a_library_error_into_one_line(runner, monkeypatch):
    from cxrprobe.data.adapters import Adapter
    from cxrprobe.data.generic import read_generic

    broken = Adapter("broken", "a test adapter", "no-such-map", read_generic)
    monkeypatch.setitem(ADAPTERS, "broken", broken)
    result = runner.invoke(main, ["datasets"])
    assert result.exit_code != 0 and isinstance(result.exception, SystemExit)
    assert "Error: no packaged label map named 'no-such-map'" in result.output
    assert "Traceback" not in result.output


def _no_test_chexpert(root: Path) -> int:
    fx.write_chexpert(root, valid=False)
    return len(pd.read_csv(root / "train.csv"))


def _no_test_vindr(root: Path) -> int:
    fx.write_vindr(root, test=False)
    return pd.read_csv(root / "vinbigdata-train.csv.gz")["image_id"].nunique()


def _no_test_generic(root: Path) -> int:
    rows = {"image_id": ["a", "b", "c", "d"], "patient_id": ["p1", "p2", "p3", "p4"],
            "split": ["train", "train", "val", "train"], "cardiomegaly": [1, 0, 0, 1]}  # fmt: skip
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return len(rows["image_id"])


@pytest.mark.parametrize(
    "dataset, write, source",
    [
        ("chexpert", _no_test_chexpert, "valid.csv in the root"),
        ("vindr", _no_test_vindr, "image_labels_test.csv in the root or its annotations/ folder"),
        ("generic", _no_test_generic, "the CSV rows whose split column says test"),
    ],
)
def test_official_split_without_test_images_is_refused_unless_asked_for(
    runner, tmp_path, dataset, write, source
):
    n_images = write(tmp_path)
    out = tmp_path / "m.parquet"
    args = ["manifest", dataset, "--root", str(tmp_path), "-o", str(out)]
    refused = runner.invoke(main, args)
    assert refused.exit_code == 2 and not out.exists()
    assert (
        "Error: --split official: no image is in the official test split (they come from "
        f"{source}); use --split random for a seeded patient-level split, or pass "
        "--allow-empty-test to write a manifest without test images"
    ) in refused.output
    allowed = runner.invoke(main, [*args, "--allow-empty-test"])
    assert allowed.exit_code == 0, allowed.output
    assert (
        "Warning: --split official: no image is in the official test split (they come from "
        f"{source}); written without test images"
    ) in allowed.output
    df = read_manifest(out)
    assert len(df) == n_images and set(df["split"]) == {"train", "val"}
    record = json.loads((tmp_path / "m.run.json").read_text())["config"]
    assert record["options"]["allow_empty_test"] is True


# --- label policies: --blank, recorded with the manifest ------------------------------------------
def _chexpert_raw(*tables):
    """CheXpert tables read directly, indexed by the manifest's path (prefix removed)."""
    raw = pd.concat([pd.read_csv(t) for t in tables], ignore_index=True)
    return raw.set_index(raw["Path"].str.removeprefix("CheXpert-v1.0-small/"))


def _study_columns():
    """study-chexpert's findings and CheXpert's column of each (e.g. Pleural Effusion)."""
    from cxrprobe.data.finding_sets import get_finding_set

    return {f: f.replace("_", " ").title() for f in get_finding_set("study-chexpert").findings}


def _build_chexpert(runner, root, out, *options):
    args = ["manifest", "chexpert", "--root", str(root), "--out", str(out), "--views", "frontal",
            "--findings", "study-chexpert", *options]  # fmt: skip
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    return read_manifest(out)


def _check_study_labels(df, raw):
    """Every study label defined on every row and equal to (raw == 1), computed with pandas."""
    rows = raw.loc[df["path"]]
    for finding, column in _study_columns().items():
        assert df[finding].notna().all(), finding
        expected = (rows[column] == 1).astype(float).to_numpy()
        np.testing.assert_array_equal(df[finding].to_numpy(dtype=float), expected, finding)


def test_manifest_blank_negative_is_the_studys_labelling_and_is_recorded(runner, tmp_path):
    import pyarrow.parquet as pq

    fx.write_chexpert(tmp_path)
    raw = _chexpert_raw(tmp_path / "train.csv", tmp_path / "valid.csv")
    kept = _build_chexpert(runner, tmp_path, tmp_path / "kept.parquet", "--uncertain", "zero")
    study = _build_chexpert(
        runner, tmp_path, tmp_path / "study.parquet", "--uncertain", "zero", "--blank", "negative"
    )
    _check_study_labels(study, raw)
    assert list(study["path"]) == list(kept["path"])  # the same rows, only the labels differ
    blanks = raw.loc[kept["path"], list(_study_columns().values())].isna().to_numpy()
    assert blanks.any()  # the fixture has blanks, and the default keeps them
    np.testing.assert_array_equal(kept[list(_study_columns())].isna().to_numpy(), blanks)
    policies = {"uncertain": "zero", "blank": "negative"}
    assert label_policies(study) == policies
    assert json.loads(pq.read_schema(tmp_path / "study.parquet").metadata[_KEY]) == policies
    record = json.loads((tmp_path / "study.run.json").read_text())["config"]
    assert record["label_policies"] == policies and record["options"]["blank"] == "negative"
    assert label_policies(kept) == {"uncertain": "zero", "blank": "missing"}


def test_manifest_refuses_an_unknown_blank_policy(runner, tmp_path):
    fx.write_chexpert(tmp_path)
    args = ["manifest", "chexpert", "--root", str(tmp_path), "--out", str(tmp_path / "m.parquet")]
    result = runner.invoke(main, [*args, "--blank", "zero"])
    assert result.exit_code == 2 and "'zero' is not one of 'missing', 'negative'" in result.output
    assert not (tmp_path / "m.parquet").exists()


def test_study_plan_sets_blank_and_findings_per_dataset_and_per_stage(tmp_path):
    from cxrprobe.workflow.config import study_from_mapping
    from cxrprobe.workflow.plan import build_plan

    options = {"views": "frontal", "uncertain": "zero", "blank": "negative",
               "findings": "study-chexpert"}  # fmt: skip
    raw = {
        "out": "run",
        "datasets": [
            {"name": "chexpert", "adapter": "chexpert", "root": "cx", "options": options},
            {"name": "nih", "adapter": "chestxray14", "root": "nih"},
        ],
        "inits": [{"name": "rnd", "init": "random"}],
        "probe": {"blank": "negative", "findings": "cardiomegaly,pleural_effusion"},
        "finetune": {"uncertain": "zero", "blank": "negative"},
    }
    config = study_from_mapping(raw, base=tmp_path, commands=main.commands)
    steps = {s.key: s for s in build_plan(config, main.commands)}
    manifest = steps["chexpert/manifest"]
    assert {k: manifest.params[k] for k in options} == options
    for flag in ("--blank negative", "--findings study-chexpert"):
        assert flag in manifest.command
    assert steps["nih/manifest"].params["blank"] == "missing"  # per dataset: the default
    probe = steps["chexpert/rnd/probe"].params
    assert probe["blank"] == "negative" and probe["findings"] == "cardiomegaly,pleural_effusion"
    finetune = steps["chexpert/rnd/finetune"].params
    assert [finetune[k] for k in ("uncertain", "blank", "findings")] == ["zero", "negative", None]
    raw["datasets"][0]["options"] = {"blank": "zero"}
    with pytest.raises(ConfigError, match="dataset 'chexpert' options blank = 'zero'"):
        study_from_mapping(raw, base=tmp_path, commands=main.commands)


# --- the real CheXpert table (skipped when ../shared/data/real is absent) --------------------------
@pytest.fixture(scope="module")
def real_chexpert():
    folder = REAL_DATA / "chexpert"
    if not (folder / "train.csv.gz").is_file():
        pytest.skip(f"real CheXpert table not present in {folder}")
    return folder, _chexpert_raw(folder / "train.csv.gz")


def test_real_chexpert_blank_negative_defines_every_study_label(runner, tmp_path, real_chexpert):
    folder, raw = real_chexpert
    study = _build_chexpert(
        runner, folder, tmp_path / "study.parquet", "--uncertain", "zero", "--blank", "negative",
        "--allow-empty-test",  # the real folder holds train.csv only
    )  # fmt: skip
    frontal = (raw["Frontal/Lateral"] == "Frontal") & raw["AP/PA"].isin(["AP", "PA"])
    assert len(study) == frontal.sum() == 191_010
    _check_study_labels(study, raw)  # 100 % of rows defined, each equal to raw == 1
    assert (study["no_finding"] == 0).sum() == (raw.loc[frontal, "No Finding"] != 1).sum() > 0
    kept = _build_chexpert(
        runner, folder, tmp_path / "kept.parquet", "--uncertain", "zero", "--allow-empty-test"
    )
    assert (kept["no_finding"] == 0).sum() == 0  # blanks masked: no negative at all


def test_docs_coverage_table_matches_the_real_chexpert_table(real_chexpert):
    """docs/datasets.md's share of frontal rows with each study label defined, per policy."""
    _, raw = real_chexpert
    frontal = raw[(raw["Frontal/Lateral"] == "Frontal") & raw["AP/PA"].isin(["AP", "PA"])]
    docs = (Path(__file__).resolve().parents[1] / "docs" / "datasets.md").read_text()
    for finding, column in _study_columns().items():
        values = frontal[column]
        expected = [
            100 * (values == 1).mean(),  # positive
            100 * values.isin([0, 1]).mean(),  # ignore / missing
            100 * values.notna().mean(),  # zero / missing
            100.0,  # zero / negative
        ]
        row = re.search(rf"^\| `{finding}` \|(.*)\|$", docs, re.M)
        assert row, finding
        shown = [float(cell.strip().rstrip("%")) for cell in row.group(1).split("|")]
        np.testing.assert_allclose(shown, expected, atol=0.05, err_msg=finding)
