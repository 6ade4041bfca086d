"""CLI command: ``probe`` (linear or kNN probe on a cached embedding store)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from cxrprobe.cli.options import (
    SCORED_AS_MADE,
    TRAINING_USE,
    CommaList,
    RegistryChoice,
    allow_leakage_option,
    blank_option,
    class_weight_option,
    device_option,
    findings_option,
    seed_option,
    uncertain_option,
)
from cxrprobe.cli.output import library_errors, progress_in
from cxrprobe.errors import ConfigError

_DEFAULT_GRID = "1e-6:1e5:45"
_NAMES = CommaList()


class GridType(CommaList):
    """C values: ``START:STOP:COUNT`` log-spaced, or comma-separated (a TOML list too)."""

    name = "grid"

    def __init__(self) -> None:
        super().__init__(click.FLOAT)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and ":" in value:
            from cxrprobe.probe.run import parse_grid

            try:
                return parse_grid(value)
            except ConfigError as exc:
                self.fail(str(exc), param, ctx)
        return super().convert(value, param, ctx)


@click.command()
@click.option(
    "--store",
    required=True,
    type=click.Path(path_type=Path),
    help="Embedding store (from cxrprobe extract).",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Test-split predictions file, .json, .npz, .parquet or .csv; weights, summary and run "
    "record go beside it.",
)
@click.option(
    "--method",
    type=RegistryChoice("cxrprobe.probe.run:METHODS"),
    default="linear",
    show_default=True,
    help="Logistic-regression probe, or the training-free kNN probe.",
)
@click.option(
    "--features",
    default=None,
    help="cls, mean, cls+mean, lastN (class tokens of the last N blocks) or '+'-joined parts [default: cls].",
)
@click.option(
    "--backend",
    type=RegistryChoice("cxrprobe.probe.backends:BACKENDS"),
    default="torch",
    show_default=True,
    help="Linear solver: batched L-BFGS in torch, scikit-learn, or RAPIDS cuML (the gpu extra).",
)
@device_option("torch backend, kNN")
@click.option(
    "--grid",
    type=GridType(),
    default=_DEFAULT_GRID,
    show_default=True,
    help="C values (scikit-learn's inverse L2 strength): START:STOP:COUNT log-spaced, or a comma list.",
)
@click.option(
    "--select",
    "selection",
    type=RegistryChoice("cxrprobe.probe.linear:SELECTIONS"),
    default="mean",
    show_default=True,
    help="Choose one C by validation mean AUROC, or each finding's own best C.",
)
@click.option(
    "--refit-trainval",
    is_flag=True,
    help="Refit the chosen C on train+val before scoring the test split.",
)
@class_weight_option("the study's setting", default="none", show_default=True)
@uncertain_option(TRAINING_USE)
@blank_option(TRAINING_USE, SCORED_AS_MADE)
@findings_option("Fit and score only these of the store's findings")
@click.option(
    "--train-split",
    type=_NAMES,
    default="train",
    show_default=True,
    help="Split name(s) to train on, comma-separated.",
)
@click.option(
    "--val-split",
    type=_NAMES,
    default="val",
    show_default=True,
    help="Split name(s) to choose C or k on.",
)
@click.option(
    "--test-split", type=_NAMES, default="test", show_default=True, help="Split name(s) to predict."
)
@click.option(
    "--split-csv",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="CSV with image_id,split overriding the store's splits (unlisted rows are left out).",
)
@click.option(
    "--val-fraction",
    type=float,
    default=None,
    help="Hold out this fraction of training patients as validation (for data without a val split).",
)
@click.option(
    "--train-fraction",
    "train_fractions",
    type=CommaList(click.FloatRange(0, 1, min_open=True)),
    default=None,
    help="Label-efficiency curve: refit on these fractions of the training patients "
    "(e.g. 0.01,0.1,1; nested, seeded patient-level subsets; validation and test fixed). Writes "
    "one predictions file per (fraction, repeat) in the folder OUT without its suffix, and "
    "curve.json there.",
)
@click.option(
    "--repeats",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Subsets drawn per --train-fraction value.",
)
@seed_option("Seed of --val-fraction and of the --train-fraction subsets.")
@click.option(
    "--k",
    "ks",
    type=CommaList(click.INT),
    default="10,20,100,200",
    show_default=True,
    help="kNN neighbour counts to try.",
)
@click.option(
    "--temperature",
    type=float,
    default=0.07,
    show_default=True,
    help="kNN vote temperature T: weight exp(sim/T).",
)
@click.option(
    "--max-iter",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Solver iteration limit.",
)
@click.option(
    "--tol",
    type=click.FloatRange(min=0, min_open=True),
    default=1e-6,
    show_default=True,
    help="Solver tolerance: largest gradient entry of the mean-scaled objective (as scikit-learn).",
)
@click.option(
    "--max-memory",
    default="auto",
    show_default=True,
    help="Working-memory budget of the linear solver and kNN search, on top of the features "
    "(kept as stored): e.g. 8GB, 512MiB; auto = a quarter of the device's memory, at most 1 GiB.",
)
@click.option(
    "--eval-only",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Re-score the test split with saved weights (a .weights.safetensors file) instead of fitting.",
)
@allow_leakage_option("the predictions' provenance")
def probe(**params: Any) -> None:
    """Fit a linear (or kNN) probe on cached embeddings and predict the test split.

    Linear: one logistic regression per finding on features standardised with the training rows;
    uncertain (-1) and missing labels are masked out of the loss (or mapped by --uncertain and
    --blank). Every C of the grid is fitted in one pass, C is chosen on the validation split by
    mean AUROC, and the test split is scored.
    kNN: cosine similarity, votes weighted exp(sim/T), k chosen on validation.

    Writes OUT (predictions with provenance), OUT's .weights.safetensors (linear), .summary.json
    (the grid with validation AUROC per value, chosen value, per-finding AUROC) and .run.json.

    --train-fraction F1,F2,... --repeats R draws a label-efficiency curve instead: one fit per
    (fraction, repeat) on nested, seeded patient-level subsets of the training split, written to
    the folder OUT without its suffix (f0.1_r0.json, ... and curve.json: test AUROC per fraction
    over repeats).

    Example:

    \b
        cxrprobe probe --store emb.zarr --features cls+mean --out probes/dinov2_clsmean.json
        cxrprobe probe --store emb.zarr --method knn --out probes/dinov2_knn.json
        cxrprobe probe --store emb.zarr --findings study-chexpert --blank negative \\
            --out probes/dinov2_study.json
        cxrprobe probe --store emb.zarr --eval-only probes/dinov2_clsmean.weights.safetensors \\
            --out probes/rescored.json
        cxrprobe probe --store emb.zarr --train-fraction 0.01,0.1,0.3,1 --repeats 5 \\
            --out probes/dinov2_curve.json
    """
    from cxrprobe.probe.curves import format_curve
    from cxrprobe.probe.run import ProbeConfig, run_probe
    from cxrprobe.probe.summary import format_summary

    with library_errors():
        summary = run_probe(ProbeConfig(**params), progress=progress_in("iter"))
    curve = params["train_fractions"] is not None
    for line in (format_curve if curve else format_summary)(summary):
        click.echo(line)


COMMANDS = [probe]
