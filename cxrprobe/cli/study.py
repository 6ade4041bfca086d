"""CLI commands for whole studies: ``cxrprobe demo``, ``cxrprobe study`` and ``cxrprobe report``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from cxrprobe.cli._common import library_errors, progress, record


def _step_echo(step: Any, status: str) -> None:
    if status == "skipped":
        click.echo(f"  = {step.key}: finished earlier, skipped")
    else:
        click.echo(f"  > {step.key}")


def _echo_study(study: dict[str, Any]) -> None:
    from cxrprobe.workflow.report import study_markdown

    click.echo(study_markdown(study))


@click.command("demo")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("cxrprobe_demo"),
    show_default=True,
    help="Folder for the synthetic data and every output.",
)
@click.option(
    "--n",
    type=click.IntRange(min=60),
    default=600,
    show_default=True,
    help="Number of synthetic radiographs.",
)
@click.option(
    "--weights-dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=None,
    help="Folder with dinov2_vitb14_pretrain.pth and vit_base_patch16_224.augreg_in21k.safetensors "
    "(else tiny random ViTs are used).",
)
@click.option(
    "--finetune-epochs",
    type=click.IntRange(min=0),
    default=8,
    show_default=True,
    help="Epochs of the short DINOv2 fine-tune (0 skips it).",
)
@click.option(
    "--resamples",
    type=click.IntRange(min=100),
    default=1000,
    show_default=True,
    help="Bootstrap resamples of the comparisons.",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed of the data, splits and training."
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
def demo(
    out: Path,
    n: int,
    weights_dir: Path | None,
    finetune_epochs: int,
    resamples: int,
    seed: int,
    device: str,
) -> None:
    """Run the whole workflow on synthetic radiographs: data, cache, embeddings, probes, fine-tune,
    comparison and report — no network, a few minutes on a laptop CPU.

    Rerunning with the same --out skips finished steps.

    Example:

        cxrprobe demo --out demo_run --n 600
    """
    from cxrprobe.workflow.demo import run_demo

    with library_errors():
        result = run_demo(
            out,
            n=n,
            seed=seed,
            weights_dir=weights_dir,
            finetune_epochs=finetune_epochs,
            resamples=resamples,
            device=device,
            progress=progress,
            on_step=_step_echo,
        )
    record(
        out,
        "demo",
        {
            "out": out,
            "n": n,
            "weights_dir": weights_dir,
            "finetune_epochs": finetune_epochs,
            "resamples": resamples,
            "seed": seed,
            "device": device,
            "study": result["config"].to_dict(),
        },
    )
    study = result["study"]
    click.echo(f"\nModels: {result['models'].note}\n")
    for row in study["comparisons"]:
        click.echo(f"### {row['b']} vs {row['a']} (per finding)\n")
        click.echo(_comparison_table(Path(row["report"])) + "\n")
    _echo_study(study)
    _echo_outputs(out, result["config"].out, study)


def _comparison_table(report: Path) -> str:
    import json

    from cxrprobe.stats.render import format_report

    return format_report(json.loads(report.read_text()))


def _echo_outputs(out: Path, study_dir: Path, study: dict[str, Any]) -> None:
    click.echo("\nOutputs:")
    click.echo(f"  synthetic data      {out / 'data'} (labels.csv, images/)")
    for pattern, what in (
        ("*/manifest.parquet", "manifest"),
        ("*/images_*.zarr", "image cache"),
        ("*/*/embeddings.zarr", "embeddings"),
        ("*/*/*/predictions.json", "predictions"),
        ("*/compare/*.json", "comparison"),
        ("*/compare/*.png", "forest plot"),
    ):
        for path in sorted(study_dir.glob(pattern)):
            click.echo(f"  {what:<19} {path}")
    for name in ("report.md", "report.png", "report.json"):
        click.echo(f"  {'study report':<19} {study['outputs'][name]}")


@click.command("study")
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--dry-run", is_flag=True, help="List the steps and their equivalent commands; run nothing."
)
def study(config: Path, dry_run: bool) -> None:
    """Run a whole study from CONFIG.toml: datasets × initialisations × {probe, finetune}, then the
    comparisons and the report. Finished steps are skipped; interrupted ones resume.

    --dry-run prints each step's equivalent single command, e.g. to spread steps over GPUs or
    run `torchrun` yourself.

    Example:

        cxrprobe study study.toml --dry-run
    """
    from cxrprobe.workflow.config import load_study
    from cxrprobe.workflow.plan import Paths, build_plan, run_plan, step_status
    from cxrprobe.workflow.report import write_study_report

    with library_errors():
        cfg = load_study(config)
        steps = build_plan(cfg)
        if dry_run:
            for step in steps:
                click.echo(f"[{step_status(step, Paths(cfg.out))}] {step.key}\n    {step.command}")
            return
        cfg.out.mkdir(parents=True, exist_ok=True)
        record(cfg.out, "study", {"config_file": config.resolve(), **cfg.to_dict()})
        run_plan(steps, cfg.out, progress=progress, on_step=_step_echo)
        result = write_study_report(cfg.out)
    _echo_study(result)
    click.echo("wrote " + ", ".join(result["outputs"].values()))


@click.command("report")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--alpha", type=float, default=0.05, show_default=True, help="Significance level (FDR q)."
)
def report(run_dir: Path, alpha: float) -> None:
    """Collect every comparison of a study's RUN_DIR into the study table (markdown, JSON, figure):
    mean AUROC per dataset and initialisation with CIs and study-wide FDR-corrected p-values.

    Example:

        cxrprobe report demo_run/study
    """
    from cxrprobe.workflow.report import write_study_report

    with library_errors():
        result = write_study_report(run_dir, alpha=alpha)
    record(run_dir, "report", {"run_dir": run_dir.resolve(), "alpha": alpha})
    _echo_study(result)
    click.echo("wrote " + ", ".join(result["outputs"].values()))


COMMANDS = [demo, study, report]
