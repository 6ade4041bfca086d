"""kNN probe against a brute-force numpy reference, and k chosen on validation."""

from __future__ import annotations

import numpy as np
import pytest

from cxrprobe.errors import ConfigError
from cxrprobe.probe.knn import fit_knn_probe, knn_scores
from cxrprobe.stats.auroc import auroc


def brute_force(train_x, train_targets, query_x, k, temperature):
    """Slow reference: full similarity matrix, argsort, weighted share of annotated positives."""
    a = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    q = query_x / np.linalg.norm(query_x, axis=1, keepdims=True)
    sim = q.astype(np.float64) @ a.T.astype(np.float64)
    annotated = ~np.isnan(train_targets)
    prevalence = np.nansum(train_targets == 1, axis=0) / annotated.sum(axis=0)
    out = np.empty((len(q), train_targets.shape[1]))
    for i in range(len(q)):
        top = np.argsort(-sim[i])[: min(k, len(a))]
        w = np.exp(sim[i, top] / temperature)
        for col in range(train_targets.shape[1]):
            ann = annotated[top, col]
            if not ann.any():
                out[i, col] = prevalence[col]
                continue
            yes, no = w[train_targets[top, col] == 1].sum(), w[train_targets[top, col] == 0].sum()
            out[i, col] = yes / (yes + no)
    return out


def data(n_train, n_query, dim, n_labels, seed):
    rng = np.random.default_rng(seed)
    train = rng.standard_normal((n_train, dim)).astype(np.float32)
    query = rng.standard_normal((n_query, dim)).astype(np.float32)
    targets = (train[:, :n_labels] + 0.5 * rng.standard_normal((n_train, n_labels)) > 0).astype(
        np.float32
    )
    targets[rng.random(targets.shape) < 0.3] = np.nan
    return train, targets, query


def test_knn_matches_brute_force_reference(device):
    train, targets, query = data(150, 40, 8, 3, seed=0)
    ks = (1, 5, 20, 200)  # 200 > the 150 training rows: capped
    # a tiny similarity budget forces several training and query chunks through the top-k merge
    ours = knn_scores(
        train, targets, query, ks, temperature=0.07, device=device, max_elements=64 * 30
    )
    for k in ks:
        np.testing.assert_allclose(
            ours[k], brute_force(train, targets, query, k, 0.07), rtol=1e-4, atol=1e-6
        )


def test_search_in_blocks_of_float16_rows_matches_brute_force():
    """Features kept as float16 and normalised block by block: 4 training blocks of 40 rows, query
    blocks of 8 (max_elements 320), the same scores as the brute force on the same values."""
    train, targets, query = data(150, 30, 8, 3, seed=4)
    train16, query16 = train.astype(np.float16), query.astype(np.float16)
    ks = (1, 5, 20)
    ours = knn_scores(train16, targets, query16, ks, temperature=0.07, max_elements=8 * 40)
    whole = knn_scores(train16.astype(np.float32), targets, query16.astype(np.float32), ks)
    for k in ks:
        reference = brute_force(
            train16.astype(np.float32), targets, query16.astype(np.float32), k, 0.07
        )
        np.testing.assert_allclose(ours[k], reference, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(ours[k], whole[k], rtol=1e-6)  # blocks: rounding only


def test_neighbours_without_annotation_fall_back_to_prevalence():
    train = np.eye(4, dtype=np.float32)[[0, 0, 1, 2, 3]]
    targets = np.array([[np.nan], [np.nan], [1], [0], [0]], dtype=np.float32)
    scores = knn_scores(train, targets, np.eye(4, dtype=np.float32)[[0]], [2], temperature=0.1)
    assert scores[2][0, 0] == pytest.approx(
        1 / 3
    )  # both neighbours unannotated: training prevalence


def test_k_is_chosen_on_validation():
    train, targets, val = data(300, 120, 6, 2, seed=1)
    rng = np.random.default_rng(2)
    val_labels = (val[:, :2] + rng.standard_normal((120, 2)) > 0).astype(np.float32)
    val_labels[:5, 0] = -1  # uncertain validation rows are not targets
    ks = (3, 10, 50)
    test_scores, report = fit_knn_probe(train, targets, val, val_labels, val[:7], ks=ks)
    masked = val_labels.copy()
    masked[masked == -1] = np.nan
    expected = [np.mean(auroc(masked, brute_force(train, targets, val, k, 0.07))) for k in ks]
    np.testing.assert_allclose(np.nanmean(report.val_auroc, axis=1), expected, atol=1e-6)
    assert report.chosen_k == ks[int(np.argmax(expected))]
    np.testing.assert_allclose(
        test_scores, brute_force(train, targets, val[:7], report.chosen_k, 0.07), rtol=1e-4
    )


def test_bad_knn_options():
    train, targets, query = data(20, 5, 4, 1, seed=3)
    with pytest.raises(ConfigError, match="temperature"):
        knn_scores(train, targets, query, [5], temperature=0)
    with pytest.raises(ConfigError, match="validation split is empty"):
        fit_knn_probe(train, targets, query[:0], targets[:0], query, ks=(5, 10))
