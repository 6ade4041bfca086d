"""Full fine-tuning of any initialisation on the image cache (or raw files), end to end.

The default recipe is the study's: AdamW at lr 1e-5, BCE weighted by ``pos_weight`` (negatives /
positives per finding on the training split), random horizontal flip and ±7° rotation, 224 px.
Warm-up + cosine, layer-wise lr decay, gradient clipping and accumulation, drop-path, gradient
checkpointing and ``torch.compile`` are options. Uncertain and missing labels are masked out of the
loss. Each epoch is validated by mean AUROC on the **validation** split — the test split is never
looked at before training ends — the best epoch's weights are kept, and training stops early after
``patience`` epochs without improvement. Only then is the test split scored, with the best weights.

A run folder holds::

    run.json             resolved config, model spec, data description and versions
    checkpoints/last.pt  full state after the latest epoch (``resume=True`` continues from it)
    checkpoints/best.pt  model weights of the best validation epoch
    log.csv              per epoch: train loss, val mean AUROC (and per finding), lr, images/s
    predictions.json     test-split probabilities with provenance (``cxrprobe compare`` reads it)
    val_predictions.json validation-split probabilities of the same model
    summary.json         best epoch, val and test AUROC per finding, throughput, failures
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cxrprobe.errors import ConfigError
from cxrprobe.probe.finetune_data import ImageSource, from_arrays, from_cache, from_manifest
from cxrprobe.probe.finetune_run import FinetuneResult, FinetuneRun
from cxrprobe.progress import ProgressFactory

__all__ = [
    "FinetuneConfig",
    "FinetuneResult",
    "finetune",
    "from_arrays",
    "from_cache",
    "from_manifest",
]

PRECISIONS = ("auto", "bf16", "fp16", "fp32")


@dataclass
class FinetuneConfig:
    """Every setting of a fine-tuning run (the CLI's options, with the study's defaults)."""

    init: str = "dinov2"
    weights: str | None = None
    arch: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    size: int = 224
    epochs: int = 10
    batch_size: int = 32  # global: images per optimiser step over all processes
    accum_steps: int = 1
    eval_batch_size: int | None = None
    lr: float = 1e-5
    weight_decay: float = 0.01
    schedule: str = "constant"
    warmup_epochs: float = 0.0
    min_lr_ratio: float = 0.0
    layer_decay: float = 1.0
    clip_grad: float | None = None
    drop_path: float = 0.0
    class_weights: bool = True
    hflip: float = 0.5
    rotate: float = 7.0
    precision: str = "auto"
    grad_checkpointing: bool = False
    compile: bool = False
    patience: int | None = 5
    seed: int = 0
    num_workers: int = 0
    device: str = "auto"
    stop_after: int | None = None  # epochs to run in this invocation (time-limited jobs)
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"

    def problems(self) -> list[str]:
        """Every invalid setting, named by its CLI option (all reported together)."""
        checks = [
            (self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.accum_steps >= 1, f"--accum-steps must be >= 1, got {self.accum_steps}"),
            (self.lr > 0, f"--lr must be positive, got {self.lr}"),
            (self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}"),
            (self.warmup_epochs >= 0, f"--warmup-epochs must be >= 0, got {self.warmup_epochs}"),
            (
                0 <= self.min_lr_ratio <= 1,
                f"--min-lr-ratio must be in [0, 1], got {self.min_lr_ratio}",
            ),
            (0 <= self.drop_path < 1, f"--drop-path must be in [0, 1), got {self.drop_path}"),
            (0 <= self.hflip <= 1, f"--hflip must be a probability in [0, 1], got {self.hflip}"),
            (0 <= self.rotate <= 180, f"--rotate must be in [0, 180] degrees, got {self.rotate}"),
            (
                self.precision in PRECISIONS,
                f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}",
            ),
            (
                self.clip_grad is None or self.clip_grad > 0,
                f"--clip-grad must be positive, got {self.clip_grad}",
            ),
            (
                self.patience is None or self.patience >= 1,
                f"--patience must be >= 1, got {self.patience}",
            ),
            (
                self.stop_after is None or self.stop_after >= 1,
                f"--stop-after must be >= 1, got {self.stop_after}",
            ),
            (self.num_workers >= 0, f"--num-workers must be >= 0, got {self.num_workers}"),
            (
                self.val_split != self.test_split,
                "--val-split and --test-split must differ: checkpoints are never chosen on the test split",
            ),
        ]
        return [message for ok, message in checks if not ok]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def finetune(
    config: FinetuneConfig,
    source: ImageSource,
    out_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: ProgressFactory | None = None,
) -> FinetuneResult:
    """Fine-tune ``config.init`` on ``source`` into ``out_dir``; under ``torchrun`` one rank per device.

    ``resume`` continues from ``out_dir/checkpoints/last.pt`` (starting afresh when there is none);
    ``overwrite`` deletes a previous run's outputs first. ``progress(total, desc)`` makes a
    bar (rank 0 only; see :mod:`cxrprobe.progress`). Returns the summary and the per-epoch history.
    """
    from cxrprobe.devices import torchrun_context

    problems = config.problems()
    if problems:
        raise ConfigError("; ".join(problems))
    with torchrun_context(config.device) as ctx:
        return FinetuneRun(config, source, Path(out_dir), ctx, progress).execute(resume, overwrite)
