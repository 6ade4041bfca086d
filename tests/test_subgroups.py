"""Subgroup analysis (``--by``): per-subgroup statistics against sklearn on the subgroup's rows and
on the same resamples restricted to them, gaps, bins and every refusal."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.metrics import roc_auc_score

from cxrprobe.cli import main
from cxrprobe.errors import ConfigError, DataFormatError
from cxrprobe.stats.bootstrap import make_resampler
from cxrprobe.stats.groups import parse_by, subgroup_masks
from cxrprobe.stats.predictions import Predictions, validate_predictions, write_predictions
from cxrprobe.stats.report import BootstrapOptions, compare_predictions, evaluate_predictions

LABELS = ["effusion", "mass"]
N = 160


def _data(seed: int = 0):
    rng = np.random.default_rng(seed)
    targets = (rng.random((N, 2)) < [0.4, 0.3]).astype(float)
    targets[rng.random((N, 2)) < 0.1] = np.nan
    signal = np.nan_to_num(targets)
    a = 1 / (1 + np.exp(-(signal + rng.normal(size=(N, 2)))))
    b = 1 / (1 + np.exp(-(2 * signal + rng.normal(size=(N, 2)))))
    sex = rng.choice(np.array(["F", "M"], dtype=object), N)
    sex[:6] = None
    age = rng.uniform(20, 95, N).round()
    age[6:9] = np.nan
    age[9] = 10.0  # below the first edge
    return targets, a, b, {"sex": list(sex), "age": [None if np.isnan(v) else v for v in age]}


def _pred(targets, scores, subgroups, name="") -> Predictions:
    pred = Predictions(
        LABELS,
        [f"i{k}" for k in range(N)],
        targets,
        scores,
        "probability",
        [f"p{k // 2}" for k in range(N)],
        subgroups=subgroups,
    )
    return replace(validate_predictions(pred), source=name)


def _auc(y, s):
    keep = ~np.isnan(y)
    y, s = y[keep], s[keep]
    return roc_auc_score(y, s) if 0 < y.sum() < y.size else np.nan


def _section(report, field):
    return next(s for s in report["subgroups"] if s["field"] == field)


def test_subgroup_statistics_equal_sklearn_and_the_same_resamples_restricted():
    targets, a, b, groups = _data()
    options = BootstrapOptions(resamples=40, seed=2, device="cpu")
    report = compare_predictions(
        _pred(targets, a, groups), _pred(targets, b, groups), options, by=["sex"]
    )
    section = _section(report, "sex")
    assert [g["name"] for g in section["groups"]] == ["F", "M", "(missing)"]
    assert sum(g["rows"] for g in section["groups"]) == N  # no row silently dropped
    resampler = make_resampler(N, 40, seed=2)
    sex = np.array(groups["sex"], dtype=object)
    for group in section["groups"][:2]:
        rows = np.flatnonzero(sex == group["name"])
        for col, row in enumerate(group["labels"]):
            assert row["auroc_a"] == pytest.approx(
                _auc(targets[rows, col], a[rows, col]), abs=1e-12
            )
            assert row["auroc_b"] == pytest.approx(
                _auc(targets[rows, col], b[rows, col]), abs=1e-12
            )
            # reference: every resample's rows that fall in the subgroup
            deltas = []
            for r in range(40):
                drawn = resampler.indices(r)
                drawn = drawn[sex[drawn] == group["name"]]
                deltas.append(
                    _auc(targets[drawn, col], b[drawn, col])
                    - _auc(targets[drawn, col], a[drawn, col])
                )
            expected = np.nanpercentile(deltas, [2.5, 97.5])
            np.testing.assert_allclose(row["delta_ci"], expected, atol=1e-12)
    # the subgroup's threshold metrics use the overall threshold, counted on its rows only
    overall = report["thresholds"]["a"]["labels"][0]["threshold"]
    f_rows = np.flatnonzero(sex == "F")
    y, s = targets[f_rows, 0], a[f_rows, 0]
    sensitivity = np.mean(s[y == 1] >= overall)
    assert section["groups"][0]["thresholds"]["a"]["labels"][0]["sensitivity"] == pytest.approx(
        sensitivity
    )


def test_gap_to_the_reference_is_the_paired_difference():
    targets, a, _, groups = _data(1)
    options = BootstrapOptions(resamples=30, seed=5, device="cpu")
    report = evaluate_predictions(_pred(targets, a, groups), options, by=["sex"])
    section = _section(report, "sex")
    sizes = {g["name"]: g["rows"] for g in section["groups"]}
    assert section["reference"] == max(["F", "M"], key=sizes.get)
    other = "M" if section["reference"] == "F" else "F"
    gap = next(g for g in section["gaps"] if g["group"] == other)
    sex = np.array(groups["sex"], dtype=object)
    resampler = make_resampler(N, 30, seed=5)
    for col in range(2):
        est = {name: _auc(targets[sex == name, col], a[sex == name, col]) for name in ("F", "M")}
        assert gap["labels"][col]["auroc_gap"] == pytest.approx(
            est[other] - est[section["reference"]]
        )
        diffs = []
        for r in range(30):
            drawn = resampler.indices(r)
            value = {
                n: _auc(targets[drawn[sex[drawn] == n], col], a[drawn[sex[drawn] == n], col])
                for n in ("F", "M")
            }
            diffs.append(value[other] - value[section["reference"]])
        np.testing.assert_allclose(
            gap["labels"][col]["auroc_gap_ci"], np.nanpercentile(diffs, [2.5, 97.5]), atol=1e-12
        )
    means = {g["name"]: g["mean"]["auroc"] for g in section["groups"] if "mean" in g}
    assert gap["mean"]["auroc_gap"] == pytest.approx(means[other] - means[section["reference"]])


def test_numeric_bins_list_empty_below_and_missing_groups():
    _, _, _, groups = _data()
    fields = _pred(*_data()[:2], groups).subgroups
    masks = subgroup_masks(fields, parse_by("age:0,40,60,80,200"), "p.json")
    names = [name for name, _ in masks]
    assert names == ["[0, 40)", "[40, 60)", "[60, 80)", "[80, 200)", ">= 200", "(missing)"]
    counts = {name: int(mask.sum()) for name, mask in masks}
    age = np.array([np.nan if v is None else v for v in groups["age"]])
    assert counts[">= 200"] == 0 and counts["(missing)"] == 3
    assert counts["[40, 60)"] == int(((age >= 40) & (age < 60)).sum())
    below = subgroup_masks(fields, parse_by("age:20,60"), "p.json")
    assert below[0][0] == "< 20" and below[0][1].sum() == 1
    assert sum(int(m.sum()) for _, m in below) == N


def test_too_small_and_empty_subgroups_are_listed_as_such():
    targets, a, _, groups = _data()
    report = evaluate_predictions(
        _pred(targets, a, groups),
        BootstrapOptions(resamples=20, device="cpu"),
        by=["age:0,15,200,300"],
    )
    entries = {g["name"]: g for g in _section(report, "age")["groups"]}
    assert entries["[0, 15)"]["rows"] == 1 and "AUROC undefined" in entries["[0, 15)"]["reason"]
    assert entries[">= 300"] == {"name": ">= 300", "rows": 0, "reason": "no rows"}
    assert entries["[15, 200)"]["mean"]["n_labels"] == 2


@pytest.mark.parametrize(
    "text, error, fragment",
    [
        ("nope", DataFormatError, "no subgroup field 'nope' for --by (fields present: age, sex)"),
        ("age", ConfigError, "field 'age' is numeric; give bin edges"),
        ("sex:1,2", ConfigError, "field 'sex' is categorical"),
        ("age:40,20", ConfigError, "strictly increasing"),
        ("age:a,b", ConfigError, "bin edges must be numbers"),
    ],
)
def test_bad_by_is_refused_naming_the_file_and_fields(text, error, fragment):
    targets, a, _, groups = _data()
    with pytest.raises(error) as info:
        evaluate_predictions(
            _pred(targets, a, groups, "model.json"),
            BootstrapOptions(resamples=5, device="cpu"),
            by=[text],
        )
    assert fragment in str(info.value)
    if error is DataFormatError:
        assert str(info.value).startswith("model.json:")


def test_cli_by_writes_subgroup_tables_and_plot_and_refuses_without_fields(tmp_path):
    targets, a, b, groups = _data()
    path_a = write_predictions(_pred(targets, a, groups), tmp_path / "a.json")
    path_b = write_predictions(_pred(targets, b, {}), tmp_path / "b.npz")
    plot, md = tmp_path / "s.png", tmp_path / "c.md"
    result = CliRunner().invoke(
        main,
        [
            "compare",
            str(path_a),
            str(path_b),
            "-B",
            "40",
            "--device",
            "cpu",
            "--by",
            "sex",
            "--by",
            "age:0,50",
            "--subgroup-plot",
            str(plot),
            "--markdown",
            str(md),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "Subgroups by sex:" in result.stdout and "delta gap vs" in result.stdout
    assert plot.read_bytes()[:4] == b"\x89PNG" and (tmp_path / "s.png.run.json").is_file()
    assert "### sex = F" in md.read_text() and "## Subgroups by age:0,50" in md.read_text()
    missing = CliRunner().invoke(main, ["evaluate", str(path_b), "--by", "sex"])
    assert missing.exit_code == 1
    assert f"{path_b}: no subgroup field 'sex' for --by (fields present: none)" in missing.output
    no_by = CliRunner().invoke(main, ["evaluate", str(path_a), "--subgroup-plot", str(plot)])
    assert no_by.exit_code == 2 and "--subgroup-plot needs at least one --by" in no_by.output


def test_subgroup_report_is_strict_json(tmp_path):
    targets, a, _, groups = _data()
    path = write_predictions(_pred(targets, a, groups), tmp_path / "a.json")
    result = CliRunner().invoke(
        main,
        [
            "evaluate",
            str(path),
            "-B",
            "20",
            "--device",
            "cpu",
            "--by",
            "age:0,15,200,300",
            "--out",
            str(tmp_path / "e.json"),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "e.json").read_text())  # NaN written as null
    assert _section(report, "age")["groups"][0]["mean"]["auroc"] is None
