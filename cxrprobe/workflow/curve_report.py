"""The study report's label-efficiency curves: mean AUROC against training fraction, per init.

Each curve (``<dataset>/<init>/curve/curve.json``, from the study's curve steps) lists its
points, one predictions file per (fraction, repeat). Every point file is evaluated by the stats
library (:func:`cxrprobe.stats.report.evaluate_file`, the single-model report) with the
bootstrap options the study's comparisons used. Per (dataset, init, fraction) the table gives the
**mean over repeats** of the points' mean AUROC, and as its 95% CI the points' bootstrap CIs with
their **endpoints averaged over repeats**: the test set's sampling uncertainty at a typical
subset. How much the subset drawn matters is the sd of the points' mean AUROC across repeats,
shown beside it (the CI does not include it). Evaluations are kept in ``curve_ci.json`` beside
each curve, keyed by the predictions file's sha256, the options and the stats report version, so
a later report evaluates only new or changed files.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np

from cxrprobe.errors import DataFormatError
from cxrprobe.provenance import atomic_write_json, sha256_file, to_jsonable

CURVE_GLOB = "*/*/curve/curve.json"
CACHE_NAME = "curve_ci.json"
CI_RULE = (
    "mean over repeats of each point's mean test AUROC; 95% CI: each point's bootstrap CI of its "
    "mean AUROC (cxrprobe evaluate, the comparisons' bootstrap options), endpoints averaged over "
    "repeats; sd: spread of the points' mean AUROC across repeats (subset draws)"
)


def bootstrap_options(study: dict[str, Any]) -> Any:
    """The bootstrap options of the study's first comparison (the defaults when it has none)."""
    from cxrprobe.stats.options import BootstrapOptions

    if not study.get("comparisons"):
        return BootstrapOptions()
    names = {f.name for f in fields(BootstrapOptions)}
    recorded = json.loads(Path(study["comparisons"][0]["report"]).read_text()).get("options")
    return BootstrapOptions(**{k: v for k, v in (recorded or {}).items() if k in names})


def _evaluate(path: Path, options: Any, cache: dict[str, Any]) -> dict[str, Any]:
    """A point's mean AUROC, CI and label count: from ``cache`` when its file and the options are
    as recorded there, else from the stats library (and recorded)."""
    from cxrprobe.stats.report import REPORT_VERSION, evaluate_file

    digest = sha256_file(path)
    settings = to_jsonable({**asdict(options), "report_version": REPORT_VERSION})
    kept = cache.get(path.name)
    if kept and kept["sha256"] == digest and kept["options"] == settings:
        return kept
    mean = evaluate_file(path, options)["mean"]
    cache[path.name] = {
        "sha256": digest,
        "options": settings,
        "mean_auroc": _number(mean["auroc"]),
        "ci": [_number(v) for v in mean["auroc_ci"]],
        "n_labels": mean.get("n_labels"),
    }
    return cache[path.name]


def _number(value: Any) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def _average(values: list[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def collect_curves(run_dir: str | os.PathLike, options: Any) -> list[dict[str, Any]]:
    """One row per (dataset, init, method, fraction) of every curve under ``run_dir``."""
    from cxrprobe.probe.curves import CURVE_FORMAT

    rows = []
    for path in sorted(Path(run_dir).glob(CURVE_GLOB)):
        curve = json.loads(path.read_text())
        if curve.get("format") != CURVE_FORMAT:
            raise DataFormatError(
                f"{path}: not a label-efficiency curve ({CURVE_FORMAT}); delete it and its step "
                "record (.steps/*curve*) and run the study again"
            )
        cache_path = path.with_name(CACHE_NAME)
        cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
        dataset, init = path.parts[-4], path.parts[-3]
        for fraction in curve["fractions"]:
            points = [p for p in curve["points"] if p["fraction"] == fraction]
            found = [_evaluate(path.parent / p["predictions"], options, cache) for p in points]
            estimates = [f["mean_auroc"] for f in found]
            defined = [v for v in estimates if v is not None]
            rows.append(
                {
                    "dataset": dataset,
                    "init": init,
                    "method": curve["method"],
                    "fraction": fraction,
                    "patients": points[0]["patients"],
                    "patients_total": curve["training"]["patients"],
                    "repeats": len(points),
                    "mean_auroc": _average(estimates),
                    "ci": [_average([f["ci"][k] for f in found]) for k in (0, 1)],
                    "sd_repeats": float(np.std(defined, ddof=1)) if len(defined) > 1 else None,
                    "per_repeat": estimates,
                    "n_labels": min((f["n_labels"] for f in found), default=None),
                    "curve": str(path),
                }
            )
        atomic_write_json(cache_path, cache)
    return rows


def curve_markdown(curves: list[dict[str, Any]]) -> str:
    """The curve table (empty without curves)."""
    if not curves:
        return ""

    def num(value: float | None) -> str:
        return "undefined" if value is None else f"{value:.3f}"

    lines = [
        "",
        "## Label efficiency: mean AUROC against training fraction",
        "",
        "| dataset | init | method | fraction | patients | mean AUROC [95% CI] | sd over repeats "
        "| repeats |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in curves:
        ci = "" if None in r["ci"] else f" [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]"
        sd = "–" if r["sd_repeats"] is None else f"{r['sd_repeats']:.3f}"
        lines.append(
            f"| {r['dataset']} | {r['init']} | {r['method']} | {r['fraction']:g} | "
            f"{r['patients']} of {r['patients_total']} | {num(r['mean_auroc'])}{ci} | {sd} | "
            f"{r['repeats']} |"
        )
    lines += ["", f"Curves: {CI_RULE}."]
    return "\n".join(lines) + "\n"


def curve_figure(curves: list[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Mean AUROC against training fraction (log scale) with CIs, one line per init and method,
    one panel per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({r["dataset"] for r in curves})
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.5 * len(datasets), 3.4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        lines = sorted({(r["init"], r["method"]) for r in curves if r["dataset"] == dataset})
        for k, (init, method) in enumerate(lines):
            rows = [
                r
                for r in curves
                if (r["dataset"], r["init"], r["method"]) == (dataset, init, method)
                and r["mean_auroc"] is not None
            ]
            dodge = 1 + 0.04 * (k - (len(lines) - 1) / 2)  # side by side, not on top
            x = np.array([r["fraction"] for r in rows]) * dodge
            y = np.array([r["mean_auroc"] for r in rows])
            lo = np.array([np.nan if r["ci"][0] is None else r["ci"][0] for r in rows])
            hi = np.array([np.nan if r["ci"][1] is None else r["ci"][1] for r in rows])
            ax.errorbar(
                x, y, yerr=[y - lo, hi - y], fmt="o-", capsize=3, label=f"{init} · {method}"
            )
        ax.set_xscale("log")
        fractions = sorted({r["fraction"] for r in curves if r["dataset"] == dataset})
        ax.set_xticks(fractions, [f"{f:g}" for f in fractions])
        ax.minorticks_off()
        ax.set_xlabel("fraction of training patients")
        ax.set_ylabel("mean AUROC (95% CI)")
        ax.set_title(dataset)
        ax.legend(fontsize="small")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
