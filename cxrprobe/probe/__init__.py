"""Probes on frozen embeddings: linear (L-BFGS grid, backends), kNN, splits, the probe run.

Re-exported here with light imports (torch loads when they run). Fine-tuning is
:mod:`cxrprobe.finetune`; label targets are :mod:`cxrprobe.data.targets`.
"""

from cxrprobe.probe.backends import BACKENDS, GridFit, get_backend
from cxrprobe.probe.knn import KnnReport, fit_knn_probe, knn_scores
from cxrprobe.probe.linear import (
    DEFAULT_GRID,
    GridReport,
    LinearProbe,
    Standardizer,
    fit_linear_probe,
)
from cxrprobe.probe.run import ProbeConfig, run_probe

__all__ = [
    "BACKENDS",
    "DEFAULT_GRID",
    "GridFit",
    "GridReport",
    "KnnReport",
    "LinearProbe",
    "ProbeConfig",
    "Standardizer",
    "fit_knn_probe",
    "fit_linear_probe",
    "get_backend",
    "knn_scores",
    "run_probe",
]
