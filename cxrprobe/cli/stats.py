"""CLI commands: ``compare`` (paired bootstrap + DeLong of two models) and ``evaluate`` (one)."""

from __future__ import annotations

from pathlib import Path

import click

from cxrprobe.cli._common import (
    device_option,
    library_errors,
    progress_in,
    record,
    seed_option,
    stack_options,
)

_FILE = click.Path(dir_okay=False, path_type=Path)


def _bootstrap_options(command):
    """Options shared by compare and evaluate (resampling, device, CIs)."""
    options = [
        click.option(
            "--resamples",
            "-B",
            type=click.IntRange(min=1),
            default=1000,
            show_default=True,
            help="Bootstrap resamples.",
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
        click.option(
            "--alpha",
            type=click.FloatRange(0, 1, min_open=True, max_open=True),
            default=0.05,
            show_default=True,
            help="Significance level; CIs are 1 - alpha.",
        ),
        click.option(
            "--chunk-size",
            type=click.IntRange(min=1),
            default=None,
            help="Resamples per chunk (default: sized to the device's memory).",
        ),
        click.option("--out", type=_FILE, default=None, help="Write the JSON report here."),
        click.option("--markdown", type=_FILE, default=None, help="Write a markdown table."),
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
    )


def _write_outputs(report: dict, name: str, config: dict, out, markdown, plot=None) -> None:
    from cxrprobe.stats.render import write_report_outputs

    written = write_report_outputs(
        {**report, "command": config}, out=out, markdown=markdown, plot=plot
    )
    for folder in sorted({path.resolve().parent for path in written}):
        record(folder, name, config)
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
def compare(file_a: Path, file_b: Path, **kw) -> None:
    """Compare two models' predictions on the same images: paired bootstrap and DeLong.

    Per label and for the mean AUROC: both AUROCs with CIs, the difference B - A with its CI,
    the study's bootstrap p-value (share of resamples in which the better model does not win),
    Benjamini-Hochberg FDR across labels and DeLong's test; Youden threshold metrics go to the
    JSON and markdown outputs. Both files must hold the same ids and labels (or pass --align).

    Example:

        cxrprobe compare dinov2.json imagenet.json --resamples 1000 --seed 0 --out cmp.json --plot cmp.png --markdown cmp.md
    """
    from cxrprobe.stats.report import compare_files

    config = {
        "file_a": str(file_a),
        "file_b": str(file_b),
        **{k: str(v) if isinstance(v, Path) else v for k, v in kw.items()},
    }
    with library_errors():
        options = _options(kw)
        report = compare_files(
            file_a,
            file_b,
            options,
            align=kw["align"],
            validation_a=kw["validation_a"],
            validation_b=kw["validation_b"],
            progress=progress_in("resample"),
        )
        _show(report)
        _write_outputs(report, "compare", config, kw["out"], kw["markdown"], kw["plot"])


@click.command("evaluate")
@click.argument("file", type=_FILE)
@_bootstrap_options
@click.option(
    "--validation",
    type=_FILE,
    default=None,
    help="Validation predictions: Youden thresholds are chosen on them.",
)
def evaluate(file: Path, **kw) -> None:
    """One model's table: AUROC per label and mean with bootstrap CIs, plus sensitivity,
    specificity, accuracy and F1 at a Youden threshold chosen once.

    Example:

        cxrprobe evaluate dinov2.json --validation dinov2_val.json --out eval.json --markdown eval.md
    """
    from cxrprobe.stats.report import evaluate_file

    config = {"file": str(file), **{k: str(v) if isinstance(v, Path) else v for k, v in kw.items()}}
    with library_errors():
        options = _options(kw)
        report = evaluate_file(
            file, options, validation=kw["validation"], progress=progress_in("resample")
        )
        _show(report)
        _write_outputs(report, "evaluate", config, kw["out"], kw["markdown"])


def _show(report: dict) -> None:
    from cxrprobe.stats.render import format_report

    click.echo(format_report(report))


COMMANDS = [compare, evaluate]
