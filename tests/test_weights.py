"""Weight files: format detection, safe loading (never unpickling code), unwrapping, hashing."""

from __future__ import annotations

import hashlib
import pickle

import numpy as np
import pytest
import torch

from cxrprobe.errors import InputFileError, WeightsError
from cxrprobe.weights import (
    detect_format,
    is_dinov2_checkpoint,
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
