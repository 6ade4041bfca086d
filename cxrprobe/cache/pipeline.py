"""The per-rank extraction loop: load batches, compute on the device, copy back, assemble, write.

Three things overlap. DataLoader workers load the next batches into pinned memory; the device
computes (bf16 autocast, channels-last input on CUDA; float32 on CPU); results are copied back
asynchronously into a ring of pinned buffers (:class:`_Copier` waits only on the oldest batch in
flight, so the device never waits on the host), gathered per store shard (:class:`_Assembler`),
and a finished shard goes to a writer thread through a bounded queue (:class:`_Writer`), so host
memory stays flat however many rows there are. Batches never cross a store shard, so a redone
shard is computed exactly as the first time.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from cxrprobe.cache.store import RowStore
from cxrprobe.progress import ProgressFactory, start_bar

if TYPE_CHECKING:
    from cxrprobe.cache.source import ImageSource

WRITE_QUEUE = 2  # finished shards waiting for the writer; bounds host memory
COPY_DEPTH = 3  # batches in flight between device and host on CUDA


def embed(
    model: Any, x: Any, layers: int, num_prefix_tokens: int, readout: str = "token"
) -> dict[str, Any]:
    """One batch (B, 3, S, S) → ``cls`` (B, D), ``mean`` (B, D) and, if ``layers``, (B, N, D).

    ``token`` read-out (a ViT with a class token): ``cls`` and ``mean`` come from the last
    block's tokens after the final norm (exactly ``model.forward_features``); ``layers`` holds the
    normed class token of each of the last N blocks, as DINOv2's
    ``get_intermediate_layers(norm=True)``. ``pooled`` read-out (CNNs and other models without a
    class token): ``cls`` is timm's pooled feature vector (``forward_head(pre_logits=True)``, the
    classifier's input) and ``mean`` the mean of ``forward_features`` over positions.
    """
    import torch

    if readout == "pooled":
        out = model.forward_features(x)
        return {
            "cls": model.forward_head(out, pre_logits=True),
            "mean": _position_mean(model, out, num_prefix_tokens),
        }
    if layers:
        outs = model.forward_intermediates(
            x,
            indices=layers,
            norm=True,
            output_fmt="NLC",
            intermediates_only=True,
            return_prefix_tokens=True,
        )
        tokens = torch.stack([prefix[:, 0] for _, prefix in outs], dim=1)
        patches = outs[-1][0]
        result = {"cls": tokens[:, -1], "layers": tokens}
    else:
        out = model.forward_features(x)
        patches = out[:, num_prefix_tokens:]
        result = {"cls": out[:, 0]}
    result["mean"] = patches.float().mean(dim=1)
    return result


def _position_mean(model: Any, out: Any, num_prefix_tokens: int) -> Any:
    """Mean over positions of a token sequence (B, N, D; prefix tokens left out) or a feature map
    (B, C, H, W, or B, H, W, C where the model says ``output_fmt == "NHWC"``)."""
    if out.ndim == 3:
        return out[:, num_prefix_tokens:].float().mean(dim=1)
    dims = (1, 2) if getattr(model, "output_fmt", "NCHW") == "NHWC" else (2, 3)
    return out.float().mean(dim=dims)


class Extractor:
    """The per-rank loop: load batches, compute on the device, copy back, assemble, write."""

    def __init__(
        self,
        store: RowStore,
        model: Any,
        spec: Any,
        layers: int,
        dtype: str,
        device: Any,
        batch_size: int,
        compile: bool,
    ) -> None:
        import torch

        self.store, self.spec, self.layers, self.device = store, spec, layers, device
        self.batch_size, self.compile = batch_size, compile
        self.cuda = device.type == "cuda"
        self.torch_dtype = getattr(torch, dtype)
        model = model.eval().requires_grad_(False).to(device)
        for module in model.modules():  # fused attention (SDPA) wherever timm offers it
            if hasattr(module, "fused_attn"):
                module.fused_attn = True
        if self.cuda:
            model = model.to(memory_format=torch.channels_last)

        def forward(x: Any) -> dict[str, Any]:
            return embed(model, x, layers, spec.num_prefix_tokens, spec.readout)

        self.forward = torch.compile(forward, dynamic=False) if compile else forward

    def _batches(self, shards: list[int]) -> tuple[list[list[int]], list[int]]:
        batches, owners = [], []
        for shard in shards:
            rows = self.store.shard_slice(shard)
            for start in range(rows.start, rows.stop, self.batch_size):
                batches.append(list(range(start, min(start + self.batch_size, rows.stop))))
                owners.append(shard)
        return batches, owners

    def run(
        self,
        source: ImageSource,
        shards: list[int],
        workers: int,
        progress: ProgressFactory | None,
    ) -> dict[str, float]:
        """Embed the rows of ``shards`` read from ``source``; write each finished shard."""
        import torch

        batches, owners = self._batches(shards)
        bar = start_bar(progress, sum(len(b) for b in batches), "extract")
        if not batches:
            return {
                "seconds": 0.0,
                "first_batch_seconds": 0.0,
                "first_compute_seconds": 0.0,
                "loader_wait_seconds": 0.0,
                "write_seconds": 0.0,
            }
        loader = source.loader(batches, workers, pin_memory=self.cuda)
        started = time.perf_counter()
        batches_iter = iter(loader)  # start workers before the writer thread exists
        writer = _Writer(self.store)
        assembler = _Assembler(self.store, writer)
        copier = _Copier(self.cuda, self.batch_size, assembler)
        waited, first, warmup = 0.0, None, None
        try:
            with torch.inference_mode():
                for batch, shard in zip(batches, owners, strict=True):
                    tick = time.perf_counter()
                    rows, images, failures = next(batches_iter)
                    waited += time.perf_counter() - tick
                    first = first if first is not None else time.perf_counter() - started
                    assembler.fail(shard, failures)
                    if len(rows):
                        tick = time.perf_counter()
                        feats = self._compute(images)
                        if warmup is None:  # compilation, CUDA and kernel set-up: reported apart
                            warmup = self._settled(tick)
                        copier.push(shard, rows.numpy(), feats)
                    bar.update(len(batch))
                copier.flush()
        finally:
            bar.close()
            writer.close()
        return {
            "seconds": time.perf_counter() - started,
            "first_batch_seconds": first or 0.0,
            "first_compute_seconds": warmup or 0.0,
            "loader_wait_seconds": waited,
            "write_seconds": writer.busy,
        }

    def _settled(self, since: float) -> float:
        """Seconds from ``since`` until the device has finished the work queued so far."""
        if self.cuda:
            import torch

            torch.cuda.synchronize(self.device)
        return time.perf_counter() - since

    def _compute(self, images: Any) -> dict[str, Any]:
        import torch

        from cxrprobe.data.preprocess import to_model_input

        n = len(images)
        if (
            self.compile and n < self.batch_size
        ):  # one static shape: no recompiles for short batches
            images = torch.cat([images, images.new_zeros((self.batch_size - n, *images.shape[1:]))])
        x = images.to(self.device, non_blocking=True)
        x = to_model_input(x, self.spec.mean, self.spec.std, size=self.spec.img_size)
        if self.cuda:
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                feats = self.forward(x)
        else:
            feats = self.forward(x)
        return {name: value[:n].to(self.torch_dtype) for name, value in feats.items()}


class _Copier:
    """Device → host copies into a ring of pinned buffers; waits only on the oldest batch in flight.

    Batch ``i`` uses slot ``i % COPY_DEPTH``; batch ``i - COPY_DEPTH`` (same slot) is drained first.
    """

    def __init__(self, cuda: bool, batch_size: int, assembler: _Assembler) -> None:
        self.cuda, self.batch_size, self.assembler = cuda, batch_size, assembler
        self.ring: list[dict[str, Any]] = []
        self.pushed = 0
        self.inflight: list[tuple[int, np.ndarray, dict[str, Any], Any]] = []

    def push(self, shard: int, rows: np.ndarray, feats: Mapping[str, Any]) -> None:
        if not self.cuda:
            self.assembler.place(shard, rows, {k: v.numpy() for k, v in feats.items()})
            return
        import torch

        if len(self.inflight) >= COPY_DEPTH:
            self._drain_oldest()
        if len(self.ring) < COPY_DEPTH:
            self.ring.append(
                {
                    name: torch.empty(
                        (self.batch_size, *value.shape[1:]), dtype=value.dtype, pin_memory=True
                    )
                    for name, value in feats.items()
                }
            )
        slot = self.ring[self.pushed % COPY_DEPTH]
        self.pushed += 1
        host = {name: slot[name][: len(value)] for name, value in feats.items()}
        for name, value in feats.items():
            host[name].copy_(value, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.inflight.append((shard, rows, host, event))

    def _drain_oldest(self) -> None:
        shard, rows, host, event = self.inflight.pop(0)
        event.synchronize()
        self.assembler.place(shard, rows, {k: v.numpy() for k, v in host.items()})

    def flush(self) -> None:
        while self.inflight:
            self._drain_oldest()


class _Assembler:
    """Collects a shard's rows (features and failures); a complete shard goes to the writer."""

    def __init__(self, store: RowStore, writer: _Writer) -> None:
        self.store, self.writer = store, writer
        self.specs = {spec.name: spec for spec in store.array_specs}
        self.open: dict[int, dict[str, Any]] = {}

    def _entry(self, shard: int) -> dict[str, Any]:
        if shard not in self.open:
            rows = self.store.shard_slice(shard)
            n = rows.stop - rows.start
            self.open[shard] = {
                "start": rows.start,
                "left": n,
                "failures": {},
                "data": {
                    name: np.full((n, *s.tail), np.nan, dtype=s.dtype)
                    for name, s in self.specs.items()
                },
            }
        return self.open[shard]

    def place(self, shard: int, rows: np.ndarray, arrays: Mapping[str, np.ndarray]) -> None:
        entry = self._entry(shard)
        for name, values in arrays.items():
            entry["data"][name][rows - entry["start"]] = values
        self._done(shard, entry, len(rows))

    def fail(self, shard: int, failures: Mapping[int, str]) -> None:
        if failures:
            entry = self._entry(shard)
            entry["failures"].update(failures)
            self._done(shard, entry, len(failures))

    def _done(self, shard: int, entry: dict[str, Any], count: int) -> None:
        entry["left"] -= count
        if entry["left"] == 0:
            del self.open[shard]
            self.writer.put(shard, entry["data"], entry["failures"])


class _Writer:
    """A thread writing finished shards (whole-shard writes + done record) from a bounded queue."""

    def __init__(self, store: RowStore) -> None:
        self.store = store
        self.queue: queue.Queue = queue.Queue(maxsize=WRITE_QUEUE)
        self.error: BaseException | None = None
        self.busy = 0.0
        self.thread = threading.Thread(target=self._loop, name="cxrprobe-writer", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.error is not None:
                continue
            started = time.perf_counter()
            try:
                self.store.write_shard(*item)
            except BaseException as exc:  # handed to the main thread, raised there
                self.error = exc
            self.busy += time.perf_counter() - started

    def put(self, shard: int, data: dict[str, np.ndarray], failures: dict[int, str]) -> None:
        while True:
            if self.error is not None:
                raise self.error
            try:
                self.queue.put((shard, data, failures), timeout=0.5)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        """Write what is queued, stop the thread, and raise its error if it had one."""
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error
