"""``cxrprobe probe`` end to end on a small store: outputs, --eval-only, kNN, split overrides, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.metrics import roc_auc_score

from cxrprobe.cache.embeddings import create_embeddings
from cxrprobe.cache.store import RowMetadata
from cxrprobe.cli import main
from cxrprobe.probe.linear import LinearProbe
from cxrprobe.stats.predictions import read_predictions

FINDINGS = ("effusion", "edema")
N, DIM = 400, 16
FAILED_ROW = 390  # a test row whose image could not be read


def build_store(path, dim=DIM, seed=0):
    rng = np.random.default_rng(seed)
    cls = rng.standard_normal((N, dim)).astype(np.float32)
    labels = (cls[:, :2] + 0.7 * rng.standard_normal((N, 2)) > 0.3).astype(np.float32)
    labels[rng.random((N, 2)) < 0.1] = -1
    labels[rng.random((N, 2)) < 0.1] = np.nan
    split = np.array(["train"] * 250 + ["val"] * 70 + ["test"] * 80)
    meta = RowMetadata(
        np.array([f"img{i:04d}" for i in range(N)]),
        split,
        np.array([f"p{i // 2:04d}" for i in range(N)]),
        labels,
        FINDINGS,
    )
    mean = rng.standard_normal((N, dim)).astype(np.float32)
    return create_embeddings(
        path,
        meta,
        {"cls": cls, "mean": mean},
        provenance={"manifest": "m.parquet"},
        failures={FAILED_ROW: "truncated file"},
        dtype="float32",
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("probe") / "emb.zarr"
    build_store(path)
    return path


def invoke(*args):
    return CliRunner().invoke(main, ["probe", *map(str, args)])


def test_linear_probe_writes_predictions_weights_summary_and_run_record(store, tmp_path):
    out = tmp_path / "probes" / "dino_cls.json"
    result = invoke("--store", store, "--out", out, "--grid", "1e-3:1e2:6", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "chosen C" in result.output and "effusion" in result.output

    pred = read_predictions(out)
    emb_ids = [f"img{i:04d}" for i in range(320, N) if i != FAILED_ROW]
    assert pred.ids == emb_ids  # test rows only, the failed one left out
    assert pred.labels == list(FINDINGS) and pred.score_kind == "probability"
    raw = build_store(tmp_path / "copy.zarr").labels[320:][np.arange(80) != FAILED_ROW - 320]
    expected_targets = np.where(raw == -1, np.nan, raw)  # uncertain is never a target
    np.testing.assert_array_equal(pred.targets, expected_targets)
    prov = pred.provenance
    assert (
        prov["method"] == "linear-probe"
        and prov["features"] == "cls"
        and prov["backend"] == "torch"
    )
    assert (
        prov["dataset"]["manifest"] == "m.parquet" and len(prov["grid"]) == 6 and "versions" in prov
    )

    summary = json.loads(out.with_name("dino_cls.summary.json").read_text())
    assert [g["C"] for g in summary["grid"]] == pytest.approx(np.logspace(-3, 2, 6))
    assert (
        summary["chosen"]["C"]
        == summary["grid"][int(np.argmax([g["val_mean_auroc"] for g in summary["grid"]]))]["C"]
    )
    assert summary["splits"]["test"] == {"names": ["test"], "rows": 79, "failed_excluded": 1}
    for col, finding in enumerate(FINDINGS):
        rows = ~np.isnan(pred.targets[:, col])
        assert summary["test_auroc"][finding] == pytest.approx(
            roc_auc_score(pred.targets[rows, col], pred.scores[rows, col])
        )
        assert summary["test_auroc"][finding] > 0.75
    run = json.loads(out.with_name("dino_cls.run.json").read_text())
    assert run["command"] == "cxrprobe probe" and run["config"]["store"] == str(store)
    probe = LinearProbe.load(out.with_name("dino_cls.weights.safetensors"))
    assert probe.findings == FINDINGS and probe.coef.shape == (2, DIM)


def test_eval_only_reproduces_the_predictions(store, tmp_path):
    first = tmp_path / "fit.npz"
    options = "--features cls+mean --grid 0.01,1 --class-weight pos_weight --refit-trainval --select per-finding"
    fitted = invoke("--store", store, "--out", first, *options.split())
    assert fitted.exit_code == 0, fitted.output
    again = tmp_path / "again.json"
    weights = tmp_path / "fit.weights.safetensors"
    result = invoke("--store", store, "--out", again, "--eval-only", weights)
    assert result.exit_code == 0, result.output
    a, b = read_predictions(first), read_predictions(again)
    assert a.ids == b.ids and b.provenance["features"] == "cls+mean"
    np.testing.assert_allclose(a.scores, b.scores, rtol=0, atol=1e-7)
    assert not (tmp_path / "again.weights.safetensors").exists()


@pytest.mark.gpu
def test_cuda_run_matches_cpu(store, tmp_path):
    for device in ("cpu", "cuda"):
        out = tmp_path / f"{device}.json"
        result = invoke("--store", store, "--out", out, "--grid", "0.01,1", "--device", device)
        assert result.exit_code == 0, result.output
    cpu, cuda = read_predictions(tmp_path / "cpu.json"), read_predictions(tmp_path / "cuda.json")
    np.testing.assert_allclose(cpu.scores, cuda.scores, atol=1e-4)


def test_eval_only_refuses_features_of_another_width(store, tmp_path):
    assert invoke("--store", store, "--out", tmp_path / "fit.json", "--grid", "1").exit_code == 0
    build_store(tmp_path / "wide.zarr", dim=DIM + 4)
    result = invoke(
        "--store",
        tmp_path / "wide.zarr",
        "--out",
        tmp_path / "x.json",
        "--eval-only",
        tmp_path / "fit.weights.safetensors",
    )
    assert result.exit_code == 1 and "expects 16-d cls features" in result.output


def test_knn_probe(store, tmp_path):
    out = tmp_path / "knn.json"
    result = invoke("--store", store, "--out", out, "--method", "knn", "--k", "5,20")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "knn.summary.json").read_text())
    assert [g["k"] for g in summary["grid"]] == [5, 20] and summary["chosen"]["k"] in (5, 20)
    assert read_predictions(out).provenance["method"] == "knn"
    assert not (tmp_path / "knn.weights.safetensors").exists()


def test_split_csv_and_validation_fraction(store, tmp_path):
    ids = [f"img{i:04d}" for i in range(N)]
    splits = ["fit"] * 299 + ["holdout"] * 101  # row 299 shares patient p0149 with fitting row 298
    lines = [f"{i},{s}" for i, s in zip(ids, splits, strict=True)] + ["ghost,fit"]
    csv = tmp_path / "splits.csv"
    csv.write_text("image_id,split\n" + "\n".join(lines) + "\n")
    out = tmp_path / "p.json"
    options = (
        "--train-split fit --test-split holdout --val-fraction 0.25 --grid 0.1,1 --allow-leakage"
    )
    result = invoke("--store", store, "--out", out, "--split-csv", csv, *options.split())
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "p.summary.json").read_text())
    assert summary["splits"]["test"]["rows"] == 100  # 101 holdout rows, one failed
    assert summary["splits"]["train"]["rows"] + summary["splits"]["val"]["rows"] == 299
    assert 0.2 < summary["splits"]["val"]["rows"] / 299 < 0.3
    notes = " ".join(summary["notes"])
    assert "1 ids in" in notes  # 'ghost' is reported, not silently dropped
    assert "1 patients have rows in more than one of train, val, test (leakage" in notes
    assert read_predictions(out).ids[0] == "img0299"


def test_validation_fraction_refuses_to_leave_the_stores_val_rows_unused(store, tmp_path):
    out = tmp_path / "p.json"
    common = ("--store", store, "--out", out, "--grid", "0.1,1", "--val-fraction", "0.2")
    refused = invoke(*common)
    assert refused.exit_code == 2 and not out.exists()
    message = refused.output.strip().splitlines()[-1]
    assert "'val' (70 rows)" in message and "--val-split none" in message
    # the two ways on it says: leave the val rows out, or train on them; the fraction is then
    # carved from exactly the training rows named (250 train rows; 250 + 70 with val)
    for extra, training_rows in (
        (("--val-split", "none"), 250),
        (("--train-split", "train,val"), 320),
    ):
        result = invoke(*common, *extra)
        assert result.exit_code == 0, result.output
        splits = json.loads((tmp_path / "p.summary.json").read_text())["splits"]
        assert splits["train"]["rows"] + splits["val"]["rows"] == training_rows
        assert 0.15 < splits["val"]["rows"] / training_rows < 0.25


def test_missing_store(tmp_path):
    result = invoke("--store", tmp_path / "nope.zarr", "--out", tmp_path / "p.json")
    assert (
        result.exit_code == 1
        and "nope.zarr" in result.output
        and "not a cxrprobe store" in result.output
    )


def test_unknown_feature_kind(store, tmp_path):
    result = invoke("--store", store, "--out", tmp_path / "p.json", "--features", "pooled")
    assert result.exit_code == 2 and "unknown part 'pooled'" in result.output


def test_empty_split(store, tmp_path):
    result = invoke("--store", store, "--out", tmp_path / "p.json", "--test-split", "external")
    assert result.exit_code == 2
    assert (
        "--test-split external: no usable rows" in result.output
        and "splits present: test, train, val" in result.output
    )


def test_bad_options_are_reported_together(store, tmp_path):
    result = invoke("--store", store, "--out", tmp_path / "p.txt", "--val-fraction", "2")
    assert (
        result.exit_code == 2
        and ".json or .npz" in result.output
        and "--val-fraction" in result.output
    )


def test_cuml_backend_without_cuml_names_the_extra(store, tmp_path):
    pytest.importorskip("torch")
    try:
        import cuml  # noqa: F401
    except ImportError:
        result = invoke("--store", store, "--out", tmp_path / "p.json", "--backend", "cuml")
        assert result.exit_code == 1 and "pip install 'cxrprobe[gpu]'" in result.output
    else:
        pytest.skip("cuML is installed")


def test_help_has_an_example():
    result = CliRunner().invoke(main, ["probe", "--help"])
    assert result.exit_code == 0 and "Example:" in result.output and "--eval-only" in result.output


# --- --findings and --blank ---------------------------------------------------------------------
STUDY = ("cardiomegaly", "edema", "pleural_effusion")  # canonical ids, in vocabulary order
POLICIES = {"uncertain": "ignore", "blank": "missing"}


def build_labelled_store(path, labels=None, seed=1):
    """Three canonical findings with a planted signal and blanks (NaN); returns the labels."""
    rng = np.random.default_rng(seed)
    cls = rng.standard_normal((N, DIM)).astype(np.float32)
    if labels is None:
        labels = (cls[:, :3] + 0.7 * rng.standard_normal((N, 3)) > 0.3).astype(np.float32)
        labels[rng.random((N, 3)) < 0.3] = np.nan
    split = np.array(["train"] * 250 + ["val"] * 70 + ["test"] * 80)
    meta = RowMetadata(
        np.array([f"img{i:04d}" for i in range(N)]),
        split,
        np.array([f"p{i:04d}" for i in range(N)]),
        labels,
        STUDY,
    )
    features = {"cls": cls, "mean": rng.standard_normal((N, DIM)).astype(np.float32)}
    provenance = {"manifest": "m.parquet", "label_policies": POLICIES}
    create_embeddings(path, meta, features, provenance=provenance, dtype="float32")
    return labels


@pytest.fixture(scope="module")
def labelled_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("labelled") / "emb.zarr"
    return path, build_labelled_store(path)


@pytest.mark.parametrize(
    "method",
    [
        # per-finding C: each finding's fit and choice ignore the others, so a subset run gives
        # the full run's columns (with --select mean, C is chosen by the mean over the findings
        # present, so a subset may choose another C)
        ("--grid", "0.01,1,100", "--select", "per-finding"),
        ("--method", "knn", "--k", "10"),  # one k: every finding's vote is its own
    ],
    ids=["linear-per-finding", "knn"],
)
def test_findings_subset_gives_the_full_runs_columns(labelled_store, tmp_path, method):
    store, _ = labelled_store
    full, part = tmp_path / "full.json", tmp_path / "part.json"
    assert invoke("--store", store, "--out", full, *method).exit_code == 0
    spec = "pleural_effusion, cardiomegaly"  # asked out of order: outputs keep the store's order
    result = invoke("--store", store, "--out", part, "--findings", spec, *method)
    assert result.exit_code == 0, result.output
    a, b = read_predictions(full), read_predictions(part)
    assert b.labels == ["cardiomegaly", "pleural_effusion"] and b.ids == a.ids
    columns = [STUDY.index(f) for f in b.labels]
    np.testing.assert_allclose(b.scores, a.scores[:, columns], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(b.targets, a.targets[:, columns])
    summary = json.loads((tmp_path / "part.summary.json").read_text())
    assert summary["findings"] == b.labels and list(summary["test_auroc"]) == b.labels
    assert summary["config"]["findings"] == spec
    if method[0] == "--grid":
        probe = LinearProbe.load(tmp_path / "part.weights.safetensors")
        assert probe.findings == tuple(b.labels) and probe.coef.shape == (2, DIM)


def test_eval_only_scores_a_subset_of_the_weights(labelled_store, tmp_path):
    store, _ = labelled_store
    assert invoke("--store", store, "--out", tmp_path / "fit.json", "--grid", "1").exit_code == 0
    weights = tmp_path / "fit.weights.safetensors"
    out = tmp_path / "edema.json"
    result = invoke("--store", store, "--out", out, "--eval-only", weights, "--findings", "edema")
    assert result.exit_code == 0, result.output
    full, part = read_predictions(tmp_path / "fit.json"), read_predictions(out)
    assert part.labels == ["edema"]
    np.testing.assert_allclose(part.scores[:, 0], full.scores[:, 1], rtol=0, atol=1e-7)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("efusion", "unknown finding or set 'efusion' (did you mean 'pleural_effusion'?); named sets:"),
        ("edema,fracture", "does not provide fracture; it provides: cardiomegaly, edema, pleural_effusion"),
        ("study-chexpert", "does not provide pneumonia, atelectasis"),
    ],
)  # fmt: skip
def test_findings_the_store_cannot_give_are_refused_with_what_exists(
    labelled_store, tmp_path, spec, message
):
    store, _ = labelled_store
    out = tmp_path / "p.json"
    result = invoke("--store", store, "--out", out, "--findings", spec)
    assert result.exit_code == 2 and message in result.output, result.output
    assert not out.exists()


def test_blank_negative_trains_on_blanks_as_zeros_and_judges_on_the_stores_labels(
    labelled_store, tmp_path
):
    store, labels = labelled_store
    args = ("--grid", "1", "--backend", "sklearn")  # one C: the scores depend on training only
    negative = tmp_path / "negative.json"
    result = invoke("--store", store, "--out", negative, "--blank", "negative", *args)
    assert result.exit_code == 0, result.output
    # reference: the blanks of the training rows set to 0 by hand, then the default policy
    zeroed = labels.copy()
    train = (np.arange(N) < 250)[:, None]
    zeroed[train & np.isnan(zeroed)] = 0.0
    build_labelled_store(tmp_path / "zeroed.zarr", labels=zeroed)
    reference = tmp_path / "reference.json"
    assert invoke("--store", tmp_path / "zeroed.zarr", "--out", reference, *args).exit_code == 0
    masked = tmp_path / "masked.json"
    assert invoke("--store", store, "--out", masked, *args).exit_code == 0

    got, want = read_predictions(negative), read_predictions(reference)
    np.testing.assert_allclose(got.scores, want.scores, rtol=0, atol=1e-6)
    assert np.abs(got.scores - read_predictions(masked).scores).max() > 1e-3  # it does change
    np.testing.assert_array_equal(got.targets, labels[320:])  # ground truth keeps the blanks
    assert got.provenance["training_targets"] == {"uncertain": "ignore", "blank": "negative"}
    assert got.provenance["dataset"]["label_policies"] == POLICIES
    summary = json.loads((tmp_path / "negative.summary.json").read_text())
    assert summary["blank"] == "negative"
    weights = LinearProbe.load(tmp_path / "negative.weights.safetensors")
    assert weights.metadata["blank"] == "negative"


# ------------------------------------------------------------------- validation predictions
def _val_rows(store_path):
    from cxrprobe.cache.embeddings import open_embeddings

    emb = open_embeddings(store_path)
    rows = np.flatnonzero((np.asarray(emb.split) == "val") & ~np.asarray(emb.failed))
    return emb, rows


def test_validation_predictions_are_the_saved_probe_on_the_val_rows(store, tmp_path):
    import torch

    out = tmp_path / "p.json"
    result = invoke("--store", store, "--out", out, "--grid", "0.01,1,100", "--device", "cpu")
    assert result.exit_code == 0, result.output
    val = read_predictions(tmp_path / "p.val.json")
    emb, rows = _val_rows(store)
    probe = LinearProbe.load(tmp_path / "p.weights.safetensors")
    x_val = torch.from_numpy(np.asarray(emb.features("cls", rows=rows), dtype=np.float32))
    # the reference: sigmoid(standardised x @ coef.T + intercept) with the saved weights, by hand
    z = (x_val.numpy() - probe.standardizer.mean) / probe.standardizer.std
    expected = 1 / (1 + np.exp(-(z @ probe.coef.T + probe.intercept)))
    assert val.ids == [str(i) for i in emb.ids[rows]]
    np.testing.assert_allclose(val.scores, expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(val.scores, probe.predict_proba(x_val), rtol=0, atol=1e-7)
    raw = emb.labels[rows]
    np.testing.assert_array_equal(val.targets, np.where(raw == -1, np.nan, raw))
    test = read_predictions(out)
    assert val.provenance["scored_split"] == "val" and test.provenance["scored_split"] == "test"
    assert val.provenance["validation_in_sample"] is False
    assert val.provenance["chosen"] == test.provenance["chosen"]
    summary = json.loads((tmp_path / "p.summary.json").read_text())
    assert summary["outputs"]["validation"] == str(tmp_path / "p.val.json")
    for col, finding in enumerate(FINDINGS):  # the summary's validation AUROC is of these scores
        keep = ~np.isnan(val.targets[:, col])
        assert summary["val_auroc"][finding] == pytest.approx(
            roc_auc_score(val.targets[keep, col], val.scores[keep, col]), abs=1e-6
        )


def test_knn_validation_predictions_are_the_chosen_ks_votes(store, tmp_path):
    out = tmp_path / "knn.json"
    result = invoke("--store", store, "--out", out, "--method", "knn", "--k", "5,20")
    assert result.exit_code == 0, result.output
    k = json.loads((tmp_path / "knn.summary.json").read_text())["chosen"]["k"]
    emb, val_rows = _val_rows(store)
    train = np.flatnonzero((np.asarray(emb.split) == "train") & ~np.asarray(emb.failed))
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    sim = unit(emb.features("cls", rows=val_rows)) @ unit(emb.features("cls", rows=train)).T
    votes = emb.labels[train]  # uncertain (-1) and not annotated (NaN) abstain
    expected = np.empty((len(val_rows), len(FINDINGS)))
    for q in range(len(val_rows)):  # a slow per-query reference
        near = np.argsort(-sim[q])[:k]
        w = np.exp(sim[q, near] / 0.07)
        for col in range(len(FINDINGS)):
            v = votes[near, col]
            yes, no = w[v == 1].sum(), w[v == 0].sum()
            expected[q, col] = yes / (yes + no)
    val = read_predictions(tmp_path / "knn.val.json")
    assert val.ids == [str(i) for i in emb.ids[val_rows]]
    np.testing.assert_allclose(val.scores, expected, rtol=1e-5, atol=1e-6)


def test_refit_validation_predictions_are_marked_in_sample_and_eval_only_writes_none(
    store, tmp_path
):
    import torch

    fitted = invoke(
        "--store", store, "--out", tmp_path / "fit.npz", "--grid", "0.01,1", "--refit-trainval"
    )
    assert fitted.exit_code == 0, fitted.output
    val = read_predictions(tmp_path / "fit.val.npz")
    assert val.provenance["validation_in_sample"] is True
    emb, rows = _val_rows(store)
    probe = LinearProbe.load(tmp_path / "fit.weights.safetensors")  # the train+val refit
    x_val = torch.from_numpy(np.asarray(emb.features("cls", rows=rows), dtype=np.float32))
    np.testing.assert_allclose(val.scores, probe.predict_proba(x_val), rtol=0, atol=1e-7)
    summary = json.loads((tmp_path / "fit.summary.json").read_text())
    assert any("in-sample" in note for note in summary["notes"])

    stale = tmp_path / "again.val.json"
    stale.write_text("{}")  # left by an earlier fit: it would not belong to the re-scored file
    again = invoke(
        "--store", store, "--out", tmp_path / "again.json",
        "--eval-only", tmp_path / "fit.weights.safetensors",
    )  # fmt: skip
    assert again.exit_code == 0, again.output
    assert not stale.exists()
    notes = json.loads((tmp_path / "again.summary.json").read_text())["notes"]
    assert any(f"removed the stale {stale}" in note for note in notes)
