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
    options = "--train-split fit --test-split holdout --val-fraction 0.25 --grid 0.1,1"
    result = invoke("--store", store, "--out", out, "--split-csv", csv, *options.split())
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "p.summary.json").read_text())
    assert summary["splits"]["test"]["rows"] == 100  # 101 holdout rows, one failed
    assert summary["splits"]["train"]["rows"] + summary["splits"]["val"]["rows"] == 299
    assert 0.2 < summary["splits"]["val"]["rows"] / 299 < 0.3
    notes = " ".join(summary["notes"])
    assert "1 ids in" in notes  # 'ghost' is reported, not silently dropped
    assert "1 patients have rows in both the fitting and the test splits" in notes
    assert read_predictions(out).ids[0] == "img0299"


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
