"""CLI commands: finetune (train any initialisation end to end; validation-split model selection)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from cxrprobe.cli.options import (
    SCORED_AS_MADE,
    TRAINING_USE,
    RegistryChoice,
    RenamingCommand,
    allow_leakage_option,
    blank_option,
    class_weight_option,
    device_option,
    findings_option,
    image_source_options,
    model_options,
    seed_option,
    uncertain_option,
    workers_option,
)
from cxrprobe.cli.output import library_errors, progress_in
from cxrprobe.devices import is_main_rank

_DEFAULT_WORKERS = min(4, os.cpu_count() or 1)
_RENAMED = {
    "--num-workers": ("--workers",),
    "--class-weights": ("--class-weight", "pos_weight"),
    "--no-class-weights": ("--class-weight", "none"),
}


class RecipeOption(click.Option):
    """An option that ``--recipe`` sets when it is not given (its default is None, "not given");
    its help ends with each recipe's value, read from the library's ``RECIPES`` when shown."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, default=None, **kwargs)

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        from cxrprobe.finetune.recipe import RECIPES

        record = super().get_help_record(ctx)
        if record is None:
            return None
        field = _LIBRARY_NAMES.get(str(self.name), str(self.name))
        shown = ", ".join(
            f"{name}: {_shown(settings[field])}" for name, settings in RECIPES.items()
        )
        return record[0], f"{record[1]} [{shown}]".strip()


# CLI parameter names that differ from the library's, and how recipe values read on the CLI.
_LIBRARY_NAMES = {"class_weight": "class_weights"}


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "pos_weight" if value else "none"
    return "off" if value is None else str(value)


@click.command(cls=RenamingCommand, renamed=_RENAMED)
@model_options()
@image_source_options(raw_settings=True)
@click.option(
    "--recipe",
    type=RegistryChoice("cxrprobe.finetune.recipe:RECIPES"),
    default="modern",
    show_default=True,
    help="Settings of every option marked [modern: ..., study: ...] that is not given: 'modern' "
    "(cxrprobe's) or 'study' (the study's training code; it also feeds [0, 1] pixels without "
    "mean/std normalisation and, with --manifest, uses the 'study' preset). Options given "
    "always win; run.json records which settings the recipe filled.",
)
@click.option(
    "--size",
    cls=RecipeOption,
    type=click.IntRange(min=8),
    help="Model input side in pixels (512 for ViT-B/16; 518 for patch 14). Cached images are resized on the device.",
)
@click.option("--epochs", cls=RecipeOption, type=click.IntRange(min=1))
@click.option(
    "--batch-size",
    cls=RecipeOption,
    type=click.IntRange(min=1),
    help="Global batch: images per optimiser step over all processes and accumulation steps.",
)
@click.option(
    "--accum-steps",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Gradient accumulation: micro-batches per optimiser step.",
)
@click.option(
    "--eval-batch-size",
    type=click.IntRange(min=1),
    default=None,
    help="Batch size for validation and test scoring (default: the training micro-batch).",
)
@click.option("--lr", cls=RecipeOption, type=float, help="AdamW learning rate (peak).")
@click.option("--weight-decay", cls=RecipeOption, type=float)
@click.option(
    "--schedule",
    cls=RecipeOption,
    type=RegistryChoice("cxrprobe.finetune.schedule:SCHEDULES"),
    help="lr schedule after warm-up.",
)
@click.option("--warmup-epochs", cls=RecipeOption, type=float, help="Linear lr warm-up length.")
@click.option("--min-lr-ratio", cls=RecipeOption, type=float, help="Final lr / peak lr for cosine.")
@click.option(
    "--layer-decay",
    cls=RecipeOption,
    type=float,
    help="Layer-wise lr decay factor (e.g. 0.75); 1 = off.",
)
@click.option(
    "--clip-grad", cls=RecipeOption, type=float, help="Clip the gradient norm to this value."
)
@click.option("--drop-path", cls=RecipeOption, type=float, help="Stochastic depth rate.")
@class_weight_option("training split", cls=RecipeOption)
@click.option("--hflip", cls=RecipeOption, type=float, help="Probability of a horizontal flip.")
@click.option("--rotate", cls=RecipeOption, type=float, help="Maximum random rotation in degrees.")
@click.option(
    "--rotate-mode",
    cls=RecipeOption,
    type=RegistryChoice("cxrprobe.finetune.augment:ROTATE_MODES"),
    help="Resampling of the rotation (nearest: torchvision RandomRotation's default).",
)
@click.option(
    "--precision",
    cls=RecipeOption,
    type=RegistryChoice("cxrprobe.finetune.recipe:PRECISIONS"),
    help="auto: bf16 autocast on CUDA, float32 on CPU.",
)
@click.option(
    "--grad-checkpointing", is_flag=True, help="Recompute activations in backward (less memory)."
)
@click.option("--compile", "compile", is_flag=True, help="torch.compile the model.")
@click.option(
    "--patience",
    cls=RecipeOption,
    type=click.IntRange(min=0),
    help="Stop after this many epochs without a better validation score (0, off: never).",
)
@click.option(
    "--select-by",
    cls=RecipeOption,
    type=RegistryChoice("cxrprobe.finetune.recipe:SELECT_BY"),
    help="Validation score choosing the best epoch: mean AUROC, or the training loss (lowest).",
)
@seed_option("Seed of the data order, augmentation, head initialisation and dropout.")
@workers_option(_DEFAULT_WORKERS, "Data loader worker processes per training process.")
@device_option("torchrun: the local rank's GPU")
@click.option(
    "--stop-after",
    type=click.IntRange(min=1),
    default=None,
    help="Run at most this many epochs now, then exit; continue later with --resume (time-limited jobs).",
)
@click.option("--train-split", default="train", show_default=True)
@click.option(
    "--val-split",
    default="val",
    show_default=True,
    help="Split used to choose the best epoch (never the test split).",
)
@click.option(
    "--test-split",
    default="test",
    show_default=True,
    help="Split scored at the end into predictions.json.",
)
@uncertain_option(TRAINING_USE)
@blank_option(TRAINING_USE, SCORED_AS_MADE)
@findings_option("Train and score only these of the images' findings")
@allow_leakage_option("run.json and the predictions' provenance")
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="Run folder for checkpoints, logs and predictions.",
)
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--overwrite", is_flag=True, help="Delete the previous run in --out and start again.")
def finetune(**params: Any) -> None:
    """Fine-tune an initialisation end to end: backbone + linear head on the manifest's findings.

    --recipe fills every option not given: 'modern' (default; cxrprobe's: AdamW lr 1e-5, weight
    decay 0.01, batch 32, 10 epochs, early stopping on the validation mean AUROC, bf16 on CUDA,
    model mean/std) or 'study' (the study's code: weight decay 0, batch 30, 100 epochs, fp32,
    [0, 1] input, the epoch of lowest validation loss). Both use pos_weight-weighted BCE with
    uncertain and missing labels masked (unless --uncertain / --blank map them), random flip and
    ±7° rotation, 224 px. Every epoch is
    validated on the validation split (never the test split, where the study's code chose its
    checkpoints); the best epoch is kept. The test split is scored only at the end, with the best
    weights, into OUT/predictions.json. OUT also holds run.json (resolved config
    and versions), log.csv (loss and AUROC per epoch), summary.json and checkpoints/ (last.pt
    continues exactly with --resume). For several GPUs launch it with torchrun; --batch-size
    stays the global batch.

    Example:

    \b
        cxrprobe finetune --init dinov2 --weights dinov2_vitb14_pretrain.pth --images images_224.zarr --out runs/dinov2_ft
        cxrprobe finetune --recipe study --init imagenet --images images_study_224.zarr --out runs/imagenet_study
        torchrun --nproc_per_node 4 $(which cxrprobe) finetune --init imagenet --images images_224.zarr --schedule cosine --warmup-epochs 1 --layer-decay 0.75 --out runs/imagenet_ft
    """
    from cxrprobe.finetune import format_summary
    from cxrprobe.finetune.recipe import run_finetune

    out = params["out"]
    with library_errors():
        result = run_finetune(params, progress_in("step"))
    if is_main_rank():
        click.echo(format_summary(result.summary))
        if result.unchanged:
            click.echo(
                f"{out} holds this run finished already; left as it is (its run.json and "
                "summary.json say how it was trained)"
            )
        elif result.finished:
            click.echo(f"wrote {out / 'predictions.json'} (test split) and {out / 'summary.json'}")


COMMANDS = [finetune]
