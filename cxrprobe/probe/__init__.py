"""Probes on frozen embeddings (linear, kNN) and full fine-tuning.

The linear and kNN probes are re-exported here (light imports: torch loads when they run).
"""

from cxrprobe.probe.backends import BACKENDS, GridFit, get_backend
from cxrprobe.probe.knn import KnnReport, fit_knn_probe, knn_scores
from cxrprobe.probe.linear import (
    DEFAULT_GRID,
    GridReport,
    LinearProbe,
    Standardizer,
    evaluation_targets,
    fit_linear_probe,
    training_targets,
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
    "evaluation_targets",
    "fit_knn_probe",
    "fit_linear_probe",
    "get_backend",
    "knn_scores",
    "run_probe",
    "training_targets",
]
