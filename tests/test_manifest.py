"""The manifest format, the finding vocabulary and label maps."""

from __future__ import annotations

import doctest
import itertools
import json
import math
import os
import re

import numpy as np
import pandas as pd
import pytest

import cxrprobe.data.adapters as adapters_module
import cxrprobe.data.labelmap as labelmap_module
from cxrprobe.data.findings import DERIVED, FINDING_IDS, FINDINGS, get_finding, with_derived
from cxrprobe.data.label_columns import labels_from_columns, labels_from_lists
from cxrprobe.data.labelmap import LabelMap, add_derived, load_label_map, merge_labels
from cxrprobe.data.manifest import (
    BASE_COLUMNS,
    finding_columns,
    label_matrix,
    label_policies,
    manifest_hash,
    prevalence,
    read_manifest,
    write_manifest,
)
from cxrprobe.errors import ConfigError, DataFormatError, InputFileError

NAN = float("nan")
REQUIRED_IDS = [
    "no_finding",
    "cardiomegaly",
    "pleural_effusion",
    "pneumonia",
    "atelectasis",
    "consolidation",
    "pneumothorax",
    "lung_opacity",
    "lung_lesion",
    "fracture",
    "edema",
    "emphysema",
    "hernia",
    "fibrosis",
    "pleural_thickening",
    "nodule_mass",
    "infiltration",
    "enlarged_cardiomediastinum",
    "support_devices",
    "pleural_other",
    "aortic_enlargement",
    "calcification",
    "ild",
    "lung_cyst",
    "mediastinal_shift",
    "tuberculosis",
    "copd",
    "lung_tumor",
    "other_lesion",
    "nodule",
    "mass",
    "scoliosis",
    "kyphosis",
    "congestion",
    "aortic_elongation",
    "pleural_effusion_left",
    "pleural_effusion_right",
    "pneumonia_left",
    "pneumonia_right",
    "atelectasis_left",
    "atelectasis_right",
]


@pytest.fixture
def manifest() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "image_id": ["a", "b", "c", "d"],
            "path": ["x/a.png", "x/b.png", "y/c.png", "y/d.png"],
            "patient_id": ["p1", "p1", "p2", "p3"],
            "study_id": ["s1", "s2", None, "s4"],
            "view": ["PA", "AP", "LATERAL", None],
            "split": ["train", "train", "val", None],
            "sex": ["F", "F", None, "M"],
            "age": [50, 51, None, 70],
            "pneumothorax": [1.0, 0.0, NAN, -1.0],  # out of vocabulary order on purpose
            "cardiomegaly": [0.0, -1.0, 1.0, 1.0],
            "site": ["A", "A", "B", "B"],
        }
    )


def test_vocabulary_has_the_shared_ids_once():
    assert len(FINDINGS) > 20
    assert len(set(FINDING_IDS)) == len(FINDING_IDS)
    assert set(REQUIRED_IDS) <= set(FINDING_IDS)
    assert get_finding("nodule_mass").name == "Nodule/mass"
    with pytest.raises(ConfigError, match="unknown finding 'effusion'"):
        get_finding("effusion")


def test_finding_columns_follow_vocabulary_order(manifest):
    assert finding_columns(manifest) == ["cardiomegaly", "pneumothorax"]


def test_label_matrix_masks_uncertain_and_orders_columns(manifest):
    labels = label_matrix(manifest, ["pneumothorax", "cardiomegaly"])
    assert labels.dtype == np.float32 and labels.shape == (4, 2)
    expected = np.array([[1, 0], [0, NAN], [NAN, 1], [NAN, 1]], dtype=np.float32)
    np.testing.assert_array_equal(labels, expected)
    assert label_matrix(manifest).shape == (4, 2)
    with pytest.raises(ConfigError, match="edema"):
        label_matrix(manifest, ["edema"])


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".csv.gz"])
def test_round_trip_keeps_content_and_hash(manifest, tmp_path, suffix):
    if suffix == ".parquet":
        path = write_manifest(manifest, tmp_path / "m.parquet")
    else:
        path = tmp_path / f"m{suffix}"
        manifest.to_csv(path, index=False)
    back = read_manifest(path)
    assert list(back.columns) == [*BASE_COLUMNS, "cardiomegaly", "pneumothorax", "site"]
    assert back["study_id"].tolist() == ["s1", "s2", None, "s4"]
    assert back["split"].tolist() == ["train", "train", "val", None]
    np.testing.assert_array_equal(back["age"].to_numpy(), [50, 51, NAN, 70])
    assert manifest_hash(back) == manifest_hash(manifest)


def test_label_policies_travel_in_the_parquet_metadata(manifest, tmp_path):
    import pyarrow.parquet as pq

    policies = {"uncertain": "zero", "blank": "negative"}
    path = write_manifest(manifest, tmp_path / "m.parquet", policies)
    stored = pq.read_schema(path).metadata[b"cxrprobe.label_policies"]  # readable without us
    assert json.loads(stored) == policies
    back = read_manifest(path)
    assert label_policies(back) == policies
    again = write_manifest(back, tmp_path / "again.parquet")  # kept from df.attrs by default
    assert label_policies(read_manifest(again)) == policies
    assert manifest_hash(read_manifest(again)) == manifest_hash(manifest)
    assert (
        label_policies(read_manifest(write_manifest(manifest, tmp_path / "none.parquet"))) is None
    )
    manifest.to_csv(tmp_path / "m.csv", index=False)
    assert label_policies(read_manifest(tmp_path / "m.csv")) is None  # a CSV cannot say
    with pytest.raises(ConfigError, match="must name exactly uncertain, blank"):
        write_manifest(manifest, tmp_path / "bad.parquet", {"uncertain": "zero"})


def test_unreadable_label_policies_name_the_file(manifest, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(manifest, preserve_index=False)
    meta = {**table.schema.metadata, b"cxrprobe.label_policies": b"{not json"}
    pq.write_table(table.replace_schema_metadata(meta), tmp_path / "odd.parquet")
    with pytest.raises(DataFormatError, match="odd.parquet: metadata cxrprobe.label_policies"):
        read_manifest(tmp_path / "odd.parquet")


def test_ids_stay_strings_through_csv(tmp_path, manifest):
    manifest["patient_id"] = ["007", "007", "010", "1e3"]
    manifest.to_csv(tmp_path / "m.csv", index=False)
    assert read_manifest(tmp_path / "m.csv")["patient_id"].tolist() == ["007", "007", "010", "1e3"]


def test_hash_tracks_content_and_row_order(manifest):
    reference = manifest_hash(manifest)
    changed = manifest.copy()
    changed.loc[2, "cardiomegaly"] = 0.0
    assert manifest_hash(changed) != reference
    assert manifest_hash(manifest.iloc[::-1]) != reference
    assert (
        manifest_hash(manifest[manifest.columns[::-1]]) == reference
    )  # column order is normalised


def test_write_is_atomic_and_refuses_bad_content(manifest, tmp_path):
    path = write_manifest(manifest, tmp_path / "m.parquet")
    before = path.read_bytes()
    bad = manifest.assign(image_id=["a", "a", "c", "d"])  # the first two of the data rows
    with pytest.raises(
        DataFormatError,
        match=r"m.parquet: data row 1, column image_id: 'a' appears 2 times \(data rows 1, 2\)",
    ):
        write_manifest(bad, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.parquet"]


@pytest.mark.parametrize(
    "column, value, message",
    [
        ("cardiomegaly", 2.0, r"column cardiomegaly: value 2.0 is not 1, 0, -1"),
        ("cardiomegaly", "yes", r"column cardiomegaly: value 'yes'"),
        ("view", "PORTABLE", r"column view: 'PORTABLE' is not one of PA, AP, LATERAL, OTHER"),
        ("split", "dev", r"column split: 'dev' is not one of train, val, test"),
        ("path", "", r"column path: empty"),
    ],
)
def test_bad_csv_names_file_row_and_column(manifest, tmp_path, column, value, message):
    manifest[column] = manifest[column].astype(object)
    manifest.loc[1, column] = value
    manifest.to_csv(tmp_path / "bad.csv", index=False)
    lines = (tmp_path / "bad.csv").read_text().splitlines()
    line = next(n for n, text in enumerate(lines, start=1) if text.startswith("b,"))  # image b
    where = f"bad.csv: data row {line - 1} (line {line}), "
    with pytest.raises(DataFormatError, match=re.escape(where) + message):
        read_manifest(tmp_path / "bad.csv")


def test_missing_columns_and_files(manifest, tmp_path):
    manifest.drop(columns=["patient_id", "age"]).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(DataFormatError, match="missing column.*patient_id, age"):
        read_manifest(tmp_path / "m.csv")
    with pytest.raises(InputFileError, match="nope.parquet"):
        read_manifest(tmp_path / "nope.parquet")


def test_prevalence_counts_match_direct_counts(manifest):
    table = prevalence(manifest)
    assert list(table.index) == ["train", "val", "unassigned", "all"]
    assert table.loc["train", "n_images"] == 2 and table.loc["train", "n_patients"] == 1
    assert table.loc["all", "cardiomegaly"] == (manifest["cardiomegaly"] == 1).sum() == 2
    assert table.loc["val", "cardiomegaly"] == 1 and table.loc["unassigned", "pneumothorax"] == 0


# --- label maps ---------------------------------------------------------------------------------


def test_merge_matches_brute_force_over_all_pairs():
    order = {1.0: 3, -1.0: 2, 0.0: 1}
    values = [1.0, -1.0, 0.0, NAN]
    pairs = np.array(list(itertools.product(values, repeat=3)))
    merged = merge_labels(pairs)
    for row, got in zip(pairs, merged, strict=True):
        present = [v for v in row if not math.isnan(v)]
        expected = max(present, key=order.get) if present else NAN
        assert (math.isnan(got) and math.isnan(expected)) or got == expected, row


def test_packaged_maps_load_and_target_the_vocabulary():
    for name in ("chestxray14", "chexpert", "mimic", "vindr", "padchest", "generic"):
        label_map = load_label_map(name)
        assert label_map.findings and set(label_map.findings) <= set(FINDING_IDS)
    assert load_label_map("chestxray14").sources_of("nodule_mass") == ["Mass", "Nodule"]


def test_bad_map_names_its_file(tmp_path):
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"labels": {"Effusion": "effusion"}}))
    with pytest.raises(ConfigError, match=r"map.json: label 'Effusion' maps to unknown"):
        load_label_map(path)
    path.write_text(json.dumps({"labels": {}, "veiws": {}}))
    with pytest.raises(ConfigError, match="veiws"):
        load_label_map(path)


def test_lists_and_columns_agree_on_a_merge():
    label_map = LabelMap.from_dict(
        {
            "labels": {
                "Mass": "nodule_mass",
                "Nodule": "nodule_mass",
                "Effusion": "pleural_effusion",
            }
        },
        "t",
    )
    lists = pd.Series([["Mass"], ["nodule "], [], NAN, ["Effusion", "Nodule"]])
    from_lists = labels_from_lists(lists, label_map, "t")
    wide = pd.DataFrame(
        {"Mass": [1, 0, 0, NAN, 0], "NODULE": [0, 1, 0, NAN, 1], "Effusion": [0, 0, 0, NAN, 1]}
    )
    from_columns = labels_from_columns(wide, label_map, "t")
    expected = np.array([[1, 0], [1, 0], [0, 0], [NAN, NAN], [1, 1]], dtype=np.float32)
    np.testing.assert_array_equal(
        from_lists[["nodule_mass", "pleural_effusion"]].to_numpy(), expected
    )
    np.testing.assert_array_equal(
        from_columns[["nodule_mass", "pleural_effusion"]].to_numpy(), expected
    )


def test_derived_findings_name_vocabulary_parts():
    assert DERIVED["nodule_mass"] == ("nodule", "mass")
    for finding, parts in DERIVED.items():
        assert set(parts) <= set(FINDING_IDS) and finding not in parts
        assert not set(parts) & set(DERIVED), "a part is never itself derived"
    assert with_derived(["mass", "nodule", "edema"]) == ["nodule_mass", "nodule", "mass", "edema"]
    assert with_derived(["nodule", "pleural_effusion_left"]) == ["nodule", "pleural_effusion_left"]


def test_add_derived_matches_brute_force_merge():
    values = [1.0, -1.0, 0.0, NAN]
    rows = np.array(list(itertools.product(values, repeat=3)), dtype=np.float32)
    labels = pd.DataFrame(rows, columns=["nodule", "mass", "nodule_mass"])
    order = {1.0: 3, -1.0: 2, 0.0: 1}

    def reference(row):
        present = [v for v in row if not math.isnan(v)]
        return max(present, key=order.get) if present else NAN

    with_direct = add_derived(labels)
    without = add_derived(labels.drop(columns="nodule_mass"))
    assert list(with_direct.columns) == list(without.columns) == ["nodule_mass", "nodule", "mass"]
    for i, row in enumerate(rows):
        for got, expected in (
            (with_direct["nodule_mass"][i], reference(row)),
            (without["nodule_mass"][i], reference(row[:2])),
        ):
            assert (math.isnan(got) and math.isnan(expected)) or got == expected, row
    np.testing.assert_array_equal(with_direct[["nodule", "mass"]].to_numpy(), rows[:, :2])
    only_nodule = labels[["nodule"]]
    assert list(add_derived(only_nodule).columns) == ["nodule"]  # a part missing: not derived


def test_separate_sources_derive_only_when_every_part_is_annotated():
    label_map = load_label_map("chestxray14")
    assert label_map.sources_of("nodule_mass") == ["Mass", "Nodule"]
    assert label_map.sources_of("nodule") == ["Nodule"]
    lists = pd.Series([["Nodule"], ["Mass", "Effusion"], ["No Finding"]])
    both = labels_from_lists(lists, label_map, "t", vocabulary=["Nodule", "Mass", "Effusion"])
    np.testing.assert_array_equal(both["nodule_mass"].to_numpy(), [1, 1, 0])
    one = labels_from_lists(lists, label_map, "t", vocabulary=["Nodule", "Effusion"])
    assert "nodule_mass" not in one.columns and one["nodule"].tolist() == [1, 0, 0]


@pytest.mark.parametrize("module", [labelmap_module, adapters_module])
def test_doctests(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
