"""Statistics: the predictions file, exact AUROC, paired bootstrap, DeLong, FDR, thresholds.

Modules: ``predictions`` (file format), ``auroc`` (exact AUROC), ``bootstrap`` (resample counts,
O(n) weighted AUROC on CPU or CUDA, CIs, p-values), ``delong``, ``multiple`` (BH FDR),
``thresholds`` (Youden metrics), ``report`` (assembly) and ``render`` (tables, forest plot).
Method notes: ``docs/stats.md``.

Names are re-exported lazily, so ``import cxrprobe.stats.predictions`` (used by probes and CLI
modules) does not import torch.
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
        "Resampler",
        "bca_interval",
        "make_resampler",
        "mean_over_labels",
        "paired_p_values",
        "percentile_interval",
        "resolve_device",
        "run_bootstrap",
        "weighted_auroc",
    ),
    "delong": ("DelongResult", "delong_test", "jackknife_auroc", "structural_components"),
    "multiple": ("benjamini_hochberg",),
    "predictions": (
        "FORMAT_NAME",
        "FORMAT_VERSION",
        "Predictions",
        "pair_predictions",
        "read_predictions",
        "validate_predictions",
        "write_predictions",
    ),
    "report": (
        "BootstrapOptions",
        "compare_files",
        "compare_predictions",
        "evaluate_file",
        "evaluate_predictions",
    ),
    "render": ("forest_plot", "format_report", "markdown_report"),
    "thresholds": (
        "ConfusionStatistic",
        "confusion_counts",
        "threshold_metrics",
        "youden_thresholds",
    ),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted([*_MODULE_OF, "AurocReport", "auroc", "auroc_report", "mean_auroc"])


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'cxrprobe.stats' has no attribute {name!r}")
    return getattr(importlib.import_module(f"cxrprobe.stats.{_MODULE_OF[name]}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
