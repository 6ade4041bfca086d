"""The embedding store reader: row selection, feature kinds, dtypes, failures, torch output."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrprobe.cache.embeddings import create_embeddings, embedding_layout, open_embeddings
from cxrprobe.cache.store import RowMetadata, RowStore
from cxrprobe.errors import ConfigError, DataFormatError, IncompleteStoreError

N, D, LAYERS = 11, 6, 3


def metadata(n: int = N) -> RowMetadata:
    labels = np.tile(
        np.array([[1.0, 0.0], [np.nan, -1.0], [0.0, 1.0]], dtype=np.float32), (n // 3 + 1, 1)
    )[:n]
    return RowMetadata(
        ids=np.array([f"img{i:02d}" for i in range(n)]),
        split=np.array([("train", "val", "test")[i % 3] for i in range(n)]),
        patient_id=np.array([f"p{i // 2}" for i in range(n)]),
        labels=labels,
        findings=("cardiomegaly", "effusion"),
    )


def features(n: int = N) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "cls": rng.standard_normal((n, D)).astype(np.float32),
        "mean": rng.standard_normal((n, D)).astype(np.float32),
        "layers": rng.standard_normal((n, LAYERS, D)).astype(np.float32),
    }


@pytest.fixture
def store(tmp_path):
    return create_embeddings(
        tmp_path / "emb.zarr",
        metadata(),
        features(),
        provenance={"note": "test"},
        failures={4: "corrupt"},
        shard_rows=4,
    )


def test_metadata_round_trips(store):
    emb = open_embeddings(store.path)
    meta = metadata()
    assert list(emb.ids) == list(meta.ids) and list(emb.split) == list(meta.split)
    assert list(emb.patient_ids) == list(meta.patient_id)
    np.testing.assert_array_equal(emb.labels, meta.labels)  # NaN positions equal too
    assert emb.findings == meta.findings and emb.dim == D and emb.n_layers == LAYERS
    assert emb.feature_kinds == ("cls", "mean", "layers") and emb.dtype == "float16"
    assert emb.provenance == {"note": "test"}
    assert emb.failed.tolist() == [i == 4 for i in range(N)]


def test_feature_kinds_match_the_arrays_written(store):
    emb = open_embeddings(store.path)
    ref = {k: v.astype(np.float16).astype(np.float32) for k, v in features().items()}
    for values in ref.values():
        values[4] = np.nan
    np.testing.assert_array_equal(emb.features("cls"), ref["cls"])
    np.testing.assert_array_equal(emb.features("mean"), ref["mean"])
    np.testing.assert_array_equal(
        emb.features("cls+mean"), np.concatenate([ref["cls"], ref["mean"]], 1)
    )
    np.testing.assert_array_equal(
        emb.features("mean+cls"), np.concatenate([ref["mean"], ref["cls"]], 1)
    )
    np.testing.assert_array_equal(emb.features("layers"), ref["layers"].reshape(N, -1))
    np.testing.assert_array_equal(
        emb.features("last2+mean"),
        np.concatenate([ref["layers"][:, 1], ref["layers"][:, 2], ref["mean"]], 1),
    )
    assert emb.feature_dim("last2+mean") == 3 * D
    assert emb.features("cls", dtype=None).dtype == np.float16
    with pytest.raises(ConfigError, match="--layers"):
        emb.features("last4")
    with pytest.raises(ConfigError, match="unknown part 'pooled'"):
        emb.features("cls+pooled")


def test_row_selection_by_split_ids_and_order(store):
    emb = open_embeddings(store.path)
    train = emb.rows(split="train")
    assert train.tolist() == [0, 3, 6, 9]
    assert emb.rows(split=["val", "test"]).tolist() == [1, 2, 5, 7, 8, 10]  # 4 failed: left out
    assert emb.rows(split="val", include_failed=True).tolist() == [1, 4, 7, 10]
    assert emb.rows(ids=["img09", "img01", "img04"]).tolist() == [9, 1]
    with pytest.raises(DataFormatError, match="img99"):
        emb.rows(ids=["img99"])
    full = emb.features("cls+mean")
    for rows in (
        [9, 1, 9, 0],
        np.array([10, 0]),
        [],
        list(range(N)),
    ):  # unsorted, repeats, sparse, empty
        np.testing.assert_array_equal(
            emb.features("cls+mean", rows=rows), full[np.asarray(rows, dtype=int)]
        )
    np.testing.assert_array_equal(emb.features("mean", rows=slice(2, 7)), emb.features("mean")[2:7])
    with pytest.raises(IndexError):
        emb.features("cls", rows=[N])


def test_torch_output(store):
    emb = open_embeddings(store.path)
    rows = emb.rows(split="train")
    tensor = emb.features("cls", rows=rows, as_="torch", device="cpu")
    assert isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float32
    np.testing.assert_array_equal(tensor.numpy(), emb.features("cls", rows=rows))


def test_float32_and_validation(tmp_path):
    feats = features()
    del feats["layers"]
    emb = create_embeddings(tmp_path / "f32.zarr", metadata(), feats, dtype="float32")
    np.testing.assert_array_equal(emb.features("cls"), feats["cls"])
    assert emb.n_layers == 0 and emb.feature_kinds == ("cls", "mean")
    with pytest.raises(DataFormatError, match="shape"):
        create_embeddings(
            tmp_path / "bad.zarr", metadata(), {"cls": feats["cls"], "mean": feats["mean"][:3]}
        )
    with pytest.raises(DataFormatError, match="'cls' and 'mean'"):
        create_embeddings(tmp_path / "bad.zarr", metadata(), {"cls": feats["cls"]})
    with pytest.raises(ConfigError, match="--dtype"):
        create_embeddings(tmp_path / "bad.zarr", metadata(), feats, dtype="int8")


def test_an_unfinished_store_is_refused(tmp_path, store):
    raw = RowStore.open(store.path, mode="r+")
    raw._set_attrs(complete=False)
    with pytest.raises(IncompleteStoreError, match="run the command"):
        open_embeddings(store.path)
    assert len(open_embeddings(store.path, allow_incomplete=True)) == N


def test_layout_bounds_memory_and_keeps_store_shards_whole_zarr_shards():
    rows, specs = embedding_layout(768, 0, "float16")
    assert rows == 16384 and [s.chunk_rows for s in specs] == [8192, 8192]
    rows, specs = embedding_layout(768, 12, "float32")  # 43 KB a row: a shard stays under 64 MB
    assert rows == 1024 and rows * (2 + 12) * 768 * 4 <= 64 * 2**20
    assert all(
        s.chunk_rows * s.tail[0] * 4 * (s.tail[1] if len(s.tail) > 1 else 1) <= 16 * 2**20
        for s in specs
    )
    for shard_rows in (4, 10000, 12345, 16384):
        _, specs = embedding_layout(768, 4, "float16", shard_rows)
        assert all(shard_rows % s.chunk_rows == 0 for s in specs)
    assert embedding_layout(768, 0, "float16", 10000)[1][0].chunk_rows == 5000
