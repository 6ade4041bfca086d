"""Paired bootstrap AUROC: cxrprobe's counts-based engine against a roc_auc_score loop.

Synthetic test set of ``--n`` rows and ``--labels`` labels (prevalence 2-30 %, 5 % of targets
not annotated, scores rounded to 4 decimals so ties occur), two correlated models, ``--resamples``
paired resamples on ``--device``. Prints one JSON line:

- ``bootstrap_s``: both models' AUROC on every resample and label (counts drawn, sorted plans
  built, chunks evaluated, results on the host); on CUDA the draws are generated on the GPU
  (counter-based, the same numbers as on the CPU);
- ``end_to_end_s``: the whole ``compare_predictions`` (the above plus Youden threshold metrics on
  the same counts, percentile CIs, bootstrap p-values, BH-FDR and DeLong), from arrays in memory;
- ``baseline_s_per_resample``: the straightforward loop, ``roc_auc_score`` per model and label on
  the rows of the same resample indices, timed on the first ``--baseline-resamples`` resamples;
  ``baseline_s_extrapolated`` multiplies it by the number of resamples (it is not run in full);
- ``speedup``: ``baseline_s_extrapolated / bootstrap_s``, both from this run;
- ``max_abs_diff_vs_baseline``: largest AUROC difference on those identical indices;
- ``peak_mem_mb``: CUDA ``max_memory_allocated`` during the bootstrap, or on CPU the growth of the
  process's peak resident set over the bootstrap (an upper bound); ``naive_bnl_mb`` is the size a
  B x n x L float64 array would take, for contrast.

Whole-process ``cxrprobe compare`` timings (start-up, reading files, the report) are
``benchmarks/bench_compare.py``.

Example: ``python benchmarks/bench_bootstrap.py --n 20000 --labels 5 --resamples 200``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time

import numpy as np
from sklearn.metrics import roc_auc_score

from cxrprobe.stats.bootstrap import AurocStatistic, make_resampler, run_bootstrap
from cxrprobe.stats.engine import default_chunk, make_backend
from cxrprobe.stats.predictions import Predictions
from cxrprobe.stats.report import BootstrapOptions, compare_predictions


def synthetic(n: int, labels: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    prevalence = rng.uniform(0.02, 0.3, labels)
    targets = (rng.random((n, labels)) < prevalence).astype(np.float64)
    targets[rng.random((n, labels)) < 0.05] = np.nan
    signal = np.nan_to_num(targets)
    shared = rng.normal(size=(n, labels))
    a = 1 / (1 + np.exp(-(1.0 * signal + shared + 0.5 * rng.normal(size=(n, labels)))))
    b = 1 / (1 + np.exp(-(1.2 * signal + shared + 0.5 * rng.normal(size=(n, labels)))))
    return targets, np.round(a, 4), np.round(b, 4)


def baseline(targets, scores, resampler, count: int) -> tuple[float, np.ndarray]:
    """Seconds per resample of the roc_auc_score loop, and its AUROCs (count, models, L)."""
    out = np.full((count, len(scores), targets.shape[1]), np.nan)
    start = time.perf_counter()
    for b in range(count):
        rows = resampler.indices(b)
        y_all = targets[rows]
        for m, s in enumerate(scores):
            s_all = s[rows]
            for col in range(targets.shape[1]):
                keep = ~np.isnan(y_all[:, col])
                y = y_all[keep, col]
                if 0 < y.sum() < y.size:
                    out[b, m, col] = roc_auc_score(y, s_all[keep, col])
    return (time.perf_counter() - start) / count, out


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--labels", type=int, default=20)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--chunk-size", type=int, default=None)
    parser.add_argument("--baseline-resamples", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    engine = make_backend(args.device)
    cuda = engine.name == "torch"
    device = str(engine.device)
    targets, a, b = synthetic(args.n, args.labels, args.seed)
    resampler = make_resampler(args.n, args.resamples, seed=args.seed)
    if cuda:  # warm up kernels and the allocator outside the timing
        import torch

        run_bootstrap(make_resampler(args.n, 2), {"a": AurocStatistic(targets, a)}, device=device)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss_before = peak_rss_mb()
    start = time.perf_counter()
    statistics = {"a": AurocStatistic(targets, a), "b": AurocStatistic(targets, b)}
    boot = run_bootstrap(resampler, statistics, device=device, chunk_size=args.chunk_size)
    bootstrap_s = time.perf_counter() - start
    peak_mb = torch.cuda.max_memory_allocated() / 2**20 if cuda else peak_rss_mb() - rss_before

    options = BootstrapOptions(
        resamples=args.resamples, seed=args.seed, device=device, chunk_size=args.chunk_size
    )
    names = [str(i) for i in range(args.n)]
    labels = [f"label{k}" for k in range(args.labels)]
    pred_a = Predictions(labels, names, targets, a, "probability")
    pred_b = Predictions(labels, names, targets, b, "probability")
    start = time.perf_counter()
    report = compare_predictions(pred_a, pred_b, options)
    end_to_end_s = time.perf_counter() - start

    count = min(args.baseline_resamples, args.resamples)
    per_resample, reference = baseline(targets, [a, b], resampler, count)
    fast = np.stack([boot["a"][:count], boot["b"][:count]], axis=1)
    both = ~np.isnan(reference)
    assert np.array_equal(both, ~np.isnan(fast)), "undefined labels differ from the baseline"
    result = {
        "benchmark": "paired bootstrap AUROC",
        "n": args.n,
        "labels": args.labels,
        "resamples": args.resamples,
        "models": 2,
        "device": device,
        "device_name": torch.cuda.get_device_name(device)
        if cuda
        else platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "chunk_size": args.chunk_size or default_chunk(args.n, "cuda" if cuda else "cpu"),
        "bootstrap_s": round(bootstrap_s, 3),
        "end_to_end_s": round(end_to_end_s, 3),
        "baseline_resamples_timed": count,
        "baseline_s_per_resample": round(per_resample, 4),
        "baseline_s_extrapolated": round(per_resample * args.resamples, 1),
        "baseline_note": "roc_auc_score loop timed on the first resamples, extrapolated linearly",
        "speedup": round(per_resample * args.resamples / bootstrap_s, 1),
        "max_abs_diff_vs_baseline": float(np.max(np.abs(fast[both] - reference[both]))),
        "peak_mem_mb": round(peak_mb, 1),
        "peak_mem_kind": "cuda max_memory_allocated"
        if cuda
        else "growth of peak RSS during the bootstrap (upper bound)",
        "naive_bnl_mb": round(args.resamples * args.n * args.labels * 8 / 2**20, 1),
        "mean_delta": report["mean"]["delta"],
        "mean_p_bootstrap": report["mean"]["p_bootstrap"],
        "load_avg_1min": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
