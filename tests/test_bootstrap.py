"""Weighted bootstrap AUROC against slow references on the same counts; resampling; CIs; p."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats
from sklearn.metrics import confusion_matrix, roc_auc_score

from cxrprobe.devices import resolve_device
from cxrprobe.errors import ConfigError
from cxrprobe.stats.bootstrap import (
    AurocStatistic,
    Weights,
    bca_interval,
    make_resampler,
    mean_over_labels,
    paired_p_values,
    percentile_interval,
    row_weights,
    run_bootstrap,
    weighted_auroc,
)
from cxrprobe.stats.delong import jackknife_auroc
from cxrprobe.stats.thresholds import ConfusionStatistic, threshold_metrics, youden_thresholds


def _data(seed: int, n: int = 150, labels: int = 4, ties: bool = True):
    rng = np.random.default_rng(seed)
    prevalence = np.array([0.1, 0.5, 0.85, 0.3])[:labels]  # 0.85: reference = positives
    targets = (rng.random((n, labels)) < prevalence).astype(float)
    targets[rng.random((n, labels)) < 0.1] = np.nan
    scores = rng.normal(size=(n, labels)) + np.nan_to_num(targets)
    return targets, np.round(scores, 1) if ties else scores


def _replicated_reference(targets, scores, rows):
    """roc_auc_score on the rows explicitly repeated (the straightforward bootstrap)."""
    out = []
    for col in range(targets.shape[1]):
        y, s = targets[rows, col], scores[rows, col]
        keep = ~np.isnan(y)
        y, s = y[keep], s[keep]
        out.append(roc_auc_score(y, s) if 0 < y.sum() < y.size else np.nan)
    return np.array(out)


@pytest.mark.parametrize("seed", range(3))
def test_weighted_auroc_equals_slow_references_on_same_counts(seed):
    targets, scores = _data(seed)
    resampler = make_resampler(len(targets), n_resamples=12, seed=seed)
    counts = resampler.counts(0, 12)
    fast = weighted_auroc(targets, scores, counts)
    for b in range(12):
        replicated = _replicated_reference(targets, scores, resampler.indices(b))
        np.testing.assert_allclose(fast[b], replicated, rtol=0, atol=1e-12)
        for col in range(targets.shape[1]):
            keep = ~np.isnan(targets[:, col])
            weighted = roc_auc_score(
                targets[keep, col], scores[keep, col], sample_weight=counts[b, keep]
            )
            assert fast[b, col] == pytest.approx(weighted, abs=1e-12)


def test_resample_with_one_class_is_nan():
    targets = np.array([1, 0, 0, 0, 0.0])
    counts = np.array([[0, 1, 2, 1, 1], [1, 1, 1, 1, 1]])
    out = weighted_auroc(targets, np.array([0.9, 0.1, 0.2, 0.3, 0.4]), counts)
    assert np.isnan(out[0, 0]) and out[1, 0] == 1.0


def test_run_bootstrap_does_not_depend_on_chunk_size(bars):
    targets, scores = _data(7)
    resampler = make_resampler(len(targets), n_resamples=10, seed=3)
    expected = weighted_auroc(targets, scores, resampler.counts(0, 10))
    for chunk in (1, 3, 10):
        bars.clear()
        out = run_bootstrap(
            resampler,
            {"auc": AurocStatistic(targets, scores)},
            device="cpu",
            chunk_size=chunk,
            progress=bars,
        )
        np.testing.assert_array_equal(out["auc"], expected)
        (bar,) = bars
        assert bar.total == 10 and bar.closed
        assert bar.done == 10 and len(bar.updates) == -(-10 // chunk)


def test_resampler_is_seeded_and_counts_match_indices():
    a, b = make_resampler(40, 5, seed=1), make_resampler(40, 5, seed=1)
    np.testing.assert_array_equal(a.counts(0, 5), b.counts(0, 5))
    assert not np.array_equal(a.counts(0, 5), make_resampler(40, 5, seed=2).counts(0, 5))
    counts = a.counts(0, 5)
    assert (counts.sum(axis=1) == 40).all()
    np.testing.assert_array_equal(counts[3], np.bincount(a.indices(3), minlength=40))
    np.testing.assert_array_equal(a.counts(2, 4), counts[2:4])


def test_cluster_resampling_moves_whole_patients():
    patients = np.array([f"p{i // 3}" for i in range(30)])  # 10 patients, 3 images each
    resampler = make_resampler(30, 20, seed=0, clusters=patients)
    assert resampler.scheme == "patients" and resampler.n_units == 10
    counts = resampler.counts(0, 20)
    assert (counts[:, 0::3] == counts[:, 1::3]).all() and (counts[:, 1::3] == counts[:, 2::3]).all()
    assert (counts[:, 0::3].sum(axis=1) == 10).all()  # 10 patient draws per resample
    rows = resampler.indices(4)
    np.testing.assert_array_equal(np.bincount(rows, minlength=30), counts[4])


def test_resampler_refuses_bad_settings():
    with pytest.raises(ConfigError, match="--resamples"):
        make_resampler(10, 0)
    with pytest.raises(ConfigError, match="--seed"):
        make_resampler(10, 5, seed=-1)
    with pytest.raises(ConfigError, match="--device"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_cuda_without_cuda_is_refused():
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda")


@pytest.mark.gpu
def test_cpu_and_gpu_agree_on_the_same_counts():
    targets, scores = _data(11, n=3000, labels=4)
    resampler = make_resampler(len(targets), 64, seed=5)
    draws = resampler.draws(0, 64)
    on_gpu = row_weights(resampler, draws, torch.device("cuda"))
    on_cpu = row_weights(resampler, draws, torch.device("cpu"))
    np.testing.assert_array_equal(on_gpu.data.cpu().numpy(), on_cpu.data.T.numpy())
    outs = [
        run_bootstrap(resampler, {"auc": AurocStatistic(targets, scores)}, device=d, chunk_size=c)[
            "auc"
        ]
        for d, c in (("cpu", 7), ("cuda", 64))
    ]
    np.testing.assert_allclose(outs[0], outs[1], rtol=0, atol=1e-9)


def test_device_fixture_paths_agree(device):
    targets, scores = _data(2)
    resampler = make_resampler(len(targets), 8, seed=1)
    out = run_bootstrap(resampler, {"auc": AurocStatistic(targets, scores)}, device=device)
    np.testing.assert_allclose(
        out["auc"], weighted_auroc(targets, scores, resampler.counts(0, 8)), atol=1e-12
    )


def test_mean_over_labels_skips_undefined_and_non_family_labels():
    samples = np.array([[0.8, np.nan, 0.6], [0.7, 0.9, 0.5], [np.nan, np.nan, 0.4]])
    out = mean_over_labels(samples, np.array([True, True, False]))
    np.testing.assert_allclose(out[:2], [0.8, 0.8])
    assert np.isnan(out[2])


def test_percentile_interval_matches_numpy_and_ignores_nan():
    rng = np.random.default_rng(0)
    samples = rng.random((500, 3))
    samples[::7, 1] = np.nan
    lo, hi = percentile_interval(samples, alpha=0.1)
    for col in range(3):
        kept = samples[~np.isnan(samples[:, col]), col]
        assert (lo[col], hi[col]) == tuple(np.percentile(kept, [5, 95]))


def test_bca_agrees_with_scipy_for_a_skewed_statistic():
    rng = np.random.default_rng(4)
    data = rng.exponential(size=40)
    counts = np.random.default_rng(5).multinomial(40, np.full(40, 1 / 40), size=20000)
    replicates = (counts @ data / 40)[:, None]
    jackknife = ((data.sum() - data) / 39)[:, None]
    lo, hi = bca_interval(replicates, np.array([data.mean()]), jackknife, alpha=0.05)
    ref = scipy_stats.bootstrap(
        (data,), np.mean, n_resamples=20000, method="BCa", rng=np.random.default_rng(6)
    ).confidence_interval
    spread = replicates.std()
    assert abs(lo[0] - ref.low) < 0.1 * spread and abs(hi[0] - ref.high) < 0.1 * spread
    p_lo, p_hi = percentile_interval(replicates)
    assert lo[0] > p_lo[0] and hi[0] > p_hi[0]  # BCa shifts right for a right-skewed mean


def test_paired_p_values_by_hand():
    deltas = np.array(
        [
            [0.1, -0.2, 0.0],
            [0.2, -0.1, 0.0],
            [-0.1, 0.1, 0.0],
            [0.0, -0.3, 0.0],
            [np.nan, np.nan, 0.0],
        ]
    )
    p, p_two = paired_p_values(deltas, np.array([0.15, -0.2, 0.0]))
    # label 0: B better; B fails to win in 2 of the 4 defined resamples (-0.1 and a tie 0.0)
    # label 1: A better; A fails to win in 1 of 4 (0.1); label 2: equal AUROCs -> 1
    np.testing.assert_allclose(p, [0.5, 0.25, 1.0])
    np.testing.assert_allclose(p_two, [1.0, 0.5, 1.0])


def test_jackknife_auroc_equals_leave_one_out_sklearn():
    targets, scores = _data(9, n=25, labels=2)
    jk = jackknife_auroc(targets, scores)
    for row in range(25):
        keep = np.arange(25) != row
        expected = _replicated_reference(targets, scores, np.flatnonzero(keep))
        np.testing.assert_allclose(jk[row], expected, atol=1e-12)


def test_youden_threshold_equals_brute_force():
    targets, scores = _data(12, n=200, labels=4)
    chosen, reasons = youden_thresholds(targets, scores)
    for col in range(4):
        keep = ~np.isnan(targets[:, col])
        y, s = targets[keep, col], scores[keep, col]
        candidates = np.unique(s)[::-1]  # highest first: ties go to the highest threshold
        youden = [np.mean(s[y == 1] >= c) + np.mean(s[y == 0] < c) - 1 for c in candidates]
        assert chosen[col] == candidates[int(np.argmax(youden))] and reasons[col] is None
    one_class, why = youden_thresholds(np.ones(5), np.arange(5.0))
    assert np.isnan(one_class[0]) and "only one class" in why[0]


def test_confusion_on_resamples_equals_sklearn_at_the_fixed_threshold():
    targets, scores = _data(13, n=120, labels=3)
    thresholds = np.array([0.2, 0.5, np.nan])
    resampler = make_resampler(120, 6, seed=2)
    boot = run_bootstrap(
        resampler, {"c": ConfusionStatistic(targets, scores, thresholds)}, device="cpu"
    )["c"]
    for b in range(6):
        rows = resampler.indices(b)
        for col in range(2):
            y, s = targets[rows, col], scores[rows, col]
            keep = ~np.isnan(y)
            tn, fp, fn, tp = confusion_matrix(
                y[keep], s[keep] >= thresholds[col], labels=[0, 1]
            ).ravel()
            np.testing.assert_array_equal(boot[b, :, col], [tp, fp, fn, tn])
        assert (boot[b, :, 2] == 0).all()  # no threshold: nothing counted
    metrics = threshold_metrics(boot)
    assert np.isnan(metrics["sensitivity"][:, 2]).all()
    tp, fp, fn, tn = boot[0, :, 0]
    assert metrics["f1"][0, 0] == pytest.approx(2 * tp / (2 * tp + fp + fn))


def test_both_row_layouts_give_the_same_statistics():
    """CUDA keeps rows along the last axis (c, n); the same code on CPU checks that layout."""
    targets, scores = _data(14, n=200, labels=4)
    counts = torch.as_tensor(make_resampler(200, 9, seed=4).counts(0, 9))
    rows_first = Weights.from_counts(counts, torch.int32)
    rows_last = Weights(counts.to(torch.int32).contiguous(), row_dim=1)
    assert rows_first.row_dim == 0 and rows_last.n_resamples == rows_first.n_resamples == 9
    thresholds = np.array([0.0, 0.5, np.nan, 1.0])
    for statistic in (
        AurocStatistic(targets, scores),
        ConfusionStatistic(targets, scores, thresholds),
    ):
        np.testing.assert_array_equal(statistic(rows_first).numpy(), statistic(rows_last).numpy())
