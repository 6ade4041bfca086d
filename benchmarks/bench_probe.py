"""Benchmark: the linear probe's grid fit on synthetic embeddings — time, convergence, AUROC.

Synthetic features mimic frozen ViT embeddings: ``n`` x ``dim`` Gaussian rows mixed through a
random rotation with a power-law spectrum (correlated, anisotropic features, offset from zero),
and ``findings`` labels from noisy linear logits with prevalences from 2% to 30%; 5% of labels
are uncertain (-1) and 10% missing (NaN), as in CheXpert-style tables. Rows are split 80/10/10
into train/val/test.

Timed: ``fit_linear_probe`` (standardisation, the whole grid in one batched L-BFGS pass,
validation AUROC of every value, selection) and scoring the test rows. ``--knn`` also times the
kNN probe; ``--compare sklearn|cuml`` fits the same data with another backend and reports the
largest validation-AUROC difference (the backends should agree within 0.005).

Targets: 100k x 768, 20 findings, 5-value grid under 180 s on 2 CPU cores; 800k x 768 under 60 s
on one H100. Defaults: ``--n`` 100000 on CPU and 800000 on CUDA. Prints one JSON line::

    python benchmarks/bench_probe.py --device cpu --n 20000
    python benchmarks/bench_probe.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from cxrprobe.probe.knn import fit_knn_probe
from cxrprobe.probe.linear import fit_linear_probe
from cxrprobe.probe.run import parse_grid, resolve_device
from cxrprobe.stats.auroc import auroc

TARGET_S = {"cpu": 180.0, "cuda": 60.0}


def synthetic(
    n: int, dim: int, n_findings: int, device: torch.device, seed: int = 0, chunk: int = 100_000
):
    """Correlated features (n, dim) float32 on ``device`` and labels (n, L) with 1/0/-1/NaN (numpy)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(dim, dim, generator=gen))[0]
    spectrum = torch.arange(1, dim + 1, dtype=torch.float32) ** -0.8
    mix = (spectrum[:, None] * basis).to(device)
    directions = (torch.randn(dim, n_findings, generator=gen) / dim**0.5).to(device)
    x = torch.empty(n, dim, device=device)
    logits = torch.empty(n, n_findings, device=device)
    gen_dev = torch.Generator(device=device).manual_seed(seed + 1)
    for start in range(0, n, chunk):
        rows = slice(start, min(start + chunk, n))
        z = torch.randn(rows.stop - rows.start, dim, generator=gen_dev, device=device)
        x[rows] = z @ mix + 0.3
        logits[rows] = (z @ directions) * 1.5 + torch.randn(
            rows.stop - rows.start, n_findings, generator=gen_dev, device=device
        )
    prevalence = torch.linspace(0.02, 0.3, n_findings, device=device)
    sample = logits[: min(n, 200_000)]
    thresholds = torch.stack(
        [torch.quantile(sample[:, j], 1 - prevalence[j]) for j in range(n_findings)]
    )
    labels = (logits > thresholds).float().cpu().numpy()
    u = np.random.default_rng(seed + 2).random(labels.shape)
    labels[u < 0.05] = -1
    labels[(u >= 0.05) & (u < 0.15)] = np.nan
    return x, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--n", type=int, default=None, help="rows (default 100000 on CPU, 800000 on CUDA)"
    )
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--findings", type=int, default=20)
    parser.add_argument(
        "--grid", default="1e-6:1e5:5", help="C values: START:STOP:COUNT or a comma list"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's)"
    )
    parser.add_argument("--max-iter", type=int, default=1000)
    parser.add_argument("--tol", type=float, default=1e-6)
    parser.add_argument(
        "--knn", action="store_true", help="also time the kNN probe (k in 10,20,100,200)"
    )
    parser.add_argument(
        "--compare",
        choices=["sklearn", "cuml"],
        default=None,
        help="fit the same data with another backend and report the validation-AUROC gap",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    n = args.n or (800_000 if device.type == "cuda" else 100_000)
    grid = parse_grid(args.grid)

    started = time.perf_counter()
    x, labels = synthetic(n, args.dim, args.findings, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    generate_s = time.perf_counter() - started
    train, val, test = (
        slice(0, int(0.8 * n)),
        slice(int(0.8 * n), int(0.9 * n)),
        slice(int(0.9 * n), n),
    )
    names = [f"finding{j}" for j in range(args.findings)]

    iterations = []
    started = time.perf_counter()
    probe, report = fit_linear_probe(
        x[train],
        labels[train],
        x[val],
        labels[val],
        names,
        cs=grid,
        backend="torch",
        device=device,
        max_iter=args.max_iter,
        tol=args.tol,
        callback=lambda it, active: iterations.append(it),
    )
    fit_s = time.perf_counter() - started
    started = time.perf_counter()
    scores = probe.predict_proba(x[test])
    predict_s = time.perf_counter() - started
    test_targets = np.where(labels[test] == -1, np.nan, labels[test])
    total = fit_s + predict_s
    result = {
        "benchmark": "probe",
        "n": n,
        "dim": args.dim,
        "findings": args.findings,
        "grid": list(grid),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "generate_s": round(generate_s, 2),
        "fit_s": round(fit_s, 2),
        "predict_s": round(predict_s, 2),
        "total_s": round(total, 2),
        "target_s": TARGET_S[device.type],
        "within_target": total < TARGET_S[device.type],
        "solver_iterations": max(iterations, default=0) + 1,
        "max_n_iter": int(report.n_iter.max()),
        "not_converged": int((report.status != 0).sum()),
        "val_mean_auroc": [round(float(v), 4) for v in report.val_mean],
        "chosen_C": float(report.cs[report.chosen[0]]),
        "test_mean_auroc": round(float(np.nanmean(auroc(test_targets, scores))), 4),
    }
    if device.type == "cuda":
        result["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    if args.compare:
        started = time.perf_counter()
        _, other = fit_linear_probe(
            x[train],
            labels[train],
            x[val],
            labels[val],
            names,
            cs=grid,
            backend=args.compare,
            max_iter=args.max_iter,
            tol=args.tol,
        )
        result[f"{args.compare}_s"] = round(time.perf_counter() - started, 2)
        result[f"{args.compare}_max_val_auroc_gap"] = round(
            float(np.nanmax(np.abs(other.val_auroc - report.val_auroc))), 5
        )
    if args.knn:
        started = time.perf_counter()
        _, knn = fit_knn_probe(x[train], labels[train], x[val], labels[val], x[test], device=device)
        result["knn_s"] = round(time.perf_counter() - started, 2)
        result["knn_chosen_k"] = knn.chosen_k
    print(json.dumps(result))


if __name__ == "__main__":
    main()
