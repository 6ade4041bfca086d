"""Whole-process ``cxrprobe compare`` against a ``roc_auc_score`` loop, and how its cost grows.

Two synthetic predictions files (``bench_bootstrap.synthetic``: ``--n`` rows, ``--labels``
labels, prevalence 2-30 %, 5 % not annotated, scores rounded to 4 decimals, two correlated
models) are written in ``--format``. Then, ``--repeats`` times and interleaved (the machine is
shared, so both sides see the same load):

- ``compare``: ``cxrprobe compare A B --device DEVICE -B RESAMPLES --out report.json`` as a
  subprocess, i.e. the whole process: start-up and imports, reading and validating both files,
  DeLong, thresholds, calibration, the paired bootstrap, the report;
- ``baseline``: the straightforward loop, ``roc_auc_score`` per model and label on the rows of
  every resample (the same draws as ``compare``), timed on ``--baseline-resamples`` resamples
  and extrapolated to ``RESAMPLES`` (the loop alone: no reading, no start-up).

One JSON line per size: the medians, every run, ``speedup`` = median baseline / median compare,
the compare process's peak resident memory and the load average. ``--n`` takes a list
(``10000,100000,1000000``) for the cost-growth table; ``--baseline-resamples 0`` skips the
baseline.

Example: ``python benchmarks/bench_compare.py --n 4000 --labels 5 --resamples 1000 --repeats 3``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cxrprobe.stats.predictions import Predictions, write_predictions
from cxrprobe.stats.resample import make_resampler

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_bootstrap import baseline, synthetic  # noqa: E402


def write_pair(folder: Path, n: int, labels: int, seed: int, suffix: str) -> list[Path]:
    """The two models' predictions files for ``n`` rows (``synthetic``), written by cxrprobe."""
    targets, a, b = synthetic(n, labels, seed)
    ids = [f"img{i}" for i in range(n)]
    names = [f"label{k}" for k in range(labels)]
    return [
        write_predictions(
            Predictions(names, ids, targets, s, "probability"), folder / f"{m}{suffix}"
        )
        for m, s in (("a", a), ("b", b))
    ]


def run_compare(files: list[Path], args: argparse.Namespace, out: Path) -> float:
    """Seconds for one whole ``cxrprobe compare`` process."""
    entry = "import sys; from cxrprobe.cli import main; sys.exit(main())"  # as the console script
    command = [sys.executable, "-c", entry, "compare", *map(str, files)]
    command += ["--device", args.device, "-B", str(args.resamples), "--seed", str(args.seed)]
    command += ["--out", str(out)]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - start


def measure(n: int, args: argparse.Namespace, folder: Path) -> dict:
    suffix = "." + args.format
    files = write_pair(folder, n, args.labels, args.seed, suffix)
    targets, a, b = synthetic(n, args.labels, args.seed)
    resampler = make_resampler(n, args.resamples, seed=args.seed)
    count = min(args.baseline_resamples, args.resamples)
    compare_runs, baseline_runs = [], []
    for _ in range(args.repeats):
        compare_runs.append(run_compare(files, args, folder / "report.json"))
        if count:
            per_resample, _ = baseline(targets, [a, b], resampler, count)
            baseline_runs.append(per_resample * args.resamples)
    report = json.loads((folder / "report.json").read_text())
    compare_s = statistics.median(compare_runs)
    result = {
        "benchmark": "whole-process cxrprobe compare",
        "n": n,
        "labels": args.labels,
        "resamples": args.resamples,
        "format": args.format,
        "file_mb": round(sum(f.stat().st_size for f in files) / 2**20, 1),
        "device": report["bootstrap"]["device"],
        "chunk_size": report["bootstrap"]["chunk_size"],
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "compare_s": round(compare_s, 2),
        "compare_runs_s": [round(t, 2) for t in compare_runs],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
        "peak_rss_note": "largest compare process so far in this run",
        "load_avg_1min": round(os.getloadavg()[0], 2),
    }
    if baseline_runs:
        baseline_s = statistics.median(baseline_runs)
        result |= {
            "baseline_s": round(baseline_s, 1),
            "baseline_runs_s": [round(t, 1) for t in baseline_runs],
            "baseline_note": f"roc_auc_score loop timed on {count} resamples, extrapolated to "
            f"{args.resamples}",
            "speedup": round(baseline_s / compare_s, 1),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", default="4000", help="rows; a comma-separated list for growth")
    parser.add_argument("--labels", type=int, default=5)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--format", default="json", choices=["json", "npz", "parquet", "csv"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline-resamples", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(x) for x in args.n.split(",")):
            print(json.dumps(measure(n, args, Path(tmp))), flush=True)


if __name__ == "__main__":
    main()
