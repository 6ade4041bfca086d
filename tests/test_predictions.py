"""The predictions file: round trips (JSON, npz), subgroup fields, every validation refusal,
pairing two files."""

from __future__ import annotations

import doctest
import json
import re

import numpy as np
import pytest

from cxrprobe.errors import DataFormatError, InputFileError
from cxrprobe.stats import messages, pairing
from cxrprobe.stats.pairing import pair_predictions
from cxrprobe.stats.predictions import (
    FORMAT_NAME,
    FORMAT_VERSION,
    Predictions,
    read_predictions,
    validate_predictions,
    write_predictions,
)

SUBGROUPS = {
    "sex": ["F", "M", None, "F", "M", "F"],
    "age": [34, 71.5, None, 58, 80, 12],
    "site": ["a", "a", "b", "b", "a", "b"],
}


def _pred(n: int = 6, labels=("effusion", "mass"), seed: int = 0, **kw) -> Predictions:
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, len(labels))) < 0.5).astype(float)
    targets[1, 0] = np.nan
    fields = dict(
        labels=list(labels),
        ids=[f"img{i}" for i in range(n)],
        targets=targets,
        scores=rng.random((n, len(labels))),
        score_kind="probability",
        patient_ids=[f"p{i // 2}" for i in range(n)],
        provenance={"init": "dinov2", "split": "test"},
    )
    fields.update(kw)
    return Predictions(**fields)


@pytest.mark.parametrize("suffix", [".json", ".npz"])
def test_round_trip_is_exact(tmp_path, suffix):
    pred = _pred()
    path = write_predictions(pred, tmp_path / f"p{suffix}")
    back = read_predictions(path)
    assert back.labels == pred.labels and back.ids == pred.ids
    assert back.patient_ids == pred.patient_ids and back.provenance == pred.provenance
    np.testing.assert_array_equal(back.targets, pred.targets)  # NaN positions equal too
    np.testing.assert_array_equal(back.scores, pred.scores)
    assert back.score_kind == "probability"
    assert [p.name for p in tmp_path.iterdir()] == [f"p{suffix}"]  # no temporary left over
    assert back.source == str(path) and back.subgroups == {}


@pytest.mark.parametrize("suffix", [".json", ".npz"])
def test_subgroup_fields_round_trip(tmp_path, suffix):
    back = read_predictions(write_predictions(_pred(subgroups=SUBGROUPS), tmp_path / f"p{suffix}"))
    assert sorted(back.subgroups) == ["age", "sex", "site"]
    assert back.subgroups["sex"].tolist() == SUBGROUPS["sex"]  # None stays unknown
    np.testing.assert_array_equal(back.subgroups["age"], [34, 71.5, np.nan, 58, 80, 12])
    assert back.select(np.array([4, 2])).subgroups["site"].tolist() == ["a", "b"]


def test_json_subgroups_use_null_for_unknown(tmp_path):
    data = json.loads(
        write_predictions(_pred(subgroups=SUBGROUPS), tmp_path / "p.json").read_text()
    )
    assert data["subgroups"]["age"][2] is None and data["subgroups"]["sex"][2] is None
    assert "subgroups" not in json.loads(
        write_predictions(_pred(), tmp_path / "q.json").read_text()
    )


def test_json_layout_uses_null_for_not_annotated(tmp_path):
    path = write_predictions(_pred(patient_ids=None), tmp_path / "p.json")
    data = json.loads(path.read_text())
    assert data["format"] == FORMAT_NAME and data["version"] == FORMAT_VERSION
    assert data["targets"][1][0] is None and data["patient_ids"] is None
    assert set(np.ravel([v for row in data["targets"] for v in row if v is not None])) <= {0, 1}


def test_logit_scores_may_leave_the_unit_interval(tmp_path):
    pred = _pred(score_kind="logit")
    pred.scores[0, 0] = -7.5
    assert read_predictions(write_predictions(pred, tmp_path / "p.json")).scores[0, 0] == -7.5


def _json_with(tmp_path, **changes):
    data = json.loads(write_predictions(_pred(), tmp_path / "ok.json").read_text())
    for key, value in changes.items():
        if value is KeyError:
            del data[key]
        else:
            data[key] = value
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    return path


SCORES_WITH_NAN = [[0.1, 0.2]] * 5 + [[float("nan"), 0.2]]
BAD_CASES = {
    "format": (dict(format="other.predictions"), "format is 'other.predictions'"),
    "version": (dict(version=99), "format version 99 is not supported"),
    "missing field": (dict(scores=KeyError), "missing field(s) scores"),
    "duplicate id": (dict(ids=["a", "b", "a", "c", "d", "e"]), "id 'a' appears twice"),
    "duplicate label": (dict(labels=["x", "x"]), "label 'x' appears twice"),
    "bad target": (
        dict(targets=[[0, 1]] * 3 + [[0, 2]] + [[0, 1]] * 2),
        "target of id 'img3' (row 3), label 'mass' is 2; targets must be 1, 0 or null",
    ),
    "half target": (dict(targets=[[0.5, 1]] + [[0, 1]] * 5), "label 'effusion' is 0.5; targets"),
    "nan score": (
        dict(scores=SCORES_WITH_NAN),
        "score of id 'img5' (row 5), label 'effusion' is NaN; every score must be a probability",
    ),
    "null score": (  # the file holds null, and the message says so
        dict(scores=[[0.1, 0.2]] * 5 + [[0.3, None]]),
        "score of id 'img5' (row 5), label 'mass' is null; every score must be a probability",
    ),
    "score above 1": (dict(scores=[[1.5, 0.2]] * 6), "is 1.5; every score must be a probability"),
    "shape": (dict(scores=[[0.1, 0.2, 0.3]] * 6), "'scores' has shape (6, 3)"),
    "ragged": (dict(targets=[[0, 1], [1]] * 3), "'targets' is not a table of numbers"),
    "text in table": (dict(scores=[["a", 0.2]] * 6), "'scores' is not a table of numbers"),
    "ids not strings": (dict(ids=list(range(6))), "'ids' must be a list of non-empty strings"),
    "score kind": (dict(score_kind="rank"), "score_kind 'rank' is not one of"),
    "patients": (dict(patient_ids=["p0"]), "1 patient_ids for 6 ids"),
    "no rows": (dict(ids=[], targets=[], scores=[], patient_ids=None), "no rows"),
    "subgroups not an object": (dict(subgroups=[1, 2]), "'subgroups' must be an object"),
    "subgroup length": (dict(subgroups={"sex": ["F"]}), "subgroup field 'sex' has 1 values"),
    "subgroup mixed types": (
        dict(subgroups={"age": [1, "old", 3, 4, 5, 6]}),
        "subgroup field 'age', row 1: 'old'",
    ),
    "subgroup empty string": (
        dict(subgroups={"sex": ["F", "", "M", "F", "M", "F"]}),
        "subgroup field 'sex', row 1",
    ),
    "subgroup bad name": (dict(subgroups={"a:b": ["x"] * 6}), "field name 'a:b'"),
}


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_files_are_refused_naming_file_and_problem(tmp_path, case):
    changes, message = BAD_CASES[case]
    path = _json_with(tmp_path, **changes)
    with pytest.raises(DataFormatError) as info:
        read_predictions(path)
    assert str(path) in str(info.value) and message in str(info.value)
    assert "\n" not in str(info.value) and "np." not in str(info.value)


def test_not_json_missing_file_and_bad_npz(tmp_path):
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(DataFormatError, match="not a JSON predictions file"):
        read_predictions(tmp_path / "x.json")
    with pytest.raises(InputFileError, match="not found"):
        read_predictions(tmp_path / "absent.json")
    (tmp_path / "x.npz").write_bytes(b"garbage")
    with pytest.raises(DataFormatError, match="not a readable .npz"):
        read_predictions(tmp_path / "x.npz")
    np.savez(tmp_path / "y.npz", format=np.array(FORMAT_NAME), version=np.array(2))
    with pytest.raises(DataFormatError, match="format version 2"):
        read_predictions(tmp_path / "y.npz")
    with np.load(write_predictions(_pred(), tmp_path / "z.npz")) as npz:
        arrays = {key: npz[key] for key in npz.files}
    np.savez(tmp_path / "z.npz", **{**arrays, "provenance": np.array("{not json")})
    with pytest.raises(DataFormatError) as info:
        read_predictions(tmp_path / "z.npz")
    assert str(tmp_path / "z.npz") in str(info.value) and "'provenance' is not valid JSON" in str(
        info.value
    )


def test_writer_refuses_invalid_predictions(tmp_path):
    pred = _pred()
    pred.targets[0, 0] = 2
    with pytest.raises(DataFormatError, match="targets must be 1, 0 or null"):
        write_predictions(pred, tmp_path / "p.json")
    assert not list(tmp_path.iterdir())


def test_pair_identical_files_without_align():
    a, b = _pred(seed=0), _pred(seed=1)
    b.targets = a.targets.copy()
    pa, pb, summary = pair_predictions(a, b)
    assert pa.ids == pb.ids and summary["rows_used"] == 6 and summary["dropped_a"] == 0


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda b: b.select(np.arange(5)), "a has 6 rows and b has 5"),
        (
            lambda b: b.select(np.array([0, 1, 3, 2, 4, 5])),
            "ids first differ at row 2: 'img2' vs 'img3' (the same ids in a different",
        ),
        (lambda b: b.select(np.arange(6), ["effusion"]), "labels differ (only in a: mass)"),
        (
            lambda b: b.select(np.arange(6), ["mass", "effusion"]),
            "same labels in a different order",
        ),
    ],
)
def test_pair_refuses_mismatches_and_says_what_differs(change, message):
    a = _pred()
    with pytest.raises(DataFormatError) as info:
        pair_predictions(a, change(_pred()))
    assert message in str(info.value) and "--align" in str(info.value)


def test_align_matches_ids_and_labels_and_counts_drops():
    a = _pred(n=6, labels=("effusion", "mass", "nodule"))
    b = a.select(np.array([5, 3, 1, 0]), ["mass", "effusion"])
    b.scores = b.scores + 0.0
    b.patient_ids = None
    pa, pb, summary = pair_predictions(a, b, align=True)
    assert pa.ids == pb.ids == ["img0", "img1", "img3", "img5"]
    assert pa.labels == pb.labels == ["effusion", "mass"]
    assert summary == {
        "aligned": True,
        "rows_a": 6,
        "rows_b": 4,
        "rows_used": 4,
        "dropped_a": 2,
        "dropped_b": 0,
        "labels_dropped": ["nodule"],
    }
    np.testing.assert_array_equal(pb.scores[:, 0], a.scores[[0, 1, 3, 5], 0])
    assert pb.patient_ids == ["p0", "p0", "p1", "p2"]  # taken from a


def test_align_refuses_different_truth_and_disjoint_ids():
    a, b = _pred(), _pred()
    b.targets[3, 1] = 1 - b.targets[3, 1]
    with pytest.raises(DataFormatError, match="disagree on the target of id 'img3', label 'mass'"):
        pair_predictions(a, b, align=True)
    c = _pred(ids=[f"other{i}" for i in range(6)])
    with pytest.raises(DataFormatError, match="share no id"):
        pair_predictions(a, c, align=True)


def test_pairing_carries_both_files_subgroups_and_refuses_disagreement():
    a = validate_predictions(_pred(subgroups={"sex": SUBGROUPS["sex"]}))
    b = validate_predictions(_pred(subgroups={"age": SUBGROUPS["age"], "sex": SUBGROUPS["sex"]}))
    pa, pb, _ = pair_predictions(a, b)
    assert sorted(pa.subgroups) == sorted(pb.subgroups) == ["age", "sex"]
    other = validate_predictions(_pred(subgroups={"sex": ["F", "M", None, "F", "F", "F"]}))
    with pytest.raises(DataFormatError, match="id 'img4' different values of subgroup field 'sex'"):
        pair_predictions(a, other)
    older = list(SUBGROUPS["age"])
    older[3] += 1.5
    c = validate_predictions(_pred(subgroups={"age": older, "sex": SUBGROUPS["sex"]}))
    message = "id 'img3' different values of subgroup field 'age' (58 vs 59.5)"  # no numpy repr
    with pytest.raises(DataFormatError, match=re.escape(message)):
        pair_predictions(b, c)


@pytest.mark.parametrize("module", [messages, pairing])
def test_docstring_examples(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
