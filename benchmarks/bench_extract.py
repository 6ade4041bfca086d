"""Benchmark: embedding extraction from the image cache — correctness and throughput.

1. Builds a synthetic image cache of ``--n`` random uint8 images at ``--cache-size`` (no data
   needed; written exactly as ``build_image_cache`` lays it out).
2. Model-forward-only images/s: the model (same init/arch, device, batch size, bf16 autocast on
   CUDA, optional ``--compile``) on a batch already on the device, after warm-up.
3. End-to-end images/s: ``extract_embeddings`` from the cache (loading, preprocessing on the
   device, forward, copies back, writes): whole run; whole run less the first batch's compute
   (``--compile``'s compilation, CUDA set-up: the forward-only figure excludes its warm-up too);
   steady state (after the first 10%).
4. Correctness: stored features of the first ``--check`` rows against a direct
   ``model.forward_features`` on the same preprocessed batch, on the same device.
5. Reading the whole ``cls`` array back into memory (the probe's access pattern).

The ratio end-to-end / forward-only should be >= 0.8 (the pipeline is not the bottleneck).
Defaults: ViT-B/14 (DINOv2 architecture, random weights) at 224 px, 50000 images (4 store
shards, so writes overlap compute as in a full run), batch 256.
Prints one JSON line. Small CPU run::

    python benchmarks/bench_extract.py --n 64 --batch-size 16 --model-kwargs '{"depth": 2, "embed_dim": 64, "num_heads": 2}' --size 56 --cache-size 64
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from cxrprobe.cache.embeddings import open_embeddings
from cxrprobe.cache.extract import _workers, extract_embeddings
from cxrprobe.cache.images import cache_identity, default_shard_rows, open_images
from cxrprobe.cache.pipeline import embed
from cxrprobe.cache.store import ArraySpec, RowMetadata, RowStore
from cxrprobe.data.preprocess import PreprocessConfig, to_model_input
from cxrprobe.models import create_model


def build_cache(out: Path, n: int, size: int, seed: int = 0) -> float:
    """A finished image cache of ``n`` random images, shard by shard (flat memory); returns seconds.

    An existing finished cache of the same rows and size at ``out`` is reused (returns 0).
    """
    try:
        existing = open_images(out)
        if len(existing) == n and existing.size == size:
            return 0.0
    except Exception:  # absent or unfinished: build it
        pass
    started = time.perf_counter()
    cfg = PreprocessConfig(size=size)
    rng = np.random.default_rng(seed)
    metadata = RowMetadata(
        ids=np.array([f"img{i:08d}" for i in range(n)]),
        split=np.array(["train", "val", "test"])[np.arange(n) % 3],
        patient_id=np.array([f"p{i // 2:08d}" for i in range(n)]),
        labels=rng.integers(0, 2, size=(n, 1)).astype(np.float32),
        findings=("cardiomegaly",),
    )
    store = RowStore.create(
        out,
        kind="images",
        metadata=metadata,
        arrays=[ArraySpec("images", (size, size), "uint8", 0, chunk_rows=1)],
        shard_rows=default_shard_rows(size),
        identity=cache_identity(cfg),
        provenance={"synthetic": True},
    )
    block = rng.integers(0, 256, size=(store.shard_rows, size, size), dtype=np.uint8)
    for shard in range(store.n_shards):  # one random block, rolled: incompressible, cheap to make
        rows = store.shard_slice(shard)
        images = np.roll(block, shard, axis=0)[: rows.stop - rows.start]
        store.write_shard(shard, {"images": images}, {})
    store.finalize()
    return time.perf_counter() - started


def model_for(args: argparse.Namespace, device: torch.device):
    model, spec = create_model(
        args.init, args.weights, img_size=args.size, arch=args.arch, model_kwargs=args.model_kwargs
    )
    model = model.eval().requires_grad_(False).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model, spec


def run_forward(model, spec, x: torch.Tensor, layers: int, compiled: bool):
    fn = lambda batch: embed(model, batch, layers, spec.num_prefix_tokens)  # noqa: E731
    fn = torch.compile(fn, dynamic=False) if compiled else fn
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if x.is_cuda
        else torch.autocast("cpu", enabled=False)
    )

    def step():
        with torch.inference_mode(), autocast:
            return fn(x)

    return step


def forward_only(args: argparse.Namespace, device: torch.device) -> float:
    """Images/s of the model alone on a batch already on the device."""
    model, spec = model_for(args, device)
    images = torch.randint(
        0,
        256,
        (args.batch_size, args.cache_size, args.cache_size),
        dtype=torch.uint8,
        device=device,
    )
    x = to_model_input(images, spec.mean, spec.std, size=args.size)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    step = run_forward(model, spec, x, args.layers, args.compile)
    for _ in range(args.warmup):
        step()
    _sync(device)
    batches = max(1, args.n // args.batch_size)
    started = time.perf_counter()
    for _ in range(batches):
        out = step()
    _sync(device)
    assert out["cls"].shape[0] == args.batch_size
    return batches * args.batch_size / (time.perf_counter() - started)


def loader_only(cache: Path, args: argparse.Namespace, workers: int, pin: bool) -> float:
    """Images/s of the extraction's input pipeline alone (cache reads, collate, pinning), no model."""
    from torch.utils.data import DataLoader

    from cxrprobe.cache.source import CachedImages, collate_images

    batches = [
        list(range(i, min(i + args.batch_size, args.n))) for i in range(0, args.n, args.batch_size)
    ]
    loader = DataLoader(
        CachedImages(str(cache)),
        batch_sampler=batches,
        collate_fn=collate_images,
        num_workers=workers,
        pin_memory=pin,
        prefetch_factor=4 if workers else None,
    )
    started = time.perf_counter()
    seen = sum(len(rows) for rows, _, _ in loader)
    assert seen == args.n
    return seen / (time.perf_counter() - started)


def check(
    store: Path, cache: Path, args: argparse.Namespace, device: torch.device
) -> dict[str, float]:
    """Stored vs a direct model.forward_features on the same preprocessed rows (same device and dtype)."""
    model, spec = model_for(args, device)
    rows = slice(0, min(args.check, args.n))
    images = torch.from_numpy(open_images(cache).read(rows)).to(device)
    x = to_model_input(images, spec.mean, spec.std, size=args.size)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda"
        else torch.autocast("cpu", enabled=False)
    )
    with torch.inference_mode(), autocast:
        out = model.forward_features(x).float()
    direct = {"cls": out[:, 0], "mean": out[:, spec.num_prefix_tokens :].mean(1)}
    emb = open_embeddings(store)
    result = {}
    for name, ref in direct.items():
        ref = ref.cpu().numpy()
        got = emb.features(name, rows=np.arange(rows.stop))
        result[f"{name}_max_abs_diff"] = float(np.abs(got - ref).max())
        result[f"{name}_max_rel_diff"] = float(np.abs(got - ref).max() / np.abs(ref).max())
    return result


def _rss_mb() -> float:
    """This process's resident memory in MiB (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) / 1024 for line in fh if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0.0


def end_to_end(store: Path, cache: Path, args: argparse.Namespace) -> dict[str, float]:
    """Images/s of the whole extraction, plus the main process's peak RSS growth while it runs
    (sampled every 20 ms): it should not grow with ``--n`` (bounded queues, streamed writes)."""
    ticks: list[tuple[float, int]] = []
    done = 0
    rss_start, rss_peak, sampling = _rss_mb(), [0.0], threading.Event()

    def sample() -> None:
        while not sampling.wait(0.02):
            rss_peak[0] = max(rss_peak[0], _rss_mb())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()

    class Ticks:
        def update(self, n: int) -> None:
            nonlocal done
            done += n
            ticks.append((time.perf_counter(), done))

        def close(self) -> None:
            pass

    def progress(total: int | None, desc: str) -> Ticks:
        return Ticks()

    started = time.perf_counter()
    summary = extract_embeddings(
        store,
        init=args.init,
        weights=args.weights,
        images=cache,
        img_size=args.size,
        layers=args.layers,
        dtype=args.dtype,
        batch_size=args.batch_size,
        num_workers=args.resolved_workers,
        device=args.device,
        compile=args.compile,
        overwrite=True,
        arch=args.arch,
        model_kwargs=args.model_kwargs,
        progress=progress,
    )
    wall = time.perf_counter() - started
    sampling.set()
    sampler.join()
    first = next((t for t in ticks if t[1] >= 0.1 * args.n), ticks[0])
    steady = (
        (ticks[-1][1] - first[1]) / max(ticks[-1][0] - first[0], 1e-9)
        if ticks[-1][1] > first[1]
        else 0.0
    )
    warm = summary["seconds"] - summary["timings"]["first_compute_seconds"]
    return {
        "images_per_s": summary["images_per_s"],
        "images_per_s_after_warmup": summary["computed"] / warm if warm > 0 else 0.0,
        "steady_images_per_s": steady,
        "seconds": summary["seconds"],
        "wall_seconds_with_model_setup": wall,
        "timings": summary["timings"],
        "device_name": summary["device"],
        "peak_rss_growth_mb": max(rss_peak[0] - rss_start, 0.0),
    }


def read_back(store: Path) -> dict[str, float]:
    emb = open_embeddings(store)
    started = time.perf_counter()
    cls = emb.features("cls", dtype=None)
    seconds = time.perf_counter() - started
    return {
        "read_cls_seconds": seconds,
        "read_cls_mb_per_s": cls.nbytes / 2**20 / max(seconds, 1e-9),
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--n", type=int, default=50000, help="images in the synthetic cache (several store shards)"
    )
    parser.add_argument("--size", type=int, default=224, help="model input size")
    parser.add_argument(
        "--cache-size", type=int, default=None, help="image cache size (default: --size)"
    )
    parser.add_argument("--init", default="random")
    parser.add_argument("--weights", default=None)
    parser.add_argument(
        "--arch", default="vit_base_patch14_dinov2.lvd142m", help="timm architecture (ViT-B/14)"
    )
    parser.add_argument(
        "--model-kwargs", type=json.loads, default=None, help="JSON timm overrides (tiny CPU runs)"
    )
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument(
        "--workers", type=int, default=None, help="DataLoader workers (default: extraction's)"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    parser.add_argument("--layers", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=5, help="forward-only warm-up batches")
    parser.add_argument(
        "--check", type=int, default=64, help="rows checked against a direct forward"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where the cache and store go (default: a temp dir)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    args.cache_size = args.cache_size or args.size
    if args.init != "random":
        args.arch = (
            None
            if args.init in ("dinov2", "dinov2-reg", "imagenet") or args.init.startswith("timm:")
            else args.arch
        )

    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_extract_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        cache, store = work / "images.zarr", work / "emb.zarr"
        result = {
            "benchmark": "extract",
            "n": args.n,
            "size": args.size,
            "cache_size": args.cache_size,
            "init": args.init,
            "arch": args.arch,
            "model_kwargs": args.model_kwargs,
            "batch_size": args.batch_size,
            "compile": args.compile,
            "dtype": args.dtype,
            "layers": args.layers,
            "device": str(device),
            "torch": torch.__version__,
        }
        result["cache_build_seconds"] = build_cache(cache, args.n, args.cache_size)
        workers = args.workers if args.workers is not None else _workers(None, device)
        result["workers"] = args.resolved_workers = workers
        result["loader_only_images_per_s"] = loader_only(
            cache, args, workers, device.type == "cuda"
        )
        result["forward_only_images_per_s"] = forward_only(args, device)
        e2e = end_to_end(store, cache, args)
        result["end_to_end"] = e2e
        result["ratio"] = e2e["images_per_s"] / result["forward_only_images_per_s"]
        result["ratio_after_warmup"] = (
            e2e["images_per_s_after_warmup"] / result["forward_only_images_per_s"]
        )
        result["steady_ratio"] = e2e["steady_images_per_s"] / result["forward_only_images_per_s"]
        result["correctness"] = check(store, cache, args, device)
        result["read_back"] = read_back(store)
        print(json.dumps(result))
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
