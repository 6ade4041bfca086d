"""The fine-tuning recipes: settings (:class:`FinetuneConfig`, :data:`RECIPES`) and :func:`finetune`.

Fine-tunes any initialisation on an :class:`~cxrprobe.cache.source.ImageSource` (the image
cache, raw files or arrays).

Two recipes, as data: ``modern`` (the default) is cxrprobe's own — AdamW at lr 1e-5 with weight
decay 0.01, batch 32, 10 epochs with early stopping on the validation mean AUROC, bf16 autocast on
CUDA, inputs normalised with the model's mean and std. ``study`` is the study's training code
(AdamW lr 1e-5 without weight decay, batch 30, 100 epochs, float32, [0, 1] inputs, the epoch with
the lowest validation loss kept). Both weigh the BCE by ``pos_weight`` (negatives / positives per
finding on the training split) and augment by a random horizontal flip and a ±7° rotation at
224 px. :meth:`FinetuneConfig.from_recipe` fills every setting not given explicitly from a recipe
and records which ones it filled. Warm-up + cosine, layer-wise lr decay, gradient clipping and
accumulation, drop-path, gradient checkpointing and ``torch.compile`` are options. Uncertain and
missing labels are masked out of the loss unless ``uncertain`` / ``blank`` map them to a class
(training targets only; validation and test are judged on the labels as the manifest made them,
:mod:`cxrprobe.data.targets`); ``findings`` trains on a subset of the source's findings (a spec
for :func:`~cxrprobe.data.finding_sets.resolve_findings`). Each epoch is validated on
the **validation** split — the test split is never looked at before training ends (the study's
code chose its checkpoints on its test set; cxrprobe never does) — the best epoch's weights are
kept, and training stops early after ``patience`` epochs without improvement. Only then is the
test split scored, with the best weights. A patient with images in two of the train, validation
and test splits is refused before training (``LeakageError``) unless ``allow_leakage``.

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

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from cxrprobe.cache.source import ImageSource, check_image_source, from_cache, from_manifest
from cxrprobe.data.preprocess import NO_NORMALIZATION, PRESETS, preset_config
from cxrprobe.data.targets import BLANK_POLICIES, UNCERTAIN_POLICIES
from cxrprobe.errors import ConfigError
from cxrprobe.finetune.augment import ROTATE_MODES
from cxrprobe.finetune.outputs import OUTPUTS
from cxrprobe.finetune.plan import with_findings
from cxrprobe.finetune.run import FinetuneResult, FinetuneRun
from cxrprobe.outputs import check_output_location, check_replaceable
from cxrprobe.progress import ProgressFactory

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
SELECT_BY = ("auroc", "loss")  # validation metric choosing the best epoch

# The settings each recipe gives every option not set explicitly (FinetuneConfig field names).
# docs/finetune.md lists both side by side with the study's source lines.
_SHARED = {  # the study's (tayebiarasteh/vit-med at bcc0db8), kept by the modern recipe
    "size": 224,
    "lr": 1e-5,
    "schedule": "constant",
    "warmup_epochs": 0.0,
    "min_lr_ratio": 0.0,
    "layer_decay": 1.0,
    "clip_grad": None,
    "drop_path": 0.0,
    "class_weights": True,
    "hflip": 0.5,
    "rotate": 7.0,
}
RECIPES: dict[str, dict[str, Any]] = {
    "modern": {
        **_SHARED,
        "epochs": 10,
        "batch_size": 32,
        "weight_decay": 0.01,
        "rotate_mode": "bilinear",
        "precision": "auto",  # bf16 autocast on CUDA, float32 on CPU
        "patience": 5,
        "select_by": "auroc",
        "mean": None,  # the model config's normalisation
        "std": None,
    },
    "study": {
        **_SHARED,
        "epochs": 100,
        "batch_size": 30,
        "weight_decay": 0.0,
        "rotate_mode": "nearest",  # torchvision RandomRotation's default
        "precision": "fp32",
        "patience": None,  # all epochs are trained
        "select_by": "loss",  # the lowest validation loss
        "mean": NO_NORMALIZATION[0],  # ToTensor's [0, 1] input, no Normalize
        "std": NO_NORMALIZATION[1],
    },
}
# The image preprocessing a recipe expects (None: any); with --manifest it is the default preset.
RECIPE_PRESETS: dict[str, str | None] = {"modern": None, "study": "study"}
_MODERN = RECIPES["modern"]


@dataclass
class FinetuneConfig:
    """Every setting of a fine-tuning run (the CLI's options); the defaults are the ``modern``
    recipe. :meth:`from_recipe` builds one from a recipe and the settings given explicitly."""

    init: str = "dinov2"
    weights: str | None = None
    arch: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    mean: tuple[float, ...] | None = _MODERN["mean"]  # input normalisation (None: model config)
    std: tuple[float, ...] | None = _MODERN["std"]
    size: int = _MODERN["size"]
    epochs: int = _MODERN["epochs"]
    batch_size: int = _MODERN["batch_size"]  # global: images per optimiser step, all processes
    accum_steps: int = 1
    eval_batch_size: int | None = None
    lr: float = _MODERN["lr"]
    weight_decay: float = _MODERN["weight_decay"]
    schedule: str = _MODERN["schedule"]
    warmup_epochs: float = _MODERN["warmup_epochs"]
    min_lr_ratio: float = _MODERN["min_lr_ratio"]
    layer_decay: float = _MODERN["layer_decay"]
    clip_grad: float | None = _MODERN["clip_grad"]
    drop_path: float = _MODERN["drop_path"]
    class_weights: bool = _MODERN["class_weights"]
    hflip: float = _MODERN["hflip"]
    rotate: float = _MODERN["rotate"]
    rotate_mode: str = _MODERN["rotate_mode"]
    precision: str = _MODERN["precision"]
    grad_checkpointing: bool = False
    compile: bool = False
    patience: int | None = _MODERN["patience"]
    select_by: str = _MODERN["select_by"]
    recipe: str = "modern"
    recipe_filled: tuple[str, ...] = ()  # the settings the recipe set (not given explicitly)
    seed: int = 0
    num_workers: int = 0
    device: str = "auto"
    stop_after: int | None = None  # epochs to run in this invocation (time-limited jobs)
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    uncertain: str = "ignore"  # training targets: -1 masked, or 0 / 1
    blank: str = "missing"  # training targets: blanks masked, or 0
    findings: str | None = None  # a subset spec of the source's findings (None: all)
    allow_leakage: bool = False  # accept a patient in two splits (else LeakageError)

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
                self.rotate_mode in ROTATE_MODES,
                f"--rotate-mode must be one of {', '.join(ROTATE_MODES)}, got {self.rotate_mode!r}",
            ),
            (
                self.select_by in SELECT_BY,
                f"--select-by must be one of {', '.join(SELECT_BY)}, got {self.select_by!r}",
            ),
            (
                self.recipe in RECIPES,
                f"--recipe must be one of {', '.join(RECIPES)}, got {self.recipe!r}",
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
                self.uncertain in UNCERTAIN_POLICIES,
                f"--uncertain must be one of {', '.join(UNCERTAIN_POLICIES)}, got {self.uncertain!r}",
            ),
            (
                self.blank in BLANK_POLICIES,
                f"--blank must be one of {', '.join(BLANK_POLICIES)}, got {self.blank!r}",
            ),
            (
                self.val_split != self.test_split,
                "--val-split and --test-split must differ: checkpoints are never chosen on the test split",
            ),
        ]
        return [message for ok, message in checks if not ok]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_recipe(cls, recipe: str = "modern", **given: Any) -> FinetuneConfig:
        """The settings of ``recipe`` overridden by ``given`` (explicit settings always win).

        ``mean`` and ``std`` go together: giving either keeps the recipe's normalisation out.
        The result records the recipe and, in ``recipe_filled``, the settings it set.
        """
        if recipe not in RECIPES:
            raise ConfigError(f"--recipe must be one of {', '.join(RECIPES)}, got {recipe!r}")
        filled = {k: v for k, v in RECIPES[recipe].items() if k not in given}
        if "mean" in given or "std" in given:
            filled.pop("mean", None)
            filled.pop("std", None)
        return cls(**{**filled, **given, "recipe": recipe, "recipe_filled": tuple(sorted(filled))})


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
    check_output_location(out_dir, "folder")  # before any training
    source = with_findings(source, config.findings)
    check_preprocessing(config.recipe, source)
    if overwrite:  # clears only a fine-tuning run's own outputs, never another folder's files
        check_replaceable(out_dir, "finetune", own_names=OUTPUTS)
    with torchrun_context(config.device) as ctx:
        return FinetuneRun(config, source, Path(out_dir), ctx, progress).execute(resume, overwrite)


def check_preprocessing(recipe: str, source: ImageSource | None) -> None:
    """Warn when ``source``'s images were not preprocessed as ``recipe`` expects (the ``study``
    recipe: the ``study`` preset), naming the preset that reproduces it."""
    from cxrprobe.devices import is_main_rank

    preset = RECIPE_PRESETS.get(recipe)
    if preset is None or source is None or source.preprocess is None or not is_main_rank():
        return
    used = source.preprocess["config"]
    if used != PRESETS[preset].with_size(source.size).to_dict():
        where = source.description.get("path") or source.description.get("manifest") or "the images"
        logger.warning(
            "--recipe %s expects images preprocessed with the %r preset, but %s used %s; "
            "for the study's pixels rebuild the cache with `cxrprobe preprocess --preset %s` "
            "(or pass --manifest, where --recipe %s selects that preset)",
            recipe,
            preset,
            where,
            used,
            preset,
            recipe,
        )


def finetune_config(params: Mapping[str, Any]) -> FinetuneConfig:
    """The ``FinetuneConfig`` of parsed ``cxrprobe finetune`` options: the options given (None:
    not given), by the library's names, over ``--recipe``'s."""
    weights, class_weight = params["weights"], params["class_weight"]
    values = {
        **params,
        "weights": None if weights is None else str(weights),
        "class_weights": None if class_weight is None else class_weight == "pos_weight",
        "num_workers": params["workers"],
    }
    names = {f.name for f in fields(FinetuneConfig)} - {"recipe", "recipe_filled"}
    given = {name: values[name] for name in names if values.get(name) is not None}
    if params["patience"] == 0:
        given["patience"] = None  # 0: never stop early
    return FinetuneConfig.from_recipe(params.get("recipe") or "modern", **given)


def run_finetune(params: Mapping[str, Any], progress: ProgressFactory | None) -> FinetuneResult:
    """Fine-tune with parsed ``cxrprobe finetune`` options on the image source they name (the
    command and a study's step both run this); returns the result."""
    raw = {k: params[k] for k in ("root", "preset", "aspect", "equalize")}
    check_image_source(params["images"], params["manifest"], **raw)
    config = finetune_config(params)
    if params["images"] is not None:
        source = from_cache(params["images"])
    else:
        preset = params["preset"] or RECIPE_PRESETS[config.recipe]  # None: the default preset
        settings = preset_config(
            preset, size=config.size, aspect=raw["aspect"], equalize=raw["equalize"]
        )
        source = from_manifest(params["manifest"], params["root"], settings)
    return finetune(
        config,
        source,
        params["out"],
        resume=params["resume"],
        overwrite=params["overwrite"],
        progress=progress,
    )
