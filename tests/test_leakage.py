"""Patient leakage is an error unless --allow-leakage: official splits, hand-made tables, probes."""

from __future__ import annotations

import json

import fixtures_data as fx
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from cxrprobe.cache.embeddings import create_embeddings
from cxrprobe.cache.store import RowMetadata
from cxrprobe.cli import main
from cxrprobe.data.adapters import get_adapter
from cxrprobe.data.splits import check_patient_leakage
from cxrprobe.errors import LeakageError
from cxrprobe.stats.predictions import read_predictions
from cxrprobe.workflow.config import load_study
from cxrprobe.workflow.plan import build_plan


def _shared_patients(split, patients) -> list[str]:
    """The reference: patients seen under more than one split name, by plain sets."""
    seen: dict[str, set] = {}
    for s, p in zip(split, patients, strict=True):
        if s and p:
            seen.setdefault(p, set()).add(s)
    return sorted(p for p, names in seen.items() if len(names) > 1)


@pytest.mark.parametrize("seed", range(5))
def test_check_patient_leakage_finds_exactly_the_shared_patients(seed):
    rng = np.random.default_rng(seed)
    patients = rng.choice([f"p{i:03d}" for i in range(60)], size=300).tolist()
    split = rng.choice(["train", "train", "train", "val", "test", ""], size=300).tolist()
    split = [s if p < "p010" else "train" for s, p in zip(split, patients, strict=True)]
    expected = _shared_patients(split, patients)
    assert expected  # the draw has leakage
    with pytest.raises(LeakageError) as info:
        check_patient_leakage(split, patients, allow=False, source="tbl.csv", fix="Fix it")
    message = str(info.value)
    assert message.startswith(f"tbl.csv: {len(expected)} patient(s) have images in more than one")
    assert expected[0] in message and "--allow-leakage" in message
    assert check_patient_leakage(split, patients, allow=True, source="t", fix="f") == expected


def test_no_leakage_passes_silently():
    assert (
        check_patient_leakage(["train", "test"], ["a", "b"], allow=False, source="s", fix="f") == []
    )


def _leaky_nih(root):
    """ChestX-ray14 whose official lists put patient 1 in train (000) and test (001)."""
    fx.write_chestxray14(root)
    (root / "test_list.txt").write_text("00000001_001.png\n00000003_000.png\n00000007_000.png\n")
    train = (root / "train_val_list.txt").read_text().replace("00000001_001.png\n", "")
    (root / "train_val_list.txt").write_text(train)


def test_official_split_with_leakage_is_refused_then_allowed_and_recorded(tmp_path):
    _leaky_nih(tmp_path / "nih")
    out = tmp_path / "m.parquet"
    args = ["manifest", "chestxray14", "--root", str(tmp_path / "nih"), "--out", str(out)]
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code == 1, refused.output
    assert "--split official" in refused.output and "1 patient(s)" in refused.output
    assert "patient leakage: 1 (test+" in refused.output and "--allow-leakage" in refused.output
    assert not out.exists()

    allowed = CliRunner().invoke(main, [*args, "--allow-leakage"])
    assert allowed.exit_code == 0, allowed.output
    df = pd.read_parquet(out)
    assert _shared_patients(df["split"], df["patient_id"]) == ["1"]
    record = json.loads((tmp_path / "m.run.json").read_text())
    assert record["config"]["options"]["allow_leakage"] is True


def test_hand_made_table_with_leakage_is_refused(tmp_path):
    rows = [("a1", "pa", "train"), ("a2", "pa", "test"), ("b1", "pb", "train")]
    rows += [("c1", "pc", "val"), ("c2", "pc", "train"), ("d1", "pd", "test")]
    table = pd.DataFrame(rows, columns=["image_id", "patient_id", "split"])
    table["pleural_effusion"] = [1, 0, 1, 0, 1, 0]
    table.to_csv(tmp_path / "labels.csv", index=False)
    with pytest.raises(
        LeakageError, match=r"2 patient\(s\).*pa \(test\+train\), pc \(train\+val\)"
    ):
        get_adapter("generic").build(tmp_path)
    df = get_adapter("generic").build(tmp_path, allow_leakage=True)
    assert df["split"].tolist() == table["split"].tolist()  # kept as given, not repaired


def _store(path, split, patients):
    rng = np.random.default_rng(0)
    n = len(split)
    cls = rng.standard_normal((n, 8)).astype(np.float32)
    labels = (cls[:, :1] + 0.5 * rng.standard_normal((n, 1)) > 0).astype(np.float32)
    meta = RowMetadata(
        np.array([f"i{k:03d}" for k in range(n)]), split, patients, labels, ("edema",)
    )
    create_embeddings(path, meta, {"cls": cls, "mean": cls}, dtype="float32")
    return path


def test_probe_refuses_a_store_whose_splits_share_a_patient(tmp_path):
    split = np.array(["train"] * 60 + ["val"] * 20 + ["test"] * 20)
    patients = np.array([f"p{k:03d}" for k in range(100)], dtype="<U8")
    patients[[5, 90]] = "shared"  # one patient in train and test
    patients[[10, 70]] = "twice"  # one in train and val
    store = _store(tmp_path / "emb.zarr", split, patients)
    args = ["probe", "--store", str(store), "--grid", "0.1,1", "--device", "cpu"]
    refused = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "p.json")])
    assert refused.exit_code == 1, refused.output
    assert str(store) in refused.output and "2 patient(s)" in refused.output
    assert "shared (test+train)" in refused.output and "twice (train+val)" in refused.output
    assert not (tmp_path / "p.json").exists()

    out = tmp_path / "allowed.json"
    allowed = CliRunner().invoke(main, [*args, "--out", str(out), "--allow-leakage"])
    assert allowed.exit_code == 0, allowed.output
    assert read_predictions(out).provenance["config"]["allow_leakage"] is True
    summary = json.loads((tmp_path / "allowed.summary.json").read_text())
    assert any("2 patients have rows in more than one" in note for note in summary["notes"])


def test_probe_split_csv_leakage_names_the_csv(tmp_path):
    split = np.array(["train"] * 70 + ["test"] * 30)
    store = _store(tmp_path / "emb.zarr", split, np.array([f"p{k // 2:03d}" for k in range(100)]))
    csv = tmp_path / "s.csv"
    csv.write_text(
        "image_id,split\n"
        + "\n".join(f"i{k:03d},{'test' if k >= 69 else 'train'}" for k in range(100))
    )
    result = CliRunner().invoke(
        main,
        ["probe", "--store", str(store), "--split-csv", str(csv), "--val-fraction", "0.2",
         "--grid", "1", "--out", str(tmp_path / "p.json")],
    )  # fmt: skip
    assert result.exit_code == 1 and "--split-csv" in result.output and "p034" in result.output


def test_study_tables_take_allow_leakage(tmp_path):
    (tmp_path / "study.toml").write_text(
        'out = "run"\n[probe]\nallow_leakage = true\n'
        '[[datasets]]\nname = "d"\nadapter = "generic"\nroot = "."\n'
        "options = { allow_leakage = true }\n"
        '[[inits]]\nname = "r"\ninit = "random"\narch = "vit_base_patch16_224"\n'
        'methods = ["probe"]\n'
    )
    config = load_study(tmp_path / "study.toml", main.commands)
    steps = {s.stage: s for s in build_plan(config, main.commands)}
    assert "--allow-leakage" in steps["manifest"].args and steps["manifest"].params["allow_leakage"]
    assert "--allow-leakage" in steps["probe"].args and steps["probe"].params["allow_leakage"]


def _leaky_finetune_source():
    """The fine-tuning toy source with patient p0 (train) also owning a test image."""
    from dataclasses import replace

    from tests.test_finetune import toy_source

    source = toy_source()
    patients = source.metadata.patient_id.copy()
    patients[47] = "p0"  # row 0 is train, row 47 test
    return replace(source, metadata=replace(source.metadata, patient_id=patients))


def test_finetune_refuses_a_patient_in_two_splits_then_allows_and_records_it(tmp_path):
    import torch

    from cxrprobe.finetune import finetune
    from cxrprobe.finetune.run import check_resumable
    from tests.test_finetune import tiny_config

    source = _leaky_finetune_source()
    meta = source.metadata
    assert _shared_patients(meta.split, meta.patient_id) == ["p0"]
    with pytest.raises(LeakageError, match=r"1 patient\(s\).*p0 \(test\+train\).*--allow-leakage"):
        finetune(tiny_config(epochs=1), source, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()  # refused before anything is written

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = finetune(tiny_config(epochs=1, allow_leakage=True), source, tmp_path / "run")
    finally:
        torch.set_num_threads(threads)
    assert result.finished
    record = json.loads((tmp_path / "run" / "run.json").read_text())["config"]
    assert record["allow_leakage"] is True
    assert record["dataset"]["patients_in_several_splits"] == 1
    provenance = read_predictions(tmp_path / "run" / "predictions.json").provenance
    assert provenance["config"]["allow_leakage"] is True
    # runs saved before the setting existed resume (its effect is fixed by the rows)
    now = tiny_config().to_dict()
    saved = {k: v for k, v in now.items() if k != "allow_leakage"}
    check_resumable(saved, {**now, "allow_leakage": True}, tmp_path / "last.pt")


def test_finetune_option_and_study_key_set_allow_leakage(tmp_path):
    from cxrprobe.finetune.recipe import finetune_config

    (tmp_path / "study.toml").write_text(
        'out = "run"\n[finetune]\nallow_leakage = true\n'
        '[[datasets]]\nname = "d"\nadapter = "generic"\nroot = "."\n'
        '[[inits]]\nname = "r"\ninit = "random"\narch = "vit_base_patch16_224"\n'
        'methods = ["finetune"]\n'
    )
    config = load_study(tmp_path / "study.toml", main.commands)
    steps = {s.stage: s for s in build_plan(config, main.commands)}
    assert "--allow-leakage" in steps["finetune"].args
    assert finetune_config(steps["finetune"].params).allow_leakage is True
    helped = CliRunner().invoke(main, ["finetune", "--help"])
    assert "--allow-leakage" in helped.output
