"""Labels → targets (cxrprobe.data.targets) against hand-computed values, and a source scan that
keeps it the only module turning labels into targets, masks or class weights."""

from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import cxrprobe
from cxrprobe.data.manifest import label_matrix
from cxrprobe.data.policies import Policies, apply_policies
from cxrprobe.data.targets import (
    apply_blank,
    apply_label_policies,
    apply_uncertain,
    class_counts,
    entry_weights,
    evaluation_targets,
    fittable,
    not_annotated_mask,
    observed_mask,
    positive_weights,
    to_targets,
    training_targets,
    uncertain_mask,
)
from cxrprobe.errors import ConfigError, DataFormatError

N = np.nan
# rows × findings a, b, c
LABELS = np.array(
    [[1, 0, -1], [0, N, -1], [1, 1, 0], [-1, 0, N]],
    dtype=np.float32,
)
EXPECTED = {  # worked out by hand from LABELS
    "ignore": [[1, 0, N], [0, N, N], [1, 1, 0], [N, 0, N]],
    "zero": [[1, 0, 0], [0, N, 0], [1, 1, 0], [0, 0, N]],
    "one": [[1, 0, 1], [0, N, 1], [1, 1, 0], [1, 0, N]],
}
MASKS = {
    "ignore": [[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 1, 0]],
    "zero": [[1, 1, 1], [1, 0, 1], [1, 1, 1], [1, 1, 0]],
    "one": [[1, 1, 1], [1, 0, 1], [1, 1, 1], [1, 1, 0]],
}


@pytest.mark.parametrize("policy", ["ignore", "zero", "one"])
def test_to_targets_applies_the_uncertain_policy(policy):
    targets, mask = to_targets(LABELS, policy)
    assert targets.dtype == np.float32 and mask.dtype == bool
    np.testing.assert_array_equal(targets, np.array(EXPECTED[policy], dtype=np.float32))
    np.testing.assert_array_equal(mask, np.array(MASKS[policy], dtype=bool))
    np.testing.assert_array_equal(training_targets(LABELS, policy), targets)
    assert LABELS[3, 0] == -1 and LABELS[0, 2] == -1  # the input is not modified


# blank = "negative": every NaN of LABELS becomes 0, worked out by hand per uncertain policy
BLANK_NEGATIVE = {
    "ignore": [[1, 0, N], [0, 0, N], [1, 1, 0], [N, 0, 0]],
    "zero": [[1, 0, 0], [0, 0, 0], [1, 1, 0], [0, 0, 0]],
    "one": [[1, 0, 1], [0, 0, 1], [1, 1, 0], [1, 0, 0]],
}


@pytest.mark.parametrize("uncertain", ["ignore", "zero", "one"])
def test_to_targets_applies_the_blank_policy(uncertain):
    missing, mask = to_targets(LABELS, uncertain, "missing")
    np.testing.assert_array_equal(missing, np.array(EXPECTED[uncertain], dtype=np.float32))
    negative, mask = to_targets(LABELS, uncertain, "negative")
    expected = np.array(BLANK_NEGATIVE[uncertain], dtype=np.float32)
    np.testing.assert_array_equal(negative, expected)
    np.testing.assert_array_equal(mask, ~np.isnan(expected))
    np.testing.assert_array_equal(training_targets(LABELS, uncertain, "negative"), expected)
    assert np.isnan(LABELS[1, 1]) and np.isnan(LABELS[3, 2])  # the input is not modified


def test_blank_negative_with_uncertain_zero_is_the_studys_not_one_is_zero():
    study = np.where(LABELS == 1, 1.0, 0.0)  # label[label != 1] = 0, directly
    targets, mask = to_targets(LABELS, "zero", "negative")
    np.testing.assert_array_equal(targets, study)
    assert mask.all()


def test_evaluation_targets_always_mask_uncertain():
    np.testing.assert_array_equal(
        evaluation_targets(LABELS), np.array(EXPECTED["ignore"], dtype=np.float32)
    )


def test_bad_labels_and_policies_are_named():
    with pytest.raises(DataFormatError, match="row 1, column 0 is 2.0"):
        to_targets(np.array([[1.0], [2.0]]))
    with pytest.raises(ConfigError, match="--uncertain 'maybe'.*ignore, zero, one"):
        to_targets(LABELS, "maybe")
    with pytest.raises(ConfigError, match="--uncertain"):
        apply_uncertain(pd.DataFrame({"cardiomegaly": [1.0]}), "maybe")
    with pytest.raises(ConfigError, match="--blank 'zero' is unknown.*missing, negative"):
        to_targets(LABELS, "ignore", "zero")
    with pytest.raises(ConfigError, match="--blank 'maybe'"):
        apply_blank(pd.DataFrame({"cardiomegaly": [1.0]}), "maybe")


def test_masks_work_on_numpy_and_torch_alike():
    expected_observed = np.array(MASKS["ignore"], dtype=bool)
    expected_uncertain = LABELS == -1  # direct numpy reference
    expected_missing = np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0], [0, 0, 1]], dtype=bool)  # by hand
    for data, as_numpy in ((LABELS, np.asarray), (torch.from_numpy(LABELS), torch.Tensor.numpy)):
        np.testing.assert_array_equal(as_numpy(observed_mask(data)), expected_observed)
        np.testing.assert_array_equal(as_numpy(uncertain_mask(data)), expected_uncertain)
        np.testing.assert_array_equal(as_numpy(not_annotated_mask(data)), expected_missing)


def test_counts_weights_and_fittable_by_hand():
    ignore, one = to_targets(LABELS, "ignore")[0], to_targets(LABELS, "one")[0]
    positives, negatives = class_counts(ignore)
    assert positives.tolist() == [2, 1, 0] and negatives.tolist() == [1, 2, 1]
    np.testing.assert_allclose(positive_weights(ignore), [1 / 2, 2 / 1, 1.0])  # c: no positive
    np.testing.assert_allclose(positive_weights(one), [1 / 3, 2 / 1, 1 / 2])
    assert fittable(ignore).tolist() == [True, True, False]
    assert fittable(one).tolist() == [True, True, True]
    expected = [[0.5, 1, 0], [1, 0, 0], [0.5, 2, 1], [0, 1, 0]]
    np.testing.assert_array_equal(entry_weights(ignore, positive_weights(ignore)), expected)
    np.testing.assert_array_equal(entry_weights(ignore), np.array(MASKS["ignore"], dtype=float))


def test_manifest_policy_and_label_matrix_agree_with_the_matrix_policy():
    df = pd.DataFrame(
        {
            "image_id": ["a", "b", "c", "d"],
            "cardiomegaly": LABELS[:, 0],
            "edema": LABELS[:, 1],
            "pneumothorax": LABELS[:, 2],
            "score": [-1.0, -1.0, 0.0, 1.0],  # not a finding: never touched
        }
    )
    findings = ["cardiomegaly", "edema", "pneumothorax"]
    assert apply_uncertain(df, "ignore") is df  # -1 kept, masked later
    for policy in ("zero", "one"):
        mapped = apply_uncertain(df, policy)
        np.testing.assert_array_equal(
            mapped[findings].to_numpy(dtype=np.float32), to_targets(LABELS, policy)[0]
        )
        assert mapped["score"].tolist() == [-1.0, -1.0, 0.0, 1.0]
    assert (df["cardiomegaly"] == -1).sum() == 1  # the input frame is unchanged
    df.loc[1, "score"] = np.nan
    assert apply_blank(df, "missing") is df  # NaN kept, masked later
    for uncertain in ("ignore", "zero", "one"):
        mapped = apply_label_policies(df, uncertain, "negative")
        kept = to_targets(LABELS, uncertain, "negative")[0]
        if uncertain == "ignore":  # the manifest keeps -1 for a later policy; targets mask it
            kept = np.where(LABELS == -1, -1, kept)
        np.testing.assert_array_equal(mapped[findings].to_numpy(dtype=np.float32), kept)
        assert mapped["score"].isna().tolist() == [False, True, False, False]  # not a finding
    assert df[findings].isna().sum().sum() == 2  # the input frame is unchanged
    np.testing.assert_array_equal(label_matrix(df, findings), evaluation_targets(LABELS))
    np.testing.assert_array_equal(label_matrix(df, findings, keep_uncertain=True), LABELS)


def test_manifest_policies_use_the_same_table():
    df = pd.DataFrame(
        {
            "image_id": ["a", "b"],
            "path": ["a.png", "b.png"],
            "patient_id": ["p1", "p2"],
            "view": ["PA", "PA"],
            "split": ["train", "test"],
            "cardiomegaly": [-1.0, 1.0],
        }
    )
    out = apply_policies(df, Policies(uncertain="one"))
    assert out["cardiomegaly"].tolist() == [1.0, 1.0]
    assert out.attrs["label_policies"] == {"uncertain": "one", "blank": "missing"}
    df["edema"] = [np.nan, -1.0]
    out = apply_policies(df, Policies(uncertain="zero", blank="negative"))
    assert out["edema"].tolist() == [0.0, 0.0] and out["cardiomegaly"].tolist() == [0.0, 1.0]
    assert out.attrs["label_policies"] == {"uncertain": "zero", "blank": "negative"}
    with pytest.raises(ConfigError, match="--uncertain 'maybe'"):
        Policies(uncertain="maybe")
    with pytest.raises(ConfigError, match="--blank 'zero' is not one of missing, negative"):
        Policies(blank="zero")


# ------------------------------------------------------------------- one home for the rules
_V = r"(?:\.0*)?(?![\d.])"  # 1, 1.0, 1.00 but not 1.5 or 10
REIMPLEMENTATIONS = {
    "uncertain (-1) handled outside to_targets": re.compile(
        r"(?:\b(?:labels?|targets?|y\w*)\b(?:\[[^\]]*\])?|\w+\[[^\]]*\])\s*[=!]=\s*-1" + _V
    ),
    "observed mask built by hand": re.compile(
        r"==\s*0"
        + _V
        + r"\s*\)\s*\|\s*\([^)]*==\s*1"
        + _V
        + r"|==\s*1"
        + _V
        + r"\s*\)\s*\|\s*\([^)]*==\s*0"
        + _V
        + r"|~\s*np\.isnan\(\s*(?:labels?|targets?|y\w*)\b"
        + r"|isin\([^)]*\(\s*[01]"
        + _V
        + r"\s*,\s*[01]"
        + _V
        + r"\s*\)"
    ),
    "class presence (fittable) tested by hand": re.compile(
        r"==\s*[01]" + _V + r"\s*\)\s*\.any\(|\bany\(\s*[^)]*==\s*[01]" + _V
    ),
    "pos_weight arithmetic": re.compile(
        r"\bneg\w*\s*/\s*(?:np\.maximum\(\s*)?pos|==\s*0" + _V + r".*/.*==\s*1" + _V
    ),
}
# What the package did before targets.py existed: every pattern must catch its examples.
OLD_CODE = {
    "uncertain (-1) handled outside to_targets": [
        "targets[targets == -1] = {'ignore': np.nan, 'zero': 0.0}[uncertain]",
        "return np.where(labels == -1.0, np.float32(np.nan), labels)",
        "df.loc[df[name] == -1.0, name] = value",
    ],
    "observed mask built by hand": [
        "observed = (meta.labels == 0) | (meta.labels == 1)",
        "return (targets == 1) | (targets == 0)",
        "rows = ~np.isnan(targets[:, label])",
        "bad = ~np.isnan(labels) & ~np.isin(labels, (-1, 0, 1))",
        "ok = np.isin(y, (0, 1))",
    ],
    "class presence (fittable) tested by hand": [
        "return np.any(targets == 1, axis=0) & np.any(targets == 0, axis=0)",
        "if not ((val == 1).any(axis=0) & (val == 0).any(axis=0)).any():",
    ],
    "pos_weight arithmetic": [
        "return np.where((pos > 0) & (neg > 0), neg / np.maximum(pos, 1), 1.0)",
        "weights = (y == 0).sum(0) / (y == 1).sum(0)",
    ],
}
# targets.py is the home. cxrprobe/stats takes Predictions, whose targets are already evaluation
# targets (1/0/NaN by the file format); it checks and uses them, it never derives them.
EXEMPT = ("data/targets.py", "stats/")


def code_lines(text: str) -> dict[int, str]:
    """Source lines with string literals and comments blanked (prose about labels is fine)."""
    lines = text.splitlines()
    skip = {tokenize.STRING, tokenize.COMMENT}
    skip |= {tokenize.FSTRING_MIDDLE} if hasattr(tokenize, "FSTRING_MIDDLE") else set()
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type not in skip:
            continue
        (r0, c0), (r1, c1) = tok.start, tok.end
        for r in range(r0, r1 + 1):
            line = lines[r - 1]
            start, stop = (c0 if r == r0 else 0), (c1 if r == r1 else len(line))
            lines[r - 1] = line[:start] + " " * (stop - start) + line[stop:]
    return dict(enumerate(lines, 1))


@pytest.mark.parametrize("rule", sorted(REIMPLEMENTATIONS))
def test_the_scan_catches_the_old_code(rule):
    for line in OLD_CODE[rule]:
        assert REIMPLEMENTATIONS[rule].search(line), line
    for line in ("positive = (targets == 1).float()", "if side == -1.5:", "n = neg + pos"):
        assert not REIMPLEMENTATIONS[rule].search(line), line


def test_the_scan_reads_code_not_prose():
    text = 'x = 1  # labels == -1, neg / pos\ny = f"targets == -1 {x}"\n'
    lines = code_lines(text)
    assert lines[1].rstrip() == "x = 1" and "labels" not in lines[1]
    assert "targets" not in lines[2] and lines[2].startswith("y = ")


def test_no_module_but_targets_turns_labels_into_targets():
    package = Path(cxrprobe.__file__).parent
    found = []
    for path in sorted(package.rglob("*.py")):
        name = path.relative_to(package).as_posix()
        if name.startswith(EXEMPT):
            continue
        for number, line in code_lines(path.read_text(encoding="utf-8")).items():
            found += [
                f"{name}:{number}: {rule}: {line.strip()}"
                for rule, pattern in REIMPLEMENTATIONS.items()
                if pattern.search(line)
            ]
    assert not found, "use cxrprobe.data.targets instead:\n" + "\n".join(found)
