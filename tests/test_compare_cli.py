"""``cxrprobe compare`` / ``evaluate`` end to end, p-value behaviour, and every refusal path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from sklearn.metrics import roc_auc_score, roc_curve

from cxrprobe.cli import main
from cxrprobe.provenance import sha256_file
from cxrprobe.stats.bootstrap import make_resampler
from cxrprobe.stats.predictions import Predictions, write_predictions
from cxrprobe.stats.report import BootstrapOptions, compare_predictions

LABELS = ["atelectasis", "effusion", "mass"]


def _pair(n: int = 120, seed: int = 0, gap: float = 0.0):
    """Targets and two models; ``gap`` makes B better than A."""
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, 3)) < [0.3, 0.5, 0.2]).astype(float)
    targets[rng.random((n, 3)) < 0.1] = np.nan
    signal = np.nan_to_num(targets)
    a = 1 / (1 + np.exp(-(signal + rng.normal(size=(n, 3)))))
    b = 1 / (1 + np.exp(-((1 + gap) * signal + rng.normal(size=(n, 3)))))
    return targets, a, b


def _write(path, targets, scores, ids=None, labels=LABELS, patients=True, **prov):
    n = len(targets)
    pred = Predictions(
        labels=list(labels),
        ids=ids or [f"img{i}" for i in range(n)],
        targets=targets,
        scores=scores,
        score_kind="probability",
        patient_ids=[f"p{i // 2}" for i in range(n)] if patients else None,
        provenance={"init": "test", **prov},
    )
    return write_predictions(pred, path)


@pytest.fixture
def files(tmp_path):
    targets, a, b = _pair(gap=3.0)
    return (
        _write(tmp_path / "a.json", targets, a, init="imagenet"),
        _write(tmp_path / "b.npz", targets, b, init="dinov2"),
        targets,
        a,
        b,
    )


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_compare_end_to_end_outputs(files, tmp_path):
    path_a, path_b, targets, a, b = files
    out, md, png = tmp_path / "out" / "r.json", tmp_path / "out" / "t.md", tmp_path / "f.png"
    result = _run(
        "compare",
        path_a,
        path_b,
        "-B",
        200,
        "--seed",
        3,
        "--out",
        out,
        "--markdown",
        md,
        "--plot",
        png,
        "--device",
        "cpu",
    )
    assert result.exit_code == 0, result.output
    for label in (*LABELS, "mean (3 labels)", "p DeLong", "B is better"):
        assert label in result.stdout
    report = json.loads(out.read_text())
    assert report["bootstrap"]["seed"] == 3 and report["bootstrap"]["resamples"] == 200
    assert report["bootstrap"]["scheme"] == "rows" and report["bootstrap"]["device"] == "cpu"
    assert report["models"]["a"]["sha256"] == sha256_file(path_a)
    assert report["models"]["b"]["provenance"]["init"] == "dinov2"
    assert "torch" in report["versions"] and "p_bootstrap" in report["p_values"]
    for col, row in enumerate(report["labels"]):
        keep = ~np.isnan(targets[:, col])
        assert row["auroc_a"] == pytest.approx(roc_auc_score(targets[keep, col], a[keep, col]))
        assert row["auroc_b"] == pytest.approx(roc_auc_score(targets[keep, col], b[keep, col]))
        assert row["auroc_a_ci"][0] <= row["auroc_a"] <= row["auroc_a_ci"][1]
        assert row["p_fdr"] >= row["p_bootstrap"]
    assert report["mean"]["auroc_a"] == pytest.approx(
        np.mean([r["auroc_a"] for r in report["labels"]])
    )
    assert set(report["thresholds"]["a"]["labels"][0]) >= {"threshold", "sensitivity_ci", "f1"}
    assert md.read_text().startswith("| label |") and png.read_bytes()[:4] == b"\x89PNG"
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["command"] == "cxrprobe compare" and run["config"]["resamples"] == 200
    assert (tmp_path / "run.json").is_file()  # beside the plot too


def test_same_seed_same_report_and_cluster_scheme(files, tmp_path):
    path_a, path_b, *_ = files
    reports = []
    for name, extra in (("r1", []), ("r2", []), ("r3", ["--cluster", "patient"])):
        result = _run(
            "compare",
            path_a,
            path_b,
            "-B",
            60,
            "--out",
            tmp_path / f"{name}.json",
            "--device",
            "cpu",
            *extra,
        )
        assert result.exit_code == 0, result.output
        reports.append(json.loads((tmp_path / f"{name}.json").read_text()))
    assert reports[0]["labels"] == reports[1]["labels"]
    assert reports[2]["bootstrap"]["scheme"] == "patients"
    assert reports[2]["bootstrap"]["units"] == 60
    assert reports[2]["labels"][0]["auroc_a_ci"] != reports[0]["labels"][0]["auroc_a_ci"]


def _predictions(targets, scores):
    n = len(targets)
    return Predictions(LABELS, [f"i{k}" for k in range(n)], targets, scores, "probability")


def test_identical_models_are_not_significant():
    targets, a, _ = _pair(seed=1)
    options = BootstrapOptions(resamples=200, device="cpu")
    report = compare_predictions(_predictions(targets, a), _predictions(targets, a.copy()), options)
    for row in [*report["labels"], report["mean"]]:
        assert row["delta"] == 0 and row["p_bootstrap"] == 1.0
        assert row["delta_ci"] == [0.0, 0.0]
    assert all(row["p_fdr"] == 1.0 and row["p_delong"] == 1.0 for row in report["labels"])
    assert report["verdict"].startswith("No significant difference")


def test_clearly_better_model_has_small_p():
    targets, a, b = _pair(n=200, seed=2, gap=3.0)
    report = compare_predictions(
        _predictions(targets, a),
        _predictions(targets, b),
        BootstrapOptions(resamples=200, device="cpu"),
    )
    assert report["mean"]["p_bootstrap"] < 0.01 and report["mean"]["delta"] > 0
    assert all(row["p_fdr"] < 0.01 and row["p_delong"] < 0.01 for row in report["labels"])
    assert report["verdict"].startswith("B is better")


def test_threshold_metrics_use_one_threshold_and_the_same_resamples():
    targets, a, b = _pair(seed=5, gap=0.5)
    options = BootstrapOptions(resamples=40, seed=1, device="cpu")
    report = compare_predictions(_predictions(targets, a), _predictions(targets, b), options)
    resampler = make_resampler(len(targets), 40, seed=1)
    for col, entry in enumerate(report["thresholds"]["a"]["labels"]):
        keep = ~np.isnan(targets[:, col])
        fpr, tpr, cuts = roc_curve(targets[keep, col], a[keep, col], drop_intermediate=False)
        assert entry["threshold"] == cuts[np.argmax(tpr - fpr)]  # chosen once, on the full set
        sensitivities = []
        for r in range(40):  # the reference keeps that threshold in every resample
            rows = resampler.indices(r)
            y, s = targets[rows, col], a[rows, col]
            sensitivities.append(np.mean(s[y == 1] >= entry["threshold"]))
        assert entry["sensitivity_ci"] == pytest.approx(
            list(np.percentile(sensitivities, [2.5, 97.5]))
        )


def test_bca_intervals_contain_the_estimate_and_differ_from_percentile():
    targets, a, b = _pair(seed=4, gap=0.5)
    pa, pb = _predictions(targets, a), _predictions(targets, b)
    reports = [
        compare_predictions(pa, pb, BootstrapOptions(resamples=300, device="cpu", ci=ci))
        for ci in ("bca", "percentile")
    ]
    assert reports[0]["bootstrap"]["ci"] == "bca"
    rows = [[*r["labels"], r["mean"]] for r in reports]
    for row, plain in zip(*rows, strict=True):
        for key in ("auroc_a", "auroc_b", "delta"):
            assert row[f"{key}_ci"][0] < row[key] < row[f"{key}_ci"][1]
        assert row["auroc_a_ci"] != plain["auroc_a_ci"]


def test_align_reports_dropped_rows(tmp_path):
    targets, a, b = _pair()
    path_a = _write(tmp_path / "a.json", targets, a)
    order = np.r_[np.arange(100)[::-1]]  # B: 100 rows, reversed
    path_b = _write(
        tmp_path / "b.json",
        targets[order],
        b[order],
        ids=[f"img{i}" for i in order],
        patients=False,
    )
    result = _run(
        "compare",
        path_a,
        path_b,
        "-B",
        30,
        "--align",
        "--device",
        "cpu",
        "--out",
        tmp_path / "r.json",
    )
    assert result.exit_code == 0, result.output
    assert "aligned by id: 100 rows used, 20 dropped from A, 0 from B" in result.stdout
    assert json.loads((tmp_path / "r.json").read_text())["alignment"]["dropped_a"] == 20


def test_validation_files_choose_the_thresholds(files, tmp_path):
    path_a, path_b, *_ = files
    targets, va, vb = _pair(n=80, seed=9)
    val_a = _write(tmp_path / "va.json", targets, va)
    val_b = _write(tmp_path / "vb.json", targets, vb)
    result = _run(
        "compare",
        path_a,
        path_b,
        "-B",
        30,
        "--device",
        "cpu",
        "--validation-a",
        val_a,
        "--validation-b",
        val_b,
        "--out",
        tmp_path / "r.json",
    )
    assert result.exit_code == 0, result.output
    block = json.loads((tmp_path / "r.json").read_text())["thresholds"]["a"]
    assert block["chosen_on"] == f"validation file {val_a}"


def test_evaluate_single_model_table(files, tmp_path):
    path_a, _, targets, a, _ = files
    result = _run(
        "evaluate",
        path_a,
        "-B",
        50,
        "--device",
        "cpu",
        "--out",
        tmp_path / "e.json",
        "--markdown",
        tmp_path / "e.md",
    )
    assert result.exit_code == 0, result.output
    assert "sensitivity" in result.stdout and "mean (3 labels)" in result.stdout
    report = json.loads((tmp_path / "e.json").read_text())
    keep = ~np.isnan(targets[:, 1])
    assert report["labels"][1]["auroc"] == pytest.approx(
        roc_auc_score(targets[keep, 1], a[keep, 1])
    )
    assert report["thresholds"]["chosen_on"] == "evaluated set"
    assert (tmp_path / "e.md").read_text().count("\n") > 4


def _refusal(result, *fragments):
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit)  # a message, not a crash
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(lines) == 1, result.output
    for fragment in fragments:
        assert fragment in lines[0], result.output


def test_refuses_mismatched_ids(files, tmp_path):
    path_a, _, targets, _, b = files
    fewer = _write(tmp_path / "few.json", targets[:100], b[:100])
    _refusal(_run("compare", path_a, fewer), "has 120 rows", "has 100", "--align")
    shuffled = np.r_[1, 0, np.arange(2, 120)]
    swapped = _write(
        tmp_path / "swap.json", targets[shuffled], b[shuffled], ids=[f"img{i}" for i in shuffled]
    )
    _refusal(_run("compare", path_a, swapped), "ids first differ at row 0: 'img0' vs 'img1'")


def test_refuses_mismatched_labels(files, tmp_path):
    path_a, _, targets, _, b = files
    other = _write(tmp_path / "o.json", targets, b, labels=["atelectasis", "effusion", "nodule"])
    _refusal(_run("compare", path_a, other), "only in", "mass", "nodule")


def test_refuses_bad_format_and_missing_file(files, tmp_path):
    path_a, *_ = files
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "something-else"}))
    _refusal(_run("compare", path_a, bad), str(bad), "format is 'something-else'")
    (tmp_path / "broken.json").write_text("{")
    _refusal(_run("evaluate", tmp_path / "broken.json"), "not a JSON predictions file")
    _refusal(_run("compare", path_a, tmp_path / "absent.json"), "absent.json", "not found")


def test_refuses_cluster_without_patient_ids(files, tmp_path):
    _, _, targets, a, b = files
    no_a = _write(tmp_path / "na.json", targets, a, patients=False)
    no_b = _write(tmp_path / "nb.json", targets, b, patients=False)
    _refusal(
        _run("compare", no_a, no_b, "--cluster", "patient"), "--cluster patient needs patient ids"
    )
    _refusal(_run("evaluate", no_a, "--cluster", "patient"), "needs patient ids")


def test_refuses_disagreeing_targets(files, tmp_path):
    path_a, _, targets, _, b = files
    changed = targets.copy()
    changed[5, 0] = 1 - np.nan_to_num(changed[5, 0])
    _refusal(
        _run("compare", path_a, _write(tmp_path / "t.json", changed, b)),
        "disagree on the target of id 'img5'",
    )


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--validation-a", "VA"], "give both --validation-a and --validation-b"),
        (["--ci", "bca", "--cluster", "patient"], "--ci bca"),
        (["--resamples", "0"], "--resamples"),
        (["--seed", "-1"], "--seed"),
        (["--alpha", "1.5"], "--alpha"),
        (["--device", "tpu"], "--device"),
    ],
)
def test_refuses_bad_option_combinations(files, tmp_path, args, fragment):
    path_a, path_b, *_ = files
    args = [str(path_a) if a == "VA" else a for a in args]
    _refusal(_run("compare", path_a, path_b, *args), fragment)


def test_refuses_validation_without_the_labels(files, tmp_path):
    path_a, path_b, targets, a, b = files
    val = _write(tmp_path / "v.json", targets[:, :2], a[:, :2], labels=LABELS[:2])
    _refusal(
        _run("compare", path_a, path_b, "--validation-a", val, "--validation-b", val),
        "validation predictions lack label(s) mass",
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_refuses_cuda_without_cuda(files):
    path_a, path_b, *_ = files
    _refusal(_run("compare", path_a, path_b, "--device", "cuda"), "CUDA is not available")


@pytest.mark.parametrize("command", ["compare", "evaluate"])
def test_help_has_an_example(command):
    result = _run(command, "--help")
    assert result.exit_code == 0 and "Example:" in result.output


def test_verdict_flags_a_one_sided_win_whose_interval_includes_zero():
    from cxrprobe.stats.report import verdict

    report = {
        "mean": {"delta": 0.047, "delta_ci": [-0.004, 0.095], "p_bootstrap": 0.038},
        "bootstrap": {"alpha": 0.05, "resamples": 1000},
        "labels": [{"p_fdr": 0.2}],
    }
    text = verdict(report)
    assert text.startswith("B is better") and "two-sided CI of the difference includes 0" in text
    report["mean"]["delta_ci"] = [0.001, 0.095]
    assert "includes 0" not in verdict(report)
