"""Linear probe: planted signal, torch vs scikit-learn, label masking, grid selection, weights I/O."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from cxrprobe.cache.embeddings import create_embeddings
from cxrprobe.cache.store import RowMetadata
from cxrprobe.data.targets import positive_weights, training_targets
from cxrprobe.errors import ConfigError, DataFormatError, WeightsError
from cxrprobe.probe.backends import SklearnBackend, TorchBackend
from cxrprobe.probe.linear import LinearProbe, Standardizer, fit_linear_probe
from cxrprobe.probe.run import ProbeConfig, run_probe


def planted(n: int, dim: int, n_labels: int, seed: int, strength: float = 2.0):
    """Features = noise + a direction per finding moved by that finding's label."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, n_labels)) < np.linspace(0.2, 0.5, n_labels)).astype(np.float32)
    directions = rng.standard_normal((n_labels, dim))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    x = (
        rng.standard_normal((n, dim)) + strength * (labels - 0.5) @ directions + 3.0
    )  # offset: standardisation matters
    return x.astype(np.float32), labels, directions


def sklearn_reference(x_std, targets, c, pos_weight=None):
    """scikit-learn's own fit of one finding on its annotated rows (class_weight, not sample_weight)."""
    rows = ~np.isnan(targets)
    weights = None if pos_weight is None else {0: 1.0, 1: float(pos_weight)}
    model = LogisticRegression(C=c, class_weight=weights, tol=1e-10, max_iter=5000)
    model.fit(x_std[rows].astype(np.float64), targets[rows].astype(int))
    return model.coef_[0], model.intercept_[0]


def test_probe_learns_planted_signal_on_held_out_rows():
    x, labels, _ = planted(900, 48, 3, seed=0)
    noise_label = (np.random.default_rng(1).random(900) < 0.3).astype(np.float32)
    labels = np.column_stack([labels, noise_label])
    train, val, test = slice(0, 500), slice(500, 650), slice(650, 900)
    probe, report = fit_linear_probe(
        x[train],
        labels[train],
        x[val],
        labels[val],
        ["a", "b", "c", "noise"],
        cs=[1e-3, 1e-1, 10.0],
    )
    scores = probe.predict_proba(x[test])
    for col in range(3):
        assert roc_auc_score(labels[test, col], scores[:, col]) > 0.85
    assert abs(roc_auc_score(labels[test, 3], scores[:, 3]) - 0.5) < 0.12  # nothing to learn there
    assert report.val_auroc.shape == (3, 4)


@pytest.mark.parametrize("weighting", ["none", "pos_weight"])
def test_torch_solver_matches_sklearn_objective(device, weighting):
    """Same C, same masking, same class weights → same coefficients and probabilities."""
    x, labels, _ = planted(400, 12, 3, seed=2, strength=0.8)
    labels[np.random.default_rng(3).random(labels.shape) < 0.15] = np.nan
    x_std = Standardizer.fit(x).apply(x).numpy()
    pos_weight = positive_weights(labels) if weighting == "pos_weight" else None
    cs = np.array([0.01, 1.0, 100.0])
    fit = TorchBackend(device=device).fit_grid(x_std, labels, cs, pos_weight=pos_weight, tol=1e-6)
    assert fit.converged.all() or (fit.status <= 2).all()
    for g, c in enumerate(cs):
        for col in range(3):
            coef, intercept = sklearn_reference(
                x_std, labels[:, col], c, None if pos_weight is None else pos_weight[col]
            )
            scale = max(1.0, np.abs(coef).max())
            np.testing.assert_allclose(fit.coef[g, col], coef, atol=2e-3 * scale)
            np.testing.assert_allclose(fit.intercept[g, col], intercept, atol=2e-3 * scale)
            ours = 1 / (1 + np.exp(-(x_std @ fit.coef[g, col] + fit.intercept[g, col])))
            theirs = 1 / (1 + np.exp(-(x_std @ coef + intercept)))
            np.testing.assert_allclose(ours, theirs, atol=1e-3)


def test_torch_and_sklearn_backends_reach_the_same_validation_auroc():
    x, labels, _ = planted(700, 16, 3, seed=4, strength=0.7)
    labels[np.random.default_rng(5).random(labels.shape) < 0.1] = -1
    results = {}
    for backend in ("torch", "sklearn"):
        probe, report = fit_linear_probe(
            x[:400],
            labels[:400],
            x[400:],
            labels[400:],
            ["a", "b", "c"],
            cs=[1e-3, 0.1, 10.0],
            backend=backend,
            class_weight="pos_weight",
            tol=1e-6,
        )
        results[backend] = (probe, report)
    (p_t, r_t), (p_s, r_s) = results["torch"], results["sklearn"]
    assert np.nanmax(np.abs(r_t.val_auroc - r_s.val_auroc)) <= 0.005
    np.testing.assert_array_equal(r_t.chosen, r_s.chosen)
    np.testing.assert_allclose(p_t.predict_proba(x[400:]), p_s.predict_proba(x[400:]), atol=2e-3)


def test_uncertain_rows_are_masked_out_of_the_loss():
    """-1 rows carry features that would pull the fit the wrong way; ignoring them must equal dropping them."""
    x, labels, directions = planted(600, 10, 2, seed=6)
    rng = np.random.default_rng(7)
    uncertain = rng.random(600) < 0.3
    x[uncertain] += 6.0 * directions[0]  # -1 rows sit far along finding a's positive direction
    marked = labels.copy()
    marked[uncertain, 0] = -1
    cs = [1.0]
    ignore, _ = fit_linear_probe(
        x, marked, x[:0], marked[:0], ["a", "b"], cs=cs, uncertain="ignore", tol=1e-7
    )
    as_missing = marked.copy()
    as_missing[uncertain, 0] = np.nan
    missing, _ = fit_linear_probe(x, as_missing, x[:0], marked[:0], ["a", "b"], cs=cs, tol=1e-7)
    np.testing.assert_allclose(ignore.coef, missing.coef, atol=1e-6)

    x_std = ignore.standardizer.apply(x).numpy()
    coef, _ = sklearn_reference(x_std, as_missing[:, 0], 1.0)  # sklearn on the annotated rows only
    np.testing.assert_allclose(ignore.coef[0], coef, atol=2e-3 * max(1.0, np.abs(coef).max()))

    as_negative, _ = fit_linear_probe(
        x, marked, x[:0], marked[:0], ["a", "b"], cs=cs, uncertain="zero", tol=1e-7
    )
    cosine = (
        ignore.coef[0]
        @ as_negative.coef[0]
        / np.linalg.norm(ignore.coef[0])
        / np.linalg.norm(as_negative.coef[0])
    )
    assert (
        cosine < 0.5
    )  # using the -1 rows (as negatives) would have turned the fit away from the signal
    np.testing.assert_allclose(
        ignore.coef[1], as_negative.coef[1], atol=1e-6
    )  # finding b is untouched


def test_training_targets_policies_and_bad_labels():
    labels = np.array([[1, 0, -1, np.nan]], dtype=np.float32).T
    assert np.isnan(training_targets(labels, "ignore")[2, 0])
    assert training_targets(labels, "zero")[2, 0] == 0
    assert training_targets(labels, "one")[2, 0] == 1
    assert np.isnan(training_targets(labels, "one")[3, 0])
    with pytest.raises(DataFormatError, match="row 0, column 0"):
        training_targets(np.array([[2.0]]))
    with pytest.raises(ConfigError, match="--uncertain"):
        training_targets(labels, "maybe")


def _store(path, x, labels, split, findings):
    n = len(x)
    meta = RowMetadata(
        np.array([f"img{i:04d}" for i in range(n)]),
        np.asarray(split),
        np.array([f"p{i:04d}" for i in range(n)]),
        labels.astype(np.float32),
        tuple(findings),
    )
    return create_embeddings(path, meta, {"cls": x, "mean": x[:, ::-1].copy()}, dtype="float32")


def test_grid_is_chosen_on_validation_not_test(tmp_path, bars):
    """Test = validation rows with labels flipped, so the best C on test is the worst on validation."""
    rng = np.random.default_rng(8)
    n_train, n_val, dim = 60, 200, 30
    x = rng.standard_normal((n_train + n_val, dim)).astype(np.float32)
    y = (x[:, 0] + 0.8 * rng.standard_normal(n_train + n_val) > 0).astype(np.float32)[:, None]
    x_all = np.concatenate([x, x[n_train:]])
    labels = np.concatenate([y, 1 - y[n_train:]])
    split = ["train"] * n_train + ["val"] * n_val + ["test"] * n_val
    _store(tmp_path / "emb.zarr", x_all, labels, split, ["a"])
    cs = (1e-4, 1e-2, 1.0, 100.0)
    summary = run_probe(
        ProbeConfig(
            store=tmp_path / "emb.zarr", out=tmp_path / "p.json", grid=cs, device="cpu", tol=1e-6
        ),
        progress=bars,
    )
    (bar,) = bars  # one solver pass, counted in iterations
    assert bar.desc == "fitting grid" and bar.closed and bar.done > 1

    scaler = Standardizer.fit(x[:n_train])
    x_tr, x_val = scaler.apply(x[:n_train]).numpy(), scaler.apply(x[n_train:]).numpy()
    val_auc = []
    for c in cs:
        coef, intercept = sklearn_reference(x_tr, y[:n_train, 0], c)
        val_auc.append(roc_auc_score(y[n_train:, 0], x_val @ coef + intercept))
    reported = [g["val_mean_auroc"] for g in summary["grid"]]
    np.testing.assert_allclose(reported, val_auc, atol=0.005)
    assert max(val_auc) - min(val_auc) > 0.02  # the grid matters here
    assert summary["chosen"]["C"] == cs[int(np.argmax(val_auc))]
    assert (
        summary["chosen"]["C"] != cs[int(np.argmin(val_auc))]
    )  # the value the test split would prefer
    assert summary["test_mean_auroc"] == pytest.approx(1 - max(val_auc), abs=0.005)


def test_refit_on_train_and_validation_matches_sklearn():
    x, labels, _ = planted(500, 8, 2, seed=9)
    probe, report = fit_linear_probe(
        x[:300],
        labels[:300],
        x[300:],
        labels[300:],
        ["a", "b"],
        cs=[0.01, 1.0],
        refit_trainval=True,
        tol=1e-7,
    )
    assert probe.metadata["refit_trainval"]
    np.testing.assert_allclose(probe.standardizer.mean, x.mean(0), rtol=1e-4, atol=1e-4)
    x_std = probe.standardizer.apply(x).numpy()
    for col in range(2):
        c = probe.cs[col]
        assert c == [0.01, 1.0][report.chosen[col]]
        coef, intercept = sklearn_reference(x_std, labels[:, col], c)
        np.testing.assert_allclose(probe.coef[col], coef, atol=2e-3 * max(1.0, np.abs(coef).max()))


def test_per_finding_selection_takes_each_findings_best():
    x, labels, _ = planted(600, 20, 3, seed=10, strength=0.6)
    _, report = fit_linear_probe(
        x[:300],
        labels[:300],
        x[300:],
        labels[300:],
        ["a", "b", "c"],
        cs=[1e-4, 1e-2, 1.0, 100.0],
        selection="per-finding",
    )
    np.testing.assert_array_equal(report.chosen, np.nanargmax(report.val_auroc, axis=0))


def test_finding_without_positives_gets_a_constant_score(caplog):
    x, labels, _ = planted(300, 6, 2, seed=11)
    labels[:200, 1] = 0
    with caplog.at_level(logging.WARNING):
        probe, report = fit_linear_probe(
            x[:200], labels[:200], x[200:], labels[200:], ["a", "b"], cs=[0.1, 1.0]
        )
    assert "'b' has no positive training rows" in caplog.text
    assert np.isnan(probe.cs[1]) and not np.isnan(probe.cs[0])
    scores = probe.predict_proba(x[200:])
    np.testing.assert_allclose(
        scores[:, 1], 0.5 / 201, rtol=1e-5
    )  # smoothed prevalence (0 + ½) / (200 + 1)
    assert np.isnan(report.val_auroc[:, 1]).all()


def test_blocks_of_problems_give_the_same_fit():
    x, labels, _ = planted(300, 8, 3, seed=12)
    x_std = Standardizer.fit(x).apply(x)
    cs = [0.01, 0.1, 1.0, 10.0]
    whole = TorchBackend().fit_grid(x_std, labels, cs, tol=1e-6)
    blocks = TorchBackend(max_memory=20_000).fit_grid(
        x_std, labels, cs, tol=1e-6
    )  # 3 batches of 4 problems, feature blocks of 15 rows
    np.testing.assert_allclose(whole.coef, blocks.coef, atol=1e-4)


def test_sklearn_backend_reports_nonconvergence():
    x, labels, _ = planted(200, 6, 1, seed=13, strength=4.0)
    fit = SklearnBackend().fit_grid(
        Standardizer.fit(x).apply(x), labels, [1e4], max_iter=2, tol=1e-12
    )
    assert not fit.converged.any()


def test_weights_round_trip_and_refuse_other_files(tmp_path):
    x, labels, _ = planted(300, 6, 2, seed=14)
    probe, _ = fit_linear_probe(
        x[:200],
        labels[:200],
        x[200:],
        labels[200:],
        ["a", "b"],
        cs=[0.1, 1.0],
        metadata={"features": "cls"},
    )
    path = probe.save(tmp_path / "w.safetensors")
    loaded = LinearProbe.load(path)
    assert loaded.findings == ("a", "b") and loaded.metadata["features"] == "cls"
    np.testing.assert_array_equal(loaded.predict_proba(x), probe.predict_proba(x))
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError, match="bad.safetensors"):
        LinearProbe.load(tmp_path / "bad.safetensors")
