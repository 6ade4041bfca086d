"""CLI commands: images (``cxrprobe preprocess``: build the preprocessed image cache)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from cxrprobe.cli.options import ASPECT_CHOICE, PRESET_CHOICE, RegistryChoice, workers_option
from cxrprobe.cli.output import RESUMABLE, library_errors, progress

SHOWN_FAILURES = 5


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
    type=PRESET_CHOICE,
    default="default",
    show_default=True,
    help="Starting settings: default (modern), study (the study's code), paper (older approximation).",
)
@click.option(
    "--size",
    type=click.IntRange(min=8),
    default=None,
    help="Output side in pixels (224, 336, 448, 512, 518...; default: the preset's, 224).",
)
@click.option(
    "--aspect",
    type=ASPECT_CHOICE,
    default=None,
    help="Aspect policy: stretch to square, pad the short side, or centre-crop (default: preset's).",
)
@click.option(
    "--equalize/--no-equalize",
    default=None,
    help="Histogram-equalise before resizing (default: the preset's).",
)
@click.option(
    "--minmax/--no-minmax",
    default=None,
    help="Scale each image by its own minimum and maximum before quantising (default: the preset's).",
)
@click.option(
    "--resample",
    type=RegistryChoice("cxrprobe.data.preprocess:RESAMPLES"),
    default=None,
    help="Resize filter: Pillow's (antialiased) or spline2, scipy's zoom (default: the preset's).",
)
@workers_option(os.cpu_count() or 1, "Worker processes, each writing whole shards.", minimum=1)
@click.option(
    "--shard-rows",
    type=click.IntRange(min=1),
    default=None,
    help="Images per shard (default: about 32 MB of pixels per shard).",
)
@click.option("--overwrite", is_flag=True, help="Rebuild OUT from scratch instead of resuming it.")
def preprocess(**params: Any) -> None:
    """Decode, preprocess and store every manifest image once, as uint8 SIZE x SIZE.

    Writes a sharded Zarr v3 store with the image ids, split, patient ids and labels; worker
    processes each own whole shards. Rerunning the same command after a kill resumes it (finished
    shards are kept). Unreadable images are listed, written to OUT.cxrprobe/failures.json and
    masked in the store, never stored as images. OUT is plain Zarr; OUT.cxrprobe/ also holds
    run.json (settings, versions), rows.parquet (ids, splits, labels) and progress records.

    Example:

    \b
        cxrprobe preprocess --manifest manifest.parquet --root /data/cxr14 --size 512 --out images_512.zarr --preset paper
    """
    from cxrprobe.cache.images import build_cache
    from cxrprobe.cache.layout import StoreFiles

    out = params["out"]
    with library_errors(RESUMABLE):
        summary = build_cache(params, progress)
    failures = summary["failures"]
    failures_file = StoreFiles(out).failures
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
        click.echo(f"failures listed in {failures_file}", err=True)


COMMANDS = [preprocess]
