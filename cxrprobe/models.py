"""The registry of initialisations: one place that turns ``--init``/``--weights`` into a model.

Every command that needs a backbone (``extract``, ``finetune``) calls :func:`create_model`, which
returns the timm model and a :class:`ModelSpec` recording what was built (architecture, input and
patch size, normalisation from the model's own config, and the sha256 of the weights loaded).

Initialisations:

==============  ==========================================  ======================================
``--init``      architecture (timm)                         weights
==============  ==========================================  ======================================
``dinov2``      ``vit_base_patch14_dinov2.lvd142m``         ``--weights`` or the Hugging Face hub
``dinov2-reg``  ``vit_base_patch14_reg4_dinov2.lvd142m``    ``--weights`` or the Hugging Face hub
``imagenet``    ``vit_base_patch16_224.augreg_in21k``       ``--weights`` or the Hugging Face hub
``mimic``       ``vit_base_patch16_224`` (or ``--arch``)    ``--weights`` required (a user checkpoint)
``random``      ``vit_base_patch16_224`` (or ``--arch``)    none (seeded random init)
``timm:NAME``   any timm model with patch tokens            ``--weights`` or the Hugging Face hub
a file path     ``--arch`` (required)                       the file itself
==============  ==========================================  ======================================

Weight files are read by :mod:`cxrprobe.weights` (safetensors, or ``torch.load`` with
``weights_only=True``) and converted by the model family's timm checkpoint filter, which maps
original DINOv2 torch-hub checkpoints to timm's layout and resamples position embeddings to the
requested input size. Hub weights are fetched only when no file is given, and fail fast offline
with a message naming the file to download.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxrprobe.errors import ConfigError, InputFileError, WeightsError
from cxrprobe.weights import (
    detect_format,
    hub_weights_file,
    is_dinov2_checkpoint,
    load_state_dict,
    sha256_file,
)

log = logging.getLogger(__name__)

_WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
RANDOM_INIT_SEED = 0  # every model is built from this seed before any weights are loaded


@dataclass(frozen=True)
class Init:
    """One registered initialisation: its timm architecture and where its weights come from.

    ``weights`` is ``"hub"`` (a file or the hub), ``"required"`` (a user file) or ``"none"``.
    """

    name: str
    arch: str
    weights: str
    description: str
    weights_hint: str = ""


INITS: dict[str, Init] = {
    init.name: init
    for init in (
        Init(
            "dinov2",
            "vit_base_patch14_dinov2.lvd142m",
            "hub",
            "DINOv2 ViT-B/14, self-supervised on LVD-142M",
            "the DINOv2 ViT-B/14 weights (dinov2_vitb14_pretrain.pth from the official DINOv2 release, "
            "or model.safetensors of timm/vit_base_patch14_dinov2.lvd142m on the Hugging Face hub)",
        ),
        Init(
            "dinov2-reg",
            "vit_base_patch14_reg4_dinov2.lvd142m",
            "hub",
            "DINOv2 ViT-B/14 with 4 registers, self-supervised on LVD-142M",
            "the DINOv2 ViT-B/14 with registers weights (dinov2_vitb14_reg4_pretrain.pth from the official "
            "DINOv2 release, or model.safetensors of timm/vit_base_patch14_reg4_dinov2.lvd142m on the "
            "Hugging Face hub)",
        ),
        Init(
            "imagenet",
            "vit_base_patch16_224.augreg_in21k",
            "hub",
            "ViT-B/16 supervised on ImageNet-21k (AugReg)",
            "the ImageNet-21k ViT-B/16 weights (model.safetensors of timm/vit_base_patch16_224.augreg_in21k "
            "on the Hugging Face hub)",
        ),
        Init(
            "mimic",
            "vit_base_patch16_224",
            "required",
            "ViT-B/16 supervised on MIMIC-CXR, from your checkpoint",
            "your ViT-B/16 checkpoint trained on MIMIC-CXR (safetensors or a timm state dict)",
        ),
        Init(
            "random",
            "vit_base_patch16_224",
            "none",
            "ViT-B/16 with random weights (a floor for comparisons)",
        ),
    )
}


@dataclass(frozen=True)
class ModelSpec:
    """What :func:`create_model` built: enough to rebuild it and to preprocess its input."""

    init: str
    arch: str
    img_size: int
    patch_size: int
    embed_dim: int
    num_prefix_tokens: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    weights_path: str | None
    weights_sha256: str | None
    weights_source: str
    model_kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready fields (tuples as lists)."""
        out = dataclasses.asdict(self)
        out["mean"], out["std"] = list(self.mean), list(self.std)
        return out


@dataclass(frozen=True)
class _Choice:
    """An ``--init`` resolved against the registry: label, timm architecture, weights policy."""

    label: str
    arch: str
    weights: str
    hint: str
    file: Path | None = None


def describe_inits() -> str:
    """One line per registered initialisation, for help texts."""
    rows = [f"{init.name}: {init.description} ({init.arch})" for init in INITS.values()]
    rows += ["timm:NAME: any timm ViT-style model", "PATH: a local checkpoint file (with --arch)"]
    return "\n".join(rows)


def resolve_init(
    init: str, weights: str | os.PathLike | None = None, arch: str | None = None
) -> _Choice:
    """Parse ``--init`` (and check ``--weights``/``--arch`` fit it) without building anything."""
    if init in INITS:
        entry = INITS[init]
        if arch is not None and entry.weights == "hub":
            raise ConfigError(
                f"--arch does not apply to --init {init} (its architecture is {entry.arch}); "
                "use --init timm:NAME or --init random --arch NAME"
            )
        if entry.weights == "none" and weights is not None:
            raise ConfigError(
                "--init random takes no --weights; use --init mimic or a checkpoint path instead"
            )
        if entry.weights == "required" and weights is None:
            raise WeightsError(f"--init {init} needs --weights PATH: {entry.weights_hint}")
        return _Choice(init, arch or entry.arch, entry.weights, entry.weights_hint)
    if init.startswith("timm:"):
        import timm

        name = init[len("timm:") :]
        if not name or not timm.is_model(name):
            raise ConfigError(
                f"--init {init}: unknown timm model {name!r}; see timm.list_models() for names"
            )
        if arch is not None:
            raise ConfigError(
                f"--arch does not apply to --init {init}; the name after 'timm:' is the architecture"
            )
        hint = f"the weights of {name} (model.safetensors of its Hugging Face hub repository)"
        return _Choice(init, name, "hub", hint)
    path = Path(init)
    if path.exists() or path.suffix in _WEIGHT_SUFFIXES or os.sep in init:
        if not path.is_file():
            raise InputFileError(f"--init {init}: checkpoint file not found; check the path")
        if weights is not None:
            raise ConfigError(
                f"--init {init} is already a checkpoint; drop --weights or use --init mimic/timm:NAME"
            )
        if arch is None:
            raise ConfigError(
                f"--init {init}: a checkpoint file needs --arch NAME (its timm architecture, "
                "e.g. vit_base_patch16_224)"
            )
        return _Choice("file", arch, "file", "", file=path)
    known = ", ".join([*INITS, "timm:NAME", "a checkpoint path"])
    raise ConfigError(f"--init {init!r} is not a known initialisation; choose one of: {known}")


def create_model(
    init: str,
    weights: str | os.PathLike | None = None,
    img_size: int = 224,
    num_classes: int = 0,
    arch: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    drop_path_rate: float = 0.0,
) -> tuple[Any, ModelSpec]:
    """Build the backbone of an initialisation and load its weights.

    Parameters
    ----------
    init : a registry name (``dinov2``, ``dinov2-reg``, ``imagenet``, ``mimic``, ``random``),
        ``timm:NAME`` or a checkpoint path.
    weights : a weights file (safetensors, timm state dict or original DINOv2 checkpoint); without
        it hub initialisations fetch timm's published weights.
    img_size : square input size; must be a multiple of the patch size. Position embeddings of the
        weights are resampled to it.
    num_classes : 0 for a feature extractor (no head), else a new (or matching) classifier head.
    arch : timm architecture for ``mimic``, ``random`` and checkpoint paths.
    model_kwargs : timm constructor overrides (e.g. ``{"depth": 2, "embed_dim": 64}`` for tests).
    drop_path_rate : stochastic depth rate (fine-tuning).

    Returns
    -------
    (model, spec): the timm module (train mode, on CPU) and its :class:`ModelSpec`.
    """
    choice = resolve_init(init, weights, arch)
    kwargs = dict(model_kwargs or {})
    model = _build(choice.arch, img_size, num_classes, kwargs, drop_path_rate)
    path: Path | None = None
    source = "random"
    if choice.file is not None:
        path, source = choice.file, "file"
    elif weights is not None:
        path, source = Path(weights), "file"
    elif choice.weights == "hub":
        path = hub_weights_file(model.pretrained_cfg, choice.label, choice.hint)
        source = f"hf-hub:{model.pretrained_cfg['hf_hub_id']}"
    digest = None
    if path is not None:
        detect_format(path)
        load_weights(model, load_state_dict(path), path)
        digest = sha256_file(path)
    return model, _spec(model, choice, img_size, path, digest, source, kwargs)


def _build(
    arch: str, img_size: int, num_classes: int, kwargs: dict[str, Any], drop_path_rate: float
) -> Any:
    """Instantiate a timm model with seeded random weights and check it yields patch tokens.

    The seed makes ``random`` reproducible (same init, same embeddings, safe to resume) and
    leaves the caller's random state untouched.
    """
    import timm
    import torch

    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            model = timm.create_model(
                arch,
                pretrained=False,
                num_classes=num_classes,
                img_size=img_size,
                drop_path_rate=drop_path_rate,
                **kwargs,
            )
    except TypeError as exc:
        raise ConfigError(
            f"timm model {arch} does not accept these options ({exc}); check --model-kwargs"
        ) from exc
    except RuntimeError as exc:
        raise ConfigError(f"timm model {arch}: {exc}") from exc
    patch_embed = getattr(model, "patch_embed", None)
    if patch_embed is None or not hasattr(model, "num_prefix_tokens"):
        raise ConfigError(
            f"timm model {arch} is not a ViT-style model with patch tokens; pick a ViT architecture"
        )
    patch = int(patch_embed.patch_size[0])
    if img_size % patch:
        lower, upper = img_size - img_size % patch, img_size - img_size % patch + patch
        raise ConfigError(
            f"--size {img_size} is not a multiple of the patch size {patch} of {arch} (the last "
            f"{img_size % patch} px would be dropped); use --size {lower} or {upper}"
        )
    return model


def load_weights(model: Any, state_dict: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Load a state dict into ``model`` through its timm checkpoint filter, strictly.

    The filter converts foreign layouts (original DINOv2) and resamples position embeddings. A
    classifier head that does not fit the model (feature extractor, or another class count) is
    dropped; any other missing, unexpected or misshapen key raises ``WeightsError`` listing a few.
    """
    state = dict(state_dict)
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
            f"{path} does not fit {_arch_name(model)} ({'; '.join(problems)}); "
            "check that --init/--arch match the checkpoint"
        )
    model.load_state_dict(state, strict=False)
    kind = (
        "original DINOv2 checkpoint (converted)"
        if is_dinov2_checkpoint(state_dict)
        else "state dict"
    )
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


def _spec(
    model: Any,
    choice: _Choice,
    img_size: int,
    path: Path | None,
    digest: str | None,
    source: str,
    kwargs: dict[str, Any],
) -> ModelSpec:
    from timm.data import resolve_model_data_config

    data_cfg = resolve_model_data_config(model)
    return ModelSpec(
        init=choice.label if choice.file is None else str(choice.file),
        arch=choice.arch,
        img_size=int(img_size),
        patch_size=int(model.patch_embed.patch_size[0]),
        embed_dim=int(model.num_features),
        num_prefix_tokens=int(model.num_prefix_tokens),
        mean=tuple(float(v) for v in data_cfg["mean"]),
        std=tuple(float(v) for v in data_cfg["std"]),
        weights_path=None if path is None else str(Path(path).resolve()),
        weights_sha256=digest,
        weights_source=source,
        model_kwargs=dict(kwargs),
    )
