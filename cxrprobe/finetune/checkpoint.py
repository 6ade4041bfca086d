"""Training checkpoints that resume exactly, stored as plain tensors and dicts.

A checkpoint holds the model, optimiser, scheduler and grad-scaler states, every rank's random
states (Python, NumPy, torch CPU and CUDA; the augmentation needs none, its draws are a hash of
seed, epoch and row), the data-order state
(seed, next epoch, world size) and the run history. Everything is a tensor, a number, a string,
a list or a dict, so it is written with ``torch.save`` and read back with
``torch.load(..., weights_only=True)``; no pickled object is ever loaded. Writes go to a temporary
file in the same folder and are renamed into place, so a killed run never leaves half a checkpoint.
"""

from __future__ import annotations

import io
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrprobe.errors import DataFormatError, InputFileError
from cxrprobe.provenance import atomic_write_bytes


def capture_rng(device: torch.device) -> dict[str, torch.Tensor]:
    """This process's random states as fixed-shape tensors (so ranks can be stacked)."""
    version, py_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": torch.tensor([version, *py_state], dtype=torch.int64),
        "python_gauss": torch.tensor([gauss is not None, gauss or 0.0], dtype=torch.float64),
        "numpy_keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "numpy_pos": torch.tensor([pos, has_gauss], dtype=torch.int64),
        "numpy_gauss": torch.tensor([cached], dtype=torch.float64),
        "torch": torch.get_rng_state(),
    }
    if kind != "MT19937":
        raise DataFormatError(f"numpy random state {kind!r} is not MT19937; cannot checkpoint it")
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, torch.Tensor], device: torch.device) -> None:
    """Set the random states saved by :func:`capture_rng` (an older checkpoint's ``augment``
    generator state is not needed any more and is ignored).

    The torch states are cloned first: ``torch.set_rng_state`` crashes the process (SIGSEGV) on
    a view at a non-zero storage offset, such as rank 1's row of the stacked states.
    """
    python = state["python"].tolist()
    has_gauss, gauss = state["python_gauss"].tolist()
    random.setstate(
        (int(python[0]), tuple(int(v) for v in python[1:]), gauss if has_gauss else None)
    )
    pos, np_has_gauss = state["numpy_pos"].tolist()
    keys = state["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state(
        ("MT19937", keys, int(pos), int(np_has_gauss), float(state["numpy_gauss"][0]))
    )
    torch.set_rng_state(state["torch"].clone())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].clone(), device)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """``torch.save`` the state and write it atomically (a killed run never leaves half a file)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` onto the CPU; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(
            f"{path}: checkpoint not found; start without --resume or check the run folder"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling and zip errors come in several types
        raise DataFormatError(
            f"{path}: unreadable checkpoint ({exc}); delete it and start again"
        ) from exc
