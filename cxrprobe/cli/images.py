"""CLI commands: images (``cxrprobe preprocess``: build the preprocessed image cache)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from cxrprobe.cli._common import library_errors, progress, record

SHOWN_FAILURES = 5
FAILURES_FILE = "failures.json"


@click.command()
@click.option(
    "--manifest",
    "manifest",
    required=True,
    type=click.Path(path_type=Path),
    help="Manifest (Parquet or CSV) listing the images, one row each.",
)
@click.option(
    "--root",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder the manifest's relative paths start from (default: as written).",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="Output Zarr store (a folder, e.g. images_512.zarr).",
)
@click.option(
    "--preset",
    type=click.Choice(["default", "paper"]),
    default="default",
    show_default=True,
    help="Starting settings; 'paper' is the study's offline step (min-max, equalise, stretch).",
)
@click.option(
    "--size",
    type=click.IntRange(min=8),
    default=None,
    help="Output side in pixels (224, 336, 448, 512, 518...; default: the preset's, 224).",
)
@click.option(
    "--aspect",
    type=click.Choice(["stretch", "pad", "crop"]),
    default=None,
    help="Aspect policy: stretch to square, pad the short side, or centre-crop (default: preset's).",
)
@click.option(
    "--equalize/--no-equalize",
    default=None,
    help="Histogram-equalise before resizing (default: the preset's).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=os.cpu_count() or 1,
    show_default=True,
    help="Worker processes, each writing whole shards.",
)
@click.option(
    "--shard-rows",
    type=click.IntRange(min=1),
    default=None,
    help="Images per shard (default: about 32 MB of pixels per shard).",
)
@click.option("--overwrite", is_flag=True, help="Rebuild OUT from scratch instead of resuming it.")
def preprocess(
    manifest, root, out, preset, size, aspect, equalize, workers, shard_rows, overwrite
) -> None:
    """Decode, preprocess and store every manifest image once, as uint8 SIZE x SIZE.

    Writes a sharded Zarr v3 store with the image ids, split, patient ids and labels; worker
    processes each own whole shards. Rerunning the same command after a kill resumes it (finished
    shards are kept). Unreadable images are listed, written to OUT/failures.json and masked in
    the store, never stored as images. OUT/run.json records the settings and versions.

    Example:

    \b
        cxrprobe preprocess --manifest manifest.parquet --root /data/cxr14 --size 512 --out images_512.zarr --preset paper
    """
    from dataclasses import replace

    from cxrprobe.cache.images import build_image_cache
    from cxrprobe.data.preprocess import PRESETS
    from cxrprobe.provenance import atomic_write_json

    with library_errors():
        cfg = PRESETS[preset]
        overrides = {"size": size, "aspect": aspect, "equalize": equalize}
        cfg = replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
        summary = build_image_cache(
            manifest,
            root,
            out,
            cfg,
            workers=workers,
            shard_rows=shard_rows,
            overwrite=overwrite,
            progress=progress,
        )
    failures = summary["failures"]
    atomic_write_json(out / FAILURES_FILE, failures)
    result = {k: v for k, v in summary.items() if k != "failures"}
    record(
        out,
        "preprocess",
        {
            "manifest": str(manifest),
            "root": None if root is None else str(root),
            "out": str(out),
            "preset": preset,
            "preprocess": cfg.to_dict(),
            "workers": workers,
            "shard_rows": summary["shard_rows"],
            "overwrite": overwrite,
            "result": {**result, "failures": len(failures)},
        },
    )
    resumed = (
        f", {summary['shards_resumed']} of {summary['shards']} shards kept from an earlier run"
        if summary["shards_resumed"]
        else ""
    )
    click.echo(
        f"{summary['images']} images, {len(failures)} failures; computed {summary['computed']} in "
        f"{summary['seconds']:.1f} s ({summary['images_per_s']:.1f} images/s){resumed} -> {out}"
    )
    for failure in failures[:SHOWN_FAILURES]:
        click.echo(
            f"  failed row {failure['row']} ({failure['image_id']}): {failure['reason']}", err=True
        )
    if len(failures) > SHOWN_FAILURES:
        click.echo(f"  ... and {len(failures) - SHOWN_FAILURES} more", err=True)
    if failures:
        click.echo(f"failures listed in {out / FAILURES_FILE}", err=True)


COMMANDS = [preprocess]
