"""Split and label policies: patient-level guarantees, determinism, fractions, official splits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxrprobe.data.policies import Policies, apply_policies, select_views
from cxrprobe.data.splits import official_split, patients_in_several_splits, random_split
from cxrprobe.data.targets import apply_uncertain
from cxrprobe.errors import ConfigError, DataFormatError

SEEDS = range(5)


def _patients(n_patients: int, seed: int = 0) -> pd.Series:
    """1 to 4 images per patient, rows shuffled."""
    rng = np.random.default_rng(seed)
    ids = np.repeat([f"p{i:04d}" for i in range(n_patients)], rng.integers(1, 5, n_patients))
    return pd.Series(rng.permutation(ids))


@pytest.mark.parametrize("seed", SEEDS)
def test_random_split_never_shares_a_patient(seed):
    patients = _patients(500, seed)
    split = random_split(patients, 0.1, 0.2, seed)
    frame = pd.DataFrame({"patient_id": patients, "split": split})
    assert patients_in_several_splits(frame) == []
    assert set(split) == {"train", "val", "test"}


@pytest.mark.parametrize("seed", SEEDS)
def test_random_split_honours_fractions_by_patient(seed):
    patients = _patients(1000, seed)
    split = random_split(patients, 0.1, 0.2, seed)
    per_patient = pd.DataFrame({"patient_id": patients, "split": split}).drop_duplicates()
    assert per_patient["split"].value_counts().to_dict() == {"train": 700, "test": 200, "val": 100}


def test_random_split_is_deterministic_and_independent_of_row_order():
    patients = _patients(300)
    first = random_split(patients, 0.1, 0.2, seed=7)
    again = random_split(patients, 0.1, 0.2, seed=7)
    shuffled = patients.sample(frac=1.0, random_state=1)
    reordered = random_split(shuffled, 0.1, 0.2, seed=7)
    assert first.tolist() == again.tolist()
    assert (reordered.sort_index() == first).all()
    assert random_split(patients, 0.1, 0.2, seed=8).tolist() != first.tolist()


def test_random_split_rejects_bad_fractions_and_too_few_patients():
    with pytest.raises(ConfigError, match="sum to less than 1"):
        random_split(_patients(10), 0.6, 0.5, 0)
    with pytest.raises(ConfigError, match="2 patients are too few"):
        random_split(pd.Series(["a", "b"]), 0.3, 0.3, 0)


def test_official_split_carves_val_from_train_patients_only():
    patients = _patients(400)
    official = pd.Series(np.where(patients < "p0100", "test", "train"), dtype=object)
    split = official_split(official, patients, val_frac=0.1, seed=0)
    assert (split[official == "test"] == "test").all()
    val_patients = set(patients[split == "val"])
    train_patients = set(patients[official == "train"])
    assert val_patients <= train_patients and len(val_patients) == round(0.1 * len(train_patients))
    assert patients_in_several_splits(pd.DataFrame({"patient_id": patients, "split": split})) == []


def test_official_split_keeps_an_existing_val_and_reports_gaps():
    patients = pd.Series(["a", "b", "c"])
    assert official_split(pd.Series(["train", "val", "test"]), patients, 0.5, 0).tolist() == [
        "train",
        "val",
        "test",
    ]
    with pytest.raises(ConfigError, match=r"no official split \(see here\)"):
        official_split(pd.Series([None, None, None]), patients, 0.1, 0, hint="see here")
    with pytest.raises(DataFormatError, match="1 of 3 images have no official split.*patient 'b'"):
        official_split(pd.Series(["train", None, "test"]), patients, 0.1, 0)


@pytest.fixture
def frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "image_id": list("abcdef"),
            "path": list("abcdef"),
            "patient_id": ["p1", "p1", "p2", "p3", "p4", "p5"],
            "view": ["PA", "LATERAL", "AP", "OTHER", "PA", "AP"],
            "split": [None] * 6,
            "pneumonia": [1.0, -1.0, 0.0, np.nan, -1.0, 1.0],
        }
    )


@pytest.mark.parametrize("policy, expected", [
    ("ignore", [1, -1, 0, np.nan, -1, 1]),
    ("zero", [1, 0, 0, np.nan, 0, 1]),
    ("one", [1, 1, 0, np.nan, 1, 1]),
])  # fmt: skip
def test_uncertain_policies(frame, policy, expected):
    np.testing.assert_array_equal(apply_uncertain(frame, policy)["pneumonia"].to_numpy(), expected)


@pytest.mark.parametrize("policy, kept", [
    ("frontal", list("acef")), ("pa", list("ae")), ("ap", list("cf")), ("all", list("abcdef")),
])  # fmt: skip
def test_view_policies(frame, policy, kept):
    assert select_views(frame, policy)["image_id"].tolist() == kept


def test_policies_are_checked_and_unknown_options_named():
    with pytest.raises(ConfigError, match="--views 'lateral'"):
        Policies(views="lateral")
    with pytest.raises(ConfigError, match="unknown option.*spilt"):
        Policies.from_options({"spilt": "random"}, "dataset x")


def test_apply_policies_on_an_existing_manifest(frame):
    out = apply_policies(
        frame,
        Policies(uncertain="zero", views="frontal", split="random", val_frac=0.25, test_frac=0.25),
    )
    assert out["image_id"].tolist() == list("acef")
    assert not (out["pneumonia"] == -1).any()
    assert out["split"].notna().all() and patients_in_several_splits(out) == []
    with pytest.raises(ConfigError, match="keeps no image"):
        apply_policies(frame[frame["view"] == "LATERAL"], Policies(views="frontal"))
