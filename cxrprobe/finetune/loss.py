"""The training loss: binary cross-entropy per finding, weighted and masked.

Targets are 1 (positive), 0 (negative), or anything else — NaN (masked by the label policies) or
-1 (uncertain) — which is masked out of the loss: such an entry contributes neither to the sum nor
to the count. The mask is :func:`cxrprobe.data.targets.observed_mask`, the targets come from
:func:`cxrprobe.data.targets.to_targets`. The class weight is the study's ``pos_weight``
(negatives / positives per finding on the training split,
:func:`cxrprobe.data.targets.positive_weights`), multiplying the positive term of the BCE.

A training step's loss is the mean over the observed entries of its whole global batch (every
process and accumulation step together), so the gradient does not depend on how the batch is
split across processes: the trainer divides each micro-batch's :func:`masked_bce_sum` by the
step's total count of observed entries, known in advance from the labels and the data order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cxrprobe.data.targets import observed_mask


def masked_bce_sum(
    logits: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of the weighted BCE-with-logits over the observed entries, and their count.

    ``logits`` and ``targets`` are (n, L); ``pos_weight`` (L,) multiplies the positive term.
    Masked entries contribute nothing; with none observed the sum is 0 and still differentiable
    (zero gradients), so a batch without labels does not break a distributed step.
    """
    logits = logits.float()
    mask = observed_mask(targets)
    clean = torch.where(mask, targets, torch.zeros_like(targets)).to(logits.dtype)
    weight = None if pos_weight is None else pos_weight.to(logits)
    per_entry = F.binary_cross_entropy_with_logits(
        logits, clean, pos_weight=weight, reduction="none"
    )
    return (per_entry * mask).sum(), mask.sum()


def masked_bce(
    logits: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean weighted BCE over the observed entries of ``targets`` (0 when none is observed)."""
    total, count = masked_bce_sum(logits, targets, pos_weight)
    return total / count.clamp(min=1)
