"""CLI commands for whole studies: ``cxrprobe demo``, ``cxrprobe study`` and ``cxrprobe report``."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import click

from cxrprobe.cli.options import RegistryChoice, alpha_option
from cxrprobe.cli.output import library_errors, progress, record


def _step_echo(step: Any, status: str, why: str = "") -> None:
    if status == "skipped":
        click.echo(f"  = {step.key}: finished earlier, skipped")
    elif status == "redoing":
        click.echo(f"  ~ {step.key}: stale ({why}), redoing")
    else:
        click.echo(f"  > {step.key}")


def _echo_states(states: list[Any]) -> None:
    """``--dry-run``: every step with its state, why, and its command."""
    from collections import Counter

    for state in states:
        click.echo(f"[{state.state}] {state.step.key}")
        if state.reasons:
            click.echo(f"    because: {state.why}")
        click.echo(f"    {state.step.command}")
    counts = Counter(state.state for state in states)
    click.echo(f"{len(states)} steps: " + ", ".join(f"{n} {s}" for s, n in counts.items()))


def _refuse_changed(states: list[Any], out: Path) -> None:
    """``--dry-run`` fails when a run would refuse steps whose settings changed."""
    from cxrprobe.workflow.state import REFUSED, changed_settings, read_record, refusal
    from cxrprobe.workflow.steps import Paths

    refused = [s.step for s in states if s.state == REFUSED]
    if refused:
        paths = Paths(out)
        raise click.UsageError(
            "a run would start nothing: "
            + refusal(
                [(s, changed_settings(s, read_record(paths.record(s.key)))) for s in refused], paths
            )
        )


def _warn_stale(study: dict[str, Any]) -> None:
    if study.get("stale"):
        click.echo(
            f"Warning: {len(study['stale'])} comparison(s) not shown: files they were computed "
            "from changed since (listed in report.md); run the study again to redo them",
            err=True,
        )


def stage_commands() -> dict[str, click.Command]:
    """The commands a study's steps run, by name: handed to the workflow, which writes and parses
    each step's command line with them (the workflow never imports the CLI)."""
    from cxrprobe.cli import cache, data, finetune, images, probe, stats

    return {c.name: c for m in (data, images, cache, probe, finetune, stats) for c in m.COMMANDS}


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
            commands=stage_commands(),
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
        click.echo(f"### B = {row['b']} vs A = {row['a']} (per finding)\n")
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
        ("*/*/curve/curve.json", "efficiency curve"),
        ("*/compare/*.json", "comparison"),
        ("*/compare/*.png", "forest plot"),
    ):
        for path in sorted(study_dir.glob(pattern)):
            if not path.name.endswith(".run.json"):  # run records sit beside each output
                click.echo(f"  {what:<19} {path}")
    for path in study["outputs"].values():
        click.echo(f"  {'study report':<19} {path}")


@click.command("study")
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path), required=False)
@click.option(
    "--dry-run",
    is_flag=True,
    help="List every step with its state (done, to run, stale and why, refused) and its "
    "equivalent command; run nothing.",
)
@click.option(
    "--template",
    type=RegistryChoice("cxrprobe.workflow.templates:TEMPLATES"),
    default=None,
    help="Print a study config to edit instead (paper: the whole study, six datasets, three "
    "inits with the MIMIC-CXR pretraining step, the paper's comparisons).",
)
def study(config: Path | None, dry_run: bool, template: str | None) -> None:
    """Run a whole study from CONFIG.toml: datasets × initialisations × {probe, finetune}, then the
    comparisons and the report. Finished steps are skipped; interrupted ones resume. A step whose
    inputs changed since it ran (an upstream step was redone, a file replaced) is redone, and so
    is every step after it that reads its output; a step whose settings changed is refused.

    Before any step runs (and with --dry-run) every file and folder a step would read that no
    earlier step writes must exist, and option combinations the commands refuse are refused:
    every such problem is listed at once, naming the step and the config key (exit 2).

    --dry-run prints each step's state and equivalent single command, e.g. to spread steps over
    GPUs or run `torchrun` yourself, then those problems. --template paper prints the whole study
    as a config: edit its roots and weights, then run it.

    Example:

    \b
        cxrprobe study --template paper > study.toml
        cxrprobe study study.toml --dry-run
    """
    if template is not None:
        if config is not None or dry_run:
            raise click.UsageError("--template prints a config; give no CONFIG or --dry-run")
        from cxrprobe.workflow.templates import template_text

        click.echo(template_text(template), nl=False)
        return
    if config is None:
        raise click.UsageError("give a study CONFIG.toml, or --template paper to print one")
    from cxrprobe.workflow.config import load_study
    from cxrprobe.workflow.plan import build_plan
    from cxrprobe.workflow.preflight import check_plan
    from cxrprobe.workflow.report import write_study_report
    from cxrprobe.workflow.state import DONE, plan_states, run_plan

    commands = stage_commands()
    with library_errors():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DeprecationWarning)
            cfg = load_study(config, commands)
        for warning in caught:
            click.echo(f"Warning: {warning.message}", err=True)
        steps = build_plan(cfg, commands)
        states = plan_states(steps, cfg.out)
        if dry_run:
            _echo_states(states)
        check_plan(steps, commands, str(config), {s.step.key for s in states if s.state == DONE})
        if dry_run:
            _refuse_changed(states, cfg.out)
            return
        cfg.out.mkdir(parents=True, exist_ok=True)
        record(cfg.out, "study", {"config_file": config.resolve(), **cfg.to_dict()})
        run_plan(steps, cfg.out, progress=progress, on_step=_step_echo)
        result = write_study_report(cfg.out)
    _echo_study(result)
    _warn_stale(result)
    click.echo("wrote " + ", ".join(result["outputs"].values()))


@click.command("report")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@alpha_option("Significance level (FDR q).")
def report(run_dir: Path, alpha: float) -> None:
    """Collect every comparison of a study's RUN_DIR into the study table (markdown, JSON, figure):
    mean AUROC per dataset and initialisation with CIs and study-wide FDR-corrected p-values.
    A comparison whose predictions files changed since it was computed is not shown (listed as
    stale). Label-efficiency curves (a study's [probe] train_fraction) add mean AUROC against
    training fraction per init with bootstrap CIs: a table and report_curves.png. The run record
    goes to report.run.json (the study's own run.json is kept).

    Example:

        cxrprobe report demo_run/study
    """
    from cxrprobe.workflow.report import write_study_report

    with library_errors():
        result = write_study_report(run_dir, alpha=alpha)
    record(run_dir / "report.run.json", "report", {"run_dir": run_dir.resolve(), "alpha": alpha})
    _echo_study(result)
    _warn_stale(result)
    click.echo("wrote " + ", ".join(result["outputs"].values()))


COMMANDS = [demo, study, report]
