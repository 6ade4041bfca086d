"""Fine-tuned backbones as initialisations: ``--init run:RUN_DIR`` and ``--weights best.pt``.

A ``cxrprobe finetune`` run folder holds ``run.json`` (its resolved config, with the model spec),
``summary.json`` (written when the run finishes, ``"finished": true``) and
``checkpoints/best.pt`` (the best validation epoch's classifier: ``backbone.*`` and ``head.*``
tensors plus the ``model_spec`` they were built with). :func:`finished_run` checks a folder is
such a run, finished, and names what is missing otherwise; :func:`adopt_recorded` takes the
architecture, timm constructor overrides and input normalisation from the recorded spec, so
the user need not repeat them (and refuses options that contradict it). The weights themselves
are read by :mod:`cxrprobe.weights`, which drops the head and the ``backbone.`` prefix.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxrprobe.errors import ConfigError, DataFormatError, InputFileError, WeightsError

RUN_PREFIX = "run:"
CHECKPOINT = Path("checkpoints") / "best.pt"
_COMMAND = "cxrprobe finetune"
RECORDED_NORMALIZATION = "fine-tuning run"  # ModelSpec.normalization when taken from the run


@dataclass(frozen=True)
class FinetunedRun:
    """A finished fine-tuning run: its folder, best checkpoint and the model spec it recorded."""

    folder: Path
    checkpoint: Path
    model: dict[str, Any]


def finished_run(folder: str | os.PathLike) -> FinetunedRun:
    """The finished ``cxrprobe finetune`` run in ``folder``; refuses anything else, naming what
    is missing and how to finish it."""
    folder = Path(os.path.expanduser(str(folder)))
    where = f"--init {RUN_PREFIX}{folder}"
    if not folder.is_dir():
        raise InputFileError(
            f"{where}: no such folder; give the --out folder of a `{_COMMAND}` run"
        )
    record = _json(folder / "run.json", where)
    if record is None or record.get("command") != _COMMAND:
        found = "no run.json" if record is None else f"run.json is from `{record.get('command')}`"
        raise ConfigError(
            f"{where}: not a fine-tuning run folder ({found}); give the --out folder of a "
            f"`{_COMMAND}` run"
        )
    summary = _json(folder / "summary.json", where)
    if summary is None or summary.get("finished") is not True:
        raise ConfigError(
            f"{where}: the fine-tuning run is not finished ({_progress(folder)}); finish it with "
            f"`{_COMMAND} ... --out {folder} --resume` (the options it started with)"
        )
    checkpoint = folder / CHECKPOINT
    if not checkpoint.is_file():
        raise InputFileError(
            f"{where}: {checkpoint} (the best validation epoch's weights) is missing; restore it "
            f"or rerun the fine-tune with `{_COMMAND} ... --out {folder} --overwrite`"
        )
    model = (record.get("config") or {}).get("model")
    if not isinstance(model, Mapping) or not model.get("arch"):
        raise DataFormatError(
            f"{folder / 'run.json'}: holds no model spec (config.model.arch); the run folder is "
            "damaged, rerun the fine-tune"
        )
    return FinetunedRun(folder.resolve(), checkpoint.resolve(), dict(model))


def _json(path: Path, where: str) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataFormatError(
            f"{where}: {path} is not valid JSON ({exc}); rerun the fine-tune"
        ) from exc
    return data if isinstance(data, dict) else None


def _progress(folder: Path) -> str:
    """How far an unfinished run got, from its per-epoch log."""
    log = folder / "log.csv"
    if not log.is_file():
        return "no epoch has finished"
    epochs = max(len(log.read_text().splitlines()) - 1, 0)
    return f"no summary.json; {epochs} epoch(s) in log.csv"


@dataclass(frozen=True)
class Adopted:
    """Model settings after taking what the checkpoint recorded (None: not recorded)."""

    arch: str | None
    model_kwargs: dict[str, Any]
    mean: Sequence[float] | None
    std: Sequence[float] | None
    normalization: str | None  # ModelSpec.normalization when the recorded mean/std are used


def adopt_recorded(
    recorded: Mapping[str, Any] | None,
    *,
    source: str,
    arch: str | None,
    fixed_arch: str | None,
    model_kwargs: Mapping[str, Any] | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
) -> Adopted:
    """The architecture, timm overrides and normalisation to build, given what a fine-tuning
    checkpoint recorded (``recorded``, its ModelSpec as a dict; None: nothing recorded).

    ``arch`` is the user's ``--arch`` (None: not given) and ``fixed_arch`` the architecture an
    ``--init`` imposes (hub and ``timm:`` inits; None where the user may choose). Recorded values
    fill what was not given; a given ``--arch`` or ``--model-kwargs`` that contradicts the record
    is refused, naming ``source``; a given ``--mean`` or ``--std`` replaces the recorded one.
    """
    kwargs = dict(model_kwargs or {})
    if recorded is None:
        return Adopted(arch, kwargs, mean, std, None)
    rec_arch, rec_kwargs = str(recorded["arch"]), dict(recorded.get("model_kwargs") or {})
    if fixed_arch is not None and fixed_arch != rec_arch:
        raise WeightsError(
            f"{source} was fine-tuned as {rec_arch} (recorded in it), but the --init's "
            f"architecture is {fixed_arch}; use --init {RUN_PREFIX}RUN_DIR with its run folder"
        )
    if arch is not None and arch != rec_arch:
        raise ConfigError(
            f"--arch {arch} contradicts {source}, which records {rec_arch}; drop --arch"
        )
    if kwargs and kwargs != rec_kwargs:
        raise ConfigError(
            f"--model-kwargs {json.dumps(kwargs)} contradicts {source}, which records "
            f"{json.dumps(rec_kwargs)}; drop --model-kwargs"
        )
    given = mean is not None or std is not None
    return Adopted(
        rec_arch,
        rec_kwargs,
        tuple(recorded["mean"]) if mean is None else mean,
        tuple(recorded["std"]) if std is None else std,
        None if given else RECORDED_NORMALIZATION,
    )
