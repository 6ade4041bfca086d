"""The library entry points of ``cxrprobe compare`` and ``cxrprobe evaluate``, with their outputs.

:func:`run_compare` and :func:`run_evaluate` compute the report and write every requested file
(JSON, markdown, forest plot, subgroup plot, reliability diagram), each with a run record
``<output>.run.json`` beside it (the command, its resolved configuration, versions and time).
The CLI and the study plan both call them, so they produce the same files; a record is named
after its own output, so one command's record never overwrites another's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from cxrprobe.errors import ConfigError
from cxrprobe.outputs import check_output_location, output_errors
from cxrprobe.progress import ProgressFactory
from cxrprobe.provenance import (
    atomic_write_json,
    atomic_write_text,
    to_jsonable,
    write_run_record,
)
from cxrprobe.stats.groups import SubgroupSpec
from cxrprobe.stats.plots import forest_plot, reliability_plot, subgroup_plot
from cxrprobe.stats.render import markdown_report
from cxrprobe.stats.report import BootstrapOptions, compare_files, evaluate_file, finish

Output = str | os.PathLike | None
_WRITERS = {
    "out": lambda report, path: atomic_write_json(path, jsonable(report)),
    "markdown": lambda report, path: atomic_write_text(path, markdown_report(report)),
    "plot": forest_plot,
    "subgroup_plot": subgroup_plot,
    "reliability_plot": reliability_plot,
}


def jsonable(report: dict[str, Any]) -> Any:
    """The report with numpy values converted and NaN / inf written as null (strict JSON)."""

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        if isinstance(value, float) and not np.isfinite(value):
            return None
        return value

    return clean(to_jsonable(report))


def run_record_path(output: str | os.PathLike) -> Path:
    """Where an output's run record goes: ``<output>.run.json`` beside it."""
    output = Path(output)
    return output.with_name(output.name + ".run.json")


def check_outputs(report: dict[str, Any], outputs: Mapping[str, Output]) -> None:
    """Refuse figures the report has no data for (before anything is written)."""
    if outputs.get("subgroup_plot") and not report["subgroups"]:
        raise ConfigError("--subgroup-plot needs at least one --by field")
    if outputs.get("reliability_plot") and not report["reliability"]:
        raise ConfigError(
            "--reliability-plot needs probabilities, but the scores are logits; calibration "
            "needs probabilities (write the predictions with score_kind 'probability')"
        )
    if outputs.get("plot") and report["kind"] != "compare":
        raise ConfigError("--plot draws the forest plot of a comparison; use it with compare")


def write_report_outputs(
    report: dict[str, Any],
    outputs: Mapping[str, Output],
    *,
    command: str,
    config: Mapping[str, Any],
) -> list[Path]:
    """Write each requested output (keys: out, markdown, plot, subgroup_plot, reliability_plot)
    and its ``<output>.run.json`` record; return the outputs written."""
    check_outputs(report, outputs)
    written = []
    for key, path in outputs.items():
        if path is not None:
            with output_errors(path):
                written.append(_WRITERS[key](report, path))
                write_run_record(run_record_path(path), command, config)
    return written


def _record_and_write(
    report: dict[str, Any], outputs: Mapping[str, Output], command: str, config: dict[str, Any]
) -> list[Path]:
    """Complete ``config`` with the labels the report covers (those the finding subset kept),
    record it in the report and write the outputs; return the paths written."""
    config["labels"] = [row["label"] for row in report["labels"]]
    report["run"] = {"command": command, "config": config}
    return write_report_outputs(report, outputs, command=command, config=config)


def _prepare(outputs: Mapping[str, Output], by: Sequence, **paths: Any) -> dict[str, Any]:
    """Check the output locations and option combinations before any work; return the paths
    (outputs and inputs) as ``Path`` so the run record writes them absolute."""
    if outputs.get("subgroup_plot") is not None and not by:
        raise ConfigError("--subgroup-plot needs at least one --by field")
    for path in outputs.values():
        if path is not None:
            check_output_location(path, "file")
    return {k: None if v is None else Path(v) for k, v in {**paths, **outputs}.items()}


def _check_names(given: Mapping[str, str | None]) -> None:
    """Refuse an empty model name, or the same name for both models (before any work)."""
    for key, name in given.items():
        option = "--name" if len(given) == 1 else f"--name-{key}"
        if name is not None and not name.strip():
            raise ConfigError(f"{option} is empty; give the model a name, or leave {option} out")
    if len(given) == 2 and None not in given.values() and len(set(given.values())) == 1:
        raise ConfigError(
            f"--name-a and --name-b are both {given['a']!r}; give the two models distinct names"
        )


def _named(report: dict[str, Any], given: Mapping[str, str | None]) -> None:
    """Name the models by the names given in place of the file names, and redo the verdict
    that quotes them."""
    chosen = {key: name for key, name in given.items() if name is not None}
    if chosen:
        report["names"] = {**report["names"], **chosen}
        finish(report)


def run_compare(
    file_a: str | os.PathLike,
    file_b: str | os.PathLike,
    options: BootstrapOptions,
    *,
    name_a: str | None = None,
    name_b: str | None = None,
    align: bool = False,
    validation_a: str | os.PathLike | None = None,
    validation_b: str | os.PathLike | None = None,
    by: Sequence[str | SubgroupSpec] = (),
    findings: str | Sequence[str] | None = None,
    cells: Mapping[str, str] | None = None,
    out: Output = None,
    markdown: Output = None,
    plot: Output = None,
    subgroup_plot: Output = None,
    reliability_plot: Output = None,
    progress: ProgressFactory | None = None,
) -> tuple[dict[str, Any], list[Path]]:
    """Compare two predictions files and write the requested outputs with their run records.

    ``name_a`` / ``name_b`` name the models in the report, the verdict and the figures; by
    default they are the cells' names, else the file names, or the folders telling them apart
    when the file names are the same (:func:`cxrprobe.stats.pairing.model_names`). ``cells``
    ({"a": name, "b": name, "dataset": name}, from the study plan) is recorded in the report.
    ``findings`` (a named set and/or finding ids) keeps only those labels: they alone are
    compared and form the FDR family; the spec and the labels compared go into the run record.
    Returns the report and the paths written.
    """
    outputs = dict(
        out=out,
        markdown=markdown,
        plot=plot,
        subgroup_plot=subgroup_plot,
        reliability_plot=reliability_plot,
    )
    names = {
        key: (cells or {}).get(key) if given is None else given
        for key, given in (("a", name_a), ("b", name_b))
    }
    _check_names(names)
    paths = _prepare(
        outputs,
        by,
        file_a=file_a,
        file_b=file_b,
        validation_a=validation_a,
        validation_b=validation_b,
    )
    config = {
        **paths,
        **asdict(options),
        "name_a": name_a,
        "name_b": name_b,
        "align": align,
        "by": [str(spec) for spec in by],
        "findings": findings,
        "cells": dict(cells) if cells else None,
    }
    report = compare_files(
        file_a,
        file_b,
        options,
        align=align,
        validation_a=validation_a,
        validation_b=validation_b,
        by=by,
        findings=findings,
        progress=progress,
    )
    if cells:
        report["cells"] = dict(cells)
    _named(report, names)
    return report, _record_and_write(report, outputs, "cxrprobe compare", config)


def run_evaluate(
    file: str | os.PathLike,
    options: BootstrapOptions,
    *,
    name: str | None = None,
    validation: str | os.PathLike | None = None,
    by: Sequence[str | SubgroupSpec] = (),
    findings: str | Sequence[str] | None = None,
    out: Output = None,
    markdown: Output = None,
    subgroup_plot: Output = None,
    reliability_plot: Output = None,
    progress: ProgressFactory | None = None,
) -> tuple[dict[str, Any], list[Path]]:
    """Evaluate one predictions file and write the requested outputs with their run records
    (``name``: the model's name in the report, by default the file name; ``findings``: only
    those labels, as in :func:`run_compare`)."""
    outputs = dict(
        out=out, markdown=markdown, subgroup_plot=subgroup_plot, reliability_plot=reliability_plot
    )
    _check_names({"a": name})
    paths = _prepare(outputs, by, file=file, validation=validation)
    config = {
        **paths,
        **asdict(options),
        "name": name,
        "by": [str(spec) for spec in by],
        "findings": findings,
    }
    report = evaluate_file(
        file, options, validation=validation, by=by, findings=findings, progress=progress
    )
    _named(report, {"a": name})
    return report, _record_and_write(report, outputs, "cxrprobe evaluate", config)
