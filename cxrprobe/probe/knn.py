"""kNN probe (DINOv2's protocol): cosine similarity, temperature-weighted votes, nothing trained.

Features are L2-normalised; each query row's ``k`` most similar training rows (cosine
similarity, found once per query over all training rows) vote with weight ``exp(sim / T)``,
``T = 0.07``. A finding's score is the weighted share of positive votes among the neighbours
annotated for it (uncertain and unmentioned neighbours abstain for that finding unless
``uncertain``/``blank`` map them to a class); when none of the ``k`` neighbours is annotated the
score is the finding's training prevalence. ``k`` runs over
{10, 20, 100, 200} and is chosen on the validation split by mean AUROC; every ``k`` is reported.

The search runs in torch on any device in blocks of query × training rows: features stay in
their own dtype (float16 as stored) and each block is normalised to float32 when it is used, so
memory stays bounded (``max_elements`` similarities, and as many converted feature values, at a
time) whatever the split sizes -- 800k queries against 560k training rows included.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cxrprobe.data.targets import evaluation_targets, training_targets
from cxrprobe.errors import ConfigError, DataFormatError
from cxrprobe.probe.features import memory_budget
from cxrprobe.probe.linear import choose
from cxrprobe.stats.auroc import auroc

log = logging.getLogger(__name__)

DEFAULT_KS = (10, 20, 100, 200)
DEFAULT_TEMPERATURE = 0.07


def _unit_rows(block: Any) -> Any:
    """The rows of a feature block L2-normalised, as float32."""
    import torch

    return torch.nn.functional.normalize(block.float(), dim=1)


def knn_scores(
    train_x: Any,
    train_targets: np.ndarray,
    query_x: Any,
    ks: Sequence[int] = DEFAULT_KS,
    temperature: float = DEFAULT_TEMPERATURE,
    device: Any = None,
    max_elements: int = 1 << 26,
) -> dict[int, np.ndarray]:
    """Scores (q, L) for each ``k``: temperature-weighted share of positive annotated neighbours.

    ``train_targets`` (n, L) holds 1/0 and NaN (abstains). ``k`` larger than the training set is
    capped at its size. Features are used in their own dtype and normalised block by block;
    ``max_elements`` bounds the similarities and the converted feature values held at once.
    """
    import torch

    if temperature <= 0:
        raise ConfigError(f"--temperature must be > 0, got {temperature}")
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ConfigError(f"--k needs positive neighbour counts, got {ks}")
    train = torch.as_tensor(train_x, device=device)
    dev = train.device
    query = torch.as_tensor(query_x, device=dev)
    n_train, dim = train.shape
    if n_train == 0:
        raise DataFormatError("the kNN probe needs training rows; the training split is empty")
    if ks[-1] > n_train:
        log.warning("k=%d exceeds the %d training rows; using all of them", ks[-1], n_train)
    k_max = min(ks[-1], n_train)
    targets = torch.as_tensor(np.asarray(train_targets, dtype=np.float32), device=dev)
    positive = (targets == 1).float()
    negative = (targets == 0).float()
    prevalence = positive.sum(0) / (positive + negative).sum(0).clamp_min(1)

    train_chunk = max(k_max, min(n_train, max_elements // max(dim, 1)))
    query_chunk = max(1, min(query.shape[0], max_elements // train_chunk))
    out = {k: np.empty((query.shape[0], targets.shape[1]), dtype=np.float32) for k in ks}
    for q0 in range(0, query.shape[0], query_chunk):
        q = _unit_rows(query[q0 : q0 + query_chunk])
        best_sim = torch.empty(len(q), 0, device=dev)
        best_idx = torch.empty(len(q), 0, dtype=torch.long, device=dev)
        for t0 in range(0, n_train, train_chunk):
            sim = q @ _unit_rows(train[t0 : t0 + train_chunk]).T
            top = sim.topk(min(k_max, sim.shape[1]), dim=1)
            merged_sim = torch.cat([best_sim, top.values], dim=1)
            merged_idx = torch.cat([best_idx, top.indices + t0], dim=1)
            keep = merged_sim.topk(min(k_max, merged_sim.shape[1]), dim=1)
            best_sim, best_idx = keep.values, merged_idx.gather(1, keep.indices)
        weight = torch.exp(best_sim / temperature)  # (q, k_max), most similar first
        for k in ks:
            w, idx = weight[:, :k], best_idx[:, :k]
            yes = torch.einsum("qk,qkl->ql", w, positive[idx])
            no = torch.einsum(
                "qk,qkl->ql", w, negative[idx]
            )  # separate sums: unanimous votes give exactly 0 or 1
            voters = yes + no
            score = torch.where(voters > 0, yes / voters.clamp_min(1e-30), prevalence)
            out[k][q0 : q0 + len(q)] = score.cpu().numpy()
    return out


@dataclass
class KnnReport:
    """``val_auroc`` (K, L) per ``k`` (NaN where undefined), the chosen ``k`` and the validation
    scores (n_val, L) at that ``k`` (None without validation rows)."""

    ks: np.ndarray
    val_auroc: np.ndarray
    chosen_k: int
    temperature: float
    val_scores: np.ndarray | None = None


def fit_knn_probe(
    x_train: Any,
    labels_train: np.ndarray,
    x_val: Any,
    labels_val: np.ndarray,
    x_test: Any,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    temperature: float = DEFAULT_TEMPERATURE,
    uncertain: str = "ignore",
    blank: str = "missing",
    device: Any = None,
    max_memory: int | str | None = None,
) -> tuple[np.ndarray, KnnReport]:
    """Choose ``k`` on validation by mean AUROC and score the test rows with it.

    ``max_memory`` bounds the search's working memory on top of the features (bytes or text such
    as ``"4GB"``; None: automatic, see :func:`~cxrprobe.probe.features.memory_budget`).
    Returns the test scores (n_test, L) and the report (validation AUROC of every ``k``).
    """
    max_elements = memory_budget(max_memory, device) // 16  # float32 similarities + blocks
    ks = np.array(sorted({int(k) for k in ks}), dtype=np.int64)
    y_train = training_targets(labels_train, uncertain, blank)
    y_val = evaluation_targets(labels_val)
    val_auroc = np.full((len(ks), y_train.shape[1]), np.nan)
    val: dict[int, np.ndarray] = {}
    if len(y_val):
        val = knn_scores(x_train, y_train, x_val, ks, temperature, device, max_elements)
        for i, k in enumerate(ks):
            val_auroc[i] = auroc(y_val, val[int(k)])
    elif len(ks) > 1:
        raise ConfigError(
            "the validation split is empty, so k cannot be chosen; give --val-split or --val-fraction, or one --k"
        )
    chosen = int(ks[choose(val_auroc)[0]]) if len(ks) > 1 else int(ks[0])
    test = knn_scores(x_train, y_train, x_test, [chosen], temperature, device, max_elements)[chosen]
    return test, KnnReport(ks, val_auroc, chosen, float(temperature), val.get(chosen))
