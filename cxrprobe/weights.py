"""Safe weight files: detect the format, load a state dict without running code, fit it to a model.

Only two loaders are ever used: ``safetensors`` and ``torch.load(..., weights_only=True)``. A
pickle that needs code (a whole pickled model, custom classes) is refused, never unpickled.
Checkpoints wrapped by training scripts (``{"model": ...}``, ``{"state_dict": ...}``, DDP's
``module.`` or ``torch.compile``'s ``_orig_mod.`` prefixes) are unwrapped. Foreign key layouts are
converted in :func:`load_weights`: a ``cxrprobe finetune`` checkpoint gives its backbone (prefix
stripped, head dropped), Hugging Face ``transformers`` DINOv2 checkpoints (e.g. RAD-DINO)
are renamed to the original DINOv2 layout here, and timm's checkpoint filter converts original
DINOv2 torch-hub checkpoints and resamples position embeddings. Hub weights (no file given) are
found by :mod:`cxrprobe.hub`.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cxrprobe.errors import InputFileError, WeightsError
from cxrprobe.provenance import sha256_file

__all__ = [
    "detect_format",
    "from_finetune",
    "from_transformers_dinov2",
    "is_dinov2_checkpoint",
    "is_finetune_checkpoint",
    "is_transformers_checkpoint",
    "load_state_dict",
    "load_weights",
    "load_weights_file",
    "records_model_spec",
    "save_state_dict",
    "sha256_file",
]

log = logging.getLogger(__name__)

_WRAPPER_KEYS = ("state_dict", "model", "module")
_PREFIXES = ("module.", "_orig_mod.")
_FINETUNE_BACKBONE, _FINETUNE_HEAD = "backbone.", "head."  # cxrprobe.finetune's Classifier
_HF_MARK = "embeddings.patch_embeddings.projection.weight"  # every transformers ViT family has it
_HF_HEAD_WRAPPERS = ("dinov2.", "dinov2_with_registers.")  # *ForImageClassification backbones
_HF_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.mask_token": "mask_token",
    "embeddings.register_tokens": "register_tokens",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
_HF_BLOCK = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
_HF_IN_BLOCK = {  # transformers name inside a layer -> original DINOv2 name inside a block
    "attention.output.dense.": "attn.proj.",
    "layer_scale1.lambda1": "ls1.gamma",
    "layer_scale2.lambda1": "ls2.gamma",
    "mlp.weights_in.": "mlp.w12.",  # SwiGLU (ViT-g)
    "mlp.weights_out.": "mlp.w3.",
    "norm1.": "norm1.",
    "norm2.": "norm2.",
    "mlp.fc1.": "mlp.fc1.",
    "mlp.fc2.": "mlp.fc2.",
}
_HF_QKV = re.compile(r"^attention\.attention\.(query|key|value)\.(weight|bias)$")


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
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except zipfile.BadZipFile as exc:
            raise WeightsError(
                f"{path}: truncated or damaged checkpoint ({exc}); download or save it again"
            ) from exc
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
    return load_weights_file(path)[0]


def load_weights_file(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """:func:`load_state_dict` plus the ``model_spec`` a ``cxrprobe finetune`` checkpoint records
    (its architecture, timm overrides and normalisation; None for any other file), read once."""
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
    spec = raw.get("model_spec") if isinstance(raw, Mapping) else None
    return _unwrap(raw, path), dict(spec) if isinstance(spec, Mapping) else None


def records_model_spec(path: str | os.PathLike) -> bool:
    """Whether a file is a torch checkpoint that records a ``model_spec`` (``cxrprobe
    finetune``'s), told from its pickle's names without loading any tensor."""
    try:
        with zipfile.ZipFile(path) as zf:
            pickle = next((n for n in zf.namelist() if n.endswith("data.pkl")), None)
            return pickle is not None and b"model_spec" in zf.read(pickle)
    except (OSError, zipfile.BadZipFile):
        return False


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


def is_finetune_checkpoint(state_dict: Mapping[str, Any]) -> bool:
    """True for a ``cxrprobe finetune`` classifier: ``backbone.*`` tensors and a ``head.*``."""
    return any(key.startswith(_FINETUNE_BACKBONE) for key in state_dict) and all(
        key.startswith((_FINETUNE_BACKBONE, _FINETUNE_HEAD)) for key in state_dict
    )


def from_finetune(state_dict: Mapping[str, Any], path: str | os.PathLike) -> dict[str, Any]:
    """The backbone of a ``cxrprobe finetune`` classifier: the ``backbone.`` prefix stripped and
    the linear head (one logit per finding of the fine-tuning data) dropped, logged."""
    heads = [key for key in state_dict if key.startswith(_FINETUNE_HEAD)]
    if heads:
        log.info("%s: dropping the fine-tuning head %s", path, ", ".join(heads))
    n = len(_FINETUNE_BACKBONE)
    return {k[n:]: v for k, v in state_dict.items() if k.startswith(_FINETUNE_BACKBONE)}


def is_dinov2_checkpoint(state_dict: Mapping[str, Any]) -> bool:
    """True for an original DINOv2 (torch-hub) checkpoint, recognised by its ``mask_token``."""
    return "mask_token" in state_dict


def is_transformers_checkpoint(state_dict: Mapping[str, Any]) -> bool:
    """True for a Hugging Face ``transformers`` ViT-family checkpoint (DINOv2, ViT, ...)."""
    return any(key.endswith(_HF_MARK) for key in state_dict)


def from_transformers_dinov2(
    state_dict: Mapping[str, Any], path: str | os.PathLike
) -> dict[str, Any]:
    """A ``transformers`` ``Dinov2Model`` state dict (also with registers, or wrapped by
    ``Dinov2ForImageClassification``) in the original DINOv2 torch-hub layout.

    Renames the embeddings, blocks and final norm, concatenates ``query``/``key``/``value`` into
    ``qkv`` and maps layer scale ``lambda1`` to ``gamma``; timm's DINOv2 filter then folds in the
    registers and drops the mask token (one is added when absent, so the filter recognises the
    layout). An image-classification head is dropped (logged): it is not part of the backbone.
    Keys it does not know are kept, so the model's strict check names them.
    """
    import torch

    state = dict(state_dict)
    for wrapper in _HF_HEAD_WRAPPERS:
        if any(key.startswith(wrapper + "embeddings.") for key in state):
            heads = [key for key in state if not key.startswith(wrapper)]
            if heads:
                log.info("%s: dropping the classification head %s", path, ", ".join(heads))
            state = {key[len(wrapper) :]: v for key, v in state.items() if key.startswith(wrapper)}
    if "encoder.layer.0.norm1.weight" not in state:
        raise WeightsError(
            f"{path}: a Hugging Face transformers checkpoint that is not DINOv2 (only Dinov2Model "
            "layouts are converted); convert it to timm keys, or pass the timm/original weights"
        )
    out: dict[str, Any] = {}
    qkv: dict[tuple[str, str], dict[str, Any]] = {}
    for key, value in state.items():
        block = _HF_BLOCK.match(key)
        if block is None:
            out[_HF_TOP.get(key, key)] = value
            continue
        index, rest = block.groups()
        part = _HF_QKV.match(rest)
        if part is not None:
            qkv.setdefault((index, part.group(2)), {})[part.group(1)] = value
            continue
        old = next((name for name in _HF_IN_BLOCK if rest.startswith(name)), None)
        renamed = rest if old is None else _HF_IN_BLOCK[old] + rest[len(old) :]
        out[f"blocks.{index}.{renamed}"] = value
    for (index, kind), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise WeightsError(
                f"{path}: block {index} lacks attention {kind} parts "
                f"({', '.join(sorted({'query', 'key', 'value'} - set(parts)))}); the file is incomplete"
            )
        out[f"blocks.{index}.attn.qkv.{kind}"] = torch.cat(
            [parts["query"], parts["key"], parts["value"]], dim=0
        )
    if "mask_token" not in out and "cls_token" in out:
        out["mask_token"] = out["cls_token"].new_zeros(1, out["cls_token"].shape[-1])
    return out


def save_state_dict(state_dict: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Save tensors as safetensors (contiguous CPU copies; shared storage is cloned)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}, str(tmp))
    os.replace(tmp, path)
    return path


def load_weights(model: Any, state_dict: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Load a state dict into ``model``, converting foreign layouts, strictly.

    A fine-tuning checkpoint gives its backbone (:func:`from_finetune`) and a ``transformers``
    DINOv2 layout is renamed (:func:`from_transformers_dinov2`) first; the
    model family's timm checkpoint filter then converts original DINOv2 checkpoints and resamples
    position embeddings. A classifier head that does not fit the model (feature extractor, or
    another class count) is dropped; any other missing, unexpected or misshapen key raises
    ``WeightsError`` listing a few.
    """
    state = dict(state_dict)
    kind = "state dict"
    if is_finetune_checkpoint(state):
        state, kind = from_finetune(state, path), "cxrprobe fine-tuning checkpoint"
    if is_transformers_checkpoint(state):
        state, kind = from_transformers_dinov2(state, path), "transformers DINOv2 checkpoint"
    elif is_dinov2_checkpoint(state):
        kind = "original DINOv2 checkpoint"
    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is not None:
        try:
            state = filter_fn(state, model)
        except Exception as exc:  # timm filters raise assorted errors on foreign checkpoints
            raise WeightsError(
                f"{path}: cannot be converted for {_arch_name(model)} ({exc}); check --init/--arch"
            ) from exc
    own = model.state_dict()
    heads = _classifier_keys(model)
    for key in heads:
        if key in state and (key not in own or own[key].shape != state[key].shape):
            log.info(
                "%s: dropping classifier %s %s (the model has its own head)",
                path,
                key,
                tuple(state[key].shape),
            )
            del state[key]
    missing = [k for k in own if k not in state and k not in heads]
    unexpected = [k for k in state if k not in own]
    misshapen = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in state
        if k in own and state[k].shape != own[k].shape
    ]
    problems = [
        f"{label}: {_few(keys)}"
        for label, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("wrong shape", misshapen),
        )
        if keys
    ]
    if problems:
        raise WeightsError(
            f"{path} ({kind}) does not fit {_arch_name(model)} ({'; '.join(problems)}); "
            "check that --init/--arch match the checkpoint"
        )
    model.load_state_dict(state, strict=False)
    log.info("loaded %s from %s", kind, path)


def _classifier_keys(model: Any) -> set[str]:
    names = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or ()
    names = (names,) if isinstance(names, str) else tuple(names)
    return {f"{name}.{suffix}" for name in names for suffix in ("weight", "bias")}


def _few(keys: list[str], n: int = 4) -> str:
    more = f", … ({len(keys)} in all)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _arch_name(model: Any) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("architecture") or type(model).__name__
