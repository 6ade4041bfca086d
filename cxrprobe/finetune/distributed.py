"""Fine-tuning's data-parallel helpers on :mod:`cxrprobe.devices`: seeded sharding, gathers.

One process per device (:func:`cxrprobe.devices.setup` joins the ``torchrun`` process group);
outside torchrun every collective is a no-op. Training rows are sharded like
``torch.utils.data.DistributedSampler``: one seeded permutation per epoch, padded by wrapping to a
multiple of the world size, rank ``r`` taking every ``world``-th entry from ``r``; so the ranks of
one step together see exactly the rows one process would see in its global batch. Evaluation rows
are strided without padding and gathered back in row order.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from cxrprobe.devices import DistContext


def shard_order(
    n: int, epoch: int, seed: int, rank: int, world: int, shuffle: bool = True
) -> np.ndarray:
    """This rank's positions into ``n`` training rows for ``epoch`` (DistributedSampler's rule).

    A permutation from ``torch.Generator`` seeded with ``seed + epoch``, wrapped to a multiple of
    ``world``, then every ``world``-th entry starting at ``rank``. Every rank gets the same count.
    """
    if n == 0:
        return np.empty(0, dtype=np.int64)
    if shuffle:
        generator = torch.Generator()
        generator.manual_seed(seed + epoch)
        order = torch.randperm(n, generator=generator).numpy()
    else:
        order = np.arange(n)
    per_rank = -(-n // world)
    order = np.resize(order, per_rank * world)
    return order[rank::world].astype(np.int64)


def eval_shard(n: int, rank: int, world: int) -> np.ndarray:
    """Positions ``rank, rank + world, ...`` of ``n`` evaluation rows (no padding)."""
    return np.arange(rank, n, world, dtype=np.int64)


def gather_rows(ctx: DistContext, local: torch.Tensor, n: int) -> torch.Tensor:
    """Reassemble per-rank results of :func:`eval_shard` into (n, ...) in row order, on every rank."""
    if not ctx.distributed:
        return local
    per_rank = -(-n // ctx.world_size)
    padded = local.new_zeros((per_rank, *local.shape[1:]))
    padded[: local.shape[0]] = local
    parts = gather_stacked(ctx, padded)
    out = local.new_zeros((n, *local.shape[1:]))
    for rank in range(ctx.world_size):
        count = len(range(rank, n, ctx.world_size))
        out[rank :: ctx.world_size] = parts[rank][:count]
    return out


def gather_stacked(ctx: DistContext, tensor: torch.Tensor) -> torch.Tensor:
    """(world, ...) stack of every rank's same-shaped ``tensor``, on every rank (CPU result)."""
    if not ctx.distributed:
        return tensor.detach().cpu().unsqueeze(0)
    moved = tensor.detach().to(_comm_device(ctx))
    parts = [torch.empty_like(moved) for _ in range(ctx.world_size)]
    dist.all_gather(parts, moved.contiguous())
    return torch.stack([p.cpu() for p in parts])


def all_sum(ctx: DistContext, values: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over ranks (CPU float64 result)."""
    values = values.detach().to(torch.float64)
    if ctx.distributed:
        values = values.to(_comm_device(ctx))
        dist.all_reduce(values)
    return values.cpu()


def gather_objects(ctx: DistContext, value: object) -> list[object]:
    """Every rank's small picklable ``value`` (failure reports), in rank order, on every rank."""
    if not ctx.distributed:
        return [value]
    out: list[object] = [None] * ctx.world_size
    dist.all_gather_object(out, value)
    return out


def _comm_device(ctx: DistContext) -> torch.device:
    """NCCL needs tensors on the process's GPU; gloo takes CPU tensors."""
    return ctx.device if ctx.device.type == "cuda" else torch.device("cpu")
