"""Statistics: the predictions file, exact AUROC, paired bootstrap, DeLong, FDR, thresholds,
calibration and subgroups.

Modules, lowest first: ``predictions`` (file format; ``tabular`` its long Parquet/CSV form,
``groups`` its subgroup fields and ``--by``), ``pairing`` (two files on the same rows),
``auroc`` (exact AUROC, the shared score order), ``resample`` (counter-based resample draws,
the same on every device), ``engine`` (segment sums of counts: numpy/scipy on the CPU, torch on
CUDA), ``bootstrap`` (AUROC and confusion counts per resample, the chunked loop),
``intervals`` (CIs, p-values), ``delong``, ``multiple`` (BH FDR), ``thresholds`` (Youden
metrics), ``calibration`` (Brier, ECE), ``options`` (``BootstrapOptions``), ``families``
(which labels are averaged and tested), ``blocks`` (one population's rows), ``verdict``, ``report`` (assembly), ``render`` (tables), ``plots``
(figures) and ``outputs`` (``run_compare`` / ``run_evaluate``: the commands' library entry
points); ``messages`` formats file values for error messages. Method notes: ``docs/stats.md``.

Names are re-exported lazily, so ``import cxrprobe.stats.predictions`` (used by probes and CLI
modules) imports neither torch nor scipy; a CPU comparison never imports torch.
"""

from __future__ import annotations

import importlib
from typing import Any

# Eager (numpy only), and it must be: the function ``auroc`` shares its module's name.
from cxrprobe.stats.auroc import AurocReport as AurocReport
from cxrprobe.stats.auroc import auroc as auroc
from cxrprobe.stats.auroc import auroc_report as auroc_report
from cxrprobe.stats.auroc import mean_auroc as mean_auroc

_EXPORTS = {
    "bootstrap": (
        "AurocStatistic",
        "RankStatistic",
        "Resampler",
        "evaluate_on_counts",
        "make_resampler",
        "resolve_device",
        "run_bootstrap",
        "weighted_auroc",
    ),
    "calibration": (
        "CalibrationStatistic",
        "brier_score",
        "calibration_interval",
        "equal_mass_bins",
        "expected_calibration_error",
        "reliability_table",
    ),
    "delong": ("DelongResult", "delong_test", "jackknife_auroc", "structural_components"),
    "groups": ("SubgroupSpec", "parse_by", "subgroup_masks"),
    "intervals": (
        "basic_interval",
        "bca_interval",
        "bias_corrected",
        "mean_over_labels",
        "paired_p_values",
        "percentile_interval",
        "smallest_p",
    ),
    "multiple": ("benjamini_hochberg",),
    "outputs": ("run_compare", "run_evaluate", "write_report_outputs"),
    "pairing": ("pair_predictions",),
    "plots": ("forest_plot", "reliability_plot", "subgroup_plot"),
    "predictions": (
        "FORMAT_NAME",
        "FORMAT_VERSION",
        "Predictions",
        "read_predictions",
        "validate_predictions",
        "write_predictions",
    ),
    "options": ("BootstrapOptions",),
    "report": (
        "compare_files",
        "compare_predictions",
        "evaluate_file",
        "evaluate_predictions",
    ),
    "render": ("format_report", "markdown_report"),
    "thresholds": (
        "ConfusionStatistic",
        "confusion_counts",
        "threshold_metrics",
        "youden_thresholds",
    ),
    "verdict": ("verdict",),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted([*_MODULE_OF, "AurocReport", "auroc", "auroc_report", "mean_auroc"])


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'cxrprobe.stats' has no attribute {name!r}")
    return getattr(importlib.import_module(f"cxrprobe.stats.{_MODULE_OF[name]}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
