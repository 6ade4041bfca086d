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
from cxrprobe.stats.multiple import benjamini_hochberg
from cxrprobe.stats.predictions import Predictions, write_predictions
from cxrprobe.stats.report import BootstrapOptions, compare_predictions, evaluate_predictions

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
    for label in (*LABELS, "mean (3 labels)", "p DeLong", "B (b.npz) is better than A (a.json)"):
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
    for output in (out, md, png):  # each output has its own record, named after it
        run = json.loads(output.with_name(output.name + ".run.json").read_text())
        assert run["command"] == "cxrprobe compare" and run["config"]["resamples"] == 200
        assert run["config"]["out"] == str(out) and run["config"]["plot"] == str(png)
    assert not (tmp_path / "run.json").exists() and not (tmp_path / "out" / "run.json").exists()


def test_evaluate_and_compare_records_never_overwrite_each_other(files, tmp_path):
    path_a, path_b, *_ = files
    common = ["-B", 40, "--device", "cpu"]
    assert _run("compare", path_a, path_b, *common, "--out", tmp_path / "c.json").exit_code == 0
    assert _run("evaluate", path_a, *common, "--out", tmp_path / "e.json").exit_code == 0
    records = {p.name: json.loads(p.read_text()) for p in tmp_path.glob("*.run.json")}
    assert records["c.json.run.json"]["command"] == "cxrprobe compare"
    assert records["e.json.run.json"]["command"] == "cxrprobe evaluate"


def test_files_of_the_same_name_are_named_by_their_folders_or_by_the_names_given(tmp_path):
    """Every probe writes predictions.json: the folders telling them apart name the models in
    the verdict, the JSON and the markdown, unless --name-a / --name-b (--name) are given."""
    targets, a, b = _pair(gap=3.0)
    paths = []
    for init, scores in (("imagenet", a), ("dinov2", b)):
        (tmp_path / "run" / init / "probe").mkdir(parents=True)
        paths.append(
            _write(tmp_path / "run" / init / "probe" / "predictions.json", targets, scores)
        )
    common = [*paths, "-B", 100, "--device", "cpu"]

    def compare(name, *extra):
        out, md = tmp_path / f"{name}.json", tmp_path / f"{name}.md"
        result = _run("compare", *common, *extra, "--out", out, "--markdown", md)
        assert result.exit_code == 0, result.output
        return result.stdout, json.loads(out.read_text()), md.read_text()

    stdout, report, md = compare("folders")
    assert report["names"] == {"a": "imagenet/probe", "b": "dinov2/probe"}
    assert "B (dinov2/probe) is better than A (imagenet/probe)" in stdout
    assert f"A (imagenet/probe) = {paths[0]}" in md and report["verdict"] in md
    stdout, named, md = compare("named", "--name-a", "ImageNet init", "--name-b", "DINOv2 init")
    assert named["names"] == {"a": "ImageNet init", "b": "DINOv2 init"}
    assert named["verdict"].startswith("B (DINOv2 init) is better than A (ImageNet init)")
    assert named["verdict"] in stdout
    assert f"B (DINOv2 init) = {paths[1]}" in md
    assert named["labels"] == report["labels"] and named["mean"] == report["mean"]
    assert named["run"]["config"]["name_a"] == "ImageNet init"
    md = tmp_path / "e.md"
    result = _run(
        "evaluate", paths[1], "-B", 40, "--device", "cpu", "--name", "DINOv2", "--markdown", md
    )
    assert result.exit_code == 0 and f"A (DINOv2) = {paths[1]}" in md.read_text()
    both_x = _run("compare", *common, "--name-a", "x", "--name-b", "x")
    _refusal(both_x, "--name-a and --name-b are both 'x'")
    _refusal(_run("evaluate", paths[0], "--name", " "), "--name is empty")


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


def _verdict_report(**mean):
    row = {"label": "x", "reason": None, "rare": False, "constant_scores": []}
    return {
        "kind": "compare",
        "names": {"a": "imagenet.json", "b": "dinov2.json"},
        "mean": {"delta": 0.047, "delta_ci": [-0.004, 0.095], **mean},
        "bootstrap": {"alpha": 0.05, "resamples": 1000},
        "labels": [
            {**row, "in_fdr_family": True, "p_fdr": 0.2, "p_delong_fdr": 0.3},
            {**row, "label": "mass", "rare": True, "in_fdr_family": False},
        ],
    }


def test_verdict_decides_on_the_two_sided_p_and_names_both_models():
    from cxrprobe.stats.verdict import verdict

    # the demo's case: the study's one-sided p is 0.038, the two-sided one 0.077, CI includes 0
    text = verdict(_verdict_report(p_bootstrap=0.077, p_study_one_sided=0.038))
    assert text.startswith(
        "No significant difference between A (imagenet.json) and B (dinov2.json)"
    )
    assert "two-sided bootstrap p = 0.077" in text and "study p, one-sided = 0.038" in text
    assert "0 of 1 labels differ after FDR" in text and "rare: mass" in text
    text = verdict(_verdict_report(p_bootstrap=0.01, p_study_one_sided=0.005))
    assert text.startswith("B (dinov2.json) is better than A (imagenet.json)")


@pytest.mark.parametrize("resamples, decided", [(10, False), (38, False), (39, True)])
def test_too_few_resamples_give_no_verdict_and_a_warning(files, resamples, decided):
    path_a, path_b, *_ = files
    result = _run("compare", path_a, path_b, "-B", resamples, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert ("No verdict" in result.stdout) is not decided
    assert ("smallest two-sided bootstrap p-value" in result.stderr) is not decided
    if not decided:
        assert "B is better" not in result.stdout and "labels differ" not in result.stdout
        assert "-B 39 or more" in result.stdout
    else:  # B = 39: p can reach 2/40 = alpha, and this B is clearly better
        assert "B (b.npz) is better than A (a.json)" in result.stdout


def test_study_p_is_the_study_share_computed_by_hand():
    targets, a, b = _pair(n=60, seed=11, gap=0.3)
    options = BootstrapOptions(resamples=30, seed=4, device="cpu")
    report = compare_predictions(_predictions(targets, a), _predictions(targets, b), options)
    resampler = make_resampler(60, 30, seed=4)
    for col, row in enumerate(report["labels"]):
        keep = ~np.isnan(targets[:, col])
        better_is_b = row["delta"] > 0
        not_winning, defined = 0, 0
        for r in range(30):  # the study's loop: does the better model win this resample?
            rows = resampler.indices(r)
            rows = rows[~np.isnan(targets[rows, col])]
            y = targets[rows, col]
            if 0 < y.sum() < y.size:
                defined += 1
                auc_a, auc_b = roc_auc_score(y, a[rows, col]), roc_auc_score(y, b[rows, col])
                not_winning += not ((auc_b > auc_a) if better_is_b else (auc_a > auc_b))
        assert keep.any() and row["p_study_one_sided"] == pytest.approx(not_winning / defined)
        assert row["p_bootstrap"] >= 2 / (defined + 1)  # the two-sided p is never below this


def _rare_and_constant(seed: int = 7):
    targets, a, b = _pair(n=200, seed=seed, gap=2.0)
    targets[:, 2] = 0.0
    targets[:4, 2] = 1.0  # 'mass': 4 positives only
    b[:, 1] = 0.25  # 'effusion': B gives one score to every row (no positive training rows)
    return targets, a, b


def test_rare_labels_leave_the_fdr_family_unless_included():
    targets, a, b = _rare_and_constant()
    pa, pb = _predictions(targets, a), _predictions(targets, b)
    report = compare_predictions(pa, pb, BootstrapOptions(resamples=100, device="cpu"))
    rows = {r["label"]: r for r in report["labels"]}
    assert rows["mass"]["rare"] and rows["mass"]["n_positive"] == 4
    assert not rows["mass"]["in_fdr_family"] and np.isnan(rows["mass"]["p_fdr"])
    assert "rare" in report["verdict"] and any("rare label" in w for w in report["warnings"])
    # the FDR family is the remaining non-rare, non-constant label alone: p_fdr == p_bootstrap
    assert rows["atelectasis"]["p_fdr"] == rows["atelectasis"]["p_bootstrap"]
    included = compare_predictions(
        pa, pb, BootstrapOptions(resamples=100, device="cpu", include_rare=True)
    )
    rows = {r["label"]: r for r in included["labels"]}
    assert rows["mass"]["in_fdr_family"] and not np.isnan(rows["mass"]["p_fdr"])
    p = np.array([rows["atelectasis"]["p_bootstrap"], rows["mass"]["p_bootstrap"]])
    np.testing.assert_allclose(
        [rows["atelectasis"]["p_fdr"], rows["mass"]["p_fdr"]], benjamini_hochberg(p)
    )


@pytest.mark.parametrize("command", ["compare", "evaluate"])
def test_a_warning_is_printed_once_on_stderr_and_kept_in_the_markdown(command, tmp_path):
    targets, a, b = _rare_and_constant()
    files = [_write(tmp_path / "a.json", targets, a), _write(tmp_path / "b.json", targets, b)]
    md = tmp_path / "r.md"
    args = files if command == "compare" else files[:1]
    result = _run(command, *args, "-B", 50, "--device", "cpu", "--markdown", md)
    assert result.exit_code == 0, result.output
    rare = "1 rare label(s) with fewer than 10 positive or negative rows: mass"
    assert result.output.count(rare) == 1 and f"Warning: {rare}" in result.stderr
    assert md.read_text().count(rare) == 1


def test_constant_scores_are_flagged_and_left_out_of_the_mean():
    targets, a, b = _rare_and_constant()
    report = compare_predictions(
        _predictions(targets, a),
        _predictions(targets, b),
        BootstrapOptions(resamples=50, device="cpu"),
    )
    rows = {r["label"]: r for r in report["labels"]}
    assert rows["effusion"]["constant_scores"] == ["b"] and rows["effusion"]["auroc_b"] == 0.5
    assert not rows["effusion"]["in_mean"] and not rows["effusion"]["in_fdr_family"]
    kept = [rows["atelectasis"], rows["mass"]]
    assert report["mean"]["n_labels"] == 2
    assert report["mean"]["auroc_a"] == pytest.approx(np.mean([r["auroc_a"] for r in kept]))
    assert report["mean"]["auroc_b"] == pytest.approx(np.mean([r["auroc_b"] for r in kept]))
    assert "constant scores" in report["verdict"] and "effusion" in report["verdict"]
    evaluated = evaluate_predictions(
        _predictions(targets, b), BootstrapOptions(resamples=20, device="cpu")
    )
    assert evaluated["mean"]["n_labels"] == 2 and evaluated["labels"][1]["constant_scores"] == ["a"]


def test_cluster_refusal_names_the_files(files, tmp_path):
    _, _, targets, a, b = files
    no_a = _write(tmp_path / "na.json", targets, a, patients=False)
    no_b = _write(tmp_path / "nb.json", targets, b, patients=False)
    _refusal(
        _run("compare", no_a, no_b, "--cluster", "patient"), f"neither {no_a} nor {no_b} has any"
    )
    _refusal(_run("evaluate", no_a, "--cluster", "patient"), f"but {no_a} has none")


FOUR = ["cardiomegaly", "atelectasis", "pleural_effusion", "pneumothorax"]
KEPT = "pleural_effusion, atelectasis"  # a subset spec, out of order on purpose


def _four(n: int, seed: int):
    """Targets of the four findings and two models (B better)."""
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, 4)) < [0.3, 0.5, 0.3, 0.4]).astype(float)
    targets[rng.random((n, 4)) < 0.1] = np.nan
    signal = np.nan_to_num(targets)
    return targets, *(1 / (1 + np.exp(-(w * signal + rng.normal(size=(n, 4))))) for w in (1, 2))


@pytest.fixture
def subset_files(tmp_path):
    """Test and validation predictions of A and B on the four findings (A's test file also
    scores edema, which B's lacks) in full/, and the same cut by hand to atelectasis and
    pleural_effusion in cut/ (same file names, so the reports name the models alike)."""
    test, val = _four(120, 1), _four(80, 2)
    edema = np.random.default_rng(3).random((120, 1))
    files = {}
    for folder, cols in (("full", [0, 1, 2, 3]), ("cut", [1, 2])):
        labels = [FOUR[c] for c in cols]
        (t, a, b), (vt, va, vb) = ([x[:, cols] for x in split] for split in (test, val))
        if folder == "full":
            t_a, a, labels_a = np.c_[t, edema.round()], np.c_[a, edema], [*labels, "edema"]
        else:
            t_a, labels_a = t, labels
        d = tmp_path / folder
        files[folder] = [
            _write(d / "a.json", t_a, a, labels=labels_a),
            _write(d / "b.npz", t, b, labels=labels),
            _write(d / "va.json", vt, va, labels=labels),
            _write(d / "vb.json", vt, vb, labels=labels),
        ]
    return files


def _results(report):
    """What a report computed (its figures, not where its inputs lay)."""

    def place_free(block):
        return {k: v for k, v in block.items() if k != "chosen_on"}

    thresholds = report["thresholds"]
    return {
        "labels": report["labels"],
        "mean": report["mean"],
        "reliability": report["reliability"],
        "thresholds": {m: place_free(t) for m, t in thresholds.items()}
        if report["kind"] == "compare"
        else place_free(thresholds),
    }


def _report(tmp_path, name, *args):
    out = tmp_path / f"{name}.json"
    result = _run(*args, "-B", 60, "--seed", 4, "--device", "cpu", "--out", out)
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())


def test_compare_findings_equals_hand_cut_files(subset_files, tmp_path):
    full, cut = subset_files["full"], subset_files["cut"]
    args = ("--validation-a", "{va}", "--validation-b", "{vb}")

    def compare(files, *extra):
        va, vb = str(files[2]), str(files[3])
        filled = [x.format(va=va, vb=vb) for x in args]
        return _report(tmp_path, f"r{len(extra)}", "compare", *files[:2], *filled, *extra)

    # A's extra finding would make the full files unpaired; the subset is taken before pairing
    _refusal(_run("compare", *full[:2]), "labels differ", "only in", "edema")
    subset = compare(full, "--findings", KEPT)
    reference = compare(cut)
    assert [row["label"] for row in subset["labels"]] == ["atelectasis", "pleural_effusion"]
    assert _results(subset) == _results(reference)
    p = [row["p_bootstrap"] for row in subset["labels"]]  # FDR family: the kept labels only
    assert [row["p_fdr"] for row in subset["labels"]] == pytest.approx(benjamini_hochberg(p))
    config = subset["run"]["config"]
    assert config["findings"] == KEPT and config["labels"] == ["atelectasis", "pleural_effusion"]
    record = json.loads((tmp_path / "r2.json.run.json").read_text())["config"]
    assert record["findings"] == KEPT and record["labels"] == config["labels"]
    assert reference["run"]["config"]["findings"] is None


def test_evaluate_findings_equals_hand_cut_file(subset_files, tmp_path):
    full, cut = subset_files["full"], subset_files["cut"]
    subset = _report(
        tmp_path, "s", "evaluate", full[0], "--validation", full[2], "--findings", KEPT
    )
    reference = _report(tmp_path, "r", "evaluate", cut[0], "--validation", cut[2])
    assert _results(subset) == _results(reference)
    assert subset["models"]["a"]["labels"] == 5  # the file as read, before the subset
    assert subset["run"]["config"]["labels"] == ["atelectasis", "pleural_effusion"]


@pytest.mark.parametrize("command", ["compare", "evaluate"])
def test_findings_refusals_list_what_exists(subset_files, command):
    full = subset_files["full"]
    files = full[:2] if command == "compare" else full[:1]
    result = _run(command, *files, "--findings", "atelectasis,pleural_efusion")
    _refusal(result, "unknown finding or set 'pleural_efusion'", "'pleural_effusion'?")
    _refusal(result, "named sets: study-chestxray14", "findings: no_finding, ")
    # compare: edema is only in A's file, so B's is named; evaluate: nodule is in neither
    lacking, where, provides = (
        ("edema", full[1], "cardiomegaly, atelectasis, pleural_effusion, pneumothorax")
        if command == "compare"
        else ("nodule", full[0], "cardiomegaly, atelectasis, edema, pleural_effusion, pneumothorax")
    )
    result = _run(command, *files, "--findings", f"cardiomegaly,{lacking}")
    _refusal(result, f"{where} does not provide {lacking}; it provides: {provides}")
    _refusal(_run(command, *files, "--findings", " , "), "--findings is empty")


def test_findings_refusal_names_labels_outside_the_vocabulary(files):
    path_a, path_b, *_ = files  # labels atelectasis, effusion (not an id), mass
    _refusal(
        _run("compare", path_a, path_b, "--findings", "pleural_effusion"),
        f"{path_a} (labels: atelectasis, effusion, mass) does not provide pleural_effusion",
        "it provides: mass, atelectasis",
    )
