"""HDF5 and npz exports hold exactly what the store holds."""

from __future__ import annotations

import dataclasses
import json

import h5py
import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from cxrprobe.cache.embeddings import create_embeddings
from cxrprobe.cache.export import LABEL_MISSING, decode_labels, encode_labels, export_h5, export_npz
from cxrprobe.cli import main
from tests.test_embeddings import features, metadata


@pytest.fixture
def emb(tmp_path):
    return create_embeddings(
        tmp_path / "emb.zarr",
        metadata(),
        features(),
        provenance={"model": {"init": "dinov2"}},
        failures={2: "corrupt"},
        shard_rows=4,
    )


def test_h5_round_trip(tmp_path, emb):
    out = export_h5(emb, tmp_path / "out" / "emb.h5")
    with h5py.File(out, "r") as h5:
        for name in ("cls", "mean", "layers"):
            data = h5[f"features/{name}"]
            assert data.dtype == np.float32 and data.compression is None
            np.testing.assert_array_equal(data[:].reshape(len(emb), -1), emb.features(name))
        assert [s.decode() for s in h5["ids"][:]] == list(emb.ids)
        assert h5["ids"].dtype.metadata["vlen"] is str
        assert h5["split"].asstr()[:].tolist() == list(emb.split)
        assert h5["patient_id"].asstr()[:].tolist() == list(emb.patient_ids)
        assert h5["labels"].dtype == np.int8
        np.testing.assert_array_equal(decode_labels(h5["labels"][:]), emb.labels)
        assert (h5["labels"][:] == LABEL_MISSING).sum() == np.isnan(emb.labels).sum()
        np.testing.assert_array_equal(h5["failed"][:], emb.failed)
        assert json.loads(h5.attrs["provenance"]) == emb.provenance
        assert json.loads(h5.attrs["findings"]) == list(emb.findings)
        assert json.loads(h5.attrs["identity"])["dtype"] == "float16"
    assert not list(out.parent.glob(".*tmp*"))


def test_npz_round_trip(tmp_path, emb):
    out = export_npz(emb.path, tmp_path / "emb.npz")
    with np.load(out) as npz:
        np.testing.assert_array_equal(npz["cls"], emb.features("cls"))
        np.testing.assert_array_equal(npz["layers"].reshape(len(emb), -1), emb.features("layers"))
        assert npz["ids"].tolist() == list(emb.ids)
        np.testing.assert_array_equal(npz["labels"], emb.labels)
        np.testing.assert_array_equal(npz["failed"], emb.failed)
        assert json.loads(str(npz["provenance"])) == emb.provenance
        assert npz["findings"].tolist() == list(emb.findings)


def test_subgroup_fields_are_exported_as_stored(tmp_path):
    meta = metadata()
    sex = np.array([("F", "M", "")[i % 3] for i in range(len(meta))])
    age = np.where(np.arange(len(meta)) % 4 == 0, np.nan, 20.0 + np.arange(len(meta)))
    subgroups = {"sex": sex, "age": age.astype(np.float32), "view": np.full(len(meta), "PA")}
    store = create_embeddings(
        tmp_path / "emb.zarr",
        dataclasses.replace(meta, subgroups=subgroups),
        features(),
        shard_rows=4,
    )
    group = zarr.open_group(str(store.path), mode="r")
    with h5py.File(export_h5(store, tmp_path / "e.h5"), "r") as h5:
        assert h5["sex"].asstr()[:].tolist() == group["sex"][:].tolist() == sex.tolist()
        assert h5["view"].asstr()[:].tolist() == ["PA"] * len(meta)
        assert h5["age"].dtype == np.float32 and h5["age"].attrs["encoding"] == "NaN unknown"
        np.testing.assert_array_equal(h5["age"][:], age.astype(np.float32))
    with np.load(export_npz(store, tmp_path / "e.npz")) as npz:
        assert npz["sex"].tolist() == sex.tolist() and npz["view"].tolist() == ["PA"] * len(meta)
        np.testing.assert_array_equal(npz["age"], group["age"][:])


def test_soft_labels_are_kept_as_float():
    soft = np.array([[0.5, np.nan], [1.0, 0.0]], dtype=np.float32)
    assert encode_labels(soft).dtype == np.float32
    np.testing.assert_array_equal(decode_labels(encode_labels(soft)), soft)
    hard = np.array([[1.0, np.nan], [-1.0, 0.0]], dtype=np.float32)
    assert encode_labels(hard).tolist() == [[1, LABEL_MISSING], [-1, 0]]


@pytest.mark.parametrize("kind", ["h5", "npz"])
def test_export_writes_its_run_record(tmp_path, emb, kind):
    out = (export_h5 if kind == "h5" else export_npz)(emb, tmp_path / f"emb.{kind}")
    record = json.loads((tmp_path / f"emb.{kind}.run.json").read_text())
    assert record["command"] == "cxrprobe export"
    expected = {"store": str(emb.path.absolute()), "h5": None, "npz": None, kind: str(out)}
    assert record["config"] == expected and "numpy" in record["versions"]


def test_cli_export_record_content(tmp_path, emb, monkeypatch):
    """The command's record: the store and output paths as given, made absolute."""
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["export", "emb.zarr", "--npz", "sub/e.npz"])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "sub" / "e.npz.run.json").read_text())
    assert record["command"] == "cxrprobe export" and record["cwd"] == str(tmp_path)
    assert record["config"] == {
        "store": str(tmp_path / "emb.zarr"),
        "h5": None,
        "npz": str(tmp_path / "sub" / "e.npz"),
    }
