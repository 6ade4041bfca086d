"""Named finding sets (the study's label sets as data) and the finding subset resolver."""

from __future__ import annotations

import doctest
import json
import re

import fixtures_data as fx
import numpy as np
import pandas as pd
import pytest

import cxrprobe.data.finding_sets as finding_sets_module
from cxrprobe.data.adapters import ADAPTERS, get_adapter
from cxrprobe.data.finding_sets import (
    FindingSet,
    finding_sets,
    get_finding_set,
    resolve_findings,
    select_findings,
)
from cxrprobe.data.findings import FINDING_IDS, in_vocabulary_order
from cxrprobe.data.labelmap import key
from cxrprobe.data.manifest import BASE_COLUMNS, finding_columns
from cxrprobe.errors import ConfigError, DataFormatError

# The sizes the study's code and paper give (issue 10): 10 or 7 for MIMIC-CXR.
STUDY_SIZES = {
    "study-vindr": 11,
    "study-chestxray14": 14,
    "study-chexpert": 10,
    "study-mimic": 7,
    "study-mimic10": 10,
    "study-padchest": 17,
    "study-uka": 9,
}


def test_every_study_set_is_packaged_with_its_source():
    sets = finding_sets()
    assert {name: len(s.findings) for name, s in sets.items()} == STUDY_SIZES
    for fs in sets.values():
        assert fs.dataset in ADAPTERS
        assert set(fs.findings) <= set(FINDING_IDS)
        assert len(fs.source_labels) == len(fs.findings)
        assert re.fullmatch(r"[0-9a-f]{40}", fs.source["commit"])
        assert fs.source["repository"].startswith("https://github.com/")
        assert fs.source["file"] and fs.source["lines"] and fs.notes


def test_each_set_is_what_its_dataset_provides():
    for fs in finding_sets().values():
        provided = get_adapter(fs.dataset).findings
        assert resolve_findings(fs.name, provided) == tuple(in_vocabulary_order(fs.findings))


@pytest.mark.parametrize(
    "name", ["study-chestxray14", "study-chexpert", "study-mimic", "study-vindr"]
)
def test_study_spellings_map_to_the_set_through_the_label_map(name):
    """The study's own column names, read through the dataset's label map, give the set."""
    fs = get_finding_set(name)
    labels = {
        key(n.replace("_", " ")): ids for n, ids in get_adapter(fs.dataset).label_map.labels.items()
    }
    mapped = [labels[key(s.replace("_", " "))] for s in fs.source_labels]
    assert [ids[0] for ids in mapped] == list(fs.findings)


def test_padchest_and_chestxray14_say_what_the_study_said():
    nih = get_finding_set("study-chestxray14").findings
    assert {"nodule", "mass"} <= set(nih) and "nodule_mass" not in nih
    assert "infiltration" not in nih
    padchest = get_finding_set("study-padchest").findings
    assert {"scoliosis", "kyphosis", "congestion", "aortic_elongation", "nodule_mass"} <= set(
        padchest
    )
    uka = get_finding_set("study-uka").findings
    assert {"pleural_effusion_left", "pleural_effusion_right", "no_finding"} <= set(uka)


def test_a_bad_set_file_is_refused_naming_it():
    good = json.loads(json.dumps(get_finding_set("study-mimic").__dict__, default=list))
    with pytest.raises(DataFormatError, match="x.json: findings must be distinct canonical ids"):
        FindingSet.from_dict({**good, "findings": ["effusion"], "source_labels": ["e"]}, "x.json")
    with pytest.raises(DataFormatError, match="x.json: 1 source_labels for 7 findings"):
        FindingSet.from_dict({**good, "source_labels": ["a"]}, "x.json")
    with pytest.raises(DataFormatError, match="x.json: keys"):
        FindingSet.from_dict({**good, "comment": ""}, "x.json")
    with pytest.raises(
        ConfigError, match="unknown finding set 'study-nih'; known: study-chestxray14"
    ):
        get_finding_set("study-nih")


# --- resolve_findings ------------------------------------------------------------------------


AVAILABLE = ["pneumothorax", "cardiomegaly", "fracture", "nodule", "mass", "nodule_mass", "site"]


@pytest.mark.parametrize(
    "spec, expected",
    [
        (None, ["cardiomegaly", "nodule_mass", "nodule", "mass", "pneumothorax", "fracture"]),
        ("all", ["cardiomegaly", "nodule_mass", "nodule", "mass", "pneumothorax", "fracture"]),
        ("fracture, Cardiomegaly", ["cardiomegaly", "fracture"]),
        (["mass", "nodule", "mass"], ["nodule", "mass"]),
        ("nodule_mass,fracture,", ["nodule_mass", "fracture"]),
    ],
)
def test_resolve_keeps_vocabulary_order(spec, expected):
    assert resolve_findings(spec, AVAILABLE) == tuple(expected)


def test_resolve_a_named_set_plus_an_id():
    available = [*get_finding_set("study-mimic").findings, "fracture", "edema"]
    got = resolve_findings("study-mimic,fracture", available)
    assert set(got) == {*get_finding_set("study-mimic").findings, "fracture"}
    assert list(got) == in_vocabulary_order(got)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("efusion", r"unknown finding or set 'efusion' \(did you mean 'pleural_effusion'\?\)"),
        ("study-nih", r"named sets: study-chestxray14, .*study-vindr; findings: no_finding,"),
        (" , ", "--findings is empty"),
    ],
)
def test_unknown_names_are_refused_with_what_exists(spec, message):
    with pytest.raises(ConfigError, match=message):
        resolve_findings(spec, AVAILABLE)


def test_a_finding_the_data_lacks_is_refused_with_what_it_provides():
    with pytest.raises(ConfigError) as caught:
        resolve_findings("study-chestxray14,lung_lesion", AVAILABLE, "dataset x")
    message = str(caught.value)
    assert (
        "dataset x does not provide" in message
        and "(in study-chestxray14); lung_lesion;" in message
    )
    assert message.endswith(
        "it provides: cardiomegaly, nodule_mass, nodule, mass, pneumothorax, fracture"
    )


def test_select_findings_drops_only_other_finding_columns():
    df = pd.DataFrame(
        {**{c: ["a", "b"] for c in BASE_COLUMNS}, "cardiomegaly": [1.0, 0.0],
         "pneumothorax": [np.nan, -1.0], "fracture": [0.0, 1.0], "site": ["A", "B"]}
    )  # fmt: skip
    kept = select_findings(df, "pneumothorax,fracture")
    assert finding_columns(kept) == ["pneumothorax", "fracture"]
    assert list(kept.columns) == [c for c in df.columns if c != "cardiomegaly"]
    pd.testing.assert_frame_equal(kept, df.drop(columns="cardiomegaly"))


# --- manifests built with a subset -----------------------------------------------------------


def test_build_keeps_the_study_set_of_chestxray14(tmp_path):
    fx.write_chestxray14(tmp_path, folders="none")
    adapter = get_adapter("chestxray14")
    full = adapter.build(tmp_path, split="random", seed=2)
    subset = adapter.build(tmp_path, split="random", seed=2, findings="study-chestxray14")
    wanted = in_vocabulary_order(get_finding_set("study-chestxray14").findings)
    present = [f for f in wanted if f in finding_columns(full)]
    assert finding_columns(subset) == present
    pd.testing.assert_frame_equal(subset, full.drop(columns=[c for c in full if c not in subset]))


def test_build_refuses_a_set_the_tables_cannot_provide(tmp_path):
    fx.write_vindr(tmp_path, kind="long", test=False)  # the Kaggle table has no global labels
    with pytest.raises(
        ConfigError, match=r"dataset vindr .*does not provide .*pneumonia.*it provides:"
    ):
        get_adapter("vindr").build(tmp_path, findings="study-vindr")


def test_doctests():
    result = doctest.testmod(finding_sets_module)
    assert result.attempted > 0 and result.failed == 0
