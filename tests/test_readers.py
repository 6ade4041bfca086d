"""Stores every tool can read (plain Zarr with dimension names, strict JSON, bookkeeping beside
the store, ``rows.parquet``), stores of the older layout, and extraction from any map-style dataset.

The plain-reader checks run in a separate Python that never imports cxrprobe; the JavaScript
check (zarrita, ``docs/embeddings.md``) runs where ``CXRPROBE_JS_MODULES`` names a
``node_modules`` folder holding zarrita.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cxrprobe.cache.embeddings import create_embeddings, open_embeddings
from cxrprobe.cache.extract import extract_embeddings
from cxrprobe.cache.images import build_image_cache
from cxrprobe.cache.source import from_dataset
from cxrprobe.cache.store import ArraySpec, RowMetadata, RowStore, upgrade_store
from cxrprobe.data.decode import image_paths
from cxrprobe.data.preprocess import PreprocessConfig, load_preprocessed, preprocess
from cxrprobe.errors import ConfigError, DataFormatError
from tests.image_fixtures import make_image_dataset, radiograph_like
from tests.test_extract import ARCH, TINY, direct_reference

N, D = 9, 4
FINDINGS = ("cardiomegaly", "effusion")
CFG = PreprocessConfig(size=32)
SPEC = [ArraySpec("x", (3,), "float32", float("nan"), chunk_rows=2)]


def _metadata(n: int = N) -> RowMetadata:
    labels = np.tile(np.array([[1, 0], [np.nan, -1], [0, 1]], dtype=np.float32), (n, 1))[:n]
    return RowMetadata(
        ids=np.array([f"img{i:02d}" for i in range(n)]),
        split=np.array([("train", "val", "test")[i % 3] for i in range(n)]),
        patient_id=np.array([f"p{i // 2}" for i in range(n)]),
        labels=labels,
        findings=FINDINGS,
    )


def _features(n: int = N) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {name: rng.standard_normal((n, D)).astype(np.float32) for name in ("cls", "mean")}


@pytest.fixture
def emb_path(tmp_path) -> Path:
    """A finished float16 embedding store with row 4 failed, 3 shards."""
    create_embeddings(
        tmp_path / "emb.zarr", _metadata(), _features(), failures={4: "corrupt"}, shard_rows=4
    )
    return tmp_path / "emb.zarr"


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> dict:
    """An image cache of 5 PNGs (row 2 corrupt) at 16 px, 3 shards."""
    tmp = tmp_path_factory.mktemp("readers")
    df, root = make_image_dataset(tmp, 5, size=20, corrupt=[2])
    build_image_cache(
        df, root, tmp / "images.zarr", PreprocessConfig(size=16), workers=1, shard_rows=2
    )
    return {"path": tmp / "images.zarr", "paths": image_paths(df, root)}


def _sidecar(store: Path) -> Path:
    return store.with_name(store.name + ".cxrprobe")


def _strict(path: Path) -> object:
    """Parse like R's jsonlite or JavaScript's JSON.parse: NaN and Infinity are errors."""

    def refuse(constant: str) -> None:
        raise ValueError(f"{path}: bare {constant} is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


# ------------------------------------------------------------------- plain Zarr readers
PLAIN_READER = textwrap.dedent(
    """
    import sys, warnings
    import numpy as np
    import xarray as xr
    import zarr

    warnings.simplefilter("error")  # any warning fails the read
    path, variable, finding, out = sys.argv[1:5]
    ds = xr.open_zarr(path)  # xarray's default read (consolidated metadata)
    listed = xr.open_zarr(path, consolidated=False)
    group = zarr.open_group(path, mode="r", use_consolidated=False)
    members = sorted(name for name, _ in group.members())
    assert "cxrprobe" not in sys.modules
    np.savez(
        out,
        members=np.array(members),
        dims=np.array(ds[variable].dims),
        coords=np.array(sorted(ds.coords)),
        ids=np.array(ds["ids"].values.tolist()),
        split=np.array(listed["split"].values.tolist()),
        labels=ds["labels"].sel(finding=finding).values,
        failed=listed["failed"].values,
        data=ds[variable].values,
        zarr_data=group[variable][:],
    )
    """
)


def _read_plainly(
    store: Path, variable: str, finding: str, tmp_path: Path
) -> dict[str, np.ndarray]:
    pytest.importorskip("xarray")
    out = tmp_path / "read.npz"
    proc = subprocess.run(
        [sys.executable, "-c", PLAIN_READER, str(store), variable, finding, str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    with np.load(out) as read:
        return dict(read)


def test_an_embedding_store_opens_in_plain_xarray_and_zarr_without_warnings(emb_path, tmp_path):
    read = _read_plainly(emb_path, "cls", "effusion", tmp_path)
    meta = _metadata()
    expected = _features()["cls"].astype(np.float16)
    expected[4] = np.nan  # the failed row
    assert read["members"].tolist() == sorted(
        ["cls", "mean", "ids", "split", "patient_id", "finding", "labels", "failed"]
    )
    assert read["dims"].tolist() == ["row", "feature"]
    assert {"ids", "split", "patient_id", "finding"} <= set(read["coords"].tolist())
    assert read["ids"].tolist() == meta.ids.tolist()
    assert read["split"].tolist() == meta.split.tolist()
    np.testing.assert_array_equal(read["labels"], meta.labels[:, 1])
    assert read["failed"].tolist() == [i == 4 for i in range(N)]
    np.testing.assert_array_equal(read["data"], expected)
    np.testing.assert_array_equal(read["zarr_data"], expected)


def test_an_image_cache_opens_plainly_with_the_pixels_of_direct_preprocessing(cache, tmp_path):
    read = _read_plainly(cache["path"], "images", "pleural_effusion", tmp_path)
    assert read["dims"].tolist() == ["row", "y", "x"]
    assert read["failed"].tolist() == [False, False, True, False, False]
    for row in (0, 1, 3, 4):
        direct = load_preprocessed(cache["paths"][row], PreprocessConfig(size=16))
        np.testing.assert_array_equal(read["data"][row], direct)


def test_to_xarray_gives_the_features_and_coordinates(emb_path):
    pytest.importorskip("xarray")
    ds = open_embeddings(emb_path).to_xarray()
    np.testing.assert_array_equal(ds["mean"].values[:4], _features()["mean"][:4].astype(np.float16))
    assert ds["labels"].dims == ("row", "finding") and list(ds["finding"].values) == list(FINDINGS)
    assert list(ds["patient_id"].values) == _metadata().patient_id.tolist()


def test_every_json_file_is_strict_and_nan_fill_values_survive(emb_path, cache):
    files = [
        *emb_path.parent.rglob("*.json"),  # the store, its done records
        *cache["path"].rglob("zarr.json"),
        *_sidecar(cache["path"]).rglob("*.json"),
    ]
    assert len(files) > 20
    for path in files:
        _strict(path)
    attrs = _strict(emb_path / "zarr.json")["attributes"]["cxrprobe"]
    assert attrs["arrays"][0]["fill_value"] == "NaN"
    assert np.isnan(RowStore.open(emb_path).array_specs[0].fill_value)


def test_bookkeeping_sits_beside_the_store_and_rows_parquet_holds_the_rows(emb_path):
    inside = sorted(p.name for p in emb_path.iterdir())
    assert [p for p in inside if (emb_path / p).is_file()] == ["zarr.json"]
    assert all((emb_path / name / "zarr.json").is_file() for name in inside if name != "zarr.json")
    rows = pd.read_parquet(_sidecar(emb_path) / "rows.parquet")
    meta = _metadata()
    assert list(rows.columns) == ["row", "image_id", "patient_id", "split", "failed", *FINDINGS]
    assert rows["row"].tolist() == list(range(N)) and rows["image_id"].tolist() == meta.ids.tolist()
    assert rows["patient_id"].tolist() == meta.patient_id.tolist()
    assert rows["split"].tolist() == meta.split.tolist()
    assert rows["failed"].tolist() == [i == 4 for i in range(N)]
    np.testing.assert_array_equal(rows[list(FINDINGS)].to_numpy(np.float32), meta.labels)
    assert len(list(_sidecar(emb_path).glob("progress-*/shard-*.json"))) == 3


# --------------------------------------------------------------- older stores and copies
def _test_store(path: Path, n: int) -> RowStore:
    """A 'test' store of ``n`` rows, 4 per shard, every pending shard filled (row r holds r)."""
    store = RowStore.open_or_create(
        path, kind="test", metadata=_metadata(n), arrays=SPEC, shard_rows=4, identity={"m": 1}
    )
    for shard in store.pending_shards():
        rows = store.shard_slice(shard)
        values = np.repeat(np.arange(rows.start, rows.stop, dtype=np.float32)[:, None], 3, axis=1)
        store.write_shard(shard, {"x": values}, {1: "unreadable"} if shard == 0 else {})
    store.finalize()
    return store


def _as_format_1(store: Path) -> None:
    """Rewrite a store as cxrprobe wrote them before this layout: bookkeeping inside, no
    dimension names, no finding array, a bare NaN fill value in the group attributes."""
    side = _sidecar(store)
    (progress,) = side.glob("progress-*")
    os.rename(progress, store / "_progress")
    (store / "run.json").write_text('{"command": "cxrprobe extract"}')
    shutil.rmtree(side)
    shutil.rmtree(store / "finding")
    for meta_path in store.glob("*/zarr.json"):
        meta = json.loads(meta_path.read_text())
        meta.pop("dimension_names")
        meta["attributes"].pop("coordinates", None)
        meta_path.write_text(json.dumps(meta))
    group = json.loads((store / "zarr.json").read_text())
    group.pop("consolidated_metadata")
    attrs = group["attributes"]["cxrprobe"]
    del attrs["store_id"]
    attrs["format_version"] = 1
    for spec in attrs["arrays"]:
        spec["fill_value"] = float(spec["fill_value"])
    (store / "zarr.json").write_text(json.dumps(group))  # bare NaN, as zarr-python wrote it


def test_a_format_1_store_is_read_as_it_is_and_upgraded_without_recomputing(emb_path):
    before = open_embeddings(emb_path).features("cls+mean")
    _as_format_1(emb_path)
    with pytest.raises(ValueError, match="bare NaN"):
        _strict(emb_path / "zarr.json")
    old = open_embeddings(emb_path)
    assert old.store.is_complete and old.store.failures() == {4: "corrupt"}
    np.testing.assert_array_equal(old.features("cls+mean"), before)
    with pytest.raises(DataFormatError, match="upgrade_store"):
        old.to_xarray()

    upgrade_store(emb_path)
    assert sorted(p.name for p in emb_path.iterdir() if p.is_file()) == ["zarr.json"]
    assert not (emb_path / "_progress").exists()
    assert (
        json.loads((_sidecar(emb_path) / "run.json").read_text())["command"] == "cxrprobe extract"
    )
    assert (_sidecar(emb_path) / "rows.parquet").is_file()
    for path in emb_path.rglob("zarr.json"):
        _strict(path)
    new = open_embeddings(emb_path)
    np.testing.assert_array_equal(new.features("cls+mean"), before)
    assert new.store.format_version == 2 and new.store.failures() == {4: "corrupt"}
    if importlib.util.find_spec("xarray"):
        assert new.to_xarray()["cls"].dims == ("row", "feature")


def test_a_format_1_store_resumes_an_append_and_moves_its_records_out(tmp_path):
    out = tmp_path / "s.zarr"
    _test_store(out, 10)
    _as_format_1(out)
    store = RowStore.open_or_create(
        out, kind="test", metadata=_metadata(15), arrays=SPEC, shard_rows=4, identity={"m": 1}
    )
    assert store.pending_shards() == [2, 3]  # only the old partial shard and the new rows
    assert not (out / "_progress").exists() and not (out / "run.json").exists()
    _test_store(out, 15)
    final = RowStore.open(out)
    assert final.is_complete and final.failures() == {1: "unreadable"}
    np.testing.assert_array_equal(final.array("x")[:, 0], np.arange(15))


def test_a_copy_without_bookkeeping_reads_whole_and_ignores_stale_records(tmp_path):
    _test_store(tmp_path / "a.zarr", 10)
    copy = tmp_path / "b.zarr"
    shutil.copytree(tmp_path / "a.zarr", copy)  # the Zarr folder only
    stale = _sidecar(copy) / "progress-0123456789abcdef" / "shard-000000.json"
    stale.parent.mkdir(parents=True)
    stale.write_text('{"shard": 0, "rows": [0, 4], "failures": {"2": "stale"}}')
    read = RowStore.open(copy)
    assert read.is_complete and read.failures() == {1: "unreadable"}
    assert read.failed_mask().tolist() == [i == 1 for i in range(10)]
    store = RowStore.open_or_create(
        copy, kind="test", metadata=_metadata(15), arrays=SPEC, shard_rows=4, identity={"m": 1}
    )
    assert store.pending_shards() == [2, 3]  # done records rebuilt from the attributes


def test_replacing_a_store_removes_its_bookkeeping_and_keeps_other_files(tmp_path):
    out = tmp_path / "s.zarr"
    _test_store(out, 10)
    (_sidecar(out) / "notes.txt").write_text("mine")
    RowStore.create(
        out, kind="test", metadata=_metadata(6), arrays=SPEC, shard_rows=4, identity={"m": 2}
    )
    assert sorted(p.name for p in _sidecar(out).iterdir()) == ["notes.txt"]
    assert RowStore.open(out).pending_shards() == [0, 1]


# ---------------------------------------------------------------------- any map-style dataset
class TxvLike(torch.utils.data.Dataset):
    """torchxrayvision-style: dict items, float (1, H, W) images in [-1024, 1024], no ids in
    the items, ``.pathologies`` and ``.labels`` (NaN = not annotated)."""

    pathologies = FINDINGS

    def __init__(self, images: list[np.ndarray], labels: np.ndarray) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"img": self.images[i], "lab": self.labels[i], "idx": i}


class Triples(torch.utils.data.Dataset):
    """``(PIL image, labels, id)`` items read from PNG files."""

    pathologies = FINDINGS

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple:
        return Image.open(self.paths[i]), torch.tensor([i % 2, 1.0]), f"file{i}"


def _extract(out: Path, dataset) -> dict:
    return extract_embeddings(
        out,
        dataset=dataset,
        init="random",
        arch=ARCH,
        model_kwargs=TINY,
        img_size=32,
        batch_size=3,
        num_workers=0,
        device="cpu",
        shard_rows=4,
    )


def test_a_torchxrayvision_style_dataset_embeds_like_a_direct_forward(tmp_path):
    images = [
        (radiograph_like(40 + 2 * i, 36, seed=i).astype(np.float32)[None] / 255 * 2048 - 1024)
        for i in range(6)
    ]
    images[3] = np.full((1, 30, 30), 7.0, dtype=np.float32)  # constant: holds no picture
    labels = np.array([[1, np.nan], [0, 1]] * 3, dtype=np.float32)
    dataset = TxvLike(images, labels)
    ids = [f"txv{i}" for i in range(6)]
    source = from_dataset(dataset, CFG, ids=ids, split=["train", "val"] * 3, patient_ids="p0")
    summary = _extract(tmp_path / "emb.zarr", source)
    assert [f["row"] for f in summary["failures"]] == [3]
    assert "constant" in summary["failures"][0]["reason"]

    emb = open_embeddings(tmp_path / "emb.zarr")
    good = np.arange(6) != 3
    pixels = np.stack([preprocess(images[i][0], CFG) for i in np.flatnonzero(good)])
    cls, mean, _ = direct_reference(pixels, ARCH, 32, 0)
    np.testing.assert_allclose(emb.features("cls")[good], cls, rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(emb.features("mean")[good], mean, rtol=2e-3, atol=2e-3)
    assert emb.ids.tolist() == ids and emb.split.tolist() == ["train", "val"] * 3
    np.testing.assert_array_equal(emb.labels, labels)
    assert emb.provenance["dataset"] == f"{TxvLike.__module__}.TxvLike"
    assert emb.provenance["rows_sha256"] == emb.metadata().digest()
    assert emb.identity["preprocess"]["config"] == CFG.to_dict()


def test_a_dataset_of_triples_gives_the_raw_files_pixels_and_embeds_directly(tmp_path):
    df, root = make_image_dataset(tmp_path, 4, size=36, sixteen_bit=[1])
    paths = image_paths(df, root)
    source = from_dataset(Triples(paths), CFG)  # labels and ids read from the items
    assert source.metadata.ids.tolist() == [f"file{i}" for i in range(4)]
    np.testing.assert_array_equal(source.metadata.labels[:, 0], [0, 1, 0, 1])
    for i, path in enumerate(paths):
        row, image, error = source.dataset[i]
        assert row == i and error is None
        np.testing.assert_array_equal(image, load_preprocessed(path, CFG))

    _extract(tmp_path / "emb.zarr", Triples(paths))  # a plain dataset: default preprocessing
    emb = open_embeddings(tmp_path / "emb.zarr")
    pixels = np.stack([load_preprocessed(p, PreprocessConfig().with_size(32)) for p in paths])
    cls, _, _ = direct_reference(pixels, ARCH, 32, 0)
    np.testing.assert_allclose(emb.features("cls"), cls, rtol=2e-3, atol=2e-3)
    assert emb.provenance["dataset"] == f"{Triples.__module__}.Triples"


def test_datasets_without_names_ids_or_order_are_refused(tmp_path):
    images = [radiograph_like(20, 20, seed=i) for i in range(3)]
    bare = [(image, [1.0, 0.0]) for image in images]  # a list is a map-style dataset too
    with pytest.raises(ConfigError, match="give findings"):
        from_dataset(bare)
    with pytest.raises(DataFormatError, match="row 0: the item holds no id; give ids"):
        from_dataset(bare, findings=FINDINGS)
    with pytest.raises(DataFormatError, match="'a' appears more than once"):
        from_dataset(bare, findings=FINDINGS, ids=["a", "b", "a"])
    with pytest.raises(DataFormatError, match=r"labels have shape \(3, 2\); expected \(3, 1\)"):
        from_dataset(bare, findings=FINDINGS[:1], ids=["a", "b", "c"])
    with pytest.raises(DataFormatError, match=r"\['split'\] repeat or are taken by the row"):
        from_dataset(bare, findings=("split", "x"), ids=["a", "b", "c"])
    source = from_dataset(Triples([]), CFG, labels=np.zeros((0, 2)), ids=[])
    assert len(source.metadata) == 0
    reordered = from_dataset(bare, findings=FINDINGS, ids=["a", "b", "c"])
    reordered.dataset.dataset = [(image, [1.0, 0.0], "c") for image in images]
    with pytest.raises(DataFormatError, match="item id 'c', but the row was listed as 'a'"):
        reordered.dataset[0]
    with pytest.raises(ConfigError, match="not several"):
        extract_embeddings(tmp_path / "e.zarr", init="random", dataset=bare, images="i.zarr")


# ---------------------------------------------------------------------------- JavaScript
JS_READER = """
import * as zarr from "zarrita";
import FileSystemStore from "@zarrita/storage/fs";
const root = zarr.root(new FileSystemStore(process.argv[2]));
const group = await zarr.open(root, { kind: "group" });
const read = async (name) => Array.from((await zarr.get(await zarr.open(root.resolve(name), { kind: "array" }))).data);
console.log(JSON.stringify({ kind: group.attrs.cxrprobe.kind, ids: await read("ids"), cls: await read("cls") }));
"""


@pytest.mark.skipif(
    not (os.environ.get("CXRPROBE_JS_MODULES") and shutil.which("node")),
    reason="set CXRPROBE_JS_MODULES to a node_modules folder holding zarrita",
)
def test_javascript_zarrita_reads_a_float32_store(tmp_path):
    create_embeddings(tmp_path / "emb.zarr", _metadata(), _features(), dtype="float32")
    script = tmp_path / "read.mjs"
    script.write_text(JS_READER)
    (tmp_path / "node_modules").symlink_to(os.environ["CXRPROBE_JS_MODULES"])
    proc = subprocess.run(
        ["node", str(script), str(tmp_path / "emb.zarr")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    read = json.loads(proc.stdout)
    assert read["kind"] == "embeddings" and read["ids"] == _metadata().ids.tolist()
    np.testing.assert_array_equal(
        np.array(read["cls"], dtype=np.float32), _features()["cls"].ravel()
    )
