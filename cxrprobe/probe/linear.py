"""Multi-label linear probe: targets, standardisation, the regularisation grid, selection, refit.

One logistic regression (sigmoid output) per finding on frozen features standardised with the
training rows' mean and standard deviation. The L2 penalty follows scikit-learn's ``C``::

    minimise  C * sum_i c_i * BCE(x_i . w + b, y_i)  +  1/2 * ||w||^2     (b not penalised)

over the rows annotated for that finding (``c_i`` = 1, or ``pos_weight`` = negatives/positives
for positives with ``class_weight="pos_weight"``). Every backend (``torch``, ``sklearn``,
``cuml``) minimises this same objective, so a given ``C`` means the same in all of them.

Targets come from :mod:`cxrprobe.data.targets`: 1 and 0 are used; uncertain (-1) rows are masked
out of the loss per element unless ``uncertain`` maps them to 0 or 1 first; NaN (not mentioned)
is masked unless ``blank="negative"`` makes it 0. Validation and test targets always mask -1 and
NaN (they are what the probe is judged against, whatever the training policy).

The grid (default DINOv2's ``C`` in ``10**linspace(-6, 5, 45)``) is fitted in one pass (all
values jointly, see :mod:`cxrprobe.probe.backends`), scored on the validation split by mean
AUROC over findings (or per finding), and the chosen value is refitted on train+val if asked.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxrprobe.data.targets import (
    class_counts,
    evaluation_targets,
    fittable,
    positive_weights,
    training_targets,
)
from cxrprobe.errors import ConfigError, DataFormatError, InputFileError, WeightsError
from cxrprobe.probe.backends import CONVERGED, DEFAULT_TOL, GridFit, get_backend
from cxrprobe.probe.features import ScaledFeatures, Standardizer
from cxrprobe.provenance import atomic_write_bytes, to_jsonable
from cxrprobe.stats.auroc import auroc

log = logging.getLogger(__name__)

DEFAULT_GRID = 10.0 ** np.linspace(-6, 5, 45)
CLASS_WEIGHTS = ("none", "pos_weight")
SELECTIONS = ("mean", "per-finding")
WEIGHTS_FORMAT = "cxrprobe.linear-probe"
WEIGHTS_VERSION = 1
_SCORE_ELEMENTS = 1 << 25  # rows * columns per chunk of logits


# --------------------------------------------------------------------------------- scoring
def grid_logits(
    x: Any,
    coef: np.ndarray,
    intercept: np.ndarray,
    standardizer: Standardizer | None = None,
) -> np.ndarray:
    """Logits (n, *coef.shape[:-1]) of features ``x`` (n, D), in row chunks.

    ``x`` is standardised already, or raw with its ``standardizer`` (applied chunk by chunk, so
    no standardised copy of ``x`` is made).
    """
    import torch

    feats = ScaledFeatures([x], standardizer)
    lead = coef.shape[:-1]
    w = torch.as_tensor(coef.reshape(-1, coef.shape[-1]), device=feats.device, dtype=torch.float32)
    b = torch.as_tensor(intercept.reshape(-1), device=feats.device, dtype=torch.float32)
    out = np.empty((feats.n, w.shape[0]), dtype=np.float32)
    chunk = max(1, _SCORE_ELEMENTS // max(w.shape[0], feats.dim, 1))
    for rows, part in feats.blocks(chunk):
        out[rows] = torch.addmm(b, part, w.T).cpu().numpy()
    return out.reshape(feats.n, *lead)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Probabilities from logits, overflow-free."""
    out = np.empty_like(logits, dtype=np.float64)
    pos = logits >= 0
    out[pos] = 1 / (1 + np.exp(-logits[pos]))
    e = np.exp(logits[~pos])
    out[~pos] = e / (1 + e)
    return out


@dataclass
class LinearProbe:
    """A fitted probe: one weight vector per finding plus the standardisation it expects.

    ``coef`` (L, D) and ``intercept`` (L,) apply to standardised features; ``cs`` (L,) is the ``C``
    each finding was fitted with (NaN for a finding without both classes in training, whose
    constant score is its training prevalence).
    """

    findings: tuple[str, ...]
    coef: np.ndarray
    intercept: np.ndarray
    cs: np.ndarray
    standardizer: Standardizer
    metadata: dict[str, Any] = field(default_factory=dict)

    def logits(self, x: Any) -> np.ndarray:
        """(n, L) logits of raw features ``x`` (n, D) (tensor or array, any device)."""
        return grid_logits(x, self.coef, self.intercept, self.standardizer)

    def predict_proba(self, x: Any) -> np.ndarray:
        """(n, L) probabilities."""
        return sigmoid(self.logits(x))

    def save(self, path: str | os.PathLike) -> Path:
        """Write the weights and standardisation as safetensors (metadata as JSON strings)."""
        from safetensors.numpy import save

        tensors = {
            "coef": np.ascontiguousarray(self.coef, dtype=np.float32),
            "intercept": np.ascontiguousarray(self.intercept, dtype=np.float32),
            "c": np.ascontiguousarray(self.cs, dtype=np.float64),
            "mean": np.ascontiguousarray(self.standardizer.mean, dtype=np.float32),
            "std": np.ascontiguousarray(self.standardizer.std, dtype=np.float32),
        }
        meta = {
            "format": WEIGHTS_FORMAT,
            "version": str(WEIGHTS_VERSION),
            "findings": json.dumps(list(self.findings)),
            "metadata": json.dumps(to_jsonable(self.metadata)),
        }
        return atomic_write_bytes(path, save(tensors, metadata=meta))

    @classmethod
    def load(cls, path: str | os.PathLike) -> LinearProbe:
        """Read a probe written by :meth:`save` (no pickle involved)."""
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise InputFileError(
                f"{path}: probe weights not found; give the .weights.safetensors file a probe run wrote"
            )
        try:
            with safe_open(str(path), framework="numpy") as fh:
                meta = fh.metadata() or {}
                tensors = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightsError(f"{path}: not a readable safetensors file ({exc})") from exc
        if meta.get("format") != WEIGHTS_FORMAT or meta.get("version") != str(WEIGHTS_VERSION):
            raise WeightsError(
                f"{path}: not a cxrprobe linear-probe weights file (format {meta.get('format')!r}, "
                f"version {meta.get('version')!r}); give the file `cxrprobe probe` wrote"
            )
        missing = {"coef", "intercept", "c", "mean", "std"} - set(tensors)
        if missing:
            raise WeightsError(f"{path}: missing tensors {sorted(missing)}")
        return cls(
            findings=tuple(json.loads(meta["findings"])),
            coef=tensors["coef"],
            intercept=tensors["intercept"],
            cs=tensors["c"],
            standardizer=Standardizer(tensors["mean"], tensors["std"]),
            metadata=json.loads(meta.get("metadata", "{}")),
        )


# ------------------------------------------------------------------------------- selection
@dataclass
class GridReport:
    """The grid as validation saw it.

    ``val_auroc`` (G, L), NaN where undefined; ``chosen`` (L,) grid index used per finding;
    ``n_iter`` and ``status`` (G, L) from the solver (status 0 = converged).
    """

    cs: np.ndarray
    val_auroc: np.ndarray
    chosen: np.ndarray
    selection: str
    n_iter: np.ndarray
    status: np.ndarray

    @property
    def val_mean(self) -> np.ndarray:
        """(G,) mean validation AUROC over findings where it is defined."""
        return _nanmean_rows(self.val_auroc)


def _nanmean_rows(table: np.ndarray) -> np.ndarray:
    defined = ~np.isnan(table)
    total = np.where(defined, table, 0).sum(axis=1)
    count = defined.sum(axis=1)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def choose(val_auroc: np.ndarray, selection: str = "mean") -> np.ndarray:
    """(L,) grid index per finding: the best mean over findings, or each finding's own best.

    Ties go to the earlier (for an ascending grid: more strongly regularised) value; a finding
    without a defined validation AUROC takes the mean choice.
    """
    if selection not in SELECTIONS:
        raise ConfigError(
            f"--select {selection!r} is unknown; choose one of {', '.join(SELECTIONS)}"
        )
    means = _nanmean_rows(val_auroc)
    if np.isnan(means).all():
        raise DataFormatError(
            "no finding has a defined validation AUROC (each needs positive and negative validation rows); "
            "use a larger validation split"
        )
    best = int(np.nanargmax(means))
    chosen = np.full(val_auroc.shape[1], best, dtype=np.int64)
    if selection == "per-finding":
        for col in range(val_auroc.shape[1]):
            if not np.isnan(val_auroc[:, col]).all():
                chosen[col] = int(np.nanargmax(val_auroc[:, col]))
    return chosen


# ------------------------------------------------------------------------------ the probe
def _fit_columns(
    backend, x, targets, cs, columns, class_weight, max_iter, tol, callback
) -> GridFit:
    pos_weight = positive_weights(targets[:, columns]) if class_weight == "pos_weight" else None
    fit = backend.fit_grid(
        x,
        targets[:, columns],
        cs,
        pos_weight=pos_weight,
        max_iter=max_iter,
        tol=tol,
        callback=callback,
    )
    slow = int((fit.status != CONVERGED).sum())
    if slow:
        log.warning(
            "%d of %d (C, finding) fits stopped before tol=%g (max_iter=%d or working precision)",
            slow,
            fit.status.size,
            tol,
            max_iter,
        )
    return fit


def _validation_auroc(
    fit: GridFit,
    x_val: Any,
    scaler: Standardizer,
    y_val: np.ndarray,
    columns: np.ndarray,
    n_labels: int,
) -> np.ndarray:
    """(G, L) validation AUROC of every grid value (NaN for findings that were not fitted)."""
    table = np.full((len(fit.cs), n_labels), np.nan)
    if len(y_val):
        logits = grid_logits(x_val, fit.coef, fit.intercept, scaler)  # (n_val, G, fitted)
        for g in range(len(fit.cs)):
            table[g, columns] = auroc(y_val[:, columns], logits[:, g, :])
    return table


def _constant_intercept(targets: np.ndarray) -> float:
    """Logit of the smoothed prevalence ``(positives + 1/2) / (annotated + 1)``."""
    positives, negatives = class_counts(targets)
    return float(np.log((positives + 0.5) / (negatives + 0.5)))


def fit_linear_probe(
    x_train: Any,
    labels_train: np.ndarray,
    x_val: Any,
    labels_val: np.ndarray,
    findings: Sequence[str],
    *,
    cs: Sequence[float] = DEFAULT_GRID,
    backend: str = "torch",
    device: Any = None,
    max_memory: int | str | None = None,
    selection: str = "mean",
    class_weight: str = "none",
    uncertain: str = "ignore",
    blank: str = "missing",
    refit_trainval: bool = False,
    max_iter: int = 1000,
    tol: float = DEFAULT_TOL,
    callback: Callable[[int, int], None] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> tuple[LinearProbe, GridReport]:
    """Fit the grid on the training rows, choose ``C`` on validation, optionally refit on both.

    ``x_*`` are raw (unstandardised) features (n, D) as tensors or arrays, used in their own
    dtype (float16 as stored is fine: they are standardised to float32 block by block);
    ``labels_*`` (n, L) hold 1/0/-1/NaN. ``max_memory`` bounds the torch solver's working memory
    on top of the features (bytes or text such as ``"4GB"``; None: automatic, see
    :func:`~cxrprobe.probe.features.memory_budget`). The validation split may be empty only for
    a one-value grid without refit. Returns the probe and the grid report (validation AUROC of
    every value).
    """
    if class_weight not in CLASS_WEIGHTS:
        raise ConfigError(
            f"--class-weight {class_weight!r} is unknown; choose one of {', '.join(CLASS_WEIGHTS)}"
        )
    cs = np.sort(np.asarray(cs, dtype=np.float64))
    if cs.size == 0 or not np.all(np.isfinite(cs) & (cs > 0)):
        raise ConfigError("--grid needs at least one positive, finite C value")
    y_val = evaluation_targets(labels_val)
    if not len(y_val) and (len(cs) > 1 or refit_trainval):
        raise ConfigError(
            "the validation split is empty, so the grid cannot be chosen; give --val-split or --val-fraction"
        )
    solver = get_backend(backend, device, max_memory)
    y_train = training_targets(labels_train, uncertain, blank)
    columns = np.flatnonzero(fittable(y_train))
    if columns.size == 0:
        raise DataFormatError(
            "no finding has both positive and negative training rows; nothing to fit"
        )
    positives = class_counts(y_train)[0]
    for col in np.flatnonzero(~fittable(y_train)):
        missing = "positive" if not positives[col] else "negative"
        log.warning(
            "finding %r has no %s training rows: it gets a constant score", findings[col], missing
        )

    n_labels = len(findings)
    scaler = Standardizer.fit(x_train)
    train = ScaledFeatures([x_train], scaler)
    fit = _fit_columns(solver, train, y_train, cs, columns, class_weight, max_iter, tol, callback)
    val_auroc = _validation_auroc(fit, x_val, scaler, y_val, columns, n_labels)
    chosen = choose(val_auroc, selection) if len(cs) > 1 else np.zeros(n_labels, dtype=np.int64)
    n_iter = np.zeros((len(cs), n_labels), dtype=np.int64)
    status = np.zeros((len(cs), n_labels), dtype=np.int8)
    n_iter[:, columns], status[:, columns] = fit.n_iter, fit.status
    report = GridReport(cs, val_auroc, chosen, selection, n_iter, status)

    grid_index, y_fit = chosen, y_train
    if refit_trainval:  # the chosen value(s) again, on train+val with its own standardisation
        y_fit = training_targets(
            np.concatenate([np.asarray(labels_train), np.asarray(labels_val)]), uncertain, blank
        )
        scaler = Standardizer.fit(x_train, x_val)
        refit_cs = np.unique(cs[chosen[columns]])
        fit = _fit_columns(
            solver,
            ScaledFeatures([x_train, x_val], scaler),  # the two splits, never concatenated
            y_fit,
            refit_cs,
            columns,
            class_weight,
            max_iter,
            tol,
            callback,
        )
        grid_index = np.searchsorted(refit_cs, cs[chosen])

    coef = np.zeros((n_labels, fit.coef.shape[-1]), dtype=np.float32)
    intercept = np.array(
        [_constant_intercept(y_fit[:, col]) for col in range(n_labels)], dtype=np.float32
    )
    chosen_c = np.full(n_labels, np.nan)
    for j, col in enumerate(columns):
        coef[col], intercept[col] = fit.coef[grid_index[col], j], fit.intercept[grid_index[col], j]
        chosen_c[col] = cs[chosen[col]]
    meta = {
        **dict(metadata or {}),
        "uncertain": uncertain,
        "blank": blank,
        "class_weight": class_weight,
        "selection": selection,
        "refit_trainval": bool(refit_trainval),
        "backend": backend,
    }
    return LinearProbe(tuple(findings), coef, intercept, chosen_c, scaler, meta), report
