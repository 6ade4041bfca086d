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
    assert "Calibration (Brier score, ECE):" in result.stdout
    assert reliability_table(LABELS, targets, p, 4)[2]["label"] == "nodule"
