"""Weight files: format detection, safe loading (never unpickling code), unwrapping, hashing, and
the renaming of Hugging Face ``transformers`` DINOv2 checkpoints."""

from __future__ import annotations

import hashlib
import pickle

import numpy as np
import pytest
import torch

from cxrprobe.errors import InputFileError, WeightsError
from cxrprobe.weights import (
    detect_format,
    from_transformers_dinov2,
    is_dinov2_checkpoint,
    is_transformers_checkpoint,
    load_state_dict,
    save_state_dict,
    sha256_file,
)


def _state() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {"a.weight": torch.randn(3, 4, generator=gen), "a.bias": torch.randn(3, generator=gen)}


def _equal(x: dict, y: dict) -> bool:
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_safetensors_and_torch_files_round_trip(tmp_path):
    state = _state()
    st = save_state_dict(state, tmp_path / "w.safetensors")
    pth = tmp_path / "w.pth"
    torch.save(state, pth)
    legacy = tmp_path / "w_legacy.bin"
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    assert detect_format(st) == "safetensors"
    assert detect_format(pth) == "torch"
    assert detect_format(legacy) == "torch"
    for path in (st, pth, legacy):
        assert _equal(load_state_dict(path), state)
    assert sha256_file(st) == hashlib.sha256(st.read_bytes()).hexdigest()


def test_training_checkpoint_wrappers_and_prefixes_are_unwrapped(tmp_path):
    state = _state()
    wrapped = {"epoch": 3, "model": {f"module.{k}": v for k, v in state.items()}}
    torch.save(wrapped, tmp_path / "ckpt.pt")
    assert _equal(load_state_dict(tmp_path / "ckpt.pt"), state)
    torch.save({"state_dict": {f"_orig_mod.{k}": v for k, v in state.items()}}, tmp_path / "c2.pt")
    assert _equal(load_state_dict(tmp_path / "c2.pt"), state)


class _Payload:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickled_code_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(2), "payload": _Payload(str(marker))}, path)
    with pytest.raises(WeightsError, match="never unpickled"):
        load_state_dict(path)
    assert not marker.exists()
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(WeightsError):
        load_state_dict(raw)
    assert not marker.exists()


def test_unsupported_and_missing_files(tmp_path):
    np.savez(tmp_path / "jax.npz", w=np.zeros(3))
    with pytest.raises(WeightsError, match="npz"):
        detect_format(tmp_path / "jax.npz")
    (tmp_path / "junk.bin").write_bytes(b"hello world, not weights")
    with pytest.raises(WeightsError, match="junk.bin"):
        load_state_dict(tmp_path / "junk.bin")
    with pytest.raises(InputFileError, match="nope.safetensors"):
        load_state_dict(tmp_path / "nope.safetensors")
    torch.save({"epoch": 1, "note": "no tensors"}, tmp_path / "empty.pt")
    with pytest.raises(WeightsError, match="no "):
        load_state_dict(tmp_path / "empty.pt")


def test_dinov2_checkpoints_are_recognised_by_their_mask_token():
    assert is_dinov2_checkpoint(
        {"mask_token": torch.zeros(1, 8), "cls_token": torch.zeros(1, 1, 8)}
    )
    assert not is_dinov2_checkpoint(_state())


def _hf_layer(dim: int = 4, swiglu: bool = False) -> dict[str, torch.Tensor]:
    """One transformers Dinov2Layer plus embeddings and final norm, with distinct random values."""
    gen = torch.Generator().manual_seed(3)
    shapes = {
        "embeddings.cls_token": (1, 1, dim),
        "embeddings.mask_token": (1, dim),
        "embeddings.position_embeddings": (1, 5, dim),
        "embeddings.patch_embeddings.projection.weight": (dim, 3, 2, 2),
        "embeddings.patch_embeddings.projection.bias": (dim,),
        "encoder.layer.0.norm1.weight": (dim,),
        "encoder.layer.0.attention.attention.query.weight": (dim, dim),
        "encoder.layer.0.attention.attention.key.weight": (dim, dim),
        "encoder.layer.0.attention.attention.value.weight": (dim, dim),
        "encoder.layer.0.attention.attention.query.bias": (dim,),
        "encoder.layer.0.attention.attention.key.bias": (dim,),
        "encoder.layer.0.attention.attention.value.bias": (dim,),
        "encoder.layer.0.attention.output.dense.weight": (dim, dim),
        "encoder.layer.0.layer_scale1.lambda1": (dim,),
        "encoder.layer.0.layer_scale2.lambda1": (dim,),
        "layernorm.bias": (dim,),
    }
    if swiglu:
        shapes["encoder.layer.0.mlp.weights_in.weight"] = (4 * dim, dim)
        shapes["encoder.layer.0.mlp.weights_out.weight"] = (dim, 2 * dim)
    else:
        shapes["encoder.layer.0.mlp.fc1.weight"] = (4 * dim, dim)
    return {key: torch.randn(shape, generator=gen) for key, shape in shapes.items()}


def test_transformers_dinov2_keys_become_the_original_dinov2_layout():
    hf = _hf_layer()
    assert is_transformers_checkpoint(hf) and not is_transformers_checkpoint(_state())
    out = from_transformers_dinov2(hf, "rad-dino.safetensors")
    attn = "encoder.layer.0.attention.attention"
    for kind in ("weight", "bias"):
        expected = torch.cat([hf[f"{attn}.{p}.{kind}"] for p in ("query", "key", "value")])
        assert torch.equal(out[f"blocks.0.attn.qkv.{kind}"], expected)
    renamed = {
        "cls_token": "embeddings.cls_token",
        "mask_token": "embeddings.mask_token",
        "pos_embed": "embeddings.position_embeddings",
        "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
        "blocks.0.norm1.weight": "encoder.layer.0.norm1.weight",
        "blocks.0.attn.proj.weight": "encoder.layer.0.attention.output.dense.weight",
        "blocks.0.ls1.gamma": "encoder.layer.0.layer_scale1.lambda1",
        "blocks.0.ls2.gamma": "encoder.layer.0.layer_scale2.lambda1",
        "blocks.0.mlp.fc1.weight": "encoder.layer.0.mlp.fc1.weight",
        "norm.bias": "layernorm.bias",
    }
    for new, old in renamed.items():
        assert out[new] is hf[old], new
    assert len(out) == len(hf) - 6 + 2  # six q/k/v tensors became two qkv ones
    assert is_dinov2_checkpoint(out)  # so timm's DINOv2 filter takes it from here


def test_transformers_variants_swiglu_registers_and_classifier_wrapper(caplog):
    hf = _hf_layer(swiglu=True)
    hf["embeddings.register_tokens"] = torch.ones(1, 4, 4)
    del hf["embeddings.mask_token"]  # a hand-pruned file: the mask token is added back
    wrapped = {f"dinov2.{k}": v for k, v in hf.items()} | {"classifier.weight": torch.ones(3, 8)}
    with caplog.at_level("INFO", logger="cxrprobe.weights"):
        out = from_transformers_dinov2(wrapped, "cls.safetensors")
    assert "classifier.weight" in caplog.text
    assert torch.equal(out["blocks.0.mlp.w12.weight"], hf["encoder.layer.0.mlp.weights_in.weight"])
    assert torch.equal(out["blocks.0.mlp.w3.weight"], hf["encoder.layer.0.mlp.weights_out.weight"])
    assert torch.equal(out["register_tokens"], torch.ones(1, 4, 4))
    assert torch.equal(out["mask_token"], torch.zeros(1, 4))
    assert not any(k.startswith(("dinov2.", "classifier")) for k in out)


def test_other_transformers_layouts_and_incomplete_files_are_refused():
    vit = {  # a transformers ViTModel: same embeddings, other blocks
        "embeddings.patch_embeddings.projection.weight": torch.zeros(4, 3, 2, 2),
        "encoder.layer.0.layernorm_before.weight": torch.zeros(4),
    }
    with pytest.raises(WeightsError, match="not DINOv2"):
        from_transformers_dinov2(vit, "vit.safetensors")
    hf = _hf_layer()
    del hf["encoder.layer.0.attention.attention.value.bias"]
    with pytest.raises(WeightsError, match="block 0 lacks attention bias parts"):
        from_transformers_dinov2(hf, "cut.safetensors")
