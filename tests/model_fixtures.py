"""Tiny backbones and foreign checkpoint layouts made in the test, never downloaded.

- ``TINY_VIT``: timm ViT overrides (depth 2, width 64); ``TINY_DENSENET``: a DenseNet-121 with one
  layer per dense block and growth rate 8 (17 features);
- ``tiny_model(arch, seed, **kwargs)``: the model built by timm directly (the reference);
- ``to_transformers_dinov2(state)``: a timm DINOv2 state dict in the Hugging Face ``transformers``
  ``Dinov2Model`` layout, mapped here by hand (the inverse of the conversion under test).
"""

from __future__ import annotations

import re

import timm
import torch

TINY_VIT = {"depth": 2, "embed_dim": 64, "num_heads": 2}
TINY_DENSENET = {"growth_rate": 8, "block_config": [1, 1, 1, 1]}

_BLOCK_NAMES = {  # timm name inside a block -> transformers name inside a layer
    "norm1": "norm1",
    "norm2": "norm2",
    "attn.proj": "attention.output.dense",
    "ls1.gamma": "layer_scale1.lambda1",
    "ls2.gamma": "layer_scale2.lambda1",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}


def tiny_model(arch: str, seed: int, **kwargs) -> torch.nn.Module:
    """A timm feature extractor (no head) with its own seed, in eval mode."""
    torch.manual_seed(seed)
    return timm.create_model(arch, pretrained=False, num_classes=0, **kwargs).eval()


def to_transformers_dinov2(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A timm ``vit_*_dinov2`` (or ``reg4``) state dict as ``transformers`` saves a Dinov2Model.

    transformers keeps the class token's position embedding inside ``position_embeddings``; timm's
    register variant folds it into ``cls_token``, so a random one is split off again here.
    """
    dim = state["cls_token"].shape[-1]
    cls_token, pos_embed = state["cls_token"].clone(), state["pos_embed"].clone()
    out = {"embeddings.mask_token": torch.zeros(1, dim)}
    if "reg_token" in state:
        cls_pos = torch.randn(1, 1, dim, generator=torch.Generator().manual_seed(2))
        cls_token, pos_embed = cls_token - cls_pos, torch.cat([cls_pos, pos_embed], dim=1)
        out["embeddings.register_tokens"] = state["reg_token"].clone()
    out["embeddings.cls_token"] = cls_token
    out["embeddings.position_embeddings"] = pos_embed
    for kind in ("weight", "bias"):
        out[f"embeddings.patch_embeddings.projection.{kind}"] = state[f"patch_embed.proj.{kind}"]
        out[f"layernorm.{kind}"] = state[f"norm.{kind}"]
    for key, value in state.items():
        match = re.match(r"blocks\.(\d+)\.(.+)\.(weight|bias|gamma)$", key)
        if match is None:
            continue
        index, name, kind = match.groups()
        layer = f"encoder.layer.{index}"
        if name == "attn.qkv":
            for part, chunk in zip(("query", "key", "value"), value.chunk(3, dim=0), strict=True):
                out[f"{layer}.attention.attention.{part}.{kind}"] = chunk.clone()
        elif kind == "gamma":
            out[f"{layer}.{_BLOCK_NAMES[f'{name}.gamma']}"] = value.clone()
        else:
            out[f"{layer}.{_BLOCK_NAMES[name]}.{kind}"] = value.clone()
    return out
