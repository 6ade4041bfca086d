"""CLI commands: finetune (train any initialisation end to end; validation-split model selection)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from cxrprobe.cli._common import (
    check_image_source,
    device_option,
    image_source_options,
    library_errors,
    model_options,
    progress_in,
    raw_preprocess,
    seed_option,
)
from cxrprobe.devices import is_main_rank

_DEFAULT_WORKERS = min(4, os.cpu_count() or 1)


@click.command()
@model_options(init_default="dinov2")
@image_source_options(raw_settings=True)
@click.option(
    "--size",
    type=click.IntRange(min=8),
    default=224,
    show_default=True,
    help="Model input side in pixels (224; 512 for ViT-B/16; 518 for patch 14). Cached images are resized on the device.",
)
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=32,
    show_default=True,
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
@click.option(
    "--lr", type=float, default=1e-5, show_default=True, help="AdamW learning rate (peak)."
)
@click.option("--weight-decay", type=float, default=0.01, show_default=True)
@click.option(
    "--schedule",
    type=click.Choice(["constant", "cosine"]),
    default="constant",
    show_default=True,
    help="lr schedule after warm-up.",
)
@click.option(
    "--warmup-epochs", type=float, default=0.0, show_default=True, help="Linear lr warm-up length."
)
@click.option(
    "--min-lr-ratio",
    type=float,
    default=0.0,
    show_default=True,
    help="Final lr / peak lr for cosine.",
)
@click.option(
    "--layer-decay",
    type=float,
    default=1.0,
    show_default=True,
    help="Layer-wise lr decay factor (e.g. 0.75); 1 = off.",
)
@click.option("--clip-grad", type=float, default=None, help="Clip the gradient norm to this value.")
@click.option(
    "--drop-path", type=float, default=0.0, show_default=True, help="Stochastic depth rate."
)
@click.option(
    "--class-weights/--no-class-weights",
    default=True,
    show_default=True,
    help="Weight positives by negatives/positives per finding (training split).",
)
@click.option(
    "--hflip", type=float, default=0.5, show_default=True, help="Probability of a horizontal flip."
)
@click.option(
    "--rotate",
    type=float,
    default=7.0,
    show_default=True,
    help="Maximum random rotation in degrees.",
)
@click.option(
    "--precision",
    type=click.Choice(["auto", "bf16", "fp16", "fp32"]),
    default="auto",
    show_default=True,
    help="auto: bf16 autocast on CUDA, float32 on CPU.",
)
@click.option(
    "--grad-checkpointing", is_flag=True, help="Recompute activations in backward (less memory)."
)
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the model.")
@click.option(
    "--patience",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="Stop after this many epochs without a better validation mean AUROC (0: never).",
)
@seed_option("Seed of the data order, augmentation, head initialisation and dropout.")
@click.option(
    "--num-workers",
    type=click.IntRange(min=0),
    default=_DEFAULT_WORKERS,
    show_default=True,
    help="Data loader worker processes per training process.",
)
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
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="Run folder for checkpoints, logs and predictions.",
)
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--overwrite", is_flag=True, help="Delete the previous run in --out and start again.")
def finetune(
    init,
    weights,
    arch,
    model_kwargs,
    images,
    manifest,
    root,
    preset,
    aspect,
    equalize,
    size,
    epochs,
    batch_size,
    accum_steps,
    eval_batch_size,
    lr,
    weight_decay,
    schedule,
    warmup_epochs,
    min_lr_ratio,
    layer_decay,
    clip_grad,
    drop_path,
    class_weights,
    hflip,
    rotate,
    precision,
    grad_checkpointing,
    compile_,
    patience,
    seed,
    num_workers,
    device,
    stop_after,
    train_split,
    val_split,
    test_split,
    out,
    resume,
    overwrite,
) -> None:
    """Fine-tune an initialisation end to end: backbone + linear head on the manifest's findings.

    Trains with the study's recipe by default (AdamW, lr 1e-5, pos_weight-weighted BCE with
    uncertain and missing labels masked, random flip and ±7° rotation, 224 px). Every epoch is
    validated by mean AUROC on the validation split; the best epoch is kept and training stops
    early after --patience epochs without improvement. The test split is scored only at the end,
    with the best weights, into OUT/predictions.json. OUT also holds run.json (resolved config
    and versions), log.csv (loss and AUROC per epoch), summary.json and checkpoints/ (last.pt
    continues exactly with --resume). For several GPUs launch it with torchrun; --batch-size
    stays the global batch.

    Example:

    \b
        cxrprobe finetune --init dinov2 --weights dinov2_vitb14_pretrain.pth --images images_224.zarr --epochs 10 --out runs/dinov2_ft
        torchrun --nproc_per_node 4 $(which cxrprobe) finetune --init imagenet --images images_224.zarr --schedule cosine --warmup-epochs 1 --layer-decay 0.75 --out runs/imagenet_ft
    """
    from cxrprobe.probe.finetune import FinetuneConfig, from_cache, from_manifest
    from cxrprobe.probe.finetune import finetune as run_finetune
    from cxrprobe.probe.finetune_outputs import format_summary

    check_image_source(images, manifest, root=root, preset=preset, aspect=aspect, equalize=equalize)
    config = FinetuneConfig(
        init=init,
        weights=None if weights is None else str(weights),
        arch=arch,
        model_kwargs=model_kwargs,
        size=size,
        epochs=epochs,
        batch_size=batch_size,
        accum_steps=accum_steps,
        eval_batch_size=eval_batch_size,
        lr=lr,
        weight_decay=weight_decay,
        schedule=schedule,
        warmup_epochs=warmup_epochs,
        min_lr_ratio=min_lr_ratio,
        layer_decay=layer_decay,
        clip_grad=clip_grad,
        drop_path=drop_path,
        class_weights=class_weights,
        hflip=hflip,
        rotate=rotate,
        precision=precision,
        grad_checkpointing=grad_checkpointing,
        compile=compile_,
        patience=patience or None,
        seed=seed,
        num_workers=num_workers,
        device=device,
        stop_after=stop_after,
        train_split=train_split,
        val_split=val_split,
        test_split=test_split,
    )
    with library_errors():
        if images is not None:
            source = from_cache(images)
        else:
            source = from_manifest(manifest, root, raw_preprocess(preset, size, aspect, equalize))
        result = run_finetune(
            config,
            source,
            out,
            resume=resume,
            overwrite=overwrite,
            progress=progress_in("step"),
        )
    if is_main_rank():
        click.echo(format_summary(result.summary))
        if result.finished:
            click.echo(f"wrote {out / 'predictions.json'} (test split) and {out / 'summary.json'}")


COMMANDS = [finetune]
