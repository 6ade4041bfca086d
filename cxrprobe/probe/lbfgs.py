"""Batched L-BFGS for many L2-penalised logistic regressions that share one feature matrix.

The torch backend's solver. Each problem (one grid value ``C`` and one finding) is one row of the
batch, minimising the mean-scaled objective ``sum_i s_i * BCE(x_i . w + b, y_i) + l2/2 * ||w||^2``
(weights ``s`` summing to 1 over the rows annotated for that finding; intercept not penalised).
Per iteration all rows share two matrix products with the features -- ``D @ X.T`` for the margins
along the step and ``R @ X`` for the gradient -- so the whole grid costs one pass over the data
per iteration. Each row keeps its own L-BFGS history and line search; finished rows leave the
batch.

Memory: the only arrays of (problems x rows) kept are the margins at the current point and along
the step (8 bytes per problem and row). Everything else -- standardised feature blocks,
residuals, line-search trials -- is computed ``block_rows`` rows at a time, so the backend sizes
the batch and the blocks from a memory budget (:mod:`cxrprobe.probe.backends`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from cxrprobe.probe.features import ScaledFeatures

#: Solver status codes.
CONVERGED, MAX_ITER, STALLED = 0, 1, 2
_RUNNING = -1

#: Tolerance on the largest gradient entry of the mean-scaled objective. Tighter than
#: scikit-learn's 1e-4: at 1e-4 weakly regularised fits of rare findings are still far from their
#: optimum (validation AUROC off by more than 0.01 in either solver), and the preconditioned torch
#: solver reaches 1e-6 in a few dozen iterations.
DEFAULT_TOL = 1e-6

#: Progress callback: (iterations or fits done, problems still running).
Callback = Callable[[int, int], None]


def _rowdot(a, b):
    """Row-wise dot products of two (A, m) tensors, as one batched matrix product."""
    import torch

    return torch.bmm(a[:, None, :], b[:, :, None])[:, 0, 0]


def _residual(z, s, neg_sy, out=None):
    """``s * (sigmoid(z) - y)`` for every element (``neg_sy = -s * y``), into ``out`` if given
    (which may be ``z`` itself): one temporary, not three."""
    import torch

    sig = torch.sigmoid(z, out=out)
    return torch.addcmul(neg_sy, s, sig, out=sig)


def _precondition(v, basis, inv, inv_b):
    """Apply each row's fixed approximate inverse Hessian ``(c * X'X/n + l2 I)^-1``."""
    import torch

    out = torch.empty_like(v)
    out[:, :-1] = ((v[:, :-1] @ basis) * inv) @ basis.T
    out[:, -1] = v[:, -1] * inv_b
    return out


def _direction(grad, hist_s, hist_y, rho, gamma, newest, precond):
    """Preconditioned L-BFGS two-loop recursion for every row at once (empty slots: rho = 0)."""
    history = hist_s.shape[0]
    order = [(newest - j) % history for j in range(history)]
    q = grad.clone()
    coeffs = {}
    for j in order:
        coeffs[j] = rho[j] * (hist_s[j] * q).sum(1)
        q -= coeffs[j][:, None] * hist_y[j]
    q = gamma[:, None] * _precondition(q, *precond)
    for j in reversed(order):
        beta = rho[j] * (hist_y[j] * q).sum(1)
        q += (coeffs[j] - beta)[:, None] * hist_s[j]
    return -q


def feature_eigh(x: Any, block_rows: int | None = None) -> tuple:
    """Eigenvectors and eigenvalues of ``x'x / n`` (the L-BFGS preconditioner's base).

    ``x`` is a :class:`ScaledFeatures` or an (n, D) standardised tensor; the Gram matrix is
    accumulated in float64 over blocks of ``block_rows`` rows.
    """
    import torch

    feats = ScaledFeatures.of(x)
    gram = torch.zeros(feats.dim, feats.dim, dtype=torch.float64, device=feats.device)
    for _, block in feats.blocks(block_rows):
        gram += (block.T @ block).double()
    eigvals, basis = torch.linalg.eigh(gram / max(feats.n, 1))
    eigvals = eigvals.clamp_min(1e-6 * float(eigvals.max().clamp_min(1e-12)))
    return basis.float(), eigvals.float()


class _Margins:
    """The (P, n) margins at the current point (``z``) and along the step (``zd``) of a batch.

    Holds the targets' per-label weights ``s`` and ``-s * y`` (L, n) and gathers each problem's
    row of them one block of ``rows`` columns at a time; ``keep`` shrinks the batch in place.
    """

    def __init__(self, feats: ScaledFeatures, s, neg_sy, label_of, rows: int) -> None:
        import torch

        self.feats, self.s, self.neg_sy, self.label_of = feats, s, neg_sy, label_of
        self.rows = rows
        count = int(label_of.numel())
        self._z = torch.empty(count, feats.n, device=feats.device)
        self._zd = torch.empty_like(self._z)
        self.z, self.zd = self._z, self._zd

    def columns(self) -> list[slice]:
        return [
            slice(c, min(c + self.rows, self.feats.n)) for c in range(0, self.feats.n, self.rows)
        ]

    def weights(self, cols: slice, which=None):
        """``s`` and ``-s * y`` of every problem (or rows ``which``) over columns ``cols``."""
        labels = self.label_of if which is None else self.label_of[which]
        return self.s[:, cols][labels], self.neg_sy[:, cols][labels]

    def set_products(self, out, theta) -> None:
        """``out = theta[:, :-1] @ X.T + theta[:, -1:]``, one feature block at a time."""
        import torch

        for cols, block in self.feats.blocks(self.rows):
            out[:, cols] = torch.addmm(theta[:, -1:], theta[:, :-1], block.T)

    def gradient(self, theta, l2):
        """(P, D+1) gradient of the scaled objective at margins ``z`` (intercept unpenalised)."""
        import torch

        grad = torch.zeros_like(theta)
        for cols, block in self.feats.blocks(self.rows):
            s, neg_sy = self.weights(cols)
            r = _residual(self.z[:, cols], s, neg_sy)
            grad[:, :-1] += r @ block
            grad[:, -1] += r.sum(1)
        grad[:, :-1] += l2[:, None].to(theta.dtype) * theta[:, :-1]
        return grad

    def slope_along(self, alpha, which=None):
        """``sum_i r_i(z + alpha * zd) * zd_i`` per problem (all, or rows ``which``)."""
        import torch

        out = torch.zeros(len(alpha), device=alpha.device)
        for cols in self.columns():
            z, zd = self.z[:, cols], self.zd[:, cols]
            if which is not None:
                z, zd = z[which], zd[which]
            s, neg_sy = self.weights(cols, which)
            trial = torch.addcmul(z, alpha[:, None], zd)
            out += _rowdot(_residual(trial, s, neg_sy, out=trial), zd)
        return out

    def keep(self, mask) -> None:
        """Keep the problems in ``mask`` (in order), compacting the margins without a copy."""
        import torch

        index = torch.nonzero(mask).flatten()
        count = len(index)
        for cols in self.columns():  # index[i] >= i: gathered blocks move rows up, never over
            self._z[:count, cols] = self.z[index, cols]
        self.label_of = self.label_of[index]
        self.z, self.zd = self._z[:count], self._zd[:count]


def lbfgs_logistic(
    x,
    y,
    s,
    label_of,
    l2,
    *,
    eig: tuple | None = None,
    max_iter: int = 1000,
    tol: float = DEFAULT_TOL,
    history: int = 10,
    max_ls: int = 20,
    refresh_every: int = 50,
    block_rows: int | None = None,
    callback: Callback | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Minimise many L2-penalised weighted logistic losses that share one feature matrix.

    Parameters
    ----------
    x : :class:`ScaledFeatures` (n, D), or an (n, D) float32 tensor of standardised features.
    y, s : Tensor (L, n) targets (0/1) and weights summing to 1 per label (0 = not annotated).
    label_of : Tensor (P,) the label of each problem; l2 : Tensor (P,) penalty strength.
    eig : ``feature_eigh(x)``, computed here when not given.
    block_rows : rows per block of the feature products and elementwise work (all when None).

    Returns
    -------
    theta : (P, D+1) coefficients then intercept; n_iter : (P,); status : (P,) int8.

    Each problem (row) has its own L-BFGS history and line search. The initial inverse Hessian
    is ``(c * x'x/n + l2 I)^-1`` with ``c = p(1 - p)`` at the starting prevalence ``p`` (exact
    at the start for unweighted rows), rescaled each step, which removes most of the
    ill-conditioning of correlated features. The margins ``z = theta @ [x, 1].T`` are kept and
    moved along the step, so a line-search trial is elementwise work only. The line search
    accepts the first trial step with ``phi'(alpha) <= 0`` (unit step first, then secant
    estimates of the root of ``phi'`` from below): for a convex objective that guarantees a
    decrease, and it needs no loss values, whose float32 rounding would stall a
    function-value test long before the gradient tolerance is met.
    Problems that reach ``max|grad| <= tol`` leave the batch.
    """
    import torch

    feats = ScaledFeatures.of(x)
    n, dim = feats.shape
    n_prob = int(label_of.numel())
    dev = feats.device
    basis, eigvals = eig if eig is not None else feature_eigh(feats, block_rows)
    theta_out = np.zeros((n_prob, dim + 1), dtype=np.float32)
    n_iter = np.zeros(n_prob, dtype=np.int64)
    status = np.zeros(n_prob, dtype=np.int8)

    ids = torch.arange(n_prob, device=dev)
    sy_label = s * y
    margins = _Margins(feats, s, -sy_label, label_of, max(1, block_rows or n))
    prevalence = sy_label.sum(1)[label_of].clamp(1e-6, 1 - 1e-6)
    curvature = prevalence * (1 - prevalence)
    l2f = l2.to(torch.float32)
    inv = 1 / (curvature[:, None] * eigvals[None, :] + l2f[:, None])
    inv_b = 1 / curvature
    theta = torch.zeros(n_prob, dim + 1, device=dev)
    theta[:, -1] = torch.log(prevalence / (1 - prevalence))  # the optimum at w = 0
    margins.z.copy_(theta[:, -1:].expand(n_prob, n))
    grad = margins.gradient(theta, l2f)
    hist_s = torch.zeros(history, n_prob, dim + 1, device=dev)
    hist_y = torch.zeros_like(hist_s)
    rho = torch.zeros(history, n_prob, device=dev)
    gamma = torch.ones(n_prob, device=dev)
    code = torch.full((n_prob,), _RUNNING, dtype=torch.int8, device=dev)
    code[grad.abs().amax(1) <= tol] = CONVERGED

    def retire(mask: torch.Tensor) -> None:
        where = ids[mask].cpu().numpy()
        theta_out[where] = theta[mask].cpu().numpy()
        codes = code[mask].cpu().numpy()
        status[where] = np.where(codes == _RUNNING, MAX_ITER, codes)

    for it in range(max_iter):
        running = code == _RUNNING
        n_running = int(running.sum())
        if n_running == 0:
            break
        if (len(ids) - n_running) * 8 >= len(ids):  # retire finished problems, shrink the batch
            retire(~running)
            keep = running
            margins.keep(keep)
            ids, l2f, inv, inv_b, theta, grad, gamma, code, running = (
                t[keep] for t in (ids, l2f, inv, inv_b, theta, grad, gamma, code, running)
            )
            hist_s, hist_y, rho = hist_s[:, keep], hist_y[:, keep], rho[:, keep]
        if callback is not None:
            callback(it, n_running)
        n_iter[ids[running].cpu().numpy()] += 1

        direction = _direction(
            grad, hist_s, hist_y, rho, gamma, (it - 1) % history, (basis, inv, inv_b)
        )
        slope = (grad * direction).sum(1)
        reset = slope >= 0
        if bool(reset.any()):  # not a descent direction: forget the history
            direction[reset] = -_precondition(grad[reset], basis, inv[reset], inv_b[reset])
            rho[:, reset] = 0
            gamma[reset] = 1
            slope = (grad * direction).sum(1)
        direction[~running] = 0
        slope[~running] = -1

        margins.set_products(margins.zd, direction)
        wd = (theta[:, :-1] * direction[:, :-1]).sum(1)
        dd = (direction[:, :-1] * direction[:, :-1]).sum(1)
        alpha = torch.ones(len(ids), device=dev)

        # line search on the directional derivative: accept the first alpha with phi'(alpha) <= 0
        dphi = margins.slope_along(alpha) + l2f * (wd + alpha * dd)
        todo = torch.nonzero((dphi > 0) & running).flatten()
        for _ in range(max_ls):
            if len(todo) == 0:
                break
            # secant estimate of the root of phi', nudged below it, kept in [0.1, 0.95] * alpha
            a, g1, g0 = alpha[todo], dphi[todo], slope[todo]
            guess = 0.95 * a * g0 / (g0 - g1)
            alpha[todo] = torch.minimum(torch.maximum(guess, 0.1 * a), 0.95 * a)
            dphi[todo] = margins.slope_along(alpha[todo], todo) + l2f[todo] * (
                wd[todo] + alpha[todo] * dd[todo]
            )
            todo = todo[dphi[todo] > 0]
        stalled = torch.zeros_like(running)
        if len(todo):
            stalled[todo] = True
            alpha[todo] = 0

        step = alpha[:, None] * direction
        theta += step
        margins.z.addcmul_(alpha[:, None], margins.zd)
        if (it + 1) % refresh_every == 0:  # recompute the margins exactly now and then
            margins.set_products(margins.z, theta)
        new_grad = margins.gradient(theta, l2f)
        dy = new_grad - grad
        sy_dot = (step * dy).sum(1)
        good = sy_dot > 1e-10 * step.norm(dim=1) * dy.norm(dim=1)
        slot = it % history
        hist_s[slot], hist_y[slot] = step, dy
        rho[slot] = torch.where(good, 1 / sy_dot.clamp_min(1e-30), torch.zeros_like(sy_dot))
        m_dy = (dy * _precondition(dy, basis, inv, inv_b)).sum(1)
        gamma = torch.where(good, sy_dot / m_dy.clamp_min(1e-30), gamma)
        grad = new_grad
        converged = running & (grad.abs().amax(1) <= tol)
        code[converged] = CONVERGED
        code[running & stalled & ~converged] = STALLED

    retire(torch.ones_like(code, dtype=torch.bool))
    return theta_out, n_iter, status
