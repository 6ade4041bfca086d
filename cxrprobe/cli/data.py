"""CLI commands for datasets and manifests: ``cxrprobe datasets`` and ``cxrprobe manifest``."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import click

from cxrprobe.cli._common import library_errors, progress, record, seed_option

_READER_OPTIONS = ("labels_csv", "column_map", "aggregation", "labeler")


@click.command("datasets")
@click.option("--json", "as_json", is_flag=True, help="Print the adapters as JSON.")
@click.option(
    "--markdown", is_flag=True, help="Print the finding × dataset table (docs/datasets.md)."
)
def datasets(as_json: bool, markdown: bool) -> None:
    """List the dataset adapters and the canonical findings each one provides.

    Example:

        cxrprobe datasets --json
    """
    from cxrprobe.data.adapters import ADAPTERS, datasets_markdown
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
        vocabulary = [{"id": f.id, "name": f.name, "description": f.description} for f in FINDINGS]
        click.echo(json.dumps({"datasets": entries, "findings": vocabulary}, indent=2))
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


@click.command("manifest")
@click.argument("dataset")
@click.option("--root", required=True, type=click.Path(path_type=Path), help="Dataset root folder.")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Manifest to write (Parquet); <stem>.run.json goes beside it.",
)
@click.option(
    "--uncertain",
    type=click.Choice(["ignore", "zero", "one"]),
    default="ignore",
    show_default=True,
    help="-1 labels: keep them masked (ignore), or make them 0 or 1.",
)
@click.option(
    "--views",
    type=click.Choice(["frontal", "pa", "ap", "all"]),
    default="all",
    show_default=True,
    help="Which views to keep (frontal = PA and AP).",
)
@click.option(
    "--split",
    type=click.Choice(["official", "random"]),
    default="official",
    show_default=True,
    help="The dataset's official split (val carved from train) or a seeded patient split.",
)
@click.option(
    "--val-frac", type=float, default=0.1, show_default=True, help="Share of patients in val."
)
@click.option(
    "--test-frac",
    type=float,
    default=0.2,
    show_default=True,
    help="Share of patients in test (random split only).",
)
@seed_option("Seed of the patient split.")
@click.option(
    "--check-files", is_flag=True, help="Fail if any listed image is missing under the root."
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
def manifest(dataset: str, root: Path, output: Path, **options: Any) -> None:
    """Build a manifest for DATASET from its tables under --root and print per-split prevalence.

    Writes the Parquet atomically, and <stem>.run.json (resolved options, versions, manifest hash,
    per-split counts) beside it. Images are not opened unless --check-files is given.

    Example:

        cxrprobe manifest chestxray14 --root /data/nih --split random --views frontal -o nih.parquet
    """
    from cxrprobe.data.adapters import get_adapter
    from cxrprobe.data.manifest import manifest_hash, prevalence, write_manifest

    with library_errors():
        adapter = get_adapter(dataset)
        given = {k: v for k, v in options.items() if v is not None}
        for name in _READER_OPTIONS:
            if name in given and name not in adapter.options:
                raise click.UsageError(
                    f"--{name.replace('_', '-')} does not apply to {dataset} "
                    f"(its own options: {', '.join('--' + o.replace('_', '-') for o in adapter.options)})"
                )
        with progress(2, f"manifest {dataset}", unit="step") as bar:
            df = adapter.build(root, **given)
            bar.update()
            write_manifest(df, output)
            bar.update()
    summary = prevalence(df)
    config = {
        "dataset": dataset,
        "root": root.resolve(),
        "output": output.resolve(),
        "options": given,
        "label_map": adapter.label_map.source,
        "manifest_hash": manifest_hash(df),
        "findings": [c for c in summary.columns[2:]],
        "counts": summary.to_dict(orient="index"),
    }
    written = record(output.with_name(output.stem + ".run.json"), f"manifest {dataset}", config)
    click.echo(_summary_table(summary))
    click.echo(
        f"wrote {output} ({len(df)} images, {df['patient_id'].nunique()} patients) and {written.name}"
    )


COMMANDS = [datasets, manifest]
