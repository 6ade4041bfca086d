"""Benchmark: preprocessing throughput per CPU core, and image-cache reads vs raw decoding.

(a) images/s of one process (= per core) decoding and preprocessing real-sized radiographs to
    each ``--sizes`` value, per source format: the Actualmed PNGs (~2000-2500 px, RGB-encoded),
    the same pictures re-encoded as grayscale JPEG (quality 95) and as 16-bit PNG (12 significant
    bits plus low-bit noise, as PadChest-like files); plus ``build_image_cache`` end to end with
    ``--workers`` processes on ``--build-rows`` rows.
(b) random batches of ``--batch`` rows read from an image cache of ``--cache-rows`` rows at
    ``--read-size`` (filled with the same real pictures), against decoding + preprocessing the
    raw files of the same batches (timed on ``--raw-per-batch`` rows of each batch): the ratio is
    the cache's speed-up (target >= 20x at 224).

Prints one JSON line. Small run: ``python benchmarks/bench_preprocess.py --sizes 224 --cache-rows
1024 --batches 3 --raw-per-batch 8 --build-rows 24``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from cxrprobe.cache.images import build_image_cache, default_shard_rows, open_images
from cxrprobe.cache.store import ArraySpec, RowMetadata, RowStore
from cxrprobe.data.decode import read_grayscale
from cxrprobe.data.preprocess import PreprocessConfig, load_preprocessed

REAL_IMAGES = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "images" / "actualmed"
)


def make_sources(folder: Path, work: Path, limit: int) -> dict[str, list[Path]]:
    """The real PNGs plus a grayscale JPEG and a 16-bit PNG made from each."""
    pngs = sorted(folder.glob("*.png"))[:limit]
    if not pngs:
        raise SystemExit(f"no PNGs in {folder}; pass --images DIR")
    rng = np.random.default_rng(0)
    sources: dict[str, list[Path]] = {"png_rgb": pngs, "jpeg": [], "png16": []}
    for i, path in enumerate(pngs):
        gray8 = np.rint(read_grayscale(path) * 255).astype(np.uint8)
        jpeg = work / f"src{i:02d}.jpg"
        Image.fromarray(gray8).save(jpeg, quality=95)
        sixteen = (gray8.astype(np.uint16) << 4) | rng.integers(0, 16, gray8.shape, dtype=np.uint16)
        png16 = work / f"src{i:02d}_16.png"
        Image.fromarray(sixteen).save(png16)
        sources["jpeg"].append(jpeg)
        sources["png16"].append(png16)
    return sources


def per_core_rates(sources: dict[str, list[Path]], sizes: list[int]) -> dict[str, dict[str, float]]:
    """Single-process images/s per format: decode only, and decode + preprocess at each size."""
    rates: dict[str, dict[str, float]] = {}
    for fmt, paths in sources.items():
        started = time.perf_counter()
        for path in paths:
            read_grayscale(path)
        entry = {"decode_only": len(paths) / (time.perf_counter() - started)}
        for size in sizes:
            cfg = PreprocessConfig(size=size)
            started = time.perf_counter()
            for path in paths:
                load_preprocessed(path, cfg)
            entry[f"size_{size}"] = len(paths) / (time.perf_counter() - started)
        shape = Image.open(paths[0]).size
        rates[fmt] = {**entry, "example_px": f"{shape[0]}x{shape[1]}"}
    return rates


def manifest_for(paths: list[Path], rows: int) -> pd.DataFrame:
    """A manifest of ``rows`` rows cycling through ``paths``."""
    return pd.DataFrame(
        {
            "image_id": [f"r{i:07d}" for i in range(rows)],
            "path": [str(paths[i % len(paths)]) for i in range(rows)],
            "patient_id": [f"p{i // 2}" for i in range(rows)],
            "study_id": [f"s{i}" for i in range(rows)],
            "view": "PA",
            "split": "train",
            "sex": None,
            "age": np.nan,
        }
    )


def fill_cache(out: Path, df: pd.DataFrame, cfg: PreprocessConfig) -> None:
    """A cache laid out exactly as build_image_cache makes it, each distinct file decoded once."""
    unique = {p: load_preprocessed(p, cfg) for p in dict.fromkeys(df["path"])}
    store = RowStore.create(
        out,
        kind="images",
        metadata=RowMetadata.from_manifest(df),
        arrays=[ArraySpec("images", (cfg.size, cfg.size), "uint8", 0, chunk_rows=1)],
        shard_rows=default_shard_rows(cfg.size),
        identity={"size": cfg.size, "preprocess": cfg.to_dict()},
    )
    for shard in store.pending_shards():
        rows = store.shard_slice(shard)
        store.write_shard(shard, {"images": np.stack([unique[p] for p in df["path"][rows]])}, {})
    store.finalize()


def read_vs_raw(
    cache_path: Path,
    df: pd.DataFrame,
    cfg: PreprocessConfig,
    batch: int,
    batches: int,
    raw_per_batch: int,
) -> dict[str, float]:
    cache = open_images(cache_path)
    rng = np.random.default_rng(1)
    cache_s = raw_s = 0.0
    raw_n = 0
    for _ in range(batches):
        rows = rng.choice(len(cache), size=batch, replace=False)
        started = time.perf_counter()
        images = cache.read(rows)
        cache_s += time.perf_counter() - started
        started = time.perf_counter()
        for row in rows[:raw_per_batch]:
            raw = load_preprocessed(df["path"].iloc[row], cfg)
        raw_s += time.perf_counter() - started
        raw_n += raw_per_batch
        assert images.shape == (batch, cfg.size, cfg.size) and raw.shape == images.shape[1:]
    started = time.perf_counter()
    for start in range(0, len(cache) - batch + 1, batch):
        cache.read(slice(start, start + batch))
    contiguous = (len(cache) // batch) * batch / (time.perf_counter() - started)
    cache_rate, raw_rate = batches * batch / cache_s, raw_n / raw_s
    return {
        "cache_random_batch_images_per_s": cache_rate,
        "cache_contiguous_images_per_s": contiguous,
        "raw_decode_images_per_s": raw_rate,
        "speedup": cache_rate / raw_rate,
        "cache_mb_on_disk": sum(p.stat().st_size for p in cache_path.rglob("*") if p.is_file())
        / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--images", type=Path, default=REAL_IMAGES, help="folder of full-size PNG radiographs"
    )
    parser.add_argument("--limit", type=int, default=12, help="how many source radiographs to use")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 224])
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument(
        "--build-rows", type=int, default=72, help="rows for the end-to-end build timing"
    )
    parser.add_argument("--read-size", type=int, default=224)
    parser.add_argument("--cache-rows", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument(
        "--raw-per-batch", type=int, default=24, help="raw rows decoded per batch (timed)"
    )
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_preprocess_"))
    try:
        sources = make_sources(args.images, work, args.limit)
        every = [p for paths in sources.values() for p in paths]
        result = {
            "cpu_count": os.cpu_count(),
            "sources": {k: len(v) for k, v in sources.items()},
            "per_core_images_per_s": per_core_rates(sources, args.sizes),
        }
        cfg = PreprocessConfig(size=args.read_size)
        build = build_image_cache(
            manifest_for(every, args.build_rows),
            None,
            work / "build.zarr",
            cfg,
            workers=args.workers,
        )
        result["build_image_cache"] = {
            "rows": args.build_rows,
            "workers": args.workers,
            "images_per_s": build["images_per_s"],
        }
        df = manifest_for(every, args.cache_rows)
        fill_cache(work / "read.zarr", df, cfg)
        result["read"] = {
            "size": args.read_size,
            "rows": args.cache_rows,
            "batch": args.batch,
            **read_vs_raw(
                work / "read.zarr", df, cfg, args.batch, args.batches, args.raw_per_batch
            ),
        }
        print(json.dumps(result))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
