"""The image cache: content vs direct preprocessing, failures, parallel = serial, resume after a kill,
datasets and collate, and the ``cxrprobe preprocess`` command."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cxrprobe.cache.images import (
    SHARD_DELAY_ENV,
    build_image_cache,
    default_shard_rows,
    open_images,
)
from cxrprobe.cache.layout import StoreFiles
from cxrprobe.cache.source import CachedImages, RawImages, collate_images
from cxrprobe.cache.store import RowStore
from cxrprobe.cli import main
from cxrprobe.data.decode import image_paths
from cxrprobe.data.manifest import manifest_hash, write_manifest
from cxrprobe.data.preprocess import PRESETS, PreprocessConfig, load_preprocessed
from cxrprobe.errors import IncompleteStoreError, MissingDependencyError, StoreMismatchError
from tests.image_fixtures import make_image_dataset, preprocess_args

CFG = PreprocessConfig(size=24, aspect="pad", equalize=True)


@pytest.fixture
def dataset(tmp_path):
    """10 images (row 3 corrupt, row 6 missing) and their manifest written as Parquet."""
    df, root = make_image_dataset(
        tmp_path, 10, size=30, corrupt=[3], missing=[6], sixteen_bit=[1, 8]
    )
    return df, root, write_manifest(df, tmp_path / "manifest.parquet")


@pytest.fixture
def built(dataset, tmp_path):
    df, root, _ = dataset
    summary = build_image_cache(df, root, tmp_path / "c.zarr", CFG, workers=1, shard_rows=4)
    return df, root, summary, open_images(tmp_path / "c.zarr")


def test_cache_holds_what_direct_preprocessing_gives(built):
    df, root, summary, cache = built
    paths = image_paths(df, root)
    assert len(cache) == 10 and cache.size == 24 and cache.config == CFG
    np.testing.assert_array_equal(cache.ids, df["image_id"].to_numpy())
    images = cache.read(slice(None))
    assert images.shape == (10, 24, 24) and images.dtype == np.uint8
    for row in np.flatnonzero(~cache.failed):
        np.testing.assert_array_equal(images[row], load_preprocessed(paths[row], CFG))
    assert cache.provenance["manifest_hash"] == manifest_hash(df)
    assert cache.metadata().first_difference(cache.store.metadata()) is None
    assert summary["shards"] == 3 and summary["computed"] == 10 and summary["shard_rows"] == 4


def test_failures_recorded_masked_and_never_data(built):
    _, _, summary, cache = built
    assert summary["images"] == 8
    assert [(f["row"], f["image_id"]) for f in summary["failures"]] == [
        (3, "img003"),
        (6, "img006"),
    ]
    assert (
        "cannot decode" in summary["failures"][0]["reason"]
        and "not found" in summary["failures"][1]["reason"]
    )
    assert summary["failures"][1]["path"].endswith("img006.png")
    np.testing.assert_array_equal(np.flatnonzero(cache.failed), [3, 6])
    assert [f["row"] for f in cache.store.attrs["failures"]] == [3, 6]  # in the store, too
    assert set(cache.failures) == {3, 6}


@pytest.mark.parametrize("dense_read", [0, 10**6], ids=["row-reads", "range-reads"])
def test_read_fancy_indices_any_order(built, dense_read, monkeypatch):
    import cxrprobe.cache.images as images_module

    monkeypatch.setattr(images_module, "DENSE_READ", dense_read)
    *_, cache = built
    everything = cache.read(slice(None))
    rows = [9, 0, 4, 4, 5, 1]
    np.testing.assert_array_equal(cache.read(rows), everything[rows])
    np.testing.assert_array_equal(cache.read(np.array([2, 3, 4, 5])), everything[2:6])
    np.testing.assert_array_equal(cache.read(slice(1, 9, 3)), everything[1:9:3])
    assert cache.read([]).shape == (0, 24, 24)
    with pytest.raises(IndexError, match="row 10 out of range"):
        cache.read([1, 10])


def test_parallel_workers_write_the_same_store(dataset, built, tmp_path, bars):
    df, root, _ = dataset
    *_, serial = built

    summary = build_image_cache(
        df, root, tmp_path / "p.zarr", CFG, workers=2, shard_rows=4, progress=bars
    )
    parallel = open_images(tmp_path / "p.zarr")
    np.testing.assert_array_equal(parallel.read(slice(None)), serial.read(slice(None)))
    np.testing.assert_array_equal(parallel.failed, serial.failed)
    assert (
        summary["failures"]
        == build_image_cache(df, root, tmp_path / "p.zarr", CFG, workers=2)["failures"]
    )
    (bar,) = bars
    assert bar.total == 10 and bar.done == 10


def test_default_shard_rows_gives_16_to_64_mb_shards():
    for size in (224, 336, 448, 512, 518, 1024):
        megabytes = default_shard_rows(size) * size * size / 2**20
        assert 16 <= megabytes <= 64, size
    assert default_shard_rows(224, n_rows=100, workers=4) == 25  # small runs still use every worker


def test_other_settings_refused_and_overwrite_rebuilds(built, tmp_path):
    df, root, _, _ = built
    with pytest.raises(StoreMismatchError, match="size: store has 24, this run has 32"):
        build_image_cache(df, root, tmp_path / "c.zarr", CFG.with_size(32), workers=1)
    summary = build_image_cache(
        df, root, tmp_path / "c.zarr", CFG.with_size(32), workers=1, overwrite=True
    )
    assert open_images(tmp_path / "c.zarr").size == 32 and summary["computed"] == 10


def test_rerun_of_finished_store_computes_nothing_and_appends_new_rows(dataset, built, tmp_path):
    df, root, _ = dataset
    again = build_image_cache(df, root, tmp_path / "c.zarr", CFG, workers=1)
    assert again["computed"] == 0 and again["shards_resumed"] == 3 and len(again["failures"]) == 2
    longer, _ = make_image_dataset(
        tmp_path, 13, size=30, corrupt=[3], missing=[6], sixteen_bit=[1, 8]
    )
    grown = build_image_cache(longer, root, tmp_path / "c.zarr", CFG, workers=1)
    # the old partial shard (rows 8-9) is redone, then the new rows
    assert grown["rows"] == 13 and grown["computed"] == 5
    cache = open_images(tmp_path / "c.zarr")
    np.testing.assert_array_equal(
        cache.read([12])[0], load_preprocessed(image_paths(longer, root)[12], CFG)
    )


def test_missing_decoder_stops_the_run_instead_of_recording(dataset, tmp_path, monkeypatch):
    df, root, _ = dataset
    import cxrprobe.cache.images as images_module

    def needs_extra(path, cfg):
        raise MissingDependencyError(f"{path}: needs pylibjpeg; pip install 'cxrprobe[dicom]'")

    monkeypatch.setattr(images_module, "load_preprocessed", needs_extra)
    with pytest.raises(MissingDependencyError):
        build_image_cache(df, root, tmp_path / "x.zarr", CFG, workers=1, shard_rows=4)
    assert RowStore.open(tmp_path / "x.zarr").pending_shards() == [0, 1, 2]
    with pytest.raises(IncompleteStoreError, match="run the command that made it again"):
        open_images(tmp_path / "x.zarr")


# ---------------------------------------------------------------------------- resume after kill
def _cli_args(manifest: Path, root: Path, out: Path) -> list[str]:
    return preprocess_args(manifest, root, out, "--aspect", "pad", "--equalize")


def test_resume_after_sigkill_redoes_only_unfinished_shards(dataset, tmp_path):
    df, root, manifest = dataset
    out = tmp_path / "killed.zarr"
    env = {**os.environ, SHARD_DELAY_ENV: "0.4"}
    code = "import sys; from cxrprobe.cli import main; main()"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *_cli_args(manifest, root, out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    sidecar = out.with_name(out.name + ".cxrprobe")  # done records sit beside the store
    deadline = time.monotonic() + 60
    while (
        not list(sidecar.glob("progress-*/shard-*.json"))
        and time.monotonic() < deadline
        and proc.poll() is None
    ):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = {p: p.stat().st_mtime_ns for p in sidecar.glob("progress-*/shard-*.json")}
    assert 1 <= len(done) < 5, "the kill should land between the first and the last of 5 shards"

    store = RowStore.open(out, mode="r+")
    partial = store.pending_shards()[0]
    store.array("images")[store.shard_slice(partial)] = 77  # a shard half-written when killed

    result = CliRunner().invoke(main, _cli_args(manifest, root, out))
    assert result.exit_code == 0, result.output
    assert f"{len(done)} of 5 shards kept" in result.output
    assert {path: path.stat().st_mtime_ns for path in done} == done  # not redone

    build_image_cache(df, root, tmp_path / "clean.zarr", CFG, workers=1, shard_rows=2)
    resumed, clean = open_images(out), open_images(tmp_path / "clean.zarr")
    assert resumed.read(slice(None)).tobytes() == clean.read(slice(None)).tobytes()
    assert _shard_files(out) == _shard_files(tmp_path / "clean.zarr")  # the stored shards, too
    np.testing.assert_array_equal(resumed.failed, clean.failed)


def _shard_files(store: Path) -> dict[str, bytes]:
    folder = store / "images"
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


# ------------------------------------------------------------------------- datasets and collate
def test_cached_and_raw_datasets_agree_and_report_failures(built):
    df, root, _, cache = built
    raw, cached = RawImages(df, root, CFG), CachedImages(cache)
    assert len(raw) == len(cached) == 10
    row, image, error = cached[2]
    assert row == 2 and error is None
    np.testing.assert_array_equal(image, raw[2][1])
    assert cached[3][1] is None and "cannot decode" in cached[3][2]
    assert raw[6][1] is None and "not found" in raw[6][2]

    restored = pickle.loads(pickle.dumps(cached))
    assert restored._cache is None  # workers reopen the store lazily
    np.testing.assert_array_equal(restored[5][1], cache.read([5])[0])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_dataloader_batches_with_collate(built, num_workers):
    *_, cache = built
    loader = torch.utils.data.DataLoader(
        CachedImages(cache.path), batch_size=4, num_workers=num_workers, collate_fn=collate_images
    )
    seen, failures = [], {}
    for rows, images, failed in loader:
        assert images.dtype == torch.uint8 and images.shape == (len(rows), 24, 24)
        np.testing.assert_array_equal(images.numpy(), cache.read(rows.numpy()))
        seen += rows.tolist()
        failures.update(failed)
    assert seen == [0, 1, 2, 4, 5, 7, 8, 9] and sorted(failures) == [3, 6]


def test_collate_of_only_failures():
    rows, images, failures = collate_images([(0, None, "bad"), (1, None, "gone")])
    assert rows.tolist() == [] and images.shape[0] == 0 and failures == {0: "bad", 1: "gone"}


# ------------------------------------------------------------------------------------------ CLI
def test_cli_preprocess_outputs_and_summary(dataset, tmp_path):
    _, root, manifest = dataset
    out = tmp_path / "cli.zarr"
    args = [
        "preprocess",
        "--manifest",
        str(manifest),
        "--root",
        str(root),
        "--out",
        str(out),
        "--preset",
        "paper",
        "--size",
        "32",
        "--workers",
        "1",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "8 images, 2 failures" in result.output and "images/s" in result.output
    assert "failed row 3 (img003)" in result.output
    failures = json.loads(StoreFiles(out).failures.read_text())
    assert [f["row"] for f in failures] == [3, 6]
    run = json.loads(StoreFiles(out).run.read_text())
    assert run["config"]["preprocess"] == {**PRESETS["paper"].to_dict(), "size": 32}
    assert "zarr" in run["versions"]
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == ["zarr.json"]  # plain Zarr
    assert open_images(out).config == PRESETS["paper"].with_size(32)


def test_cli_reads_csv_manifests(dataset, tmp_path):
    df, root, _ = dataset
    df.to_csv(tmp_path / "m.csv", index=False)
    args = [
        "preprocess",
        "--manifest",
        str(tmp_path / "m.csv"),
        "--root",
        str(root),
        "--out",
        str(tmp_path / "csv.zarr"),
        "--size",
        "16",
        "--workers",
        "1",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert open_images(tmp_path / "csv.zarr").ids.tolist() == df["image_id"].tolist()


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (["--manifest", "nowhere.parquet"], 1, "nowhere.parquet not found"),
        (["--aspect", "letterbox"], 2, "letterbox"),
        (["--size", "4"], 2, "--size"),
    ],
)
def test_cli_error_paths(dataset, tmp_path, extra, code, message):
    _, root, manifest = dataset
    args = [
        "preprocess",
        "--manifest",
        str(manifest),
        "--root",
        str(root),
        "--out",
        str(tmp_path / "e.zarr"),
        "--workers",
        "1",
        *extra,
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == code and message in result.output


def test_cli_refuses_other_settings_on_existing_output(dataset, tmp_path):
    _, root, manifest = dataset
    base = [
        "preprocess",
        "--manifest",
        str(manifest),
        "--root",
        str(root),
        "--out",
        str(tmp_path / "o.zarr"),
        "--workers",
        "1",
    ]
    assert CliRunner().invoke(main, [*base, "--size", "16"]).exit_code == 0
    result = CliRunner().invoke(main, [*base, "--size", "20"])
    assert result.exit_code == 1 and "--overwrite" in result.output
    assert CliRunner().invoke(main, [*base, "--size", "20", "--overwrite"]).exit_code == 0


def test_cli_help_has_example_and_every_preset():
    result = CliRunner().invoke(main, ["preprocess", "--help"])
    assert result.exit_code == 0 and "Example:" in result.output
    preset = next(p for p in main.commands["preprocess"].params if p.name == "preset")
    assert set(preset.type.choices) == set(PRESETS)
