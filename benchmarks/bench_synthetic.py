"""Time the synthetic dataset generator (rendering, PNG encoding and atomic writes, one process).

Prints one JSON line. Small run: ``python benchmarks/bench_synthetic.py --n 50 --size 64``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from cxrprobe.data.synthetic import generate_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=600, help="images to generate")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        wall, cpu = time.perf_counter(), time.process_time()
        generate_dataset(out, n=args.n, size=args.size, seed=args.seed)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        written = sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file())
    print(
        json.dumps(
            {
                "benchmark": "synthetic_generate",
                "n": args.n,
                "size": args.size,
                "wall_s": round(wall, 3),
                "cpu_s": round(cpu, 3),
                "ms_per_image": round(1000 * wall / args.n, 2),
                "mb_written": round(written / 2**20, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
