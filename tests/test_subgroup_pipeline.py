"""The manifest's sex, age and view travel through the stores into predictions, where ``--by``
reads them: manifest → preprocess → extract → probe → evaluate --by sex."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from sklearn.metrics import roc_auc_score

from cxrprobe.cache import open_embeddings
from cxrprobe.cli import main
from cxrprobe.data.synthetic import generate_dataset
from cxrprobe.stats.predictions import read_predictions

TINY = '{"depth": 1, "embed_dim": 32, "num_heads": 2}'


def _run(*args: str) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("subgroups")
    generate_dataset(folder / "data", n=80, size=48, seed=5)
    manifest = folder / "m.parquet"
    _run(
        "manifest",
        "generic",
        "--root",
        folder / "data",
        "--split",
        "random",
        "--val-fraction",
        "0.25",
        "--test-fraction",
        "0.4",
        "--seed",
        "1",
        "--out",
        manifest,
    )
    _run(
        "preprocess",
        "--manifest",
        manifest,
        "--root",
        folder / "data",
        "--size",
        "28",
        "--workers",
        "1",
        "--out",
        folder / "images.zarr",
    )
    _run(
        "extract",
        "--init",
        "random",
        "--arch",
        "vit_base_patch14_dinov2",
        "--model-kwargs",
        TINY,
        "--images",
        folder / "images.zarr",
        "--size",
        "28",
        "--device",
        "cpu",
        "--out",
        folder / "emb.zarr",
    )
    _run(
        "probe",
        "--store",
        folder / "emb.zarr",
        "--grid",
        "0.1,10",
        "--device",
        "cpu",
        "--out",
        folder / "preds.json",
    )
    return folder


def test_predictions_carry_the_manifests_subgroups(pipeline):
    df = pd.read_parquet(pipeline / "m.parquet").set_index("image_id")
    pred = read_predictions(pipeline / "preds.json")
    rows = df.loc[pred.ids]
    assert set(pred.subgroups) == {"sex", "age", "view"}
    assert pred.subgroups["sex"].tolist() == rows["sex"].tolist()
    assert pred.subgroups["view"].tolist() == rows["view"].tolist()
    np.testing.assert_array_equal(pred.subgroups["age"], rows["age"].to_numpy(dtype=float))
    assert open_embeddings(pipeline / "emb.zarr").metadata().subgroups.keys() == {
        "sex",
        "age",
        "view",
    }


def test_evaluate_by_sex_equals_sklearn_on_those_rows(pipeline):
    out = pipeline / "eval.json"
    _run(
        "evaluate",
        pipeline / "preds.json",
        "--by",
        "sex",
        "-B",
        "20",
        "--device",
        "cpu",
        "--out",
        out,
    )
    pred = read_predictions(pipeline / "preds.json")
    section = next(s for s in json.loads(out.read_text())["subgroups"] if s["field"] == "sex")
    checked = 0
    for group in section["groups"]:
        rows = np.flatnonzero(pred.subgroups["sex"] == group["name"])
        assert group["rows"] == len(rows)
        for row in group.get("labels", []):
            j = pred.labels.index(row["label"])
            keep = rows[~np.isnan(pred.targets[rows, j])]
            y = pred.targets[keep, j]
            if row.get("auroc") is None or not 0 < y.sum() < len(y):
                continue
            assert row["auroc"] == pytest.approx(roc_auc_score(y, pred.scores[keep, j]), abs=1e-12)
            checked += 1
    assert checked >= 2


def test_stores_without_subgroup_columns_still_work(pipeline, tmp_path):
    old = tmp_path / "old.zarr"
    shutil.copytree(pipeline / "emb.zarr", old)
    shutil.copytree(pipeline / "emb.zarr.cxrprobe", tmp_path / "old.zarr.cxrprobe")
    for name in ("sex", "age", "view"):  # as a store made before these columns
        shutil.rmtree(old / name)
    zarr_json = json.loads((old / "zarr.json").read_text())
    zarr_json.pop("consolidated_metadata", None)
    (old / "zarr.json").write_text(json.dumps(zarr_json))
    _run(
        "probe", "--store", old, "--grid", "0.1,10", "--device", "cpu", "--out", tmp_path / "p.json"
    )
    assert read_predictions(tmp_path / "p.json").subgroups == {}
    assert (
        read_predictions(tmp_path / "p.json").ids == read_predictions(pipeline / "preds.json").ids
    )
