"""``cxrprobe extract``: frozen-backbone embeddings of every manifest row, written to a Zarr store.

The work unit is a store shard (a contiguous row range). Images come from an
:class:`~cxrprobe.cache.source.ImageSource`: the preprocessed image cache (fast path: each batch is
one contiguous read) or raw files decoded in DataLoader workers; batches never cross a shard
boundary. Three things overlap: workers load the next batches into pinned memory, the device
computes, and a writer thread writes finished shards (bounded queue, so memory stays flat however
large the dataset). On CUDA the model runs in bf16 autocast with fused attention (SDPA) and
channels-last input; on CPU in float32. Results are copied back to host asynchronously, so the
device is never waiting for the host.

A killed run is resumed by running the same command: only shards without a done record are redone,
batch by batch exactly as before, so the final store equals an uninterrupted run. A store made with
another model, weights, input size, preprocessing or manifest is refused unless ``overwrite``; new
manifest rows at the end are appended. Under ``torchrun`` each rank computes its own share of the
pending shards (:mod:`cxrprobe.cache.distributed`). The per-rank loop is
:mod:`cxrprobe.cache.pipeline`.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from cxrprobe.cache.distributed import run_on_main
from cxrprobe.cache.embeddings import KIND, embedding_layout, feature_definitions
from cxrprobe.cache.layout import write_run_files
from cxrprobe.cache.pipeline import Extractor
from cxrprobe.cache.source import ImageSource, check_image_source, from_dataset, open_source
from cxrprobe.cache.store import RowStore
from cxrprobe.data.preprocess import PreprocessConfig, preset_config
from cxrprobe.devices import barrier, torchrun_context
from cxrprobe.errors import ConfigError
from cxrprobe.outputs import WriterLock, check_output_location
from cxrprobe.progress import ProgressFactory
from cxrprobe.provenance import now_utc, versions

log = logging.getLogger(__name__)

FEATURE_VERSION = 1  # bump when the feature definitions (FEATURES) change


def extraction_identity(spec: Any, source: ImageSource, layers: int, dtype: str) -> dict[str, Any]:
    """What decides the stored numbers; resuming with any other value is refused.

    The read-out and the normalisation are listed only when they are not the defaults (a class
    token; the model config's mean/std), so stores made before they were recorded still resume.
    """
    model = {
        "init": spec.init,
        "arch": spec.arch,
        "model_kwargs": spec.model_kwargs,
        "weights_sha256": spec.weights_sha256,
        "img_size": spec.img_size,
    }
    if spec.readout != "token":
        model["readout"] = spec.readout
    if spec.normalization != "model config":
        model.update(mean=list(spec.mean), std=list(spec.std))
    return {
        "model": model,
        "preprocess": source.preprocess,
        "layers": int(layers),
        "dtype": dtype,
        "features": feature_definitions(spec.readout),
        "feature_version": FEATURE_VERSION,
    }


def extract_embeddings(
    out: str | os.PathLike,
    *,
    init: str,
    weights: str | os.PathLike | None = None,
    images: str | os.PathLike | None = None,
    manifest: Any = None,
    root: str | os.PathLike | None = None,
    preprocess: Any = None,
    dataset: Any = None,
    img_size: int = 224,
    layers: int = 0,
    dtype: str = "float16",
    batch_size: int = 128,
    num_workers: int | None = None,
    device: str = "auto",
    compile: bool = False,
    overwrite: bool = False,
    shard_rows: int | None = None,
    arch: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    progress: ProgressFactory | None = None,
    record: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Compute the embeddings of every row into the store at ``out``; resumable, multi-rank.

    Give ``images`` (an image cache), ``manifest`` + ``root`` (raw files, preprocessed with
    ``preprocess``, a :class:`~cxrprobe.data.preprocess.PreprocessConfig`, at ``img_size``) or
    ``dataset``: an :class:`~cxrprobe.cache.source.ImageSource`, or any map-style dataset of
    ``(image, labels, id)`` items, preprocessed the same way (:func:`~cxrprobe.cache.source.from_dataset`
    builds the source with findings, splits or patients of your choice). The
    model is built by :func:`cxrprobe.models.create_model` from ``init``/``weights``/``arch``/
    ``model_kwargs``; ``mean``/``std`` replace its input normalisation. ``layers`` > 0 also
    stores the class tokens of the last N blocks (ViTs only).
    ``progress(total, desc)`` makes rank 0's bar (see :mod:`cxrprobe.progress`). ``record``
    (the command's resolved options): rank 0 writes ``failures.json`` and the ``cxrprobe
    extract`` run record beside the store (:func:`~cxrprobe.cache.layout.write_run_files`).

    Returns a summary: ``out``, ``rows``, ``images`` (rows with features), ``failures`` (list of
    ``{row, image_id, reason}``), ``computed`` (rows done by this run, all ranks), ``seconds``,
    ``images_per_s``, ``shards``, ``shards_resumed``, ``world_size``, ``device``, ``model``.
    """
    from cxrprobe.models import check_embeddable, create_model

    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    check_output_location(out, "folder")
    source = _image_source(images, manifest, root, preprocess, img_size, dataset)
    with torchrun_context(device) as ctx, contextlib.closing(WriterLock(out)) as lock:
        run_on_main(ctx, lock.acquire)  # rank 0 holds the store until it is finalized
        dev = ctx.device
        model, spec = create_model(
            init,
            weights,
            img_size=img_size,
            arch=arch,
            model_kwargs=model_kwargs,
            mean=mean,
            std=std,
        )
        check_embeddable(model, spec)
        _check_layers(model, spec, layers)
        identity = extraction_identity(spec, source, layers, dtype)
        provenance = {
            **source.provenance,
            "model": spec.to_dict(),
            "versions": versions(),
            "device": _device_name(dev),
            "world_size": ctx.world_size,
            "batch_size": batch_size,
            "compile": bool(compile),
            "created": now_utc(),
        }
        rows_per_shard, arrays = embedding_layout(spec.embed_dim, layers, dtype, shard_rows)

        def plan() -> dict[str, Any]:
            store = RowStore.open_or_create(
                out,
                kind=KIND,
                metadata=source.metadata,
                arrays=arrays,
                shard_rows=rows_per_shard,
                identity=identity,
                provenance=provenance,
                overwrite=overwrite,
            )
            return {"pending": store.pending_shards(), "shards": store.n_shards}

        started = time.perf_counter()
        todo = run_on_main(ctx, plan)
        store = RowStore.open(out, mode="r+", kind=KIND)
        mine = todo["pending"][ctx.rank :: ctx.world_size]
        planned = time.perf_counter()
        timings = Extractor(store, model, spec, layers, dtype, dev, batch_size, compile).run(
            source, mine, _workers(num_workers, dev), progress if ctx.is_main else None
        )
        barrier(ctx)
        computed = sum(_shard_len(store, s) for s in todo["pending"])
        finishing = time.perf_counter()
        summary = run_on_main(
            ctx, lambda: _finalize(store, source, computed, time.perf_counter() - started)
        )
        timings.update(
            plan_seconds=planned - started, finalize_seconds=time.perf_counter() - finishing
        )
    result = {
        **summary,
        "shards": todo["shards"],
        "shards_resumed": todo["shards"] - len(todo["pending"]),
        "world_size": ctx.world_size,
        "device": _device_name(dev),
        "model": spec.to_dict(),
        "timings": timings,
    }
    if ctx.is_main:
        if record is not None:
            write_run_files(out, "cxrprobe extract", dict(record), result)
        log.info(describe(result))
    return result


def _image_source(
    images: Any, manifest: Any, root: Any, preprocess: Any, img_size: int, dataset: Any
) -> ImageSource:
    """The rows to embed: an image cache, raw files or a dataset (exactly one of them)."""
    if dataset is None:
        return open_source(images, manifest, root, preprocess, img_size)
    if images is not None or manifest is not None:
        raise ConfigError("give a dataset, an image cache or a manifest, not several")
    if isinstance(dataset, ImageSource):
        return dataset
    return from_dataset(dataset, (preprocess or PreprocessConfig()).with_size(img_size))


def _finalize(
    store: RowStore, source: ImageSource, computed: int, seconds: float
) -> dict[str, Any]:
    result = store.finalize(
        {
            "manifest_hash": source.provenance.get("manifest_hash"),
            "last_run": {"computed": computed, "seconds": seconds},
        }
    )
    return {
        "out": str(store.path),
        "rows": store.n_rows,
        "images": store.n_rows - len(result["failures"]),
        "failures": result["failures"],
        "computed": computed,
        "seconds": seconds,
        "images_per_s": computed / seconds if seconds > 0 else 0.0,
    }


def _check_layers(model: Any, spec: Any, layers: int) -> None:
    if layers < 0:
        raise ConfigError(f"--layers must be >= 0, got {layers}")
    if not layers:
        return
    if spec.readout == "pooled":
        raise ConfigError(
            f"--layers stores the class token of each block, and {spec.arch} has none (its "
            "features are pooled: cls is its pooled vector, mean its position mean); drop --layers"
        )
    depth = len(getattr(model, "blocks", ()))
    if not hasattr(model, "forward_intermediates") or not depth:
        raise ConfigError(
            "--layers needs a timm ViT with forward_intermediates; drop --layers for this model"
        )
    if layers > depth:
        raise ConfigError(
            f"--layers {layers} exceeds the model's {depth} blocks; use --layers {depth} or fewer"
        )


def _workers(num_workers: int | None, device: Any) -> int:
    if num_workers is not None:
        return max(0, int(num_workers))
    local = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    cpus = os.cpu_count() or 1
    return max(0, min(8, cpus // local - 1)) if device.type == "cuda" else min(2, max(0, cpus - 1))


def _device_name(device: Any) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu ({platform.processor() or platform.machine()})"


def _shard_len(store: RowStore, shard: int) -> int:
    rows = store.shard_slice(shard)
    return rows.stop - rows.start


def describe(summary: Mapping[str, Any]) -> str:
    """The one-line human summary of an extraction."""
    return (
        f"{summary['out']}: {summary['rows']} rows, {summary['images']} embedded, "
        f"{len(summary['failures'])} failures; computed {summary['computed']} images in "
        f"{summary['seconds']:.1f} s ({summary['images_per_s']:.1f} images/s)"
    )


def extract_kwargs(params: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`extract_embeddings` keyword arguments of parsed ``cxrprobe extract`` options: the
    library's parameters by name, with the command's spellings translated."""
    check_image_source(
        params["images"], params["manifest"], root=params["root"], preset=params["preset"]
    )
    values = {
        **params,
        "num_workers": params["workers"],
        "preprocess": (
            preset_config(params["preset"], size=params["img_size"])
            if params["manifest"] is not None
            else None
        ),
    }
    accepted = inspect.signature(extract_embeddings).parameters
    return {k: v for k, v in values.items() if k in accepted}


def run_extract(params: Mapping[str, Any], progress: ProgressFactory | None) -> dict[str, Any]:
    """Extract the embeddings of parsed ``cxrprobe extract`` options (the command and a study's
    step both run this); returns the summary. The options (``--size`` as ``size``) are recorded
    with the failures beside the store."""
    record = {("size" if k == "img_size" else k): v for k, v in params.items()}
    return extract_embeddings(**extract_kwargs(params), progress=progress, record=record)
