"""Weighted bootstrap AUROC against slow references on the same counts; the counter-based
draws (identical in numpy and torch, in every chunking); CIs; p; Youden thresholds; calibration
statistics on the same counts; the numpy (CPU) and torch (CUDA) code paths agree."""

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
    RankStatistic,
    evaluate_on_counts,
    make_resampler,
    run_bootstrap,
    weighted_auroc,
)
from cxrprobe.stats.calibration import CalibrationStatistic
from cxrprobe.stats.delong import jackknife_auroc
from cxrprobe.stats.engine import Backend, TorchBackend
from cxrprobe.stats.intervals import (
    bca_interval,
    mean_over_labels,
    paired_p_values,
    percentile_interval,
    smallest_p,
)
from cxrprobe.stats.resample import draws_numpy, draws_torch
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


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_run_bootstrap_does_not_depend_on_chunk_size(bars, backend):
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
            backend=backend,
        )
        np.testing.assert_array_equal(out["auc"], expected)
        (bar,) = bars
        assert bar.total == 10 and bar.closed
        assert bar.done == 10 and len(bar.updates) == -(-10 // chunk)


@pytest.mark.parametrize("seed, start, stop, units", [(0, 0, 7, 13), (5, 3, 40, 100_003)])
def test_draws_are_identical_in_numpy_and_torch_and_in_every_chunking(seed, start, stop, units):
    whole = draws_numpy(seed, start, stop, units)
    on_torch = draws_torch(seed, start, stop, units, torch.device("cpu")).numpy()
    np.testing.assert_array_equal(whole, on_torch)
    pieces = [draws_numpy(seed, b, min(b + 3, stop), units) for b in range(start, stop, 3)]
    np.testing.assert_array_equal(whole, np.concatenate(pieces))
    assert whole.min() >= 0 and whole.max() < units


def _splitmix_reference(seed: int, b: int, i: int, units: int) -> int:
    """The documented recipe in plain Python integers (independent of the array code)."""
    mask, gamma = 2**64 - 1, 0x9E3779B97F4A7C15

    def mix(z: int) -> int:
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    key = mix((seed + gamma) & mask)
    z = mix((key + ((b << 32) + i + 1) * gamma) & mask)
    return int((z >> 11) * 2.0**-53 * units)


def test_draws_follow_the_documented_recipe_and_are_pinned():
    draws = draws_numpy(7, 2, 5, 1_000_003)
    for b, i in [(2, 0), (3, 17), (4, 1_000_002)]:
        assert draws[b - 2, i] == _splitmix_reference(7, b, i, 1_000_003)
    # A change here changes every reported interval and p-value: it must be deliberate.
    assert draws_numpy(0, 0, 2, 10).tolist() == [
        [6, 7, 3, 6, 7, 1, 7, 2, 3, 5],
        [1, 7, 7, 8, 6, 9, 3, 1, 9, 7],
    ]
    assert not np.array_equal(draws_numpy(1, 0, 1, 1000), draws_numpy(0, 0, 1, 1000))


@pytest.mark.parametrize("units", [1, 2, 3, 7, 2**20, 2**20 + 1, 999_983, 2**32 - 1])
def test_the_largest_draw_stays_below_the_number_of_units(units):
    largest = float(2**53 - 1) * (units * 2.0**-53)  # u at its maximum, as both backends compute
    assert int(largest) == units - 1


def test_draws_are_uniform():
    counts = np.bincount(draws_numpy(11, 0, 400, 500).ravel(), minlength=500)
    assert scipy_stats.chisquare(counts).pvalue > 1e-3
    # resample b and position i are independent: draw pairs (b, i), (b, i + 1) do not correlate
    draws = draws_numpy(12, 0, 2000, 50).astype(float)
    assert abs(np.corrcoef(draws[:, :-1].ravel(), draws[:, 1:].ravel())[0, 1]) < 0.02
    assert abs(np.corrcoef(draws[:-1].ravel(), draws[1:].ravel())[0, 1]) < 0.02


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
def test_cpu_and_gpu_draw_the_same_counts_and_agree():
    targets, scores = _data(11, n=3000, labels=4)
    np.testing.assert_array_equal(
        draws_torch(5, 3, 70, 3001, torch.device("cuda")).cpu().numpy(),
        draws_numpy(5, 3, 70, 3001),
    )
    patients = np.array([f"p{i // 3}" for i in range(len(targets))])
    for resampler in (
        make_resampler(len(targets), 64, seed=5),
        make_resampler(len(targets), 64, seed=5, clusters=patients),
    ):
        on_gpu = TorchBackend(torch.device("cuda")).counts(resampler, 7, 40).data.cpu().numpy()
        np.testing.assert_array_equal(on_gpu, Backend().counts(resampler, 7, 40).data)
    statistics = {
        "rank": RankStatistic(targets, scores, np.array([0.0, 0.5, np.nan, 1.0])),
        "cal": CalibrationStatistic(targets, 1 / (1 + np.exp(-scores)), 10),
    }
    outs = [
        run_bootstrap(resampler, statistics, device=d, chunk_size=c)
        for d, c in (("cpu", 7), ("cuda", 64))
    ]
    for key in ("auc", "conf"):
        np.testing.assert_array_equal(outs[0]["rank"][key], outs[1]["rank"][key])
    np.testing.assert_allclose(outs[0]["cal"], outs[1]["cal"], rtol=0, atol=1e-9)


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
    p = paired_p_values(deltas, np.array([0.15, -0.2, 0.0]))
    # the study's p, a plain share: label 0: B better; B fails to win in 2 of the 4 defined
    # resamples (-0.1 and a tie 0.0); label 1: A better; A fails to win in 1 of 4 (0.1);
    # label 2: equal AUROCs -> 1
    np.testing.assert_allclose(p.study_one_sided, [0.5, 0.25, 1.0])
    # two-sided, (k + 1) / (B + 1): label 0: min(#<=0 = 2, #>=0 = 3) -> 2 * 3 / 5, capped at 1;
    # label 1: min(3, 1) -> 2 * 2 / 5; label 2: all five are 0 -> 2 * 6 / 6, capped at 1
    np.testing.assert_allclose(p.two_sided, [1.0, 0.8, 1.0])


def test_two_sided_p_is_never_below_two_over_b_plus_one():
    deltas = np.full((19, 2), 0.1)  # B wins in every resample
    p = paired_p_values(deltas, np.array([0.1, 0.1]))
    np.testing.assert_allclose(p.two_sided, [2 / 20] * 2)
    assert p.two_sided[0] == smallest_p(19) and p.study_one_sided[0] == 0.0


def test_jackknife_auroc_equals_leave_one_out_sklearn():
    targets, scores = _data(9, n=25, labels=2)
    jk = jackknife_auroc(targets, scores)
    for row in range(25):
        keep = np.arange(25) != row
        expected = _replicated_reference(targets, scores, np.flatnonzero(keep))
        np.testing.assert_allclose(jk[row], expected, atol=1e-12)


def _youden_brute_force(y: np.ndarray, s: np.ndarray) -> float:
    """Every distinct score (and 'nothing positive' above them) with J as exact fractions."""
    from fractions import Fraction

    p, n = int((y == 1).sum()), int((y == 0).sum())
    candidates = [np.nextafter(s.max(), np.inf), *np.unique(s)[::-1]]  # highest first
    youden = [
        Fraction(int(np.sum(s[y == 1] >= c)), p) - Fraction(int(np.sum(s[y == 0] >= c)), n)
        for c in candidates
    ]
    return candidates[youden.index(max(youden))]  # first maximum: the highest threshold


@pytest.mark.parametrize("seed", [12, 15])
def test_youden_threshold_equals_brute_force(seed):
    targets, scores = _data(seed, n=200, labels=4)
    chosen, reasons = youden_thresholds(targets, scores)
    for col in range(4):
        keep = ~np.isnan(targets[:, col])
        y, s = targets[keep, col], scores[keep, col]
        assert chosen[col] == _youden_brute_force(y, s) and reasons[col] is None
    one_class, why = youden_thresholds(np.ones(5), np.arange(5.0))
    assert np.isnan(one_class[0]) and "only one class" in why[0]


def test_youden_ties_in_j_go_to_the_highest_threshold_exactly():
    # Positives 0.9, 0.8, 0.4; negatives 0.5, 0.2, 0.1. At 0.8: TP 2, FP 0, J = 2/3; at 0.4:
    # TP 3, FP 1, J = 1 - 1/3 = 2/3 too, but in floats 1 - 1/3 > 2/3 - 0, so comparing float
    # tpr - fpr would pick 0.4. Equal J goes to the highest threshold: 0.8.
    y = np.array([1, 1, 1, 0, 0, 0], dtype=float)
    s = np.array([0.9, 0.8, 0.4, 0.5, 0.2, 0.1])
    assert (1 / 1 - 1 / 3) > (2 / 3 - 0 / 3)  # the float trap is real
    chosen, _ = youden_thresholds(y, s)
    assert chosen[0] == 0.8 == _youden_brute_force(y, s)


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


def test_calibration_on_resamples_equals_a_direct_computation_with_fixed_bins():
    targets, scores = _data(16, n=90, labels=3, ties=True)
    probabilities = 1 / (1 + np.exp(-scores))
    resampler = make_resampler(90, 5, seed=3)
    boot = run_bootstrap(
        resampler, {"c": CalibrationStatistic(targets, probabilities, 4)}, device="cpu"
    )["c"]
    for col in range(3):
        rows = np.flatnonzero(~np.isnan(targets[:, col]))
        order = rows[np.argsort(probabilities[rows, col], kind="stable")]
        bins = np.array_split(order, 4)  # fixed on the full data
        for b in range(5):
            counts = np.bincount(resampler.indices(b), minlength=90)
            w = counts[rows]
            residual = targets[rows, col] - probabilities[rows, col]
            brier = np.sum(w * residual**2) / w.sum()
            ece = sum(
                abs(np.sum(counts[k] * (targets[k, col] - probabilities[k, col]))) for k in bins
            )
            np.testing.assert_allclose(boot[b, :, col], [brier, ece / w.sum()], rtol=1e-12)


@pytest.mark.parametrize("cluster", [False, True])
def test_numpy_and_torch_code_paths_agree_on_the_cpu(cluster):
    """The torch backend is the CUDA code path; run on the CPU it must match numpy exactly
    (sums of integer counts) and calibration to float64 rounding."""
    targets, scores = _data(14, n=200, labels=4)
    clusters = np.array([f"p{i // 4}" for i in range(200)]) if cluster else None
    resampler = make_resampler(200, 9, seed=4, clusters=clusters)
    thresholds = np.array([0.0, 0.5, np.nan, 1.0])
    statistics = {
        "rank": RankStatistic(targets, scores, thresholds),
        "cal": CalibrationStatistic(targets, 1 / (1 + np.exp(-scores)), 3),
    }
    numpy_counts = Backend().counts(resampler, 0, 9)
    torch_counts = TorchBackend(torch.device("cpu")).counts(resampler, 0, 9)
    np.testing.assert_array_equal(numpy_counts.data, torch_counts.data.numpy())
    np.testing.assert_array_equal(numpy_counts.data.T, resampler.counts(0, 9))
    out = {
        b: run_bootstrap(resampler, statistics, device="cpu", backend=b) for b in ("numpy", "torch")
    }
    for key in ("auc", "conf"):
        np.testing.assert_array_equal(out["numpy"]["rank"][key], out["torch"]["rank"][key])
    np.testing.assert_allclose(out["numpy"]["cal"], out["torch"]["cal"], rtol=1e-12)
    counts = resampler.counts(0, 9)
    for col in range(4):  # confusion counts: sums of counts over the rows at/above the threshold
        if np.isnan(thresholds[col]):
            assert (out["numpy"]["rank"]["conf"][:, :, col] == 0).all()
            continue
        predicted = scores[:, col] >= thresholds[col]
        tp = counts[:, (targets[:, col] == 1) & predicted].sum(axis=1)
        np.testing.assert_array_equal(out["torch"]["rank"]["conf"][:, 0, col], tp)


EDGE_LABELS = {  # targets, scores, threshold
    "only positives": ([1, 1, 1, np.nan], [0.2, 0.5, 0.5, 0.9], 0.5),
    "only negatives": ([0, 0, np.nan, 0], [0.2, 0.2, 0.1, 0.9], 0.3),
    "nothing annotated": ([np.nan] * 4, [0.1, 0.2, 0.3, 0.4], 0.2),
    "all scores tied": ([1, 0, 1, 0], [0.5] * 4, 0.5),
    "threshold above all": ([1, 0, 1, 0], [0.1, 0.2, 0.3, 0.4], 0.9),
    "threshold below all": ([1, 0, 1, 0], [0.1, 0.2, 0.3, 0.4], 0.0),
}


@pytest.mark.parametrize("case", EDGE_LABELS)
def test_rank_statistic_edge_labels_against_direct_sums(case):
    target, score, threshold = (np.array(v, dtype=float) for v in EDGE_LABELS[case])
    counts = np.array([[1, 1, 1, 1], [2, 0, 1, 1], [0, 3, 0, 1]])
    out = evaluate_on_counts(RankStatistic(target, score, np.array([threshold])), counts)
    for b, w in enumerate(counts):
        pos, neg = w * (target == 1), w * (target == 0)
        predicted = score >= threshold
        expected = [pos @ predicted, neg @ predicted, pos @ ~predicted, neg @ ~predicted]
        np.testing.assert_array_equal(out["conf"][b, :, 0], expected)
        keep = ~np.isnan(target) & (w > 0)
        if len(set(target[keep])) < 2:
            assert np.isnan(out["auc"][b, 0])
        else:
            reference = roc_auc_score(target[keep], score[keep], sample_weight=w[keep])
            assert out["auc"][b, 0] == pytest.approx(reference, abs=1e-12)
