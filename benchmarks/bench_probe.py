"""Benchmark: the linear probe's grid fit on synthetic embeddings — time, convergence, AUROC, memory.

Synthetic features mimic frozen ViT embeddings: ``n`` x ``dim`` Gaussian rows mixed through a
random rotation with a power-law spectrum (correlated, anisotropic features, offset from zero),
and ``findings`` labels from noisy linear logits with prevalences from 2% to 30% (thresholds from
the logits' exact normal quantiles); 5% of labels are uncertain (-1) and 10% missing (NaN), as in
CheXpert-style tables. Rows are split 80/10/10 into train/val/test. Generated in chunks, so the
generator itself never holds more than one chunk beyond its output.

In memory (default): ``fit_linear_probe`` (standardisation, the whole grid in one batched L-BFGS
pass, validation AUROC of every value, selection) and scoring the test rows are timed. ``--knn``
also times the kNN probe; ``--compare sklearn|cuml`` fits the same data with another backend and
reports the largest validation-AUROC difference (the backends should agree within 0.005).
Targets: 100k x 768, 20 findings, 5-value grid under 180 s on 2 CPU cores; 800k x 768 under 60 s
on one H100. Defaults: ``--n`` 100000 on CPU and 800000 on CUDA.

Peak memory (``--rss-curve N1,N2,...``): for each size a float16 embedding store of ``dim / 2``
``cls`` and ``dim / 2`` ``mean`` features is written shard by shard, then ``cxrprobe probe``'s
workflow (``run_probe`` with ``--features cls+mean``: loading, standardisation, the grid,
selection, test predictions) runs on it in a fresh process, which reports its peak resident set
(``VmHWM``; ``getrusage``'s ``ru_maxrss`` too, which in a child also counts the parent's resident
set at the fork). Target: <= 8 GB at 800k x 1536 with the 45-value grid, <= 3 GB at
200k. Prints one JSON line per size, then the curve::

    python benchmarks/bench_probe.py --device cpu --n 20000
    python benchmarks/bench_probe.py --device cuda
    nice -n 10 python benchmarks/bench_probe.py --rss-curve 100000,200000 --dim 1536 --grid 1e-6:1e5:45
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cxrprobe.probe.knn import fit_knn_probe
from cxrprobe.probe.linear import fit_linear_probe
from cxrprobe.probe.run import parse_grid, resolve_device
from cxrprobe.stats.auroc import auroc

TARGET_S = {"cpu": 180.0, "cuda": 60.0}
RSS_TARGET_GIB = {200_000: 3.0, 800_000: 8.0}  # at dim 1536, the 45-value grid


def synthetic_chunks(
    n: int, dim: int, n_findings: int, device: torch.device, seed: int = 0, chunk: int = 100_000
):
    """Yield ``(rows, x, labels)`` for consecutive chunks: features (k, dim) float32 on ``device``,
    labels (k, L) float32 with 1/0/-1/NaN (numpy). Chunk ``i`` depends only on ``seed`` and ``i``."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(dim, dim, generator=gen))[0]
    spectrum = torch.arange(1, dim + 1, dtype=torch.float32) ** -0.8
    mix = (spectrum[:, None] * basis).to(device)
    directions = (torch.randn(dim, n_findings, generator=gen) / dim**0.5).to(device)
    prevalence = torch.linspace(0.02, 0.3, n_findings, device=device)
    spread = (1.5**2 * (directions * directions).sum(0) + 1).sqrt()  # logits ~ N(0, spread^2)
    thresholds = spread * torch.special.ndtri(1 - prevalence)
    for index, start in enumerate(range(0, n, chunk)):
        rows = slice(start, min(start + chunk, n))
        size = rows.stop - rows.start
        gen_dev = torch.Generator(device=device).manual_seed((seed + 1) * 1_000_003 + index)
        z = torch.randn(size, dim, generator=gen_dev, device=device)
        noise = torch.randn(size, n_findings, generator=gen_dev, device=device)
        labels = (((z @ directions) * 1.5 + noise) > thresholds).float().cpu().numpy()
        u = np.random.default_rng([seed + 2, index]).random(labels.shape)
        labels[u < 0.05] = -1
        labels[(u >= 0.05) & (u < 0.15)] = np.nan
        yield rows, z @ mix + 0.3, labels


def synthetic(
    n: int, dim: int, n_findings: int, device: torch.device, seed: int = 0, chunk: int = 100_000
):
    """Correlated features (n, dim) float32 on ``device`` and labels (n, L) with 1/0/-1/NaN (numpy)."""
    x = torch.empty(n, dim, device=device)
    labels = np.empty((n, n_findings), dtype=np.float32)
    for rows, part, part_labels in synthetic_chunks(n, dim, n_findings, device, seed, chunk):
        x[rows], labels[rows] = part, part_labels
    return x, labels


def write_store(path: Path, n: int, dim: int, n_findings: int, seed: int = 0) -> Path:
    """A finished float16 store of ``n`` synthetic rows: ``cls`` and ``mean`` are the two halves
    of ``dim`` features (so ``cls+mean`` reads them back), split 80/10/10 train/val/test.

    Written one shard at a time (the labels, which the store needs first, in a cheap first pass
    of the same chunks), so writing 800k x 1536 needs memory for one shard only.
    """
    from cxrprobe.cache.embeddings import FEATURES, KIND, embedding_layout
    from cxrprobe.cache.store import RowMetadata, RowStore

    half = dim // 2
    shard_rows, specs = embedding_layout(half, 0, "float16")
    cpu = torch.device("cpu")
    labels = np.empty((n, n_findings), dtype=np.float32)
    for rows, _, part in synthetic_chunks(n, 2 * half, n_findings, cpu, seed, shard_rows):
        labels[rows] = part
    ids = np.array([f"syn{i:07d}" for i in range(n)])
    split = np.where(
        np.arange(n) < 0.8 * n, "train", np.where(np.arange(n) < 0.9 * n, "val", "test")
    )
    metadata = RowMetadata(
        ids, split, ids.copy(), labels, tuple(f"f{j}" for j in range(n_findings))
    )
    identity = {"source": "bench_probe synthetic", "dim": half, "layers": 0, "dtype": "float16"}
    store = RowStore.create(
        path,
        kind=KIND,
        metadata=metadata,
        arrays=specs,
        shard_rows=shard_rows,
        identity={**identity, "features": FEATURES},
        provenance={"seed": seed},
    )
    chunks = synthetic_chunks(n, 2 * half, n_findings, cpu, seed, shard_rows)
    for shard, (_, x, _) in enumerate(chunks):
        x = x.half().numpy()
        store.write_shard(shard, {"cls": x[:, :half], "mean": x[:, half:]}, {})
    store.finalize()
    return path


def peak_rss_gib() -> dict[str, float]:
    """This process's peak resident set so far, GiB: ``vm_hwm`` (Linux ``VmHWM``, this process
    image only) and ``ru_maxrss`` (``getrusage``; after fork + exec it also counts the parent's
    resident set at the fork, so it is an upper bound for a child)."""
    peak = {"ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    try:
        with open("/proc/self/status") as fh:
            hwm = [line.split()[1] for line in fh if line.startswith("VmHWM:")]
        peak["vm_hwm"] = int(hwm[0]) / 2**20
    except (OSError, IndexError, ValueError):
        peak["vm_hwm"] = peak["ru_maxrss"]
    return {k: round(v, 3) for k, v in peak.items()}


def rss_child(args: argparse.Namespace) -> None:
    """Run the probe workflow on ``args.rss_child`` (a store) and print time and peak memory."""
    from cxrprobe.probe.run import ProbeConfig, run_probe

    before = peak_rss_gib()
    with tempfile.TemporaryDirectory() as tmp:
        summary = run_probe(
            ProbeConfig(
                store=Path(args.rss_child),
                out=Path(tmp) / "preds.json",
                method=args.method,
                features="cls+mean",
                grid=parse_grid(args.grid),
                device=args.device,
                max_iter=args.max_iter,
                tol=args.tol,
                max_memory=args.max_memory,
            )
        )
    print(
        json.dumps(
            {
                "peak_rss_gib": peak_rss_gib()["vm_hwm"],
                "ru_maxrss_gib": peak_rss_gib()["ru_maxrss"],
                "rss_after_imports_gib": before["vm_hwm"],
                "timings_s": {k: round(v, 1) for k, v in summary["timings"].items()},
                "rows": {role: split["rows"] for role, split in summary["splits"].items()},
                "test_mean_auroc": summary["test_mean_auroc"],
            }
        )
    )


def rss_curve(args: argparse.Namespace) -> None:
    """For each size: write a store, run the probe on it in a fresh process, print its peak RSS."""
    sizes = [int(v) for v in args.rss_curve.split(",")]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_probe_"))
    work.mkdir(parents=True, exist_ok=True)
    curve = []
    try:
        for n in sizes:
            path = work / f"emb_{n}x{args.dim}.zarr"
            started = time.perf_counter()
            if not (path / "zarr.json").exists():
                write_store(path, n, args.dim, args.findings)
            write_s = time.perf_counter() - started
            command = [sys.executable, __file__, "--rss-child", str(path), "--dim", str(args.dim)]
            command += ["--grid", args.grid, "--device", args.device, "--max-memory"]
            command += [args.max_memory, "--max-iter", str(args.max_iter), "--tol", str(args.tol)]
            command += ["--method", args.method]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"probe on {path} failed:\n{done.stderr[-3000:]}")
            row = {
                "benchmark": "probe peak memory",
                "method": args.method,
                "n": n,
                "dim": args.dim,
                "features": "cls+mean (float16 store)",
                "findings": args.findings,
                "grid_values": len(parse_grid(args.grid)),
                "device": args.device,
                "max_memory": args.max_memory,
                "store_write_s": round(write_s, 1),
                **json.loads(done.stdout.strip().splitlines()[-1]),
                "target_gib": RSS_TARGET_GIB.get(n) if args.dim == 1536 else None,
                "load_avg_1min": round(os.getloadavg()[0], 2),
            }
            curve.append(row)
            print(json.dumps(row), flush=True)
            if not args.keep:  # the store and any sidecar folder named after it
                for item in path.parent.glob(path.name + "*"):
                    shutil.rmtree(item, ignore_errors=True)
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"curve": [(r["n"], r["peak_rss_gib"]) for r in curve]}))


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
    parser.add_argument(
        "--max-memory", default="auto", help="the probe's --max-memory (working-memory budget)"
    )
    parser.add_argument(
        "--rss-curve", default=None, help="comma list of row counts: peak RSS of the probe run"
    )
    parser.add_argument("--rss-child", default=None, help=argparse.SUPPRESS)  # one size, inside
    parser.add_argument("--workdir", default=None, help="where --rss-curve writes its stores")
    parser.add_argument(
        "--method", default="linear", choices=["linear", "knn"], help="the --rss-curve probe"
    )
    parser.add_argument("--keep", action="store_true", help="keep the --rss-curve stores")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.rss_child:
        return rss_child(args)
    if args.rss_curve:
        return rss_curve(args)
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
        max_memory=args.max_memory,
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
