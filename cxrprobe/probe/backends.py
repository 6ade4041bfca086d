"""Solvers for the grid of multi-label logistic regressions, behind one interface.

Every backend minimises, for each finding ``l`` and each grid value ``C``, scikit-learn's
objective on the rows annotated for ``l``::

    C * sum_i c_il * BCE(x_i . w + b, y_il)  +  1/2 * ||w||^2        (intercept not penalised)

with ``c_il`` the class weight (1, or ``pos_weight[l]`` for positives). The torch backend works
on the equivalent scaled form ``sum_i s_il * BCE + 1/(2 * C * sum_i c_il) * ||w||^2`` with
``s_il = c_il / sum_i c_il`` (a weighted mean), so ``tol`` means the same as scikit-learn's:
the largest gradient entry of that scaled objective.

* ``torch`` (default): every (C, finding) pair is one row of a batched, preconditioned L-BFGS
  (:mod:`cxrprobe.probe.lbfgs`) sharing the two matrix products per iteration, so the whole grid
  is fitted in one pass over the features. Runs on CPU or CUDA (``device``). Memory follows a
  budget (``max_memory``, see :func:`solver_blocks`): pairs are fitted in batches and the
  features standardised in row blocks that fit it, so it grows with the data, not the grid.
* ``sklearn``: ``LogisticRegression(solver="lbfgs")`` per finding, warm-started along the grid.
* ``cuml``: cuML's ``LogisticRegression`` per finding and grid value (it fits one label column).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from cxrprobe.data.targets import entry_weights, fittable, observed_mask
from cxrprobe.errors import ConfigError, DataFormatError, MissingDependencyError
from cxrprobe.probe.features import ScaledFeatures, format_memory, memory_budget
from cxrprobe.probe.lbfgs import (
    CONVERGED,
    DEFAULT_TOL,
    MAX_ITER,
    Callback,
    feature_eigh,
    lbfgs_logistic,
)


@dataclass
class GridFit:
    """Coefficients for every grid value and finding.

    ``coef`` (G, L, D), ``intercept`` (G, L), ``n_iter`` and ``status`` (G, L) with
    :data:`CONVERGED`, :data:`MAX_ITER` or :data:`STALLED` (line search could not decrease the
    objective further at working precision).
    """

    cs: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    n_iter: np.ndarray
    status: np.ndarray

    @property
    def converged(self) -> np.ndarray:
        return self.status == CONVERGED


class Backend(Protocol):
    """What every solver offers: fit the whole grid on standardised features."""

    name: str

    def fit_grid(
        self,
        x: Any,
        targets: np.ndarray,
        cs: Sequence[float],
        *,
        pos_weight: np.ndarray | None = None,
        max_iter: int = 1000,
        tol: float = DEFAULT_TOL,
        callback: Callback | None = None,
    ) -> GridFit:
        """``x`` a :class:`~cxrprobe.probe.features.ScaledFeatures` or (n, D) standardised
        features (tensor or array); ``targets`` (n, L) 0/1 with NaN where a row is not annotated
        for a finding; every finding needs both classes."""
        ...


def class_weights(targets: np.ndarray, pos_weight: np.ndarray | None) -> np.ndarray:
    """(n, L) per-element weights: 0 where not annotated, ``pos_weight[l]`` for positives, else 1.

    Refuses a column without both classes (no logistic regression exists for it).
    """
    lacking = np.flatnonzero(~fittable(targets))
    if lacking.size:
        raise DataFormatError(
            f"target column {int(lacking[0])} lacks positive or negative rows; it cannot be fitted"
        )
    return entry_weights(targets, pos_weight)


# --------------------------------------------------------------------------- torch backend
def solver_blocks(
    n: int, dim: int, problems: int, budget: int, history: int = 10
) -> tuple[int, int]:
    """(problems per L-BFGS batch, feature rows per block) that fit ``budget`` bytes.

    A batch keeps two float32 margins per problem and row plus its L-BFGS history; it gets 7/8 of
    the budget, split into batches of equal size. Row blocks (a standardised feature block and
    at most five float32 temporaries per problem and row) get the last eighth.
    """
    per_problem = 8 * n + 4 * (2 * history + 12) * (dim + 1)
    batch = min(problems, budget * 7 // 8 // per_problem)
    if batch < 1:
        raise ConfigError(
            f"--max-memory {format_memory(budget)} is too small for {n} training rows: one "
            f"(C, finding) pair needs {format_memory(per_problem * 8 // 7 + 1)}; raise --max-memory"
        )
    batch = -(-problems // -(-problems // batch))  # equal batches
    rows = budget // 8 // (8 * dim + 24 * batch)
    return batch, max(1, min(n, rows))


class TorchBackend:
    """Batched L-BFGS over all (C, finding) pairs on one device."""

    name = "torch"

    def __init__(
        self, device: Any = None, max_memory: int | str | None = None, history: int = 10
    ) -> None:
        self.device = device
        self.max_memory = max_memory
        self.history = history

    def fit_grid(
        self, x, targets, cs, *, pos_weight=None, max_iter=1000, tol=DEFAULT_TOL, callback=None
    ) -> GridFit:
        import torch

        feats = ScaledFeatures.of(x)
        device = torch.device(self.device) if self.device is not None else feats.device
        feats = feats.to(device)
        n, dim = feats.shape
        cs = np.asarray(cs, dtype=np.float64)
        weights = class_weights(targets, pos_weight)
        totals = weights.sum(axis=0)
        y = torch.as_tensor(np.nan_to_num(targets, nan=0.0).T, dtype=torch.float32, device=device)
        s = torch.as_tensor((weights / totals).T, dtype=torch.float32, device=device)
        n_labels = y.shape[0]
        label_of = np.tile(np.arange(n_labels), len(cs))
        l2 = 1.0 / (np.repeat(cs, n_labels) * totals[label_of])

        block, rows = solver_blocks(
            n, dim, len(label_of), memory_budget(self.max_memory, device), self.history
        )
        eig = feature_eigh(feats, rows)
        theta = np.zeros((len(label_of), dim + 1), dtype=np.float32)
        n_iter = np.zeros(len(label_of), dtype=np.int64)
        status = np.zeros(len(label_of), dtype=np.int8)
        for start in range(0, len(label_of), block):
            part = slice(start, start + block)
            result = lbfgs_logistic(
                feats,
                y,
                s,
                torch.as_tensor(label_of[part], device=device),
                torch.as_tensor(l2[part], device=device, dtype=torch.float32),
                eig=eig,
                max_iter=max_iter,
                tol=tol,
                history=self.history,
                block_rows=rows,
                callback=callback,
            )
            theta[part], n_iter[part], status[part] = result
        shape = (len(cs), n_labels)
        return GridFit(
            cs=cs,
            coef=theta[:, :dim].reshape(*shape, dim),
            intercept=theta[:, dim].reshape(shape),
            n_iter=n_iter.reshape(shape),
            status=status.reshape(shape),
        )


# ------------------------------------------------------------------------- sklearn backend
class SklearnBackend:
    """scikit-learn's lbfgs LogisticRegression, one estimator per finding, warm-started along C."""

    name = "sklearn"

    def fit_grid(
        self, x, targets, cs, *, pos_weight=None, max_iter=1000, tol=DEFAULT_TOL, callback=None
    ) -> GridFit:
        import warnings

        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression

        x = _to_numpy(x).astype(np.float64)
        cs = np.asarray(cs, dtype=np.float64)
        weights = class_weights(targets, pos_weight)
        n_labels, dim = targets.shape[1], x.shape[1]
        coef = np.zeros((len(cs), n_labels, dim))
        intercept = np.zeros((len(cs), n_labels))
        n_iter = np.zeros((len(cs), n_labels), dtype=np.int64)
        status = np.zeros((len(cs), n_labels), dtype=np.int8)
        order = np.argsort(cs)
        for label in range(n_labels):
            rows = observed_mask(targets[:, label])
            model = LogisticRegression(solver="lbfgs", max_iter=max_iter, tol=tol, warm_start=True)
            for step, g in enumerate(order):
                if callback is not None:
                    callback(label * len(cs) + step, n_labels * len(cs) - label * len(cs) - step)
                model.set_params(C=float(cs[g]))
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", ConvergenceWarning)
                    model.fit(
                        x[rows],
                        targets[rows, label].astype(int),
                        sample_weight=weights[rows, label],
                    )
                coef[g, label], intercept[g, label] = model.coef_[0], model.intercept_[0]
                n_iter[g, label] = int(model.n_iter_[0])
                status[g, label] = (
                    MAX_ITER
                    if any(issubclass(w.category, ConvergenceWarning) for w in caught)
                    else CONVERGED
                )
        return GridFit(
            cs=cs,
            coef=coef.astype(np.float32),
            intercept=intercept.astype(np.float32),
            n_iter=n_iter,
            status=status,
        )


# ---------------------------------------------------------------------------- cuML backend
def _import_cuml():
    try:
        from cuml.linear_model import LogisticRegression
    except ImportError as exc:
        raise MissingDependencyError(
            "the cuml backend needs RAPIDS cuML and a CUDA GPU: pip install 'cxrprobe[gpu]' "
            "(or use --backend torch, which also runs on CUDA)"
        ) from exc
    return LogisticRegression


class CumlBackend:
    """cuML's quasi-Newton LogisticRegression, one fit per finding and grid value.

    Class weights are passed as sample weights rescaled to mean 1 with ``C`` scaled by their old
    mean, which leaves scikit-learn's objective unchanged whether cuML normalises the loss by the
    row count or by the weight sum.
    """

    name = "cuml"

    def fit_grid(
        self, x, targets, cs, *, pos_weight=None, max_iter=1000, tol=DEFAULT_TOL, callback=None
    ) -> GridFit:
        logistic = _import_cuml()
        x = _to_numpy(x).astype(np.float32)
        cs = np.asarray(cs, dtype=np.float64)
        weights = class_weights(targets, pos_weight)
        n_labels, dim = targets.shape[1], x.shape[1]
        coef = np.zeros((len(cs), n_labels, dim), dtype=np.float32)
        intercept = np.zeros((len(cs), n_labels), dtype=np.float32)
        n_iter = np.zeros((len(cs), n_labels), dtype=np.int64)
        status = np.zeros((len(cs), n_labels), dtype=np.int8)
        import cupy  # installed with cuML

        for label in range(n_labels):
            rows = observed_mask(targets[:, label])
            wl = weights[rows, label]
            scale = float(wl.mean())
            # one host-to-GPU copy per finding, reused along the grid
            xl, yl = cupy.asarray(x[rows]), cupy.asarray(targets[rows, label].astype(np.float32))
            wl = cupy.asarray((wl / scale).astype(np.float32))
            for g, c in enumerate(cs):
                if callback is not None:
                    callback(label * len(cs) + g, n_labels * len(cs) - label * len(cs) - g)
                model = logistic(
                    C=float(c) * scale, max_iter=max_iter, tol=tol, output_type="numpy"
                )
                model.fit(xl, yl, sample_weight=wl)
                coef[g, label] = np.asarray(model.coef_).reshape(-1)
                intercept[g, label] = float(np.asarray(model.intercept_).reshape(-1)[0])
                n_iter[g, label] = int(np.asarray(getattr(model, "n_iter_", [0])).reshape(-1)[0])
                status[g, label] = MAX_ITER if n_iter[g, label] >= max_iter else CONVERGED
        return GridFit(cs=cs, coef=coef, intercept=intercept, n_iter=n_iter, status=status)


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, ScaledFeatures):  # these backends need the whole standardised matrix
        x = x.materialize()
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


BACKENDS = {"torch": TorchBackend, "sklearn": SklearnBackend, "cuml": CumlBackend}


def get_backend(name: str, device: Any = None, max_memory: int | str | None = None) -> Backend:
    """The backend called ``name`` (``torch``, ``sklearn`` or ``cuml``); ``max_memory`` bounds
    the torch solver's working memory (bytes or text such as ``"4GB"``; None: automatic)."""
    if name not in BACKENDS:
        raise ConfigError(f"--backend {name!r} is unknown; choose one of {', '.join(BACKENDS)}")
    if name == "torch":
        return TorchBackend(device=device, max_memory=max_memory)
    if name == "cuml":
        _import_cuml()
    return BACKENDS[name]()
