"""CLI command: ``probe`` (linear or kNN probe on a cached embedding store)."""

from __future__ import annotations

from pathlib import Path

import click

from cxrprobe.cli._common import device_option, library_errors, progress_in, record, seed_option

_DEFAULT_GRID = "1e-6:1e5:45"


def _names(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _ints(value: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in _names(value))
    except ValueError as exc:
        raise click.BadParameter(
            f"{value!r}: give comma-separated integers, e.g. 10,20,100,200", param_hint="--k"
        ) from exc


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
    help="Test-split predictions file, .json or .npz; weights, summary and run record go beside it.",
)
@click.option(
    "--method",
    type=click.Choice(["linear", "knn"]),
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
    type=click.Choice(["torch", "sklearn", "cuml"]),
    default="torch",
    show_default=True,
    help="Linear solver: batched L-BFGS in torch, scikit-learn, or RAPIDS cuML (the gpu extra).",
)
@device_option("torch backend, kNN")
@click.option(
    "--grid",
    default=_DEFAULT_GRID,
    show_default=True,
    help="C values (scikit-learn's inverse L2 strength): START:STOP:COUNT log-spaced, or a comma list.",
)
@click.option(
    "--select",
    "selection",
    type=click.Choice(["mean", "per-finding"]),
    default="mean",
    show_default=True,
    help="Choose one C by validation mean AUROC, or each finding's own best C.",
)
@click.option(
    "--refit-trainval",
    is_flag=True,
    help="Refit the chosen C on train+val before scoring the test split.",
)
@click.option(
    "--class-weight",
    type=click.Choice(["none", "pos_weight"]),
    default="none",
    show_default=True,
    help="pos_weight weighs positives by negatives/positives per finding (the study's setting).",
)
@click.option(
    "--uncertain",
    type=click.Choice(["ignore", "zero", "one"]),
    default="ignore",
    show_default=True,
    help="Training use of uncertain (-1) labels: masked out of the loss, or mapped to 0 or 1.",
)
@click.option(
    "--train-split",
    default="train",
    show_default=True,
    help="Split name(s) to train on, comma-separated.",
)
@click.option(
    "--val-split", default="val", show_default=True, help="Split name(s) to choose C or k on."
)
@click.option("--test-split", default="test", show_default=True, help="Split name(s) to predict.")
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
@seed_option("Seed of --val-fraction.")
@click.option(
    "--k", "ks", default="10,20,100,200", show_default=True, help="kNN neighbour counts to try."
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
    "--eval-only",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Re-score the test split with saved weights (a .weights.safetensors file) instead of fitting.",
)
def probe(
    store,
    out,
    method,
    features,
    backend,
    device,
    grid,
    selection,
    refit_trainval,
    class_weight,
    uncertain,
    train_split,
    val_split,
    test_split,
    split_csv,
    val_fraction,
    seed,
    ks,
    temperature,
    max_iter,
    tol,
    eval_only,
) -> None:
    """Fit a linear (or kNN) probe on cached embeddings and predict the test split.

    Linear: one logistic regression per finding on features standardised with the training rows;
    uncertain (-1) and missing labels are masked out of the loss. Every C of the grid is fitted in
    one pass, C is chosen on the validation split by mean AUROC, and the test split is scored.
    kNN: cosine similarity, votes weighted exp(sim/T), k chosen on validation.

    Writes OUT (predictions with provenance), OUT's .weights.safetensors (linear), .summary.json
    (the grid with validation AUROC per value, chosen value, per-finding AUROC) and .run.json.

    Example:

    \b
        cxrprobe probe --store emb.zarr --features cls+mean --out probes/dinov2_clsmean.json
        cxrprobe probe --store emb.zarr --method knn --out probes/dinov2_knn.json
        cxrprobe probe --store emb.zarr --eval-only probes/dinov2_clsmean.weights.safetensors \\
            --out probes/rescored.json
    """
    from cxrprobe.probe.run import ProbeConfig, output_paths, parse_grid, run_probe
    from cxrprobe.probe.summary import format_summary

    with library_errors():
        config = ProbeConfig(
            store=store,
            out=out,
            method=method,
            features=features,
            backend=backend,
            device=device,
            grid=parse_grid(grid),
            selection=selection,
            refit_trainval=refit_trainval,
            class_weight=class_weight,
            uncertain=uncertain,
            train_split=_names(train_split),
            val_split=_names(val_split),
            test_split=_names(test_split),
            split_csv=split_csv,
            val_fraction=val_fraction,
            seed=seed,
            ks=_ints(ks),
            temperature=temperature,
            max_iter=max_iter,
            tol=tol,
            eval_only=eval_only,
        )
        summary = run_probe(config, progress=progress_in("iter"))
    record(
        output_paths(out)["run"],
        "probe",
        {
            **summary["config"],
            "result": {
                "test_mean_auroc": summary["test_mean_auroc"],
                "chosen": summary.get("chosen"),
                "outputs": summary["outputs"],
            },
        },
    )
    for line in format_summary(summary):
        click.echo(line)


COMMANDS = [probe]
