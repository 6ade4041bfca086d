"""What a fine-tuning run trains on, and in what steps: the findings kept (:func:`with_findings`),
the usable rows of each split (:func:`split_rows`), the patient-leakage check
(:func:`check_leakage`) and the batch plan from the global batch size (:func:`make_plan`)."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np

from cxrprobe.cache.source import ImageSource
from cxrprobe.data.finding_sets import resolve_findings
from cxrprobe.data.splits import check_patient_leakage
from cxrprobe.data.targets import evaluation_targets, fittable, to_targets
from cxrprobe.errors import ConfigError
from cxrprobe.finetune.trainer import Plan


def _where(source: ImageSource) -> str:
    """The images of ``source`` as an error message names them (path, manifest or name)."""
    described = source.description
    return (
        f"the images {described.get('path') or described.get('manifest') or described.get('name')}"
    )


def with_findings(source: ImageSource, spec: str | None) -> ImageSource:
    """``source`` with only the findings ``spec`` names (``finding_sets.resolve_findings``; None:
    all, unchanged); ConfigError names an unknown finding or one the source lacks."""
    if spec is None:
        return source
    meta = source.metadata
    wanted = set(resolve_findings(spec, meta.findings, _where(source)))
    columns = [i for i, f in enumerate(meta.findings) if f in wanted]  # the source's order
    findings = tuple(meta.findings[i] for i in columns)
    subset = replace(meta, labels=meta.labels[:, columns], findings=findings)  # subgroups kept
    return replace(source, metadata=subset)


def split_rows(source: ImageSource, config: Any) -> dict[str, np.ndarray]:
    """Train/val/test row numbers without known failures; training rows need at least one
    training target (under the ``uncertain``/``blank`` policies).

    Raises ``ConfigError`` when a split is empty, or when no finding has both a positive and a
    negative validation label (checkpoints could not be selected; validation is judged on the
    labels as they are, see :func:`~cxrprobe.data.targets.evaluation_targets`).
    """
    meta = source.metadata
    usable = np.ones(len(meta), dtype=bool)
    usable[list(source.known_failures)] = False
    observed = to_targets(meta.labels, config.uncertain, config.blank)[1]
    rows = {}
    for role in ("train", "val", "test"):
        name = getattr(config, f"{role}_split")
        chosen = usable & (meta.split == name)
        if role == "train":
            chosen &= observed.any(axis=1)
        rows[role] = np.flatnonzero(chosen)
        if rows[role].size == 0:
            raise ConfigError(
                f"the {role} split ({name!r}) has no usable rows; check the manifest's split column or pass --{role}-split"
            )
    if not fittable(evaluation_targets(meta.labels[rows["val"]])).any():
        raise ConfigError(
            f"no finding has both positive and negative labels in the validation split ({config.val_split!r}), "
            "so checkpoints cannot be selected: add validation rows or choose another --val-split"
        )
    return rows


def check_leakage(source: ImageSource, rows: dict[str, np.ndarray], allow: bool) -> list[str]:
    """Refuse a patient with rows in two of train/val/test (``LeakageError`` unless ``allow``);
    returns the patients allowed in several splits (sorted), for the run record."""
    meta = source.metadata
    every = np.concatenate(list(rows.values()))
    roles = np.concatenate([np.full(len(r), role, dtype=object) for role, r in rows.items()])
    return check_patient_leakage(
        roles,
        np.asarray(meta.patient_id, dtype=str)[every],
        allow=allow,
        source=_where(source),
        fix="Give every patient's images one split: rebuild the manifest with a patient-level "
        "split (`cxrprobe manifest ... --split random`) and the image cache from it",
    )


def make_plan(config: Any, n_train: int, world_size: int, device_type: str) -> Plan:
    """Micro-batch, steps per epoch and schedule length from the global batch size."""
    per_step = world_size * config.accum_steps
    if config.batch_size % per_step:
        raise ConfigError(
            f"--batch-size {config.batch_size} is not divisible by processes × --accum-steps "
            f"({world_size} × {config.accum_steps}); choose a multiple of {per_step}"
        )
    micro = config.batch_size // per_step
    steps = (math.ceil(n_train / world_size) // micro) // config.accum_steps
    if steps < 1:
        raise ConfigError(
            f"the training split has {n_train} usable images, fewer than one batch of {config.batch_size}; lower --batch-size"
        )
    precision = config.precision
    if precision == "auto":
        precision = "bf16" if device_type == "cuda" else "fp32"
    return Plan(
        micro_batch=micro,
        accum_steps=config.accum_steps,
        steps_per_epoch=steps,
        total_steps=steps * config.epochs,
        warmup_steps=round(config.warmup_epochs * steps),
        precision=precision,
    )
