"""The ``cxrprobe probe`` workflow: embedding store → splits → probe → predictions, weights, summary.

What it writes beside ``--out`` (test and validation predictions, weights, summary, run record)
is listed in :mod:`cxrprobe.probe.outputs`, which writes it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from cxrprobe.data.finding_sets import resolve_findings
from cxrprobe.data.targets import BLANK_POLICIES, UNCERTAIN_POLICIES
from cxrprobe.devices import resolve_device
from cxrprobe.errors import ConfigError, DataFormatError, StoreMismatchError
from cxrprobe.outputs import check_output_location
from cxrprobe.probe.backends import BACKENDS, DEFAULT_TOL, get_backend
from cxrprobe.probe.curves import check_curve_options
from cxrprobe.probe.features import parse_memory
from cxrprobe.probe.fits import FITS
from cxrprobe.probe.knn import DEFAULT_KS, DEFAULT_TEMPERATURE
from cxrprobe.probe.linear import (
    CLASS_WEIGHTS,
    DEFAULT_GRID,
    SELECTIONS,
    LinearProbe,
)
from cxrprobe.probe.outputs import (
    config_dict,
    output_paths,
    store_provenance,
    training_policies,
    write_predictions,
    write_validation,
)
from cxrprobe.probe.splits import resolve_splits
from cxrprobe.probe.summary import mean_or_none, per_finding
from cxrprobe.progress import ProgressFactory
from cxrprobe.provenance import (
    atomic_write_json,
    now_utc,
    sha256_file,
    versions,
    write_run_record,
)
from cxrprobe.stats.predictions import SUFFIXES as PREDICTION_SUFFIXES

METHODS = {"linear": "linear-probe", "knn": "knn"}
_IDENTITY_IGNORED = ("dtype", "layers")  # storage details that do not change the features' meaning
_LOAD_ROWS = 65536  # rows read per call while loading features (bounds the read's temporaries)


@dataclass
class ProbeConfig:
    """Everything a probe run depends on (written to run.json and the summary)."""

    store: Path
    out: Path
    method: str = "linear"
    features: str | None = None  # None: "cls", or the kind recorded in --eval-only weights
    backend: str = "torch"
    device: str = "auto"
    grid: tuple[float, ...] = tuple(DEFAULT_GRID)
    selection: str = "mean"
    refit_trainval: bool = False
    class_weight: str = "none"
    uncertain: str = "ignore"
    blank: str = "missing"  # training targets only; ground truth is the store's labels
    findings: str | None = None  # a subset spec (finding_sets.resolve_findings); None: all
    train_split: tuple[str, ...] = ("train",)
    val_split: tuple[str, ...] = ("val",)
    test_split: tuple[str, ...] = ("test",)
    split_csv: Path | None = None
    val_fraction: float | None = None
    seed: int = 0
    ks: tuple[int, ...] = DEFAULT_KS
    temperature: float = DEFAULT_TEMPERATURE
    max_iter: int = 1000
    tol: float = DEFAULT_TOL
    max_memory: str = "auto"  # working memory of the solver / kNN search, on top of the features
    eval_only: Path | None = None
    allow_leakage: bool = False  # accept a patient in two splits (else LeakageError)
    train_fractions: tuple[float, ...] | None = None  # a label-efficiency curve (probe.curves)
    repeats: int = 1  # subsets drawn per training fraction

    def check(self) -> None:
        """Raise one ConfigError listing every invalid option."""
        problems = []
        choices = {
            "method": METHODS,
            "backend": BACKENDS,
            "selection": SELECTIONS,
            "class_weight": CLASS_WEIGHTS,
            "uncertain": UNCERTAIN_POLICIES,
            "blank": BLANK_POLICIES,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                problems.append(
                    f"--{name.replace('_', '-')} {getattr(self, name)!r} is not one of {', '.join(allowed)}"
                )
        if self.out.suffix.lower() not in PREDICTION_SUFFIXES:
            problems.append(
                f"--out {self.out} must end in .json or .npz (or .parquet / .csv for a long "
                "table): the predictions file"
            )
        if self.val_fraction is not None and not 0 < self.val_fraction < 1:
            problems.append(f"--val-fraction must be between 0 and 1, got {self.val_fraction}")
        if not self.grid or any(not np.isfinite(c) or c <= 0 for c in self.grid):
            problems.append("--grid needs positive, finite C values")
        if not self.ks or min(self.ks) < 1:
            problems.append(f"--k needs positive neighbour counts, got {list(self.ks)}")
        if str(self.max_memory).strip().lower() != "auto":
            try:
                parse_memory(self.max_memory)
            except ConfigError as exc:
                problems.append(str(exc))
        if self.eval_only is not None and self.method != "linear":
            problems.append(
                "--eval-only re-scores a linear probe's weights; the kNN probe has none (just rerun it)"
            )
        named = {"train": self.train_split, "val": self.val_split, "test": self.test_split}
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            shared = set(named[a]) & set(named[b])
            if shared and not (self.val_fraction is not None and "val" in (a, b)):
                problems.append(
                    f"--{a}-split and --{b}-split share {sorted(shared)}; splits must not overlap"
                )
        problems += check_curve_options(self.train_fractions, self.repeats)
        if self.train_fractions is not None and self.eval_only is not None:
            problems.append(
                "--eval-only re-scores one probe; it cannot draw a --train-fraction curve"
            )
        if problems:
            raise ConfigError("; ".join(problems))


def parse_grid(text: str) -> tuple[float, ...]:
    """``"1e-6:1e5:45"`` (log-spaced start:stop:count) or ``"0.01,0.1,1"`` → C values."""
    try:
        if ":" in text:
            start, stop, count = text.split(":")
            return tuple(
                np.logspace(np.log10(float(start)), np.log10(float(stop)), int(count)).tolist()
            )
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise ConfigError(
            f"--grid {text!r}: use START:STOP:COUNT (log-spaced) or comma-separated values ({exc})"
        ) from exc


# --------------------------------------------------------------------------------- helpers
def _load_features(emb: Any, kind: str, rows: np.ndarray, device: Any) -> Any:
    """Features of ``rows`` on ``device`` in the store's dtype (float16 stays float16: the probe
    standardises block by block), read ``_LOAD_ROWS`` rows at a time into one tensor."""
    import torch

    x = torch.empty(
        len(rows), emb.feature_dim(kind), dtype=getattr(torch, emb.dtype), device=device
    )
    for start in range(0, len(rows), _LOAD_ROWS):
        part = rows[start : start + _LOAD_ROWS]
        block = torch.from_numpy(emb.features(kind, rows=part, dtype=None))
        finite = torch.isfinite(block).all(dim=1)
        if not bool(finite.all()):
            row = int(part[int(torch.nonzero(~finite)[0])])
            raise DataFormatError(
                f"{emb.path}: features of row {row} ({emb.ids[row]}) are not finite although the "
                "row is not marked failed; re-extract the store"
            )
        x[start : start + len(part)] = block
    return x


# ------------------------------------------------------------------------------- workflows
def run_probe(config: ProbeConfig, progress: ProgressFactory | None = None) -> dict[str, Any]:
    """Fit (or with ``eval_only`` re-score) a probe on an embedding store and write its outputs.

    ``progress(total, desc)`` makes a bar of the linear solver's iterations, a new one per pass
    (see :mod:`cxrprobe.progress`). Returns the summary that is also written to ``<out>.summary.json``;
    the ``cxrprobe probe`` run record (resolved config and result) goes to ``<out>.run.json``.
    """
    summary = _run_probe(config, progress)
    result = (
        {"curve": summary["curve"]}
        if config.train_fractions is not None
        else {"test_mean_auroc": summary["test_mean_auroc"], "chosen": summary.get("chosen")}
    )
    write_run_record(
        output_paths(config.out)["run"],
        "cxrprobe probe",
        {**summary["config"], "result": {**result, "outputs": summary["outputs"]}},
    )
    return summary


def _run_probe(config: ProbeConfig, progress: ProgressFactory | None) -> dict[str, Any]:
    from cxrprobe.cache.embeddings import open_embeddings

    config.check()
    check_output_location(config.out, "file")  # a read-only or mistyped --out fails before the fit
    started = time.perf_counter()
    emb = open_embeddings(config.store)
    device = resolve_device(config.device)
    probe = LinearProbe.load(config.eval_only) if config.eval_only is not None else None
    if probe is None and config.method == "linear":
        get_backend(config.backend, device)  # a missing optional backend fails before any loading
    kind = _feature_kind(config, probe)
    dim = emb.feature_dim(kind)
    names = {"train": config.train_split, "val": config.val_split, "test": config.test_split}
    if probe is not None:
        names = {"test": config.test_split}
    nothing_to_choose = len(config.grid if config.method == "linear" else config.ks) == 1
    splits = resolve_splits(
        emb,
        names,
        split_csv=config.split_csv,
        val_fraction=config.val_fraction,
        seed=config.seed,
        optional=("val",) if nothing_to_choose and not config.refit_trainval else (),
        allow_leakage=config.allow_leakage,
    )
    findings, columns = _chosen_findings(config, emb, probe)
    x = {role: _load_features(emb, kind, rows, device) for role, rows in splits.rows.items()}
    labels = {role: emb.labels[rows][:, columns] for role, rows in splits.rows.items()}
    timings = {"load_s": time.perf_counter() - started}
    base = {
        "method": METHODS[config.method],
        **store_provenance(emb),
        "features": kind,
        "feature_dim": dim,
        "split": splits.names,
        "device": str(device),
        "versions": versions(),
        "config": config_dict(replace(config, features=kind)),
    }
    if config.train_fractions is not None:  # one fit per (fraction, repeat): probe.curves
        from cxrprobe.probe.curves import run_curve

        return run_curve(
            config, emb, splits, x, labels, findings, columns, base, device, progress, started
        )
    paths = output_paths(config.out)
    if probe is not None:
        _check_probe_matches(probe, emb, kind, dim, config.eval_only)
        summary, scores, provenance = _rescore(config, probe, x, base, findings)
    else:
        fit = FITS[config.method]
        summary, scores, provenance = fit(
            config, x, labels, findings, device, progress, base, paths
        )
    timings["fit_s"] = time.perf_counter() - started - timings["load_s"]
    provenance["time"] = now_utc()
    test_auroc = write_predictions(
        emb,
        splits.rows["test"],
        scores["test"],
        columns,
        findings,
        {**provenance, "scored_split": "test"},
        paths["predictions"],
    )
    val_rows = splits.rows.get("val", np.empty(0, dtype=np.int64))
    note = write_validation(
        emb,
        val_rows,
        scores.get("val"),
        columns,
        findings,
        provenance,
        paths["validation"],
        in_sample=config.refit_trainval,
    )
    timings["total_s"] = time.perf_counter() - started
    written = ("predictions", "summary", "run")
    written += ("validation",) if paths["validation"].exists() else ()
    written += ("weights",) if "probe_weights" in provenance else ()
    summary.update(
        findings=findings,
        test_auroc=per_finding(findings, test_auroc),
        test_mean_auroc=mean_or_none(test_auroc),
        splits=splits.table(),
        notes=splits.notes + ([note] if note else []),
        timings=timings,
        outputs={k: str(paths[k]) for k in written},
    )
    result = {**base, **summary, "time": now_utc()}
    atomic_write_json(paths["summary"], result)
    return result


def _chosen_findings(
    config: ProbeConfig, emb: Any, probe: LinearProbe | None
) -> tuple[list[str], np.ndarray]:
    """The findings to fit and score, in the order of the store (or of the ``--eval-only``
    weights): all, or those ``--findings`` names, and their columns in the store. ConfigError
    names a finding that is not there."""
    if probe is None:
        findings, where = list(emb.findings), f"the store {emb.path}"
    else:
        findings, where = list(probe.findings), f"the weights {config.eval_only}"
    if config.findings is not None:
        wanted = set(resolve_findings(config.findings, findings, where))
        findings = [f for f in findings if f in wanted]
    missing = [f for f in findings if f not in emb.findings]
    if missing:
        raise StoreMismatchError(f"{emb.path} lacks the findings {missing} that {where} predict")
    return findings, np.array([list(emb.findings).index(f) for f in findings], dtype=np.int64)


def _feature_kind(config: ProbeConfig, probe: LinearProbe | None) -> str:
    if probe is None:
        return config.features or "cls"
    recorded = probe.metadata.get("features")
    if config.features is not None and config.features != recorded:
        raise ConfigError(
            f"--features {config.features} differs from {recorded!r}, the kind {config.eval_only} "
            "was fitted on; leave --features out with --eval-only"
        )
    return recorded


def _comparable(identity: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in identity.items() if k not in _IDENTITY_IGNORED}


def _check_probe_matches(probe: LinearProbe, emb: Any, kind: str, dim: int, source: Path) -> None:
    """Refuses features of another model or width than the weights were fitted on."""
    if probe.coef.shape[1] != dim:
        raise StoreMismatchError(
            f"{source} expects {probe.coef.shape[1]}-d {kind} features but {emb.path} gives {dim}-d"
        )
    fitted, here = _comparable(probe.metadata.get("store_identity", {})), _comparable(emb.identity)
    differ = sorted(k for k in set(fitted) | set(here) if fitted.get(k) != here.get(k))
    if differ:
        raise StoreMismatchError(
            f"{source} was fitted on features from another model or preprocessing than {emb.path} "
            f"(identity differs in {', '.join(differ)}); re-score only stores made the same way"
        )


def _rescore(config, probe, x, base, findings):
    meta = probe.metadata
    keep = np.array([probe.findings.index(f) for f in findings], dtype=np.int64)
    chosen = {"C": per_finding(findings, probe.cs[keep]), "selection": meta.get("selection")}
    provenance = {
        **base,
        **training_policies(meta.get("uncertain"), meta.get("blank", "missing")),
        "backend": meta.get("backend"),
        "chosen": chosen,
        "eval_only": str(config.eval_only),
        "probe_weights_sha256": sha256_file(config.eval_only),
        "fitted": meta,
    }
    summary = {"eval_only": str(config.eval_only), "chosen": chosen, "fitted": meta}
    return summary, {"test": probe.predict_proba(x["test"])[:, keep]}, provenance
