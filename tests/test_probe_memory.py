"""The probe in bounded memory: same predictions as the whole-matrix solver, blocks that follow the
``--max-memory`` budget, float16 features kept as stored, budget parsing and its errors."""

from __future__ import annotations

import os

import numpy as np
import pytest
from click.testing import CliRunner

from cxrprobe.cache.embeddings import create_embeddings, open_embeddings
from cxrprobe.cache.store import RowMetadata
from cxrprobe.cli import main
from cxrprobe.errors import ConfigError
from cxrprobe.probe import backends, run
from cxrprobe.probe.features import (
    AUTO_CAP,
    ScaledFeatures,
    Standardizer,
    memory_budget,
    parse_memory,
)
from cxrprobe.probe.linear import fit_linear_probe
from cxrprobe.probe.run import ProbeConfig, run_probe
from cxrprobe.stats.predictions import read_predictions


def case(seed=21, n=480, dim=24, n_labels=3):
    """Correlated, offset float16 features; labels with 5 % uncertain and 7 % missing."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, n_labels)) < np.linspace(0.15, 0.45, n_labels)).astype(np.float32)
    directions = rng.standard_normal((n_labels, dim))
    mix = rng.standard_normal((dim, dim)) * 0.3 + np.eye(dim)
    x = rng.standard_normal((n, dim)) @ mix + 1.2 * (labels - 0.5) @ directions + 2.5
    u = rng.random(labels.shape)
    labels[u < 0.05] = -1
    labels[(u >= 0.05) & (u < 0.12)] = np.nan
    return x.astype(np.float16), labels


# Test-row probabilities (first 10 rows x 3 findings) printed by the solver before it worked in
# blocks (whole float32 standardised copy, one L-BFGS batch), on case() with the settings below.
BEFORE = {
    False: [
        1.751606003e-03, 9.996569157e-01, 7.213605568e-04, 1.219057667e-04, 7.416818291e-02,
        9.933902025e-01, 6.742116809e-02, 4.012098014e-01, 9.925368428e-01, 1.032498628e-01,
        5.709187686e-02, 8.031048179e-01, 7.121385634e-02, 3.122994490e-02, 9.921189547e-01,
        4.453794286e-02, 4.279413261e-03, 1.022046991e-02, 2.233309299e-02, 2.119999565e-02,
        1.066762861e-02, 1.949999481e-03, 9.995180368e-01, 9.913874269e-01, 5.123892915e-04,
        1.626395062e-02, 8.751969039e-02, 2.076554485e-02, 4.806654062e-03, 6.003936753e-03,
    ],
    True: [
        1.158361090e-03, 9.997850060e-01, 5.551350769e-04, 5.703085844e-05, 7.773701847e-02,
        9.960588217e-01, 4.014553130e-02, 2.967755795e-01, 9.957432151e-01, 9.646169096e-02,
        3.085570410e-02, 8.585004807e-01, 4.074210674e-02, 1.714590006e-02, 9.960357547e-01,
        2.760817297e-02, 2.574465470e-03, 1.006910391e-02, 2.281500585e-02, 1.980379224e-02,
        8.880188689e-03, 1.075764070e-03, 9.996581078e-01, 9.950742126e-01, 7.707858458e-04,
        9.200037457e-03, 7.803472877e-02, 1.543823164e-02, 2.744145924e-03, 5.517771933e-03,
    ],
}  # fmt: skip


@pytest.mark.parametrize("refit", [False, True])
@pytest.mark.parametrize("max_memory", [None, 20_000])  # one batch; 6 batches of 8-row blocks
def test_predictions_match_the_whole_matrix_solver(refit, max_memory):
    x, labels = case()
    probe, report = fit_linear_probe(
        x[:300],
        labels[:300],
        x[300:400],
        labels[300:400],
        ["a", "b", "c"],
        cs=np.logspace(-4, 2, 6),
        class_weight="pos_weight",
        refit_trainval=refit,
        tol=1e-6,
        max_memory=max_memory,
    )
    np.testing.assert_array_equal(report.chosen, [3, 3, 3])
    scores = probe.predict_proba(x[400:410])
    np.testing.assert_allclose(scores.ravel(), BEFORE[refit], rtol=0, atol=1e-6)


def test_solver_batches_and_blocks_follow_the_budget(monkeypatch):
    """n=300, D=8, 12 problems, 20,000 bytes: a problem needs 8*300 + 4*(2*10+12)*9 = 3552 bytes,
    7/8 of the budget holds 4, so 3 batches of 4; blocks of 2500 // (8*8 + 24*4) = 15 rows."""
    seen, rows_used = [], []
    solve = backends.lbfgs_logistic

    def spy(feats, y, s, label_of, l2, **kw):
        seen.append((len(label_of), kw["block_rows"]))
        return solve(feats, y, s, label_of, l2, **kw)

    blocks = ScaledFeatures.blocks

    def spy_blocks(self, rows=None):
        for cols, block in blocks(self, rows):
            rows_used.append(len(block))
            yield cols, block

    monkeypatch.setattr(backends, "lbfgs_logistic", spy)
    monkeypatch.setattr(ScaledFeatures, "blocks", spy_blocks)
    x, labels = case(n=300, dim=8)
    feats = ScaledFeatures([x], Standardizer.fit(x))
    targets = np.where(labels == -1, np.nan, labels)
    backends.TorchBackend(max_memory=20_000).fit_grid(feats, targets, [0.01, 0.1, 1.0, 10.0])
    assert seen == [(4, 15)] * 3
    assert max(rows_used) == 15
    with pytest.raises(ConfigError, match="--max-memory"):
        backends.TorchBackend(max_memory=2_000).fit_grid(feats, targets, [1.0])


def test_standardisation_in_blocks_equals_numpy_and_leaves_the_input_alone():
    rng = np.random.default_rng(0)
    a = (rng.standard_normal((50, 6)) * [1, 2, 3, 4, 5, 0] + 7).astype(np.float32)
    b = (rng.standard_normal((31, 6)) + 7).astype(np.float16)
    whole = np.concatenate([a, b.astype(np.float32)]).astype(np.float64)
    scaler = Standardizer.fit(a, b)
    std = whole.std(axis=0)
    np.testing.assert_allclose(scaler.mean, whole.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(scaler.std, np.where(std > 0, std, 1.0), rtol=1e-5)
    a_before = a.copy()
    feats = ScaledFeatures([a, b], scaler)
    got = np.concatenate([block.numpy() for _, block in feats.blocks(7)])
    assert [rows for rows, _ in feats.blocks(40)][1:3] == [slice(40, 50), slice(50, 81)]
    expected = (whole.astype(np.float32) - scaler.mean) / scaler.std
    np.testing.assert_array_equal(got, expected)  # the same float32 arithmetic, block or whole
    np.testing.assert_array_equal(a, a_before)  # standardised in a copy, never in place
    np.testing.assert_array_equal(feats.materialize().numpy(), expected)


def test_memory_sizes_parse():
    assert parse_memory("4GB") == 4 * 10**9
    assert parse_memory("512MiB") == 512 * 2**20
    assert parse_memory(" 1.5g ") == 1_500_000_000
    assert parse_memory(1000) == parse_memory("1000") == 1000
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert memory_budget("auto") == memory_budget(None) == min(AUTO_CAP, physical // 4)
    for bad in ("lots", "0", "-1GB", "4 GB per core"):
        with pytest.raises(ConfigError, match="--max-memory"):
            parse_memory(bad)


def _store(path):
    x, labels = case(seed=3, n=400, dim=12)
    meta = RowMetadata(
        np.array([f"img{i:04d}" for i in range(400)]),
        np.array(["train"] * 250 + ["val"] * 80 + ["test"] * 70),
        np.array([f"p{i:04d}" for i in range(400)]),
        labels,
        ("a", "b", "c"),
    )
    create_embeddings(path, meta, {"cls": x, "mean": -x}, dtype="float16")
    return x.astype(np.float32), labels


def test_store_features_stay_float16_and_blocked_run_matches(tmp_path, monkeypatch):
    x, labels = _store(tmp_path / "emb.zarr")
    emb = open_embeddings(tmp_path / "emb.zarr")
    rows = emb.rows(split="train")
    monkeypatch.setattr(run, "_LOAD_ROWS", 7)  # loaded in many reads
    loaded = run._load_features(emb, "cls+mean", rows, "cpu")
    assert str(loaded.dtype) == "torch.float16"
    np.testing.assert_array_equal(loaded.float().numpy(), emb.features("cls+mean", rows=rows))

    cs = (0.01, 0.1, 1.0)
    run_probe(
        ProbeConfig(
            store=tmp_path / "emb.zarr",
            out=tmp_path / "p.json",
            features="cls",
            grid=cs,
            device="cpu",
            max_memory="40kB",  # several batches and row blocks
        )
    )
    pred = read_predictions(tmp_path / "p.json")
    reference, _ = fit_linear_probe(  # float32 arrays, one batch
        x[:250], labels[:250], x[250:330], labels[250:330], ["a", "b", "c"], cs=cs
    )
    np.testing.assert_allclose(pred.scores, reference.predict_proba(x[330:]), atol=1e-5)


def test_cli_max_memory_errors_name_the_option(tmp_path):
    _store(tmp_path / "emb.zarr")
    for value, message in (("lots", "not a size"), ("1kB", "1000 bytes is too small")):
        result = CliRunner().invoke(
            main,
            ["probe", "--store", str(tmp_path / "emb.zarr"), "--out", str(tmp_path / "p.json")]
            + ["--device", "cpu", "--max-memory", value],
        )
        assert result.exit_code == 2, result.output  # a usage error, one line, no traceback
        assert "--max-memory" in result.output and message in result.output
        assert "Traceback" not in result.output
