"""CLI commands: ``compare`` (paired bootstrap + DeLong of two models) and ``evaluate`` (one)."""

from __future__ import annotations

from pathlib import Path

import click

from cxrprobe.cli.options import (
    alpha_option,
    device_option,
    findings_option,
    seed_option,
    stack_options,
)
from cxrprobe.cli.output import library_errors, progress_in

_FILE = click.Path(dir_okay=False, path_type=Path)


def _bootstrap_options(command):
    """Options shared by compare and evaluate (resampling, device, CIs, label families,
    calibration, subgroups, finding subset, outputs)."""
    options = [
        click.option(
            "--resamples",
            "-B",
            type=click.IntRange(min=1),
            default=1000,
            show_default=True,
            help="Bootstrap resamples (a two-sided test needs 2/(B+1) <= alpha: B >= 39 at 0.05).",
        ),
        seed_option("Seed of the resample draws (written into the report)."),
        click.option(
            "--cluster",
            type=click.Choice(["none", "patient"]),
            default="none",
            show_default=True,
            help="Resample patients instead of images (needs patient ids).",
        ),
        device_option("where resamples are evaluated"),
        click.option(
            "--ci",
            type=click.Choice(["percentile", "bca"]),
            default="percentile",
            show_default=True,
            help="Confidence interval method for AUROC.",
        ),
        alpha_option("Significance level; CIs are 1 - alpha."),
        click.option(
            "--chunk-size",
            type=click.IntRange(min=1),
            default=None,
            help="Resamples per chunk (default: sized to the device's memory).",
        ),
        click.option(
            "--min-positives",
            type=click.IntRange(min=0),
            default=10,
            show_default=True,
            help="Labels with fewer positive (or negative) rows are flagged rare.",
        ),
        click.option(
            "--include-rare",
            is_flag=True,
            help="Keep rare labels in the FDR family (left out by default).",
        ),
        click.option(
            "--ece-bins",
            type=click.IntRange(min=1),
            default=10,
            show_default=True,
            help="Equal-mass bins of the expected calibration error.",
        ),
        click.option(
            "--by",
            multiple=True,
            help="Subgroup field of the predictions: 'sex', 'view', or numeric bins "
            "'age:0,40,60,80'; repeat for several.",
        ),
        findings_option("Score only these of the files' findings (they alone form the FDR family)"),
        click.option("--out", type=_FILE, default=None, help="Write the JSON report here."),
        click.option("--markdown", type=_FILE, default=None, help="Write a markdown report."),
        click.option(
            "--subgroup-plot",
            type=_FILE,
            default=None,
            help="Write a subgroup forest plot (needs --by).",
        ),
        click.option(
            "--reliability-plot",
            type=_FILE,
            default=None,
            help="Write a reliability diagram (probability scores only).",
        ),
    ]
    return stack_options(*options)(command)


def _options(kw: dict):
    from cxrprobe.stats.report import BootstrapOptions

    return BootstrapOptions(
        resamples=kw["resamples"],
        seed=kw["seed"],
        cluster=kw["cluster"],
        device=kw["device"],
        ci=kw["ci"],
        alpha=kw["alpha"],
        chunk_size=kw["chunk_size"],
        min_positives=kw["min_positives"],
        include_rare=kw["include_rare"],
        ece_bins=kw["ece_bins"],
    )


def _shared(kw: dict) -> dict:
    """The keyword arguments run_compare and run_evaluate take alike: subgroups, finding subset,
    outputs and progress."""
    names = ("by", "findings", "out", "markdown", "subgroup_plot", "reliability_plot")
    return {**{name: kw[name] for name in names}, "progress": progress_in("resample")}


def _show(report: dict, written: list) -> None:
    from cxrprobe.stats.render import format_report

    click.echo(format_report(report, warnings=False))  # each warning once, on stderr
    for warning in report["warnings"]:
        click.echo(f"Warning: {warning}", err=True)
    if written:
        click.echo("wrote " + ", ".join(str(p) for p in written))


@click.command("compare")
@click.argument("file_a", type=_FILE)
@click.argument("file_b", type=_FILE)
@_bootstrap_options
@click.option(
    "--align",
    is_flag=True,
    help="Match rows by id and labels by name, dropping what only one file has.",
)
@click.option(
    "--validation-a",
    type=_FILE,
    default=None,
    help="A's validation predictions: Youden thresholds are chosen on them.",
)
@click.option("--validation-b", type=_FILE, default=None, help="B's validation predictions.")
@click.option("--plot", type=_FILE, default=None, help="Write a forest plot (png, pdf, svg).")
@click.option(
    "--name-a",
    default=None,
    help="A's name in the verdict, reports and plots [default: its file name, or the folders "
    "telling the two files apart when both have the same name].",
)
@click.option("--name-b", default=None, help="B's name (see --name-a).")
def compare(file_a: Path, file_b: Path, **kw) -> None:
    """Compare model A (FILE_A) with model B (FILE_B) on the same images: paired bootstrap and
    DeLong; every difference is B - A.

    Per label and for the mean AUROC: both AUROCs with CIs, the difference with its CI, the
    two-sided bootstrap p (which decides), Benjamini-Hochberg FDR across labels, DeLong's test
    and the study's one-sided p (for reproduction only). Rare labels are flagged and left out
    of the FDR family; Brier score and ECE for probabilities; --by repeats everything per
    subgroup. Both files must hold the same ids and labels (or pass --align). Files are
    cxrprobe predictions (.json, .npz) or long tables from any tool (.parquet, .csv: columns
    image_id, finding, target, score; optional patient_id, score_kind, subgroup columns). Each
    output gets OUTPUT.run.json beside it.

    Example:

    \b
        cxrprobe compare imagenet.json dinov2.json --by sex --out cmp.json --plot cmp.png --markdown cmp.md
        cxrprobe compare imagenet.json dinov2.json --findings study-chexpert --out cmp_chexpert.json
        cxrprobe compare imagenet/probe/predictions.json dinov2/probe/predictions.json --name-a imagenet --name-b dinov2
    """
    from cxrprobe.stats.outputs import run_compare

    with library_errors():
        report, written = run_compare(
            file_a,
            file_b,
            _options(kw),
            name_a=kw["name_a"],
            name_b=kw["name_b"],
            align=kw["align"],
            validation_a=kw["validation_a"],
            validation_b=kw["validation_b"],
            plot=kw["plot"],
            **_shared(kw),
        )
    _show(report, written)


@click.command("evaluate")
@click.argument("file", type=_FILE)
@_bootstrap_options
@click.option(
    "--validation",
    type=_FILE,
    default=None,
    help="Validation predictions: Youden thresholds are chosen on them.",
)
@click.option(
    "--name", default=None, help="The model's name in reports and plots [default: its file name]."
)
def evaluate(file: Path, **kw) -> None:
    """One model's table: AUROC per label and mean with bootstrap CIs, sensitivity,
    specificity, accuracy and F1 at a Youden threshold chosen once, Brier score and ECE, and
    with --by the same per subgroup with AUROC gaps. FILE is .json, .npz, .parquet or .csv (see
    compare). Each output gets OUTPUT.run.json beside it.

    Example:

    \b
        cxrprobe evaluate dinov2.json --validation dinov2_val.json --by age:0,40,60,80 --out eval.json --markdown eval.md --name dinov2
    """
    from cxrprobe.stats.outputs import run_evaluate

    with library_errors():
        report, written = run_evaluate(
            file,
            _options(kw),
            name=kw["name"],
            validation=kw["validation"],
            **_shared(kw),
        )
    _show(report, written)


COMMANDS = [compare, evaluate]
