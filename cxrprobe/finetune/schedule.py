"""Optimiser set-up for fine-tuning: layer-wise lr decay parameter groups and a warm-up + cosine schedule.

Layer-wise lr decay (BEiT, DINOv2 fine-tuning) scales the rate down the network: for a ViT of
depth ``D`` the stem (patch embedding, position and class tokens) gets ``lr * decay ** D``, block
``k`` gets ``lr * decay ** (D - 1 - k)``, and the last block, the final norm and the new linear
head the full ``lr``. Layers are numbered by the backbone's timm ``group_matcher`` through timm's
own ``param_groups_layer_decay``, so any timm architecture works. Biases, norms and
position/class tokens get no weight decay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cxrprobe.errors import ConfigError

SCHEDULES = ("constant", "cosine")


def param_groups(
    backbone: nn.Module,
    head: nn.Module,
    lr: float,
    weight_decay: float,
    layer_decay: float = 1.0,
) -> list[dict[str, Any]]:
    """AdamW parameter groups: per-layer ``lr`` scaled by ``layer_decay``, no decay on 1-D params.

    Each group carries ``lr`` (already scaled), ``lr_scale`` and ``weight_decay``; the head's groups
    have ``lr_scale`` 1. With ``layer_decay`` 1 every group has the base ``lr``.
    """
    from timm.optim import param_groups_layer_decay

    if not 0.0 < layer_decay <= 1.0:
        raise ConfigError(f"--layer-decay must be in (0, 1], got {layer_decay}")
    skip = backbone.no_weight_decay() if hasattr(backbone, "no_weight_decay") else set()
    if layer_decay < 1.0:
        groups = param_groups_layer_decay(
            backbone, weight_decay=weight_decay, no_weight_decay_list=skip, layer_decay=layer_decay
        )
    else:
        groups = _decay_groups(backbone, weight_decay, skip)
    groups += _decay_groups(head, weight_decay, set())
    for group in groups:
        group["lr"] = lr * group["lr_scale"]
    return [g for g in groups if g["params"]]


def _decay_groups(module: nn.Module, weight_decay: float, skip: set[str]) -> list[dict[str, Any]]:
    """Two groups at scale 1: weights with decay; biases, norms and listed tokens without."""
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 or name in skip else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay, "lr_scale": 1.0},
        {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0},
    ]


@dataclass
class WarmupCosine:
    """The lr multiplier at optimiser step ``step``: linear warm-up, then constant or cosine.

    Warm-up rises linearly to 1 over ``warmup_steps`` (the first step already uses
    ``1 / warmup_steps``); cosine then falls to ``min_ratio`` at ``total_steps``. A plain dataclass
    so ``LambdaLR.state_dict()`` stores its fields.
    """

    total_steps: int
    warmup_steps: int = 0
    schedule: str = "cosine"
    min_ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ConfigError(
                f"--schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}"
            )

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return 1.0
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(
    optimizer: torch.optim.Optimizer, multiplier: WarmupCosine
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step ``LambdaLR`` applying ``multiplier`` to every group's own (layer-scaled) lr."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
