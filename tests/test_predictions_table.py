"""Predictions as a long table (Parquet, CSV, pandas): round trips, tables made by other tools,
every refusal, and ``compare`` / ``probe`` with tables."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from sklearn.metrics import roc_auc_score

from cxrprobe.cli import main
from cxrprobe.errors import DataFormatError
from cxrprobe.stats.predictions import Predictions, read_predictions, write_predictions

SUBGROUPS = {"sex": ["F", "M", None, "F", "M", "F"], "age": [34, 71.5, None, 58, 80, 12]}


def _pred(n: int = 6, seed: int = 0, **kw) -> Predictions:
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, 2)) < 0.5).astype(float)
    targets[1, 0] = np.nan
    fields = dict(
        labels=["effusion", "mass"],
        ids=[f"img{i}" for i in range(n)],
        targets=targets,
        scores=rng.random((n, 2)),
        score_kind="probability",
        patient_ids=[f"p{i // 2}" for i in range(n)],
        provenance={"init": "dinov2", "split": "test"},
        subgroups=SUBGROUPS,
    )
    fields.update(kw)
    return Predictions(**fields)


def _same(back: Predictions, pred: Predictions) -> None:
    assert back.labels == pred.labels and back.ids == pred.ids
    assert back.patient_ids == pred.patient_ids and back.score_kind == pred.score_kind
    np.testing.assert_array_equal(back.targets, pred.targets)  # NaN where not annotated
    np.testing.assert_array_equal(back.scores, pred.scores)  # bit for bit, CSV included
    assert back.subgroups["sex"].tolist() == SUBGROUPS["sex"]
    np.testing.assert_array_equal(back.subgroups["age"], [34, 71.5, np.nan, 58, 80, 12])


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_round_trip_is_exact(tmp_path, suffix):
    pred = _pred(scores=np.array([[0.1, 1 / 3], [2e-5, 1e-300], [0.5, 0.9999999999999999]] * 2))
    back = read_predictions(write_predictions(pred, tmp_path / f"p{suffix}"))
    _same(back, pred)
    assert back.provenance == pred.provenance  # Parquet metadata; CSV: the file beside it
    if suffix == ".csv":
        assert json.loads((tmp_path / "p.csv.provenance.json").read_text()) == pred.provenance
    logits = _pred(score_kind="logit", scores=np.full((6, 2), 0.5), patient_ids=None)
    back = read_predictions(write_predictions(logits, tmp_path / f"q{suffix}"))
    assert back.score_kind == "logit" and back.patient_ids is None  # kept, not inferred


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_pandas_reads_the_long_table(tmp_path, suffix):
    pred = _pred()
    path = write_predictions(pred, tmp_path / f"p{suffix}")
    frame = pd.read_parquet(path) if suffix == ".parquet" else pd.read_csv(path)
    assert list(frame.columns) == [
        "image_id", "patient_id", "finding", "target", "score", "score_kind", "sex", "age"
    ]  # fmt: skip
    assert len(frame) == 12 and frame["image_id"].astype(str).tolist()[:3] == ["img0"] * 2 + [
        "img1"
    ]
    row = frame[(frame["image_id"] == "img3") & (frame["finding"] == "mass")].iloc[0]
    assert row["score"] == pred.scores[3, 1] and row["target"] == pred.targets[3, 1]
    assert frame["target"].isna().sum() == 1  # img1 / effusion is not annotated
    expected = pred.to_frame()
    np.testing.assert_array_equal(frame["score"], expected["score"])
    _same(Predictions.from_frame(frame, provenance={}), pred)


def test_from_frame_of_another_tool_infers_the_score_kind_and_reorders_nothing():
    frame = pd.DataFrame(
        {
            "image_id": ["b", "a", "b", "a"],
            "finding": ["x", "x", "y", "y"],
            "target": [1, 0, None, 1],
            "score": [2.5, -1.0, 0.3, 0.1],
            "view": ["PA", "AP", "PA", "AP"],
        }
    )
    pred = Predictions.from_frame(frame)
    assert pred.ids == ["b", "a"] and pred.labels == ["x", "y"]  # order of first appearance
    assert pred.score_kind == "logit" and pred.patient_ids is None
    np.testing.assert_array_equal(pred.scores, [[2.5, 0.3], [-1.0, 0.1]])
    assert np.isnan(pred.targets[0, 1]) and pred.subgroups["view"].tolist() == ["PA", "AP"]
    in_unit = frame.assign(score=[0.9, 0.1, 0.3, 0.1])
    assert Predictions.from_frame(in_unit).score_kind == "probability"
    assert Predictions.from_frame(in_unit, score_kind="logit").score_kind == "logit"


def _csv(tmp_path, text: str):
    path = tmp_path / "hand.csv"
    path.write_text(text)
    return path


GOOD = "image_id,finding,target,score\na,x,1,0.9\na,y,0,0.2\nb,x,0,0.4\nb,y,1,0.7\n"
BAD_TABLES = {
    "missing column": ("image_id,finding,score\na,x,0.9\n", "missing column(s) target"),
    "duplicate": (GOOD + "a,x,1,0.5\n", "data rows 1 and 5 both give image 'a', finding 'x'"),
    "missing pair": (GOOD.rsplit("b,y", 1)[0], "image 'b' has no row for finding 'y'"),
    "empty score": (GOOD.replace("0.4", ""), "'score' is empty in data row 3"),
    "text score": (GOOD.replace("0.4", "high"), "'score' is 'high' in data row 3, not a number"),
    "text target": (GOOD.replace("b,y,1", "b,y,yes"), "'target' is 'yes' in data row 4, not a"),
    "empty id": (GOOD.replace("b,x", ",x"), "'image_id' is empty in data row 3"),
    "bad target": (  # the data row (4), not the image's index (1)
        GOOD.replace("b,y,1", "b,y,2"),
        "'target' is 2 in data row 4 (image 'b', finding 'y'); a target must be 1, 0 or empty",
    ),
    "per-image column": (
        "image_id,finding,target,score,sex\na,x,1,0.9,F\na,y,0,0.2,M\n",
        "image 'a' has sex 'F' in data row 1 but 'M' in data row 2",
    ),
    "per-image number": (
        "image_id,finding,target,score,age\na,x,1,0.9,40\na,y,0,0.2,41.5\n",
        "image 'a' has age 40 in data row 1 but 41.5 in data row 2",
    ),
    "patient missing": (
        "image_id,patient_id,finding,target,score\na,p1,x,1,0.9\nb,,x,0,0.2\n",
        "image 'b' has no patient_id",
    ),
    "two score kinds": (
        "image_id,finding,target,score,score_kind\na,x,1,0.9,logit\nb,x,0,0.2,probability\n",
        "'score_kind' must hold one value",
    ),
    "probability out of range": (
        "image_id,finding,target,score,score_kind\na,x,1,0.5,probability\nb,x,0,1.5,probability\n",
        "'score' is 1.5 in data row 2 (image 'b', finding 'x'); every score must be a probability",
    ),
    "infinite logit": (
        "image_id,finding,target,score,score_kind\na,x,1,0.5,logit\nb,x,0,-inf,logit\n",
        "'score' is -inf in data row 2 (image 'b', finding 'x'); every score must be finite",
    ),
}


@pytest.mark.parametrize("case", BAD_TABLES)
def test_bad_tables_are_refused_naming_file_row_and_column(tmp_path, case):
    text, message = BAD_TABLES[case]
    path = _csv(tmp_path, text)
    with pytest.raises(DataFormatError) as info:
        read_predictions(path)
    assert str(path) in str(info.value) and message in str(info.value)
    assert "\n" not in str(info.value) and "np." not in str(info.value)


def test_a_bad_cell_is_found_in_any_row_of_a_long_table(tmp_path):
    """The first non-number is named wherever it lies (here found by a direct scan)."""
    rng = np.random.default_rng(0)
    scores = rng.random(5000).round(3).astype(str)
    scores[[3217, 4000]] = ["0.5.1", "n/a?"]
    lines = [f"i{k // 2},{'xy'[k % 2]},{k % 3 % 2},{s}" for k, s in enumerate(scores)]
    path = _csv(tmp_path, "image_id,finding,target,score\n" + "\n".join(lines) + "\n")
    first = next(k for k, s in enumerate(scores) if not s.replace(".", "", 1).isdigit())
    with pytest.raises(DataFormatError) as info:
        read_predictions(path)
    assert f"'score' is '0.5.1' in data row {first + 1}, not a number" in str(info.value)


def test_a_csv_made_by_hand_compares_with_our_json(tmp_path):
    """Another codebase's model: a CSV of image_id, finding, target, score in any row order,
    compared with --align against predictions cxrprobe wrote."""
    rng = np.random.default_rng(3)
    n = 120
    targets = (rng.random((n, 2)) < 0.4).astype(float)
    ours = _pred(n=n, targets=targets, scores=rng.random((n, 2)), subgroups={}, patient_ids=None)
    theirs = 1 / (1 + np.exp(-(2 * targets + rng.normal(size=(n, 2)))))
    rows = [
        (f"img{i}", label, int(targets[i, k]), float(theirs[i, k]))
        for i in range(n)
        for k, label in enumerate(ours.labels)
    ]
    order = rng.permutation(len(rows))
    text = "image_id,finding,target,score\n" + "".join(
        f"{rows[j][0]},{rows[j][1]},{rows[j][2]},{rows[j][3]!r}\n" for j in order
    )
    hand = _csv(tmp_path, text)
    mine = write_predictions(ours, tmp_path / "ours.json")
    out = tmp_path / "cmp.json"
    result = CliRunner().invoke(
        main,
        [
            "compare",
            str(mine),
            str(hand),
            "--align",
            "-B",
            "50",
            "--device",
            "cpu",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["alignment"]["rows_used"] == n and report["models"]["b"]["score_kind"] == (
        "probability"
    )
    for k, row in enumerate(report["labels"]):
        assert row["auroc_b"] == pytest.approx(roc_auc_score(targets[:, k], theirs[:, k]))
        assert row["auroc_a"] == pytest.approx(roc_auc_score(targets[:, k], ours.scores[:, k]))


def test_json_has_one_table_row_per_line(tmp_path):
    path = write_predictions(_pred(), tmp_path / "p.json")
    lines = path.read_text().splitlines()
    assert sum(line.startswith("  [") for line in lines) == 12  # 6 target rows + 6 score rows
    assert json.loads(path.read_text())["ids"][5] == "img5"


def test_probe_writes_a_parquet_table(tmp_path):
    from test_probe_cli import build_store

    store = tmp_path / "emb.zarr"
    build_store(store)
    out = tmp_path / "probe.parquet"
    result = CliRunner().invoke(
        main,
        ["probe", "--store", str(store), "--out", str(out), "--grid", "0.1,1", "--device", "cpu"],
    )
    assert result.exit_code == 0, result.output
    pred = read_predictions(out)
    assert pred.labels == ["effusion", "edema"] and pred.score_kind == "probability"
    assert pred.provenance and (tmp_path / "probe.summary.json").is_file()
    assert len(pd.read_parquet(out)) == 2 * pred.n_rows
