"""Study plans shipped with cxrprobe, printed by ``cxrprobe study --template NAME``.

``paper`` is the whole study (six datasets, DINOv2 / ImageNet-21k / MIMIC-CXR-pretrained ViT-B,
probes and fine-tunes, the paper's comparisons) with placeholder roots and weights to edit.
"""

from __future__ import annotations

from importlib.resources import files

from cxrprobe.errors import ConfigError

TEMPLATES: tuple[str, ...] = tuple(
    sorted(
        p.name.removesuffix(".toml") for p in files(__name__).iterdir() if p.name.endswith(".toml")
    )
)


def template_text(name: str) -> str:
    """The TOML text of the template ``name`` (ConfigError listing the templates otherwise)."""
    if name not in TEMPLATES:
        raise ConfigError(f"--template {name!r} is unknown; choose one of: {', '.join(TEMPLATES)}")
    return files(__name__).joinpath(f"{name}.toml").read_text(encoding="utf-8")
