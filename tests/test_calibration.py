"""Brier score and expected calibration error against direct numpy computations; reports,
logit scores and the reliability diagram."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from cxrprobe.cli import main
from cxrprobe.stats.calibration import (
    brier_score,
    expected_calibration_error,
    reliability_table,
)
from cxrprobe.stats.predictions import Predictions, write_predictions
from cxrprobe.stats.report import BootstrapOptions, compare_predictions, evaluate_predictions

LABELS = ["effusion", "mass", "nodule"]


def _data(seed: int = 0, n: int = 137):
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, 3)) < [0.3, 0.5, 0.1]).astype(float)
    targets[rng.random((n, 3)) < 0.15] = np.nan
    logits = np.nan_to_num(targets) * 1.5 + rng.normal(size=(n, 3))
    probabilities = np.round(1 / (1 + np.exp(-logits)), 2)  # rounded: many ties
    return targets, probabilities


def _direct(y: np.ndarray, p: np.ndarray, bins: int) -> tuple[float, float]:
    """Brier and equal-mass ECE of one label, written out with an explicit loop over bins."""
    keep = ~np.isnan(y)
    y, p = y[keep], p[keep]
    order = sorted(range(len(p)), key=lambda i: (p[i], i))  # stable sort by score
    k = min(bins, len(p))
    size, extra = divmod(len(p), k)  # the first `extra` bins get one row more
    ece, start = 0.0, 0
    for b in range(k):
        rows = order[start : start + size + (b < extra)]
        start += len(rows)
        ece += len(rows) / len(p) * abs(np.mean(y[rows]) - np.mean(p[rows]))
    return float(np.mean((p - y) ** 2)), ece


@pytest.mark.parametrize("bins", [1, 7, 10, 500])
def test_brier_and_ece_equal_a_direct_computation(bins):
    targets, probabilities = _data()
    brier, ece = (
        brier_score(targets, probabilities),
        expected_calibration_error(targets, probabilities, bins),
    )
    for col in range(3):
        expected = _direct(targets[:, col], probabilities[:, col], bins)
        assert brier[col] == pytest.approx(expected[0], abs=1e-15)
        assert ece[col] == pytest.approx(expected[1], abs=1e-12)


def test_perfectly_calibrated_bins_give_zero_ece():
    y = np.array([0, 0, 1, 0, 1, 1], dtype=float)
    p = np.array([0.0, 0.0, 0.5, 0.5, 1.0, 1.0])
    assert expected_calibration_error(y, p, 3)[0] == pytest.approx(0.0)
    assert np.isnan(brier_score(np.full(3, np.nan), np.zeros(3))[0])


def test_reports_carry_calibration_with_intervals_and_the_difference():
    targets, pa = _data(1)
    _, pb = _data(2)
    a, b = (
        Predictions(LABELS, [f"i{k}" for k in range(137)], targets, p, "probability")
        for p in (pa, pb)
    )
    options = BootstrapOptions(resamples=60, device="cpu", ece_bins=5)
    report = compare_predictions(a, b, options)
    for key, scores in (("a", pa), ("b", pb)):
        block = report["calibration"][key]
        for col, row in enumerate(block["labels"]):
            brier, ece = _direct(targets[:, col], scores[:, col], 5)
            assert row["brier"] == pytest.approx(brier) and row["ece"] == pytest.approx(ece)
            assert row["brier_ci"][0] <= row["brier"] <= row["brier_ci"][1]
        assert block["mean"]["brier"] == pytest.approx(
            np.mean([r["brier"] for r in block["labels"]])
        )
    difference = report["calibration"]["difference"]["labels"][1]
    a_row, b_row = report["calibration"]["a"]["labels"][1], report["calibration"]["b"]["labels"][1]
    assert difference["ece"] == pytest.approx(b_row["ece"] - a_row["ece"])
    single = evaluate_predictions(a, options)
    assert single["calibration"]["labels"] == report["calibration"]["a"]["labels"]
    table = single["reliability"]["a"][0]["bins"]
    assert sum(b["n"] for b in table) == int((~np.isnan(targets[:, 0])).sum()) and len(table) == 5


def _resampled(y: np.ndarray, p: np.ndarray, bins: int, rows: np.ndarray) -> tuple[float, float]:
    """Brier and ECE of one label on the resample that draws ``rows``, bins fixed on all rows."""
    keep = np.flatnonzero(~np.isnan(y))
    order = keep[np.argsort(p[keep], kind="stable")]
    w = np.bincount(rows, minlength=len(y)).astype(float)
    total = w[keep].sum()
    if total == 0:
        return np.nan, np.nan
    brier = np.sum(w[keep] * (p[keep] - y[keep]) ** 2) / total
    ece = sum(abs(np.sum(w[b] * (y[b] - p[b]))) for b in np.array_split(order, bins)) / total
    return brier, ece


def test_ece_gets_basic_intervals_and_a_bias_corrected_value_like_numpy():
    """Against a bootstrap written out in numpy: the same resamples, ECE per resample from its
    drawn rows, then basic limits 2 ECE - percentiles (clipped at 0 for each model, not for
    B - A) and 2 ECE - mean of the resamples; Brier keeps percentile limits."""
    from cxrprobe.stats.bootstrap import make_resampler

    targets, pa = _data(1)
    _, pb = _data(2)
    a, b = (
        Predictions(LABELS, [f"i{k}" for k in range(137)], targets, p, "probability")
        for p in (pa, pb)
    )
    options = BootstrapOptions(resamples=200, seed=3, device="cpu", ece_bins=5)
    report = compare_predictions(a, b, options)
    resampler = make_resampler(137, 200, seed=3)
    draws = [resampler.indices(r) for r in range(200)]
    samples = {  # (B, 2, L + 1): Brier and ECE per label, then the mean over labels
        key: np.array(
            [[_resampled(targets[:, c], scores[:, c], 5, rows) for c in range(3)] for rows in draws]
        ).transpose(0, 2, 1)
        for key, scores in (("a", pa), ("b", pb))
    }
    point = {}
    for key in samples:
        samples[key] = np.concatenate([samples[key], samples[key].mean(2, keepdims=True)], 2)
        rows = report["calibration"][key]["labels"] + [report["calibration"][key]["mean"]]
        point[key] = np.array([[r["brier"] for r in rows], [r["ece"] for r in rows]])
    for key in ("a", "b", "difference"):
        boot = samples["b"] - samples["a"] if key == "difference" else samples[key]
        est = point["b"] - point["a"] if key == "difference" else point[key]
        floor = -np.inf if key == "difference" else 0.0
        block = report["calibration"][key]
        for k, row in enumerate(block["labels"] + [block["mean"]]):
            q_lo, q_hi = np.percentile(boot[:, :, k], [2.5, 97.5], axis=0)
            np.testing.assert_allclose(row["brier_ci"], [q_lo[0], q_hi[0]], atol=1e-12)
            basic = np.maximum([2 * est[1, k] - q_hi[1], 2 * est[1, k] - q_lo[1]], floor)
            np.testing.assert_allclose(row["ece_ci"], basic, atol=1e-12)
            corrected = max(2 * est[1, k] - boot[:, 1, k].mean(), floor)
            assert row["ece_bias_corrected"] == pytest.approx(corrected, abs=1e-12)
    assert report["calibration_method"]["intervals"]["brier"] == "percentile"


def test_a_calibrated_model_gets_an_ece_interval_below_its_biased_plain_ece():
    """The QA finding (y drawn with probability p, true ECE near 0): resampled ECEs lie above the
    plain ECE, so a percentile CI sits above it; the basic CI is centred below it, around the
    bias-corrected value."""
    rng = np.random.default_rng(5)
    p = rng.beta(2, 5, 400)
    y = (rng.random(400) < p).astype(float)
    pred = Predictions(["x"], [f"i{k}" for k in range(400)], y[:, None], p[:, None], "probability")
    row = evaluate_predictions(pred, BootstrapOptions(resamples=200, device="cpu"))["calibration"]
    row = row["labels"][0]
    assert row["ece_bias_corrected"] < row["ece"] and sum(row["ece_ci"]) / 2 < row["ece"]
    assert row["ece_ci"][0] <= row["ece_bias_corrected"] <= row["ece_ci"][1]


def test_logit_scores_get_no_calibration_and_say_why(tmp_path):
    targets, p = _data()
    logits = np.log(np.clip(p, 0.01, 0.99) / (1 - np.clip(p, 0.01, 0.99)))
    path = write_predictions(
        Predictions(LABELS, [f"i{k}" for k in range(137)], targets, logits, "logit"),
        tmp_path / "l.json",
    )
    result = CliRunner().invoke(main, ["evaluate", str(path), "-B", "20", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "calibration: scores are logits; calibration needs probabilities" in result.stdout
    refused = CliRunner().invoke(
        main, ["evaluate", str(path), "-B", "20", "--reliability-plot", str(tmp_path / "r.png")]
    )
    assert refused.exit_code == 2 and "--reliability-plot needs probabilities" in refused.output
    assert not (tmp_path / "r.png").exists()


def test_reliability_plot_is_written_with_its_record(tmp_path):
    targets, p = _data()
    path = write_predictions(
        Predictions(LABELS, [f"i{k}" for k in range(137)], targets, p, "probability"),
        tmp_path / "p.json",
    )
    out = tmp_path / "r.png"
    result = CliRunner().invoke(
        main, ["evaluate", str(path), "-B", "20", "--device", "cpu", "--reliability-plot", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:4] == b"\x89PNG" and (tmp_path / "r.png.run.json").is_file()
    assert (
        "Calibration: Brier score [95% CI, percentile]; ECE (bias-corrected) [95% CI, basic]:"
        in (result.stdout)
    )
    assert "ECE: binned ECE is biased upward" in result.stdout
    assert reliability_table(LABELS, targets, p, 4)[2]["label"] == "nodule"
