"""Building a timm architecture: seeded random weights, option and input-size checks, read-out.

:func:`build_architecture` instantiates a timm model before any weights are loaded
(:mod:`cxrprobe.models` loads them): always from the same seed, with timm's own option errors
turned into messages naming the option, and refusing an input size that a ViT's patch size does
not divide (the last pixels would be dropped). :func:`readout_of` says how its features are read.
"""

from __future__ import annotations

from typing import Any

from cxrprobe.errors import ConfigError

RANDOM_INIT_SEED = 0  # every model is built from this seed before any weights are loaded


def build_architecture(
    arch: str, img_size: int, num_classes: int, kwargs: dict[str, Any], drop_path_rate: float
) -> Any:
    """Instantiate a timm model with seeded random weights and check its input size and width.

    The seed makes ``random`` reproducible (same init, same embeddings, safe to resume) and
    leaves the caller's random state untouched. Models without an ``img_size`` argument (CNNs)
    take any input size and are built without it.
    """
    options = {"num_classes": num_classes, "img_size": img_size, **kwargs}
    if drop_path_rate:
        options["drop_path_rate"] = drop_path_rate
    try:
        model = _create(arch, options)
    except TypeError as exc:
        if "img_size" not in str(exc) or "img_size" in kwargs:
            raise _option_error(arch, exc) from exc
        options.pop("img_size")
        try:
            model = _create(arch, options)
        except TypeError as again:
            raise _option_error(arch, again) from again
    except RuntimeError as exc:
        raise ConfigError(f"timm model {arch}: {exc}") from exc
    patch_embed = getattr(model, "patch_embed", None)
    patch = int(patch_embed.patch_size[0]) if patch_embed is not None else 0
    if patch and img_size % patch:
        lower, upper = img_size - img_size % patch, img_size - img_size % patch + patch
        raise ConfigError(
            f"--size {img_size} is not a multiple of the patch size {patch} of {arch} (the last "
            f"{img_size % patch} px would be dropped); use --size {lower} or {upper}"
        )
    return model


def _create(arch: str, options: dict[str, Any]) -> Any:
    import timm
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        return timm.create_model(arch, pretrained=False, **options)


def _option_error(arch: str, exc: TypeError) -> ConfigError:
    if "drop_path_rate" in str(exc):
        return ConfigError(
            f"--drop-path: timm model {arch} has no stochastic depth; drop the option"
        )
    return ConfigError(
        f"timm model {arch} does not accept these options ({exc}); check --model-kwargs"
    )


def readout_of(model: Any) -> str:
    """``"token"`` for a ViT with a class token, ``"pooled"`` for any other timm model."""
    has_cls = getattr(model, "cls_token", None) is not None
    return "token" if has_cls and getattr(model, "num_prefix_tokens", 0) >= 1 else "pooled"
