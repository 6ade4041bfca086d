"""Benchmark: reading a whole embedding store into memory (the probe's access pattern).

Writes an ``--n`` × ``--dim`` float16 store (random features, the real chunk/shard layout of
``create_embeddings``) and times ``open_embeddings(path).features("cls")`` for every row (stored float16, and converted to
float32 as the probe reads it), plus a
random gather of ``--gather`` rows. Target: the full study size (800k × 768) reads in seconds.
Prints one JSON line. Small run: ``python benchmarks/bench_read_embeddings.py --n 20000``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from cxrprobe.cache.embeddings import create_embeddings, open_embeddings
from cxrprobe.cache.store import RowMetadata


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=800_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--gather", type=int, default=50_000)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    metadata = RowMetadata(
        ids=np.array([f"img{i:07d}" for i in range(args.n)]),
        split=rng.choice(["train", "val", "test"], args.n),
        patient_id=np.array([f"p{i // 3}" for i in range(args.n)]),
        labels=rng.integers(0, 2, (args.n, 20)).astype(np.float32),
        findings=tuple(f"f{j}" for j in range(20)),
    )
    features = rng.standard_normal((args.n, args.dim), dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "emb.zarr"
        started = time.perf_counter()
        create_embeddings(path, metadata, {"cls": features, "mean": features})
        write_s = time.perf_counter() - started

        started = time.perf_counter()
        emb = open_embeddings(path)
        open_s = time.perf_counter() - started
        started = time.perf_counter()
        emb.features("cls", dtype=None)
        read16_s = time.perf_counter() - started
        started = time.perf_counter()
        cls = emb.features("cls")
        read_s = time.perf_counter() - started
        rows = np.sort(rng.choice(args.n, size=min(args.gather, args.n), replace=False))
        started = time.perf_counter()
        emb.features("cls", rows=rows)
        gather_s = time.perf_counter() - started
        exact = bool(np.array_equal(cls, features.astype(np.float16).astype(np.float32)))
    print(
        json.dumps(
            {
                "n": args.n,
                "dim": args.dim,
                "dtype": "float16",
                "write_s": round(write_s, 2),
                "open_s": round(open_s, 2),
                "read_all_cls_float16_s": round(read16_s, 2),
                "read_all_cls_float32_s": round(read_s, 2),
                "read_mb_per_s": round(cls.size * 2 / 2**20 / read_s, 1),
                "gather_rows": len(rows),
                "gather_s": round(gather_s, 2),
                "values_exact": exact,
            }
        )
    )


if __name__ == "__main__":
    main()
