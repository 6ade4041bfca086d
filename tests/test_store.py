"""Row store contract: shard writes, done records, resume, append, refusal, incomplete detection."""

from __future__ import annotations

import numpy as np
import pytest

from cxrprobe.cache.store import ArraySpec, RowMetadata, RowStore
from cxrprobe.errors import IncompleteStoreError, StoreMismatchError

SPEC = [ArraySpec("x", (3,), "float32", float("nan"), chunk_rows=2)]


def _meta(n: int, findings=("cardiomegaly", "pleural_effusion")) -> RowMetadata:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=(n, len(findings))).astype(np.float32)
    labels[0, 0] = np.nan
    return RowMetadata(
        ids=np.array([f"img{i}" for i in range(n)]),
        split=np.array(["train", "val", "test"] * (n // 3) + ["train"] * (n % 3)),
        patient_id=np.array([f"p{i // 2}" for i in range(n)]),
        labels=labels,
        findings=tuple(findings),
    )


def _make(path, n=10, **kw):
    return RowStore.open_or_create(
        path,
        kind="test",
        metadata=_meta(n),
        arrays=SPEC,
        shard_rows=4,
        identity={"model": "a"},
        **kw,
    )


def _fill(store: RowStore, shards) -> None:
    for s in shards:
        rows = store.shard_slice(s)
        values = np.arange(rows.start, rows.stop, dtype=np.float32)[:, None].repeat(3, axis=1)
        store.write_shard(s, {"x": values}, {})


def test_roundtrip_metadata_and_data(tmp_path):
    store = _make(tmp_path / "s.zarr")
    assert store.n_shards == 3 and store.pending_shards() == [0, 1, 2]
    _fill(store, [0, 1, 2])
    store.finalize()
    again = RowStore.open(tmp_path / "s.zarr", kind="test")
    assert again.is_complete
    assert again.metadata().first_difference(_meta(10)) is None
    np.testing.assert_array_equal(again.array("x")[:, 0], np.arange(10))
    assert not again.failed_mask().any()


def test_incomplete_store_is_refused_and_resume_fills_only_missing(tmp_path):
    store = _make(tmp_path / "s.zarr")
    _fill(store, [0, 2])
    with pytest.raises(IncompleteStoreError, match="run the same command again"):
        store.finalize()
    resumed = _make(tmp_path / "s.zarr")
    assert resumed.pending_shards() == [1]
    _fill(resumed, [1])
    resumed.finalize()
    np.testing.assert_array_equal(resumed.array("x")[:, 1], np.arange(10))


def test_failures_are_recorded_and_masked(tmp_path):
    store = _make(tmp_path / "s.zarr")
    _fill(store, [0, 2])
    values = np.full((4, 3), np.nan, dtype=np.float32)
    values[1] = 7
    store.write_shard(1, {"x": values}, {4: "corrupt", 6: "missing", 7: "missing"})
    summary = store.finalize()
    assert [f["image_id"] for f in summary["failures"]] == ["img4", "img6", "img7"]
    np.testing.assert_array_equal(np.flatnonzero(store.failed_mask()), [4, 6, 7])


def test_mismatched_identity_or_rows_refused(tmp_path):
    _fill(_make(tmp_path / "s.zarr"), [0])
    with pytest.raises(StoreMismatchError, match="model: store has 'a', this run has 'b'"):
        RowStore.open_or_create(
            tmp_path / "s.zarr",
            kind="test",
            metadata=_meta(10),
            arrays=SPEC,
            shard_rows=4,
            identity={"model": "b"},
        )
    other = _meta(10)
    other.ids[3] = "zzz"
    with pytest.raises(StoreMismatchError, match="store vs manifest, row 3: ids 'img3' vs 'zzz'"):
        RowStore.open_or_create(
            tmp_path / "s.zarr",
            kind="test",
            metadata=other,
            arrays=SPEC,
            shard_rows=4,
            identity={"model": "a"},
        )
    rebuilt = RowStore.open_or_create(
        tmp_path / "s.zarr",
        kind="test",
        metadata=other,
        arrays=SPEC,
        shard_rows=4,
        identity={"model": "b"},
        overwrite=True,
    )
    assert rebuilt.pending_shards() == [0, 1, 2]


def test_append_rows_redoes_only_partial_last_shard(tmp_path):
    store = _make(tmp_path / "s.zarr", n=10)
    _fill(store, [0, 1, 2])
    store.finalize()
    grown = RowStore.open_or_create(
        tmp_path / "s.zarr",
        kind="test",
        metadata=_meta(15),
        arrays=SPEC,
        shard_rows=4,
        identity={"model": "a"},
    )
    assert grown.n_rows == 15 and not grown.is_complete
    assert grown.pending_shards() == [2, 3]
    _fill(grown, [2, 3])
    grown.finalize()
    np.testing.assert_array_equal(grown.array("x")[:, 2], np.arange(15))
    assert grown.metadata().first_difference(_meta(15)) is None


def test_row_metadata_keeps_uncertain_labels_for_later_policies():
    import pandas as pd

    from cxrprobe.data.manifest import label_matrix

    df = pd.DataFrame(
        {
            "image_id": ["a", "b", "c", "d"],
            "path": ["a.png", "b.png", "c.png", "d.png"],
            "patient_id": ["p1", "p1", "p2", "p3"],
            "study_id": ["s1", "s2", "s3", "s4"],
            "view": ["PA"] * 4,
            "split": ["train", "train", "val", "test"],
            "sex": ["F"] * 4,
            "age": [50.0] * 4,
            "cardiomegaly": [1.0, -1.0, 0.0, np.nan],
        }
    )
    stored = RowMetadata.from_manifest(df).labels[:, 0]
    np.testing.assert_array_equal(stored, np.array([1.0, -1.0, 0.0, np.nan], dtype=np.float32))
    assert np.isnan(label_matrix(df)[1, 0])  # the default view masks uncertain labels
