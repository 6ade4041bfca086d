"""The ``cxrprobe probe`` workflow: embedding store → splits → probe → predictions, weights, summary.

Outputs for ``--out preds.json`` (or ``.npz``), side by side:

``preds.json``                 test-split predictions (probabilities) with provenance
``preds.weights.safetensors``  linear probe weights + standardisation (``--eval-only`` input)
``preds.summary.json``         grid table (validation AUROC per value), chosen value, per-finding
                               validation and test AUROC, split sizes, timings, resolved config
``preds.run.json``             the command's resolved config and versions (named after the
                               predictions, so several probes can share one folder)
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from cxrprobe.devices import resolve_device
from cxrprobe.errors import ConfigError, DataFormatError, StoreMismatchError
from cxrprobe.probe.backends import DEFAULT_TOL, get_backend
from cxrprobe.probe.knn import DEFAULT_KS, DEFAULT_TEMPERATURE
from cxrprobe.probe.linear import (
    CLASS_WEIGHTS,
    DEFAULT_GRID,
    SELECTIONS,
    UNCERTAIN_POLICIES,
    LinearProbe,
    evaluation_targets,
)
from cxrprobe.probe.splits import resolve_splits
from cxrprobe.probe.summary import knn_grid, linear_grid, mean_or_none, per_finding
from cxrprobe.progress import Bar, ProgressFactory, show_note, start_bar
from cxrprobe.provenance import atomic_write_json, now_utc, sha256_file, versions
from cxrprobe.stats.auroc import auroc

METHODS = {"linear": "linear-probe", "knn": "knn"}
BACKEND_NAMES = ("torch", "sklearn", "cuml")
_IDENTITY_IGNORED = ("dtype", "layers")  # storage details that do not change the features' meaning


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
    eval_only: Path | None = None

    def check(self) -> None:
        """Raise one ConfigError listing every invalid option."""
        problems = []
        choices = {
            "method": METHODS,
            "backend": BACKEND_NAMES,
            "selection": SELECTIONS,
            "class_weight": CLASS_WEIGHTS,
            "uncertain": UNCERTAIN_POLICIES,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                problems.append(
                    f"--{name.replace('_', '-')} {getattr(self, name)!r} is not one of {', '.join(allowed)}"
                )
        if self.out.suffix.lower() not in (".json", ".npz"):
            problems.append(f"--out {self.out} must end in .json or .npz (the predictions file)")
        if self.val_fraction is not None and not 0 < self.val_fraction < 1:
            problems.append(f"--val-fraction must be between 0 and 1, got {self.val_fraction}")
        if not self.grid or any(not np.isfinite(c) or c <= 0 for c in self.grid):
            problems.append("--grid needs positive, finite C values")
        if not self.ks or min(self.ks) < 1:
            problems.append(f"--k needs positive neighbour counts, got {list(self.ks)}")
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


def output_paths(out: Path) -> dict[str, Path]:
    """Where a run writes: predictions, weights, summary and run.json."""
    stem = out.with_suffix("")
    return {
        "predictions": out,
        "weights": stem.with_name(stem.name + ".weights.safetensors"),
        "summary": stem.with_name(stem.name + ".summary.json"),
        "run": stem.with_name(stem.name + ".run.json"),
    }


# --------------------------------------------------------------------------------- helpers
def _load_features(emb: Any, kind: str, rows: np.ndarray, device: Any) -> Any:
    import torch

    x = emb.features(kind, rows=rows, as_="torch", device=device)
    finite = torch.isfinite(x).all(dim=1)
    if not bool(finite.all()):
        row = int(rows[int(torch.nonzero(~finite)[0])])
        raise DataFormatError(
            f"{emb.path}: features of row {row} ({emb.ids[row]}) are not finite although the row "
            "is not marked failed; re-extract the store"
        )
    return x


def _store_provenance(emb: Any) -> dict[str, Any]:
    """Which model, weights and manifest the features came from (for the predictions file)."""
    identity, prov = emb.identity, emb.provenance
    model = identity.get("model") or {}
    return {
        "init": model.get("init"),
        "weights_sha256": model.get("weights_sha256"),
        "model": model or identity.get("source"),
        "dataset": {"manifest": prov.get("manifest"), "manifest_hash": prov.get("manifest_hash")},
        "store": str(emb.path),
        "store_identity": identity,
    }


def _write_predictions(emb, rows, scores, columns, findings, provenance, path) -> np.ndarray:
    """Write the test predictions (targets: -1 and NaN as not annotated); return test AUROC."""
    from cxrprobe.stats.predictions import Predictions, write_predictions

    targets = evaluation_targets(emb.labels[rows][:, columns]).astype(np.float64)
    patients = emb.patient_ids[rows]
    pred = Predictions(
        labels=list(findings),
        ids=[str(i) for i in emb.ids[rows]],
        targets=targets,
        scores=np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0),
        score_kind="probability",
        patient_ids=[str(p) for p in patients] if (patients != "").all() else None,
        provenance=provenance,
    )
    write_predictions(pred, path)
    return auroc(targets, pred.scores)


def _config_dict(config: ProbeConfig) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()}


# ------------------------------------------------------------------------------- workflows
def run_probe(config: ProbeConfig, progress: ProgressFactory | None = None) -> dict[str, Any]:
    """Fit (or with ``eval_only`` re-score) a probe on an embedding store and write its outputs.

    ``progress(total, desc)`` makes a bar of the linear solver's iterations, a new one per pass
    (see :mod:`cxrprobe.progress`). Returns the summary that is also written to ``<out>.summary.json``.
    """
    from cxrprobe.cache.embeddings import open_embeddings

    config.check()
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
    )
    x = {role: _load_features(emb, kind, rows, device) for role, rows in splits.rows.items()}
    labels = {role: emb.labels[rows] for role, rows in splits.rows.items()}
    timings = {"load_s": time.perf_counter() - started}
    base = {
        "method": METHODS[config.method],
        **_store_provenance(emb),
        "features": kind,
        "feature_dim": dim,
        "split": splits.names,
        "device": str(device),
        "versions": versions(),
        "config": _config_dict(replace(config, features=kind)),
    }
    paths = output_paths(config.out)
    if probe is not None:
        columns = _check_probe_matches(probe, emb, kind, dim, config.eval_only)
        findings = list(probe.findings)
        summary, scores, provenance = _rescore(config, probe, x, base)
    else:
        columns = np.arange(len(emb.findings))
        findings = list(emb.findings)
        fit = _fit_linear if config.method == "linear" else _fit_knn
        summary, scores, provenance = fit(
            config, x, labels, findings, device, progress, base, paths
        )
    timings["fit_s"] = time.perf_counter() - started - timings["load_s"]
    test_auroc = _write_predictions(
        emb,
        splits.rows["test"],
        scores,
        columns,
        findings,
        {**provenance, "time": now_utc()},
        paths["predictions"],
    )
    timings["total_s"] = time.perf_counter() - started
    written = ("predictions", "summary", "run") + (
        ("weights",) if "probe_weights" in provenance else ()
    )
    summary.update(
        findings=findings,
        test_auroc=per_finding(findings, test_auroc),
        test_mean_auroc=mean_or_none(test_auroc),
        splits=splits.table(),
        notes=splits.notes,
        timings=timings,
        outputs={k: str(paths[k]) for k in written},
    )
    result = {**base, **summary, "time": now_utc()}
    atomic_write_json(paths["summary"], result)
    return result


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


def _check_probe_matches(
    probe: LinearProbe, emb: Any, kind: str, dim: int, source: Path
) -> np.ndarray:
    """Column of each probe finding in the store; refuses features of another model or width."""
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
    missing = [f for f in probe.findings if f not in emb.findings]
    if missing:
        raise StoreMismatchError(f"{emb.path} lacks the findings {missing} that {source} predicts")
    return np.array([emb.findings.index(f) for f in probe.findings], dtype=np.int64)


def _rescore(config, probe, x, base):
    meta = probe.metadata
    chosen = {"C": per_finding(probe.findings, probe.cs), "selection": meta.get("selection")}
    provenance = {
        **base,
        "backend": meta.get("backend"),
        "chosen": chosen,
        "eval_only": str(config.eval_only),
        "probe_weights_sha256": sha256_file(config.eval_only),
        "fitted": meta,
    }
    summary = {"eval_only": str(config.eval_only), "chosen": chosen, "fitted": meta}
    return summary, probe.predict_proba(x["test"]), provenance


def _fit_linear(config, x, labels, findings, device, progress, base, paths):
    from cxrprobe.probe.linear import fit_linear_probe

    with _GridBar(progress) as callback:
        probe, report = fit_linear_probe(
            x["train"],
            labels["train"],
            x["val"],
            labels["val"],
            findings,
            cs=config.grid,
            backend=config.backend,
            device=device,
            selection=config.selection,
            class_weight=config.class_weight,
            uncertain=config.uncertain,
            refit_trainval=config.refit_trainval,
            max_iter=config.max_iter,
            tol=config.tol,
            callback=None if progress is None else callback,
            metadata={k: base[k] for k in ("features", "feature_dim", "store_identity", "split")},
        )
    probe.save(paths["weights"])
    summary = {
        "backend": config.backend,
        **linear_grid(report, probe, findings),
        "class_weight": config.class_weight,
        "uncertain": config.uncertain,
    }
    provenance = {
        **base,
        "backend": config.backend,
        "chosen": summary["chosen"],
        "grid": [float(c) for c in report.cs],
        "probe_weights": str(paths["weights"]),
        "probe_weights_sha256": sha256_file(paths["weights"]),
    }
    return summary, probe.predict_proba(x["test"]), provenance


class _GridBar:
    """The solver's callback ``(iterations or fits done, problems running)`` as progress bars.

    A count that goes back starts a new pass (the train+val refit), so a new bar.
    """

    def __init__(self, progress: ProgressFactory | None) -> None:
        self.progress, self.count = progress, 0
        self.bar: Bar | None = None

    def __call__(self, done: int, active: int) -> None:
        if self.bar is None or done + 1 < self.count:
            self.close()
            self.bar, self.count = start_bar(self.progress, None, "fitting grid"), 0
        self.bar.update(done + 1 - self.count)
        self.count = done + 1
        show_note(self.bar, f"active={active}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> _GridBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fit_knn(config, x, labels, findings, device, progress, base, paths):
    from cxrprobe.probe.knn import fit_knn_probe

    scores, report = fit_knn_probe(
        x["train"],
        labels["train"],
        x["val"],
        labels["val"],
        x["test"],
        ks=config.ks,
        temperature=config.temperature,
        uncertain=config.uncertain,
        device=device,
    )
    summary = {**knn_grid(report, findings), "uncertain": config.uncertain}
    provenance = {
        **base,
        "backend": "torch",
        "chosen": summary["chosen"],
        "grid": [int(k) for k in report.ks],
    }
    return summary, scores, provenance
