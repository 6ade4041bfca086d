"""Safe weight files: detect the format, load a state dict without running code, hash it.

Only two loaders are ever used: ``safetensors`` and ``torch.load(..., weights_only=True)``. A
pickle that needs code (a whole pickled model, custom classes) is refused, never unpickled.
Checkpoints wrapped by training scripts (``{"model": ...}``, ``{"state_dict": ...}``, DDP's
``module.`` or ``torch.compile``'s ``_orig_mod.`` prefixes) are unwrapped. Converting foreign key
layouts (original DINOv2 torch-hub checkpoints) to timm's is left to timm's checkpoint filter
(see :func:`cxrprobe.models.load_weights`). :func:`hub_weights_file` finds timm's published
weights in the Hugging Face cache or downloads them, and fails within seconds offline.
"""

from __future__ import annotations

import os
import socket
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from cxrprobe.errors import InputFileError, WeightsError
from cxrprobe.provenance import sha256_file

__all__ = [
    "detect_format",
    "hub_weights_file",
    "is_dinov2_checkpoint",
    "load_state_dict",
    "save_state_dict",
    "sha256_file",
]

HUB_PROBE_TIMEOUT = 5.0  # seconds to reach the hub before giving up (huggingface_hub alone: ~47 s)
_WRAPPER_KEYS = ("state_dict", "model", "module")
_PREFIXES = ("module.", "_orig_mod.")


def detect_format(path: str | os.PathLike) -> str:
    """The format of a weights file from its bytes: ``"safetensors"`` or ``"torch"``.

    Raises ``WeightsError`` for formats we do not load (numpy ``.npz`` from JAX, unknown bytes).
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{path}: weights file not found; check the --weights path")
    with open(path, "rb") as fh:
        head = fh.read(16)
    if (
        len(head) >= 9
        and head[8:9] == b"{"
        and int.from_bytes(head[:8], "little") < path.stat().st_size
    ):
        return "safetensors"
    if head.startswith(b"PK\x03\x04"):
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
        if any(name.endswith("data.pkl") for name in names):
            return "torch"
        raise WeightsError(
            f"{path}: a zip archive that is not a PyTorch checkpoint (numpy .npz / JAX weights are not "
            "supported); pass a .safetensors file or a PyTorch state dict"
        )
    if head[:1] == b"\x80":
        return "torch"
    raise WeightsError(
        f"{path}: not a safetensors file or a PyTorch checkpoint; pass a .safetensors, .pth, .pt or .bin state dict"
    )


def load_state_dict(path: str | os.PathLike) -> dict[str, Any]:
    """Load the tensors of a weights file (safetensors or a weights-only torch pickle), on CPU.

    Nested training checkpoints are unwrapped and wrapper prefixes stripped; the result maps
    parameter names to tensors.
    """
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "safetensors":
        from safetensors.torch import load_file

        try:
            raw: Any = load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise WeightsError(
                f"{path}: unreadable safetensors file ({exc}); re-download it"
            ) from exc
    else:
        import pickle

        import torch

        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise WeightsError(
                f"{path}: holds pickled objects beyond tensors, which are never unpickled here; "
                "save model.state_dict() (or convert it to safetensors) and pass that file"
            ) from exc
        except (RuntimeError, EOFError, OSError) as exc:
            raise WeightsError(
                f"{path}: unreadable PyTorch checkpoint ({exc}); re-download or re-save it"
            ) from exc
    return _unwrap(raw, path)


def _unwrap(raw: Any, path: Path) -> dict[str, Any]:
    """Descend into ``{"model": {...}}``-style wrappers and strip DDP/compile prefixes."""
    import torch

    while isinstance(raw, Mapping) and not any(isinstance(v, torch.Tensor) for v in raw.values()):
        inner = next((raw[k] for k in _WRAPPER_KEYS if isinstance(raw.get(k), Mapping)), None)
        if inner is None:
            break
        raw = inner
    if not isinstance(raw, Mapping) or not raw:
        raise WeightsError(
            f"{path}: no state dict found (expected a mapping of parameter names to tensors)"
        )
    state: dict[str, Any] = {}
    for key, value in raw.items():
        if not isinstance(value, torch.Tensor):
            continue
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        state[key] = value
    if not state:
        raise WeightsError(f"{path}: no tensors found in the checkpoint; pass a model state dict")
    return state


def is_dinov2_checkpoint(state_dict: Mapping[str, Any]) -> bool:
    """True for an original DINOv2 (torch-hub) checkpoint, recognised by its ``mask_token``."""
    return "mask_token" in state_dict


def save_state_dict(state_dict: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Save tensors as safetensors (contiguous CPU copies; shared storage is cloned)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}, str(tmp))
    os.replace(tmp, path)
    return path


def hub_weights_file(pretrained_cfg: Mapping[str, Any], label: str, hint: str) -> Path:
    """The local file of a timm model's hub weights: cached, else downloaded; fails fast offline.

    ``label`` names the ``--init`` and ``hint`` the file to download, for the error message.
    """
    repo = pretrained_cfg.get("hf_hub_id")
    todo = f"download {hint} and pass --weights PATH"
    if not repo:
        raise WeightsError(f"--init {label} has no Hugging Face hub weights; {todo}")
    import huggingface_hub

    filenames = [pretrained_cfg.get("hf_hub_filename") or "model.safetensors", "pytorch_model.bin"]
    for filename in filenames:
        cached = huggingface_hub.try_to_load_from_cache(repo, filename)
        if isinstance(cached, str):
            return Path(cached)
    if _hub_offline():
        raise WeightsError(
            f"--init {label}: no weights given and the Hugging Face hub is offline; {todo}"
        )
    _probe_hub(label, todo)
    try:
        return Path(huggingface_hub.hf_hub_download(repo, filenames[0]))
    except Exception as exc:  # network, auth and missing-file errors all end the same way
        raise WeightsError(
            f"--init {label}: fetching {repo} failed ({type(exc).__name__}); {todo}"
        ) from exc


def _hub_offline() -> bool:
    import huggingface_hub.constants as hub

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
    return flag or bool(getattr(hub, "HF_HUB_OFFLINE", False))


def _probe_hub(label: str, todo: str) -> None:
    """Connect to the hub host once with a short timeout, so no network fails in seconds."""
    import huggingface_hub.constants as hub

    host = urlparse(hub.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=HUB_PROBE_TIMEOUT).close()
    except OSError as exc:
        raise WeightsError(f"--init {label}: no network to reach {host} ({exc}); {todo}") from exc
