"""One probe fit on loaded splits, as the probe run and each point of a curve do it: fit, save
the weights, and return ``(summary, scores by split, provenance)`` (:data:`FITS` by method)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cxrprobe.probe.outputs import training_policies
from cxrprobe.probe.summary import knn_grid, linear_grid
from cxrprobe.progress import Bar, ProgressFactory, show_note, start_bar
from cxrprobe.provenance import sha256_file

FitResult = tuple[dict[str, Any], dict[str, Any], dict[str, Any]]  # summary, scores, provenance


def fit_linear(
    config: Any,
    x: dict[str, Any],
    labels: dict[str, np.ndarray],
    findings: list[str],
    device: Any,
    progress: ProgressFactory | None,
    base: dict[str, Any],
    paths: dict[str, Path],
) -> FitResult:
    """The linear probe of ``config`` (a ``ProbeConfig``) on ``x``/``labels`` by split: every
    value of its grid, chosen on validation; saves the weights to ``paths["weights"]``."""
    from cxrprobe.probe.linear import fit_linear_probe

    iterations = config.max_iter if config.backend == "torch" else None
    with _GridBar(progress, iterations) as callback:
        probe, report = fit_linear_probe(
            x["train"],
            labels["train"],
            x["val"],
            labels["val"],
            findings,
            cs=config.grid,
            backend=config.backend,
            device=device,
            selection=config.selection,
            class_weight=config.class_weight,
            uncertain=config.uncertain,
            blank=config.blank,
            refit_trainval=config.refit_trainval,
            max_iter=config.max_iter,
            tol=config.tol,
            max_memory=config.max_memory,
            callback=None if progress is None else callback,
            metadata={k: base[k] for k in ("features", "feature_dim", "store_identity", "split")},
        )
    probe.save(paths["weights"])
    summary = {
        "backend": config.backend,
        **linear_grid(report, probe, findings),
        "class_weight": config.class_weight,
        **_policies(config),
    }
    provenance = {
        **_provenance(config, base, summary, config.backend, [float(c) for c in report.cs]),
        "probe_weights": str(paths["weights"]),
        "probe_weights_sha256": sha256_file(paths["weights"]),
    }
    scores = {"test": probe.predict_proba(x["test"])}
    if len(x["val"]):
        scores["val"] = probe.predict_proba(x["val"])  # in-sample after --refit-trainval
    return summary, scores, provenance


class _GridBar:
    """The solver's callback ``(iterations or fits done, problems running)`` as progress bars.

    A count that goes back starts a new pass (the train+val refit), so a new bar. Its total (for
    the ETA) is ``iterations`` (an iterative solver's ``max_iter``: a bound, the bar ends early
    when every problem has converged), else the fits of the pass (done + still to run).
    """

    def __init__(self, progress: ProgressFactory | None, iterations: int | None = None) -> None:
        self.progress, self.iterations, self.count = progress, iterations, 0
        self.bar: Bar | None = None

    def __call__(self, done: int, active: int) -> None:
        if self.bar is None or done + 1 < self.count:
            self.close()
            total = self.iterations or done + active
            self.bar, self.count = start_bar(self.progress, total, "fitting grid"), 0
        self.bar.update(done + 1 - self.count)
        self.count = done + 1
        show_note(self.bar, f"active={active}")

    def close(self) -> None:
        if self.bar is not None:
            if self.iterations and hasattr(self.bar, "refresh"):  # converged early: end at 100 %
                self.bar.total = self.count
                self.bar.refresh()
            self.bar.close()
            self.bar = None

    def __enter__(self) -> _GridBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def fit_knn(
    config: Any,
    x: dict[str, Any],
    labels: dict[str, np.ndarray],
    findings: list[str],
    device: Any,
    progress: ProgressFactory | None,
    base: dict[str, Any],
    paths: dict[str, Path],
) -> FitResult:
    """The kNN probe of ``config`` on ``x``/``labels`` by split, k chosen on validation (no
    weights are saved)."""
    from cxrprobe.probe.knn import fit_knn_probe

    scores, report = fit_knn_probe(
        x["train"],
        labels["train"],
        x["val"],
        labels["val"],
        x["test"],
        ks=config.ks,
        temperature=config.temperature,
        uncertain=config.uncertain,
        blank=config.blank,
        device=device,
        max_memory=config.max_memory,
    )
    summary = {**knn_grid(report, findings), **_policies(config)}
    provenance = _provenance(config, base, summary, "torch", [int(k) for k in report.ks])
    scores = {"test": scores, "val": report.val_scores}  # val: None without validation rows
    return summary, {k: v for k, v in scores.items() if v is not None}, provenance


def _policies(config: Any) -> dict[str, str]:
    """The label policies a fit trained under, as its summary records them."""
    return {"uncertain": config.uncertain, "blank": config.blank}


def _provenance(
    config: Any, base: dict[str, Any], summary: dict[str, Any], backend: str, grid: list
) -> dict[str, Any]:
    """A fit's provenance: the run's ``base``, its training policies, backend, choice and grid."""
    return {
        **base,
        **training_policies(config.uncertain, config.blank),
        "backend": backend,
        "chosen": summary["chosen"],
        "grid": grid,
    }


FITS = {"linear": fit_linear, "knn": fit_knn}
