"""Label-efficiency curves: the subset rule checked against direct pandas/numpy counts, fraction 1
against the plain probe, and the curve summary against scikit-learn on the written files."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from sklearn.metrics import roc_auc_score

from cxrprobe.cache.embeddings import create_embeddings
from cxrprobe.cache.store import RowMetadata
from cxrprobe.cli import main
from cxrprobe.errors import ConfigError
from cxrprobe.probe.curves import draw_subsets
from cxrprobe.probe.run import ProbeConfig, run_probe
from cxrprobe.stats.options import BootstrapOptions
from cxrprobe.stats.predictions import read_predictions, write_predictions
from cxrprobe.workflow.config import study_from_mapping
from cxrprobe.workflow.curve_report import collect_curves

FINDINGS = ("effusion", "edema", "rare")
N, DIM = 360, 12


def _table(seed: int, patients: int = 120, findings: int = 3) -> pd.DataFrame:
    """Training rows: 1-4 images per patient, a common, a medium and a rare finding (one
    positive patient), uncertain and blank labels mixed in."""
    rng = np.random.default_rng(seed)
    images = rng.integers(1, 5, patients)
    patient = np.repeat([f"p{i:03d}" for i in range(patients)], images)
    n = len(patient)
    prevalence = np.array([0.4, 0.1, 0.0])[:findings]
    targets = (rng.random((n, findings)) < prevalence).astype(np.float32)
    targets[patient == "p007", -1] = 1.0  # the rare finding: one patient's images
    targets[rng.random((n, findings)) < 0.1] = np.nan
    table = pd.DataFrame(targets, columns=[f"y{j}" for j in range(findings)])
    table["patient"] = patient
    table["id"] = [f"img{i:04d}" for i in range(n)]
    return table.sample(frac=1.0, random_state=seed).reset_index(drop=True)  # rows unordered


def _draw(table: pd.DataFrame, fractions, repeats=3, seed=0):
    targets = table.filter(like="y").to_numpy(np.float32)
    names = [f"f{j}" for j in range(targets.shape[1])]
    return draw_subsets(
        table["patient"].to_numpy(),
        table["id"].to_numpy(),
        targets,
        names,
        fractions,
        repeats,
        seed,
    )


@pytest.mark.parametrize("seed", range(6))
def test_subsets_are_patient_level_nested_sized_and_keep_every_class(seed):
    table = _table(seed)
    fractions = (0.05, 0.2, 0.5, 1.0)
    subsets = _draw(table, fractions, seed=seed)
    total = table["patient"].nunique()
    by_repeat: dict[int, list] = {}
    for s in subsets:
        inside = np.zeros(len(table), dtype=bool)
        inside[s.positions] = True
        taken = set(table.loc[inside, "patient"])
        assert taken.isdisjoint(table.loc[~inside, "patient"])  # no patient split in/out
        assert len(taken) == s.patients == max(1, round(s.fraction * total))
        assert abs(len(taken) / total - s.fraction) <= 0.5 / total + 1e-12
        picked = table[inside]
        for j in range(3):  # every finding keeps a positive and a negative training row
            assert (picked[f"y{j}"] == 1).any() and (picked[f"y{j}"] == 0).any()
        assert s.unfittable == []
        ids = "\n".join(table["id"].to_numpy()[np.sort(s.positions)])
        assert s.rows_sha256 == hashlib.sha256(ids.encode()).hexdigest()
        by_repeat.setdefault(s.repeat, []).append(set(s.positions.tolist()))
    for sets in by_repeat.values():  # nested: each fraction inside the next larger one
        assert all(a <= b for a, b in zip(sets, sets[1:], strict=False))
        assert sets[-1] == set(range(len(table)))  # fraction 1: the whole training split
    assert by_repeat[0][0] != by_repeat[1][0]  # repeats differ


def test_subsets_are_reproducible_and_independent_of_the_other_fractions_and_row_order():
    table = _table(3)
    first = _draw(table, (0.1, 0.5))
    again = _draw(table, (0.5, 0.1))
    alone = _draw(table, (0.1,))
    point = {(s.fraction, s.repeat): s for s in first}
    for s in again:
        np.testing.assert_array_equal(s.positions, point[(s.fraction, s.repeat)].positions)
    for s in alone:
        np.testing.assert_array_equal(s.positions, point[(0.1, s.repeat)].positions)
    shuffled = table.sample(frac=1.0, random_state=99).reset_index(drop=True)
    for s, t in zip(first, _draw(shuffled, (0.1, 0.5)), strict=True):
        ids = set(table["id"].to_numpy()[s.positions])
        assert ids == set(shuffled["id"].to_numpy()[t.positions])
    other = _draw(table, (0.1,), seed=1)
    assert any(
        not np.array_equal(a.positions, b.positions) for a, b in zip(alone, other, strict=True)
    )


def test_a_subset_too_small_for_every_finding_flags_the_missing_ones():
    """Three findings, each positive in one single-image patient only: two patients cannot hold
    a positive of all three, so the third is flagged (the others are kept)."""
    targets = np.zeros((50, 3), dtype=np.float32)
    targets[[10, 20, 30], [0, 1, 2]] = 1.0
    table = pd.DataFrame(targets, columns=["y0", "y1", "y2"])
    table["patient"] = table["id"] = [f"p{i:02d}" for i in range(50)]
    for fraction, expected_patients in ((2 / 50, 2), (3 / 50, 3)):
        (subset,) = _draw(table, (fraction,), repeats=1)
        picked = table.iloc[subset.positions]
        expected = [
            f"f{j}"
            for j in range(3)
            if not ((picked[f"y{j}"] == 1).any() and (picked[f"y{j}"] == 0).any())
        ]
        assert subset.patients == expected_patients and subset.unfittable == expected
        assert len(expected) == 3 - expected_patients


def test_a_subset_with_no_fittable_finding_is_refused():
    table = _table(0, findings=1)
    table["y0"] = np.where(table["patient"] == "p007", 1.0, 0.0)  # one positive patient
    table.loc[table["patient"] == "p007", "y0"] = 1.0
    with pytest.raises(ConfigError, match=r"--train-fraction 0.001: repeat 0's subset of 1 of"):
        _draw(table, (0.001,), repeats=1)


# ------------------------------------------------------------------------ on an embedding store
def build_store(path):
    rng = np.random.default_rng(0)
    cls = rng.standard_normal((N, DIM)).astype(np.float32)
    labels = (cls[:, :3] + 0.8 * rng.standard_normal((N, 3)) > [0.0, 0.8, 1.6]).astype(np.float32)
    labels[rng.random((N, 3)) < 0.1] = np.nan
    split = np.array(["train"] * 240 + ["val"] * 60 + ["test"] * 60)
    patients = np.array([f"p{i // 3:03d}" for i in range(N)])  # 3 images per patient
    meta = RowMetadata(
        np.array([f"img{i:04d}" for i in range(N)]), split, patients, labels, FINDINGS
    )
    features = {"cls": cls, "mean": rng.standard_normal((N, DIM)).astype(np.float32)}
    return create_embeddings(path, meta, features, provenance={}, dtype="float32")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("curve") / "emb.zarr"
    build_store(path)
    return path


def _mean_auroc(pred) -> tuple[float, dict[str, float]]:
    per = {}
    for j, finding in enumerate(pred.labels):
        keep = ~np.isnan(pred.targets[:, j])
        y = pred.targets[keep, j]
        if 0 < y.sum() < len(y) and np.ptp(pred.scores[keep, j]) > 0:
            per[finding] = roc_auc_score(y, pred.scores[keep, j])
    return float(np.mean(list(per.values()))), per


@pytest.mark.parametrize("method", ["linear", "knn"])
def test_fraction_one_equals_the_plain_probe(store, tmp_path, method):
    options = {"grid": (0.01, 1.0), "ks": (5, 20), "method": method, "device": "cpu"}
    plain = tmp_path / "plain.json"
    run_probe(ProbeConfig(store=store, out=plain, **options))
    curve_out = tmp_path / "curve.json"
    curve = run_probe(
        ProbeConfig(store=store, out=curve_out, train_fractions=(1.0,), repeats=2, **options)
    )
    a = read_predictions(plain)
    for repeat in range(2):
        b = read_predictions(tmp_path / "curve" / f"f1_r{repeat}.json")
        assert a.ids == b.ids and a.labels == b.labels
        np.testing.assert_array_equal(a.scores, b.scores)
        assert b.provenance["curve"]["repeat"] == repeat
    all_train = "\n".join(f"img{i:04d}" for i in range(240))
    assert curve["points"][0]["rows_sha256"] == hashlib.sha256(all_train.encode()).hexdigest()
    assert curve["curve"][0]["test_mean_auroc"]["sd"] == 0.0


def test_curve_files_provenance_and_summary_match_sklearn(store, tmp_path):
    out = tmp_path / "probes" / "dino.json"
    fractions, repeats = (0.1, 0.5, 1.0), 3
    curve = run_probe(
        ProbeConfig(
            store=store,
            out=out,
            grid=(0.1, 1.0),
            device="cpu",
            train_fractions=fractions,
            repeats=repeats,
            seed=4,
        )
    )
    folder = tmp_path / "probes" / "dino"
    assert json.loads((folder / "curve.json").read_text())["points"] == curve["points"]
    means: dict[float, list[float]] = {}
    for point in curve["points"]:
        path = folder / point["predictions"]
        assert path.name == f"f{point['fraction']:g}_r{point['repeat']}.json"
        pred = read_predictions(path)
        prov = pred.provenance["curve"]
        assert (prov["fraction"], prov["repeat"], prov["seed"]) == (
            point["fraction"],
            point["repeat"],
            4,
        )
        assert prov["patients"] == max(1, round(point["fraction"] * 80)) and prov["rows"] == (
            3 * prov["patients"]
        )
        assert prov["rows_sha256"] == point["rows_sha256"] and prov["unfittable"] == []
        assert pred.ids == [f"img{i:04d}" for i in range(300, N)]  # the test split, fixed
        mean, per = _mean_auroc(pred)
        assert point["test_mean_auroc"] == pytest.approx(mean, abs=1e-12)
        assert point["test_auroc"] == pytest.approx(per, abs=1e-12)
        assert (folder / f"{path.stem}.weights.safetensors").is_file()
        means.setdefault(point["fraction"], []).append(mean)
    assert [row["fraction"] for row in curve["curve"]] == list(fractions)
    for row in curve["curve"]:
        values = means[row["fraction"]]
        assert row["repeats"] == repeats == len(values)
        assert row["test_mean_auroc"]["mean"] == pytest.approx(np.mean(values), abs=1e-12)
        assert row["test_mean_auroc"]["sd"] == pytest.approx(np.std(values, ddof=1), abs=1e-12)
    assert len({p["rows_sha256"] for p in curve["points"] if p["fraction"] == 0.1}) == repeats


def test_cli_draws_a_curve_and_refuses_bad_combinations(store, tmp_path):
    out = tmp_path / "c.json"
    args = ["probe", "--store", str(store), "--grid", "0.1,1", "--device", "cpu", "--out", str(out)]
    result = CliRunner().invoke(main, [*args, "--train-fraction", "0.5,1", "--repeats", "2"])
    assert result.exit_code == 0, result.output
    assert "label-efficiency curve" in result.output and "curve.json" in result.output
    assert sorted(p.name for p in (tmp_path / "c").glob("f*_r[0-9].json")) == [
        "f0.5_r0.json",
        "f0.5_r1.json",
        "f1_r0.json",
        "f1_r1.json",
    ]
    run = json.loads((tmp_path / "c.run.json").read_text())
    assert (
        run["config"]["train_fractions"] == [0.5, 1.0]
        and len(run["config"]["result"]["curve"]) == 2
    )
    for extra, exit_code, message in (  # option problems are usage errors: exit 2
        (["--repeats", "2"], 2, "--repeats needs --train-fraction"),
        (["--train-fraction", "0,1"], 2, "0<x<=1"),
        (["--train-fraction", "0.5,0.5"], 2, "lists [0.5] more than once"),
        (["--train-fraction", "1", "--eval-only", str(out)], 2, "--eval-only re-scores one probe"),
    ):
        refused = CliRunner().invoke(main, [*args, *extra])
        assert refused.exit_code == exit_code and message in refused.output, refused.output


def test_study_config_refuses_repeats_without_fractions(tmp_path):
    raw = {
        "datasets": [{"name": "d", "adapter": "generic", "root": "data"}],
        "inits": [{"name": "a", "init": "random"}],
        "probe": {"repeats": 3},
    }
    with pytest.raises(ConfigError, match=r"\[probe\] repeats needs train_fraction"):
        study_from_mapping(raw, base=tmp_path, commands=main.commands)


def test_report_curves_keep_evaluations_until_a_point_file_changes(store, tmp_path, monkeypatch):
    import cxrprobe.stats.report as stats_report

    out = tmp_path / "run" / "ds" / "a" / "curve.json"
    options = {"grid": (0.1, 1.0), "device": "cpu"}
    run_probe(ProbeConfig(store=store, out=out, train_fractions=(0.5, 1.0), repeats=2, **options))
    boot = BootstrapOptions(resamples=200, device="cpu")
    first = collect_curves(tmp_path / "run", boot)
    point = tmp_path / "run" / "ds" / "a" / "curve" / "f0.5_r1.json"
    direct = [
        stats_report.evaluate_file(point.with_name(f"f0.5_r{r}.json"), boot)["mean"]
        for r in range(2)
    ]
    assert first[0]["fraction"] == 0.5 and first[0]["mean_auroc"] == pytest.approx(
        np.mean([m["auroc"] for m in direct]), abs=1e-12
    )

    def refuse(*args, **kwargs):
        raise AssertionError("evaluated again although nothing changed")

    monkeypatch.setattr(stats_report, "evaluate_file", refuse)
    assert collect_curves(tmp_path / "run", boot) == first
    monkeypatch.undo()
    pred = read_predictions(point)
    pred.scores = 1 - pred.scores  # the file changes: its evaluation is redone
    write_predictions(pred, point)
    again = collect_curves(tmp_path / "run", boot)
    changed = stats_report.evaluate_file(point, boot)["mean"]["auroc"]
    assert again[0]["per_repeat"] == pytest.approx([direct[0]["auroc"], changed], abs=1e-12)
