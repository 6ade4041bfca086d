"""Fine-tuning throughput: training images/s (forward + backward + optimiser step) of the real loop.

Runs :func:`cxrprobe.finetune.finetune` twice on synthetic data with the same settings:

- ``memory``: uint8 images held in memory (no I/O; the ceiling the model allows),
- ``cache``: the same kind of images read from a synthetic image cache (a Zarr store written the
  way ``cxrprobe preprocess`` writes one) through the data loader workers.

Each run trains two epochs and reports the second (the first holds CUDA warm-up and, with
``--compile``, compilation). ``loader_to_memory_ratio`` near 1 means the loop is not data-bound.
Augmentation (flip, ±7° rotation), class weights and validation are on, as in real runs.

Defaults: ViT-B/14 (DINOv2 architecture, random weights) at 224 px, batch 128, bf16 on CUDA;
target ≥ 800 images/s on one H100. ``--tiny`` runs a depth-2, width-64 ViT at 32 px on the CPU.
Prints one JSON line.

    python benchmarks/bench_finetune.py                      # GPU, ViT-B/14 at 224
    python benchmarks/bench_finetune.py --compile
    python benchmarks/bench_finetune.py --tiny               # CPU smoke figures
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cxrprobe.cache.source import from_arrays, from_cache
from cxrprobe.cache.store import ArraySpec, RowMetadata, RowStore
from cxrprobe.finetune import FinetuneConfig, finetune
from cxrprobe.provenance import versions

TARGET_IMAGES_PER_S = 800
TINY = {"depth": 2, "embed_dim": 64, "num_heads": 2}
FINDINGS = (
    "atelectasis",
    "cardiomegaly",
    "consolidation",
    "edema",
    "pleural_effusion",
    "pneumonia",
    "pneumothorax",
    "lung_opacity",
    "lung_lesion",
    "fracture",
    "support_devices",
    "no_finding",
    "enlarged_cardiomediastinum",
    "pleural_other",
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--tiny", action="store_true", help="tiny ViT at 32 px on the CPU (smoke figures)"
    )
    parser.add_argument(
        "--arch", default="vit_base_patch14_dinov2", help="timm architecture (random weights)"
    )
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=60, help="optimiser steps per epoch")
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--grad-checkpointing", action="store_true")
    parser.add_argument("--num-workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--variants", default="memory,cache", help="comma list of memory, cache")
    parser.add_argument(
        "--workdir", default=None, help="folder for the synthetic cache (default: a temp dir)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's; --tiny: 1)"
    )
    args = parser.parse_args()
    if args.tiny:
        args.size, args.batch_size, args.device = 32, 32, "cpu"
        args.steps = min(args.steps, 20)
        args.num_workers = min(args.num_workers, 2)
        args.threads = args.threads or 1
    return args


def synthetic_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """uint8 (n, S, S): smooth gradients with noise (compress like radiographs, not like noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    images = np.empty((n, size, size), dtype=np.uint8)
    for i in range(n):
        a, b, c = rng.uniform(0.2, 0.8, 3)
        picture = 255 * (a * y + b * (1 - x) * c) + rng.normal(0, 8, (size, size))
        images[i] = np.clip(picture, 0, 255).astype(np.uint8)
    return images


def synthetic_metadata(n_train: int, n_eval: int, seed: int = 0) -> RowMetadata:
    """Random labels (about 20% positive, 10% not annotated) for train, val and test rows."""
    rng = np.random.default_rng(seed)
    n = n_train + 2 * n_eval
    labels = (rng.random((n, len(FINDINGS))) < 0.2).astype(np.float32)
    labels[rng.random(labels.shape) < 0.1] = np.nan
    split = np.array(["train"] * n_train + ["val"] * n_eval + ["test"] * n_eval)
    ids = np.array([f"syn{i:06d}" for i in range(n)])
    return RowMetadata(
        ids=ids, split=split, patient_id=ids.copy(), labels=labels, findings=FINDINGS
    )


def write_cache(path: Path, images: np.ndarray, meta: RowMetadata) -> None:
    """A finished image cache holding ``images``, laid out as ``cxrprobe preprocess`` writes it."""
    from cxrprobe.cache.images import ARRAY, KIND, cache_identity, default_shard_rows
    from cxrprobe.data.preprocess import PreprocessConfig

    size = images.shape[-1]
    store = RowStore.open_or_create(
        path,
        kind=KIND,
        metadata=meta,
        arrays=[ArraySpec(ARRAY, (size, size), "uint8", 0, chunk_rows=1)],
        shard_rows=default_shard_rows(size, len(images), 8),
        identity=cache_identity(PreprocessConfig(size=size)),
        provenance={"synthetic": True},
        overwrite=True,
    )
    for shard in store.pending_shards():
        rows = store.shard_slice(shard)
        store.write_shard(shard, {ARRAY: images[rows]}, {})
    store.finalize()


def run_variant(name: str, source, args: argparse.Namespace, out: Path) -> dict:
    config = FinetuneConfig(
        init="random",
        arch=None if args.tiny else args.arch,
        model_kwargs=dict(TINY) if args.tiny else {},
        size=args.size,
        epochs=2,
        batch_size=args.batch_size,
        precision=args.precision,
        compile=args.compile,
        grad_checkpointing=args.grad_checkpointing,
        num_workers=args.num_workers if name == "cache" else 0,
        device=args.device,
        patience=None,
    )
    if torch.cuda.is_available() and args.device != "cpu":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    result = finetune(config, source, out / name, overwrite=True)
    first, second = result.history
    stats = {
        "images_per_s": round(second["images_per_s"], 1),
        "first_epoch_images_per_s": round(first["images_per_s"], 1),
        "train_images_per_epoch": args.batch_size * args.steps,
        "wall_s": round(time.perf_counter() - started, 1),
        "precision": result.summary["precision"],
    }
    if torch.cuda.is_available() and args.device != "cpu":
        stats["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return stats


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = [v for v in args.variants.split(",") if v]
    n_train, n_eval = args.batch_size * args.steps, args.batch_size
    meta = synthetic_metadata(n_train, n_eval)
    images = synthetic_images(len(meta), args.size)
    workdir = (
        Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench_finetune_"))
    )
    results = {}
    for name in variants:
        if name == "memory":
            source = from_arrays(images, meta, name="synthetic")
        elif name == "cache":
            write_cache(workdir / "images.zarr", images, meta)
            source = from_cache(workdir / "images.zarr")
        else:
            raise SystemExit(f"unknown variant {name!r}; use memory and/or cache")
        results[name] = run_variant(name, source, args, workdir / "runs")
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    record = {
        "benchmark": "finetune",
        "device": torch.cuda.get_device_name()
        if device.startswith("cuda")
        else platform.processor() or "cpu",
        "arch": "tiny-vit(depth 2, width 64)" if args.tiny else args.arch,
        "size": args.size,
        "batch_size": args.batch_size,
        "steps_per_epoch": args.steps,
        "compile": args.compile,
        "grad_checkpointing": args.grad_checkpointing,
        "num_workers": args.num_workers,
        "torch_threads": torch.get_num_threads(),
        "variants": results,
    }
    if "memory" in results and "cache" in results:
        record["loader_to_memory_ratio"] = round(
            results["cache"]["images_per_s"] / results["memory"]["images_per_s"], 3
        )
    if not args.tiny:
        best = max(v["images_per_s"] for v in results.values())
        record.update(
            target_images_per_s=TARGET_IMAGES_PER_S, meets_target=best >= TARGET_IMAGES_PER_S
        )
    record["versions"] = {
        k: v for k, v in versions().items() if k in ("torch", "timm", "zarr", "python")
    }
    print(json.dumps(record))


if __name__ == "__main__":
    main()
