"""CLI commands for datasets and manifests: ``cxrprobe datasets`` and ``cxrprobe manifest``."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import click

from cxrprobe.cli.options import (
    RegistryChoice,
    RenamingCommand,
    allow_leakage_option,
    blank_option,
    findings_option,
    seed_option,
    uncertain_option,
)
from cxrprobe.cli.output import library_errors, progress

_RENAMED = {
    "--output": ("--out",),
    "--val-frac": ("--val-fraction",),
    "--test-frac": ("--test-fraction",),
}
_IN_MANIFEST = "in the manifest (every split; the file records the policy)"


@click.command("datasets")
@click.option("--json", "as_json", is_flag=True, help="Print the adapters as JSON.")
@click.option(
    "--markdown", is_flag=True, help="Print the finding × dataset table (docs/datasets.md)."
)
def datasets(as_json: bool, markdown: bool) -> None:
    """List the dataset adapters, the canonical findings each one provides, and the named
    finding sets (the study's label set per dataset) that --findings accepts.

    Example:

        cxrprobe datasets --json
    """
    with library_errors():
        _print_datasets(as_json, markdown)


def _print_datasets(as_json: bool, markdown: bool) -> None:
    """What ``cxrprobe datasets`` prints (loading the packaged label maps)."""
    from cxrprobe.data.adapters import ADAPTERS, datasets_markdown
    from cxrprobe.data.finding_sets import finding_sets
    from cxrprobe.data.findings import FINDINGS

    if markdown:
        click.echo(datasets_markdown(), nl=False)
        return
    if as_json:
        entries = [
            {
                "name": a.name,
                "description": a.description,
                "label_map": a.label_map.source,
                "options": a.options,
                "official_split": a.official_split,
                "findings": a.findings,
            }
            for a in ADAPTERS.values()
        ]
        vocabulary = [
            {
                "id": f.id,
                "name": f.name,
                "description": f.description,
                "derived_from": f.derived_from,
            }
            for f in FINDINGS
        ]
        sets = [
            {"name": s.name, "dataset": s.dataset, "findings": s.findings,
             "source_labels": s.source_labels, "source": s.source, "notes": s.notes}
            for s in finding_sets().values()
        ]  # fmt: skip
        click.echo(
            json.dumps(
                {"datasets": entries, "findings": vocabulary, "finding_sets": sets}, indent=2
            )
        )
        return
    for adapter in ADAPTERS.values():
        click.echo(f"{adapter.name:<12} {len(adapter.findings):>2} findings  {adapter.description}")
        wrapped = textwrap.fill(
            ", ".join(adapter.findings),
            width=96,
            initial_indent=" " * 16,
            subsequent_indent=" " * 16,
        )
        click.echo(wrapped)
    click.echo("\nnamed finding sets (--findings NAME):")
    for named in finding_sets().values():
        click.echo(f"{named.name:<18} {len(named.findings):>2} findings  {named.dataset}")
        click.echo(
            textwrap.fill(
                ", ".join(named.findings),
                width=96,
                initial_indent=" " * 16,
                subsequent_indent=" " * 16,
            )
        )


def _summary_table(summary: Any) -> str:
    """Findings as rows, splits as columns: positives and their share of the split's images."""
    counts = summary.T
    n_images = counts.loc["n_images"]
    lines = counts.copy().astype(object)
    for finding in counts.index[2:]:
        lines.loc[finding] = [
            f"{int(p)} ({100 * p / n:.1f}%)" if n else "0"
            for p, n in zip(counts.loc[finding], n_images, strict=True)
        ]
    return lines.to_string()


@click.command("manifest", cls=RenamingCommand, renamed=_RENAMED)
@click.argument("dataset")
@click.option("--root", required=True, type=click.Path(path_type=Path), help="Dataset root folder.")
@click.option(
    "--out",
    "-o",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Manifest to write (Parquet); <stem>.run.json goes beside it.",
)
@uncertain_option(_IN_MANIFEST)
@blank_option(_IN_MANIFEST, "With --uncertain zero this is the study's 'every label not 1 is 0'.")
@click.option(
    "--views",
    type=RegistryChoice("cxrprobe.data.policies:VIEW_POLICIES"),
    default="all",
    show_default=True,
    help="Which views to keep (frontal = PA and AP).",
)
@click.option(
    "--split",
    type=RegistryChoice("cxrprobe.data.policies:SPLIT_POLICIES"),
    default="official",
    show_default=True,
    help="The dataset's official split (val carved from train) or a seeded patient split.",
)
@click.option(
    "--val-fraction",
    "val_frac",
    type=float,
    default=0.1,
    show_default=True,
    help="Share of patients in val.",
)
@click.option(
    "--test-fraction",
    "test_frac",
    type=float,
    default=0.2,
    show_default=True,
    help="Share of patients in test (random split only).",
)
@seed_option("Seed of the patient split.")
@click.option(
    "--check-files", is_flag=True, help="Fail if any listed image is missing under the root."
)
@allow_leakage_option("<stem>.run.json")
@click.option(
    "--allow-empty-test",
    is_flag=True,
    help="With --split official, write the manifest even when no image is in the official test "
    "split (refused by default: probe and compare need test images).",
)
@click.option(
    "--labels-csv",
    type=click.Path(path_type=Path),
    help="Main label table, if not at its default name (relative to the root or absolute).",
)
@click.option(
    "--column-map", type=click.Path(path_type=Path), help="Column map JSON (generic only)."
)
@click.option(
    "--aggregation", type=click.Choice(["majority", "any"]), help="Reader aggregation (vindr only)."
)
@click.option(
    "--labeler", type=click.Choice(["chexpert", "negbio"]), help="Label table (mimic only)."
)
@click.option(
    "--encoding",
    default=None,
    help="Text encoding of the dataset's CSV tables, e.g. latin-1 or cp1252 [default: utf-8].",
)
@findings_option("Keep only these finding columns")
def manifest(dataset: str, root: Path, out: Path, **options: Any) -> None:
    """Build a manifest for DATASET from its tables under --root and print per-split prevalence.

    Writes the Parquet atomically (with its label policies, --uncertain and --blank, in the file's
    metadata, so stores and predictions made from it record them), and <stem>.run.json (resolved
    options, versions, manifest hash, label policies, per-split counts) beside it. Images are not
    opened unless --check-files is given.

    Example:

    \b
        cxrprobe manifest chestxray14 --root /data/nih --split random --views frontal --out nih.parquet
        cxrprobe manifest chexpert --root /data/chexpert --views frontal --uncertain zero \\
            --blank negative --findings study-chexpert --out chexpert.parquet
    """
    from cxrprobe.data.adapters import build_manifest
    from cxrprobe.data.manifest import prevalence, run_record_path

    with library_errors(), progress(2, f"manifest {dataset}", unit="step") as bar:
        df, _, _ = build_manifest(dataset, root, out, options, bar.update)
    click.echo(_summary_table(prevalence(df)))
    click.echo(
        f"wrote {out} ({len(df)} images, {df['patient_id'].nunique()} patients) and "
        f"{run_record_path(out)}"
    )


COMMANDS = [datasets, manifest]
