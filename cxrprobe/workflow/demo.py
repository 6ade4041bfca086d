"""The demo: the whole study workflow on a synthetic dataset, in minutes, with no network.

It generates chest-like radiographs with planted findings, then runs a two-initialisation study on
them (preprocess → extract → linear probe for both, with a small label-efficiency curve, a short
fine-tune of one → compare → report).
With ``weights_dir`` holding real DINOv2 / ImageNet-21k ViT-B weights it uses them; otherwise it
builds small randomly initialised ViTs of the same two families and says so.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxrprobe.errors import ConfigError
from cxrprobe.provenance import atomic_write_json
from cxrprobe.workflow.commands import Commands
from cxrprobe.workflow.config import DatasetEntry, InitEntry, StudyConfig

# Small ViTs of the two families (patch 14 like DINOv2, patch 16 like the ImageNet ViT-B/16). The
# DINOv2 family's LayerScale starts at 1e-5, which leaves randomly initialised blocks near identity;
# 1.0 lets its random features mix patches as the other family's do.
TINY_VIT = {"depth": 4, "embed_dim": 96, "num_heads": 3}
TINY_EXTRA = {"dinov2": {"init_values": 1.0}, "imagenet": {}}
TINY_SIZE = 112
SYNTHETIC_SIZE = 256
PRETRAINED_SIZE = 224
WEIGHT_FILES = {
    "dinov2": (
        "dinov2_vitb14_pretrain.pth",
        "vit_base_patch14_dinov2.lvd142m.safetensors",
        "dinov2.safetensors",
        "dinov2.pth",
    ),
    "imagenet": (
        "vit_base_patch16_224.augreg_in21k.safetensors",
        "imagenet.safetensors",
        "imagenet.pth",
    ),
}
TINY_ARCH = {"dinov2": "vit_base_patch14_dinov2", "imagenet": "vit_base_patch16_224"}
DEMO_CURVE = {"train_fraction": [0.1, 0.3, 1.0], "repeats": 2}  # fraction 1 is fitted once


@dataclass(frozen=True)
class DemoModels:
    """The two initialisations the demo compares, and a sentence saying what they are."""

    inits: tuple[InitEntry, ...]
    size: int
    note: str


def find_weights(weights_dir: str | os.PathLike | None, family: str) -> Path | None:
    """The first known weights file of ``family`` in ``weights_dir`` (None when absent)."""
    if weights_dir is None:
        return None
    return next(
        (Path(weights_dir) / n for n in WEIGHT_FILES[family] if (Path(weights_dir) / n).is_file()),
        None,
    )


def demo_models(weights_dir: str | os.PathLike | None, finetune_epochs: int) -> DemoModels:
    """DINOv2 (fine-tuned too) and ImageNet-21k ViTs: pretrained where weights exist, else tiny random."""
    found = {family: find_weights(weights_dir, family) for family in WEIGHT_FILES}
    methods = {
        "dinov2": ("probe", "finetune") if finetune_epochs > 0 else ("probe",),
        "imagenet": ("probe",),
    }
    if all(found.values()):
        inits = tuple(
            InitEntry(f, f, weights=found[f], methods=methods[f]) for f in ("dinov2", "imagenet")
        )
        note = f"pretrained ViT-B weights from {weights_dir} ({', '.join(p.name for p in found.values())})"
        return DemoModels(inits, PRETRAINED_SIZE, note)
    inits = tuple(
        InitEntry(
            f"{f}-tiny",
            "random",
            arch=TINY_ARCH[f],
            model_kwargs={**TINY_VIT, **TINY_EXTRA[f]},
            methods=methods[f],
        )
        for f in ("dinov2", "imagenet")
    )
    missing = [f for f, path in found.items() if path is None]
    why = (
        "no --weights-dir given"
        if weights_dir is None
        else f"no {'/'.join(missing)} weights in {weights_dir}"
    )
    note = (
        f"tiny randomly initialised ViTs ({why}); their numbers show the workflow, not the value of "
        f"pretraining — pass --weights-dir with {WEIGHT_FILES['dinov2'][0]} and "
        f"{WEIGHT_FILES['imagenet'][0]} for real initialisations"
    )
    return DemoModels(inits, TINY_SIZE, note)


def demo_config(
    out: Path,
    n: int,
    seed: int,
    models: DemoModels,
    finetune_epochs: int,
    resamples: int,
    device: str,
) -> StudyConfig:
    """The study the demo runs: one synthetic dataset, two initialisations."""
    dataset = DatasetEntry(
        "synthetic",
        "generic",
        out / "data",
        {"split": "random", "val_fraction": 0.2, "test_fraction": 0.3, "seed": seed},
    )
    return StudyConfig(
        out=out / "study",
        datasets=(dataset,),
        inits=models.inits,
        reference=models.inits[1].name,
        seed=seed,
        device=device,
        preprocess={"size": models.size, "workers": 2},
        extract={"batch_size": 64},
        probe={
            "features": "cls+mean",
            "grid": [10.0**k for k in range(-4, 3)],
            **DEMO_CURVE,  # a small label-efficiency curve per init (report_curves.png)
        },
        finetune={
            "epochs": finetune_epochs,
            "batch_size": 32,
            "lr": 1e-3 if models.size == TINY_SIZE else 1e-5,
            "schedule": "cosine",
            "warmup_epochs": 1,
            "patience": 0,  # never stop early
        },
        compare={"resamples": resamples},
    )


def _synthetic_data(folder: Path, n: int, seed: int, progress: Any) -> None:
    """Generate the demo's dataset once; refuse a folder generated with other settings."""
    from cxrprobe.data.synthetic import generate_dataset

    settings = {"n": n, "size": SYNTHETIC_SIZE, "seed": seed}
    record = folder / "generator.json"
    if record.is_file() and (folder / "labels.csv").is_file():
        made = json.loads(record.read_text())
        if made != settings:
            raise ConfigError(
                f"{folder} holds a synthetic dataset made with {made}, not {settings}; "
                "use another --out or the same --n and --seed"
            )
        return
    generate_dataset(
        folder, seed=seed, progress=progress, **{k: settings[k] for k in ("n", "size")}
    )
    atomic_write_json(record, settings)


def run_demo(
    out: str | os.PathLike,
    *,
    commands: Commands,
    n: int = 600,
    seed: int = 0,
    weights_dir: str | None = None,
    finetune_epochs: int = 8,
    resamples: int = 1000,
    device: str = "auto",
    progress: Any = None,
    on_step: Any = None,
) -> dict[str, Any]:
    """Generate the synthetic dataset and run the demo study with the stages' ``commands`` (the
    CLI's); returns outputs and the main report."""
    from cxrprobe.workflow.plan import build_plan
    from cxrprobe.workflow.report import write_study_report
    from cxrprobe.workflow.state import run_plan

    out = Path(out)
    models = demo_models(weights_dir, finetune_epochs)
    _synthetic_data(out / "data", n, seed, progress)
    config = demo_config(out, n, seed, models, finetune_epochs, resamples, device)
    outcomes = run_plan(
        build_plan(config, commands), config.out, progress=progress, on_step=on_step
    )
    study = write_study_report(config.out)
    return {"config": config, "models": models, "outcomes": outcomes, "study": study}
