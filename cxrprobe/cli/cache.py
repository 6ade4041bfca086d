"""CLI commands: cache (``extract`` embeddings, ``info`` on any store, ``export`` to HDF5/npz)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from cxrprobe.cli.options import (
    RegistryChoice,
    device_option,
    image_source_options,
    model_options,
    workers_option,
)
from cxrprobe.cli.output import RESUMABLE, library_errors, progress
from cxrprobe.devices import is_main_rank

SHOWN_FAILURES = 5


@click.command()
@model_options()
@image_source_options()
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="Output Zarr store, e.g. emb.zarr.",
)
@click.option(
    "--size",
    "img_size",
    type=click.IntRange(min=8),
    default=224,
    show_default=True,
    help="Model input size (a multiple of the patch size: 224, 518 for /14, 512 for /16).",
)
@click.option(
    "--layers",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Also store the class token of each of the last N blocks.",
)
@click.option(
    "--dtype",
    type=RegistryChoice("cxrprobe.cache.embeddings:DTYPES"),
    default="float16",
    show_default=True,
    help="Storage dtype of the features.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=128,
    show_default=True,
    help="Images per batch.",
)
@workers_option(None, "DataLoader worker processes (default: up to 8 per GPU, 2 on CPU).")
@device_option("torchrun: each rank's GPU")
@click.option(
    "--compile",
    "compile",
    is_flag=True,
    help="torch.compile the model (faster on GPU after warm-up).",
)
@click.option(
    "--overwrite", is_flag=True, help="Rebuild OUT even if it was made with other settings."
)
@click.option(
    "--shard-rows",
    type=click.IntRange(min=1),
    default=None,
    help="Rows per store shard, the resume unit (default: up to 16384, about 64 MB; use a power of two).",
)
def extract(**params: Any) -> None:
    """Write frozen embeddings of every image (a ViT's CLS token and patch mean, a CNN's pooled
    features) to a Zarr store.

    Reads the preprocessed image cache (--images) or raw files (--manifest/--root). Rerunning the
    same command after a kill resumes it; a store made with another model, weights, size or
    manifest is refused unless --overwrite; rows added at the end of the manifest are appended.
    Under torchrun each rank takes its own shards. Unreadable images are listed in
    OUT.cxrprobe/failures.json and masked (NaN), never embedded. OUT is plain Zarr; OUT.cxrprobe/
    also holds run.json (settings, versions), rows.parquet (ids, splits, labels) and progress.

    Example:

    \b
        cxrprobe extract --init dinov2 --weights dinov2_vitb14_pretrain.pth --images images.zarr --out emb.zarr
        torchrun --nproc_per_node 8 --no-python cxrprobe extract --init imagenet --images images.zarr --out emb.zarr
    """
    from cxrprobe.cache.extract import describe, run_extract

    out = params["out"]
    with library_errors(RESUMABLE):
        summary = run_extract(params, progress)
    if not is_main_rank():
        return
    from cxrprobe.cache.layout import StoreFiles

    failures = summary["failures"]
    failures_file = StoreFiles(out).failures
    click.echo(describe(summary))
    for failure in failures[:SHOWN_FAILURES]:
        click.echo(
            f"  failed row {failure['row']} ({failure['image_id']}): {failure['reason']}", err=True
        )
    if len(failures) > SHOWN_FAILURES:
        click.echo(
            f"  ... and {len(failures) - SHOWN_FAILURES} more (all in {failures_file})",
            err=True,
        )


@click.command()
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the full description as JSON.")
def info(store, as_json) -> None:
    """Show what a store (embeddings or image cache) holds.

    Kind, rows, arrays with shapes and dtypes, findings, rows per split, failures, whether it is
    complete, and the provenance (model, weights, input size, versions).

    Example:

    \b
        cxrprobe info emb.zarr --json
    """
    from cxrprobe.cache.info import describe_store, format_description

    with library_errors():
        description = describe_store(store)
    if as_json:
        click.echo(json.dumps(description, indent=2))
    else:
        click.echo(format_description(description))


@click.command()
@click.argument("store", type=click.Path(path_type=Path))
@click.option(
    "--h5",
    "h5",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write an HDF5 file.",
)
@click.option(
    "--npz",
    "npz",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write an uncompressed NumPy .npz (the whole store passes through memory).",
)
def export(store, h5, npz) -> None:
    """Export an embedding store to HDF5 or .npz (float32 features, ids, labels, provenance).

    HDF5 holds features/cls, features/mean (and features/layers), ids, split and patient_id as
    UTF-8 strings, the subgroup fields the store has (sex, view as strings, age as float32),
    labels as int8 (-128 = not annotated), failed, and provenance as JSON attributes. STORE is
    an embedding store from `cxrprobe extract`. OUT.run.json records the command.

    Example:

    \b
        cxrprobe export emb.zarr --h5 emb.h5
    """
    from cxrprobe.cache.embeddings import open_embeddings
    from cxrprobe.cache.export import export_h5, export_npz

    if (h5 is None) == (npz is None):
        raise click.UsageError("give exactly one of --h5 OUT.h5 or --npz OUT.npz")
    out = h5 or npz
    with library_errors():
        emb = open_embeddings(store)
        config = {"store": store, "h5": h5, "npz": npz}
        (export_h5 if h5 is not None else export_npz)(emb, out, record=config)
    click.echo(
        f"{store} -> {out}: {len(emb)} rows, features {', '.join(emb.feature_kinds)} (D={emb.dim}), "
        f"{int(emb.failed.sum())} failed rows"
    )


COMMANDS = [extract, info, export]
