"""The registry of initialisations: one place that turns ``--init``/``--weights`` into a model.

Every command that needs a backbone (``extract``, ``finetune``) calls :func:`create_model`, which
returns the timm model (built by :mod:`cxrprobe.architectures`, then given its weights) and a
:class:`ModelSpec` recording what was built (architecture, input and patch size, how features
are read out, normalisation from the model's own config unless ``mean``/``std`` override it,
and the sha256 of the weights loaded).

Initialisations:

==============  ==========================================  ======================================
``--init``      architecture (timm)                         weights
==============  ==========================================  ======================================
``dinov2``      ``vit_base_patch14_dinov2.lvd142m``         ``--weights`` or the Hugging Face hub
``dinov2-reg``  ``vit_base_patch14_reg4_dinov2.lvd142m``    ``--weights`` or the Hugging Face hub
``imagenet``    ``vit_base_patch16_224.augreg_in21k``       ``--weights`` or the Hugging Face hub
``mimic``       ``vit_base_patch16_224`` (or ``--arch``)    ``--weights`` required (a user checkpoint)
``random``      ``vit_base_patch16_224`` (or ``--arch``)    none (seeded random init)
``timm:NAME``   any timm model (ViT, CNN, ...)              ``--weights`` or the Hugging Face hub
``run:DIR``     recorded by the fine-tuning run in ``DIR``  ``DIR/checkpoints/best.pt``
a file path     ``--arch`` (required)                       the file itself
==============  ==========================================  ======================================

``run:DIR`` is a finished ``cxrprobe finetune`` run (:mod:`cxrprobe.finetuned`): its backbone,
built with the architecture, timm overrides and normalisation the run recorded (the head is
dropped). ``--weights DIR/checkpoints/best.pt`` loads the same backbone under another ``--init``
and likewise takes what the checkpoint recorded for whatever was not given.

Two read-outs (``ModelSpec.readout``): ``token`` for ViTs with a class token (features are the
class token and the patch-token mean), ``pooled`` for every other timm model, CNNs such as
``densenet121`` included (timm's ``forward_head(pre_logits=True)`` and the spatial mean of
``forward_features``). Weight files are read by :mod:`cxrprobe.weights` (safetensors, or
``torch.load`` with ``weights_only=True``), which converts ``transformers`` DINOv2 checkpoints
(e.g. RAD-DINO) and, through timm's checkpoint filter, original DINOv2 torch-hub checkpoints, and
resamples position embeddings to the requested input size. Hub weights are fetched only when no
file is given, and fail fast offline with a message naming the file to download.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxrprobe.architectures import build_architecture, readout_of
from cxrprobe.errors import ConfigError, InputFileError, WeightsError
from cxrprobe.finetuned import RUN_PREFIX, adopt_recorded, finished_run
from cxrprobe.hub import hub_weights_file
from cxrprobe.weights import (
    load_state_dict,
    load_weights,
    load_weights_file,
    records_model_spec,
    sha256_file,
)

log = logging.getLogger(__name__)

_WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


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
    patch_size: int | None  # None: no patch embedding (a CNN)
    embed_dim: int
    num_prefix_tokens: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    weights_path: str | None
    weights_sha256: str | None
    weights_source: str
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    readout: str = "token"  # "token": class token + patch mean; "pooled": timm pooling
    normalization: str = "model config"  # or "--mean/--std" when overridden

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
    recorded: dict[str, Any] | None = None  # a fine-tuning run's model spec (``run:DIR``)


def describe_inits() -> str:
    """One line per registered initialisation, for help texts."""
    rows = [f"{init.name}: {init.description} ({init.arch})" for init in INITS.values()]
    rows += [
        "timm:NAME: any timm model (ViTs; CNNs such as densenet121 give pooled features)",
        "run:DIR: the backbone of a finished `cxrprobe finetune` run (its --out folder)",
        "PATH: a local checkpoint file (with --arch)",
    ]
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
    if init.startswith(RUN_PREFIX):
        run = finished_run(init[len(RUN_PREFIX) :])
        if weights is not None:
            raise ConfigError(
                f"--init {init} takes its weights from the run ({run.checkpoint}); drop --weights"
            )
        label = f"{RUN_PREFIX}{run.folder}"
        return _Choice(label, run.model["arch"], "run", "", run.checkpoint, run.model)
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
    known = ", ".join([*INITS, "timm:NAME", "run:DIR", "a checkpoint path"])
    raise ConfigError(f"--init {init!r} is not a known initialisation; choose one of: {known}")


def create_model(
    init: str,
    weights: str | os.PathLike | None = None,
    img_size: int = 224,
    num_classes: int = 0,
    arch: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    drop_path_rate: float = 0.0,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> tuple[Any, ModelSpec]:
    """Build the backbone of an initialisation and load its weights.

    Parameters
    ----------
    init : a registry name (``dinov2``, ``dinov2-reg``, ``imagenet``, ``mimic``, ``random``),
        ``timm:NAME`` or a checkpoint path.
    weights : a weights file (safetensors, timm state dict, original or ``transformers`` DINOv2
        checkpoint); without it hub initialisations fetch timm's published weights.
    img_size : square input size; a multiple of the patch size for ViTs. Position embeddings of
        the weights are resampled to it.
    num_classes : 0 for a feature extractor (no head), else a new (or matching) classifier head.
    arch : timm architecture for ``mimic``, ``random`` and checkpoint paths.
    model_kwargs : timm constructor overrides (e.g. ``{"depth": 2, "embed_dim": 64}`` for tests).
    drop_path_rate : stochastic depth rate (fine-tuning).
    mean, std : per-channel input normalisation (1 or 3 values) replacing the model config's, for
        weights trained with other statistics (e.g. RAD-DINO, or a MIMIC checkpoint).

    Returns
    -------
    (model, spec): the timm module (train mode, on CPU) and its :class:`ModelSpec`.
    """
    choice = resolve_init(init, weights, arch)
    path = choice.file if choice.file is not None else None if weights is None else Path(weights)
    state, recorded = None, choice.recorded
    if recorded is None and path is not None and records_model_spec(path):  # read it first
        state, recorded = load_weights_file(path)
    adopted = adopt_recorded(
        recorded,
        source=str(choice.label if choice.recorded else path),
        arch=arch,
        fixed_arch=choice.arch if choice.weights == "hub" else None,
        model_kwargs=model_kwargs,
        mean=mean,
        std=std,
    )
    choice = dataclasses.replace(choice, arch=adopted.arch or choice.arch)
    norm = {"mean": _channels("--mean", adopted.mean), "std": _channels("--std", adopted.std)}
    if norm["std"] is not None and min(norm["std"]) <= 0:
        raise ConfigError(f"--std must be positive, got {list(norm['std'])}")
    kwargs = adopted.model_kwargs
    model = build_architecture(choice.arch, img_size, num_classes, kwargs, drop_path_rate)
    source = "random" if path is None else choice.label if choice.recorded else "file"
    if path is None and choice.weights == "hub":
        path = hub_weights_file(model.pretrained_cfg, choice.label, choice.hint)
        source = f"hf-hub:{model.pretrained_cfg['hf_hub_id']}"
    digest = None
    if path is not None:
        load_weights(model, load_state_dict(path) if state is None else state, path)
        digest = sha256_file(path)
    spec = _spec(model, choice, img_size, path, digest, source, kwargs, norm)
    if adopted.normalization:
        spec = dataclasses.replace(spec, normalization=adopted.normalization)
    return model, spec


def _channels(option: str, values: Sequence[float] | None) -> tuple[float, ...] | None:
    """1 or 3 per-channel values as a 3-tuple of floats (None stays None)."""
    if values is None:
        return None
    values = tuple(float(v) for v in values)
    if len(values) not in (1, 3):
        raise ConfigError(f"{option} takes 1 or 3 values (one per channel), got {len(values)}")
    return values * 3 if len(values) == 1 else values


def check_embeddable(model: Any, spec: ModelSpec) -> None:
    """Refuse extracting from a model whose pooled vector and feature map differ in width (a head
    with its own layers, e.g. MobileNetV3): ``cls`` and ``mean`` share one width in a store."""
    pooled = getattr(model, "head_hidden_size", None) or model.num_features
    if spec.readout == "pooled" and pooled != model.num_features:
        raise ConfigError(
            f"timm model {spec.arch}: its pooled features ({pooled} wide, after the head's own "
            f"layers) and its feature map ({model.num_features}) differ in width, which one "
            "embedding store cannot hold; fine-tune it, or extract from another architecture"
        )


def _spec(
    model: Any,
    choice: _Choice,
    img_size: int,
    path: Path | None,
    digest: str | None,
    source: str,
    kwargs: dict[str, Any],
    norm: Mapping[str, tuple[float, ...] | None],
) -> ModelSpec:
    from timm.data import resolve_model_data_config

    data_cfg = resolve_model_data_config(model)
    mean, std = (norm[k] or tuple(float(v) for v in data_cfg[k]) for k in ("mean", "std"))
    if norm["mean"] or norm["std"]:
        log.info(
            "%s: input normalisation mean %s, std %s (the model config has %s, %s)",
            choice.arch,
            mean,
            std,
            tuple(data_cfg["mean"]),
            tuple(data_cfg["std"]),
        )
    patch_embed = getattr(model, "patch_embed", None)
    return ModelSpec(
        init=str(choice.file) if choice.label == "file" else choice.label,
        arch=choice.arch,
        img_size=int(img_size),
        patch_size=None if patch_embed is None else int(patch_embed.patch_size[0]),
        embed_dim=int(model.num_features),
        num_prefix_tokens=int(getattr(model, "num_prefix_tokens", 0)),
        mean=mean,
        std=std,
        weights_path=None if path is None else str(Path(path).resolve()),
        weights_sha256=digest,
        weights_source=source,
        model_kwargs=dict(kwargs),
        readout=readout_of(model),
        normalization="--mean/--std" if norm["mean"] or norm["std"] else "model config",
    )
