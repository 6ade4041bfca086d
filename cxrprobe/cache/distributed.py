"""Ranks under ``torchrun``: who am I, which device is mine, and the few collectives extraction needs.

Extraction scales out by shards: rank 0 opens (or creates) the store and broadcasts the list of
pending shards; rank ``r`` computes ``pending[r::world]`` and writes them directly; after a
barrier rank 0 finalises. Without ``torchrun`` (``WORLD_SIZE`` unset or 1) every function here is a
no-op on a single rank. The process group uses NCCL on CUDA and gloo on CPU.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from cxrprobe.errors import ConfigError, CxrprobeError

T = TypeVar("T")
TIMEOUT = _dt.timedelta(hours=2)  # ranks wait at barriers while slower ranks finish their shards


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job (``rank 0 of 1`` outside torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def ranks_from_env() -> Ranks:
    """Read ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` as set by torchrun (defaults: one rank)."""
    try:
        rank = int(os.environ.get("RANK", 0))
        world = int(os.environ.get("WORLD_SIZE", 1))
        local = int(os.environ.get("LOCAL_RANK", rank))
    except ValueError as exc:
        raise ConfigError(
            f"RANK/WORLD_SIZE/LOCAL_RANK must be integers ({exc}); launch with torchrun"
        ) from exc
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(
            f"RANK={rank} WORLD_SIZE={world}: rank must lie in [0, world size); launch with torchrun"
        )
    return Ranks(rank, world, local)


def resolve_device(device: str, ranks: Ranks) -> Any:
    """``auto`` → this rank's GPU if CUDA is available, else CPU; ``cuda`` → ``cuda:LOCAL_RANK``."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    resolved = torch.device(device)
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"--device {device}: CUDA is not available on this machine; use --device cpu"
            )
        if resolved.index is None:
            resolved = torch.device("cuda", ranks.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(resolved)
    return resolved


def init_group(ranks: Ranks, device: Any) -> Ranks:
    """Join the process group when running under torchrun (no-op for one rank or if already joined)."""
    if not ranks.distributed:
        return ranks
    import torch.distributed as dist

    if dist.is_initialized():
        return ranks
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(backend=backend, timeout=TIMEOUT, **kwargs)
    return Ranks(ranks.rank, ranks.world_size, ranks.local_rank, owns_group=True)


def close_group(ranks: Ranks) -> None:
    """Leave the process group if :func:`init_group` created it."""
    if ranks.owns_group:
        import torch.distributed as dist

        dist.destroy_process_group()


def barrier(ranks: Ranks) -> None:
    """Wait for every rank (no-op for one rank)."""
    if ranks.distributed:
        import torch.distributed as dist

        dist.barrier()


def run_on_main(ranks: Ranks, fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 and give its result (or its error) to every rank.

    An error on rank 0 is re-raised on every rank, so no rank waits forever at a barrier.
    """
    if not ranks.distributed:
        return fn()
    import torch.distributed as dist

    payload: list[Any] = [None]
    if ranks.is_main:
        try:
            payload[0] = ("ok", fn())
        except CxrprobeError as exc:
            payload[0] = ("error", exc)
        except Exception as exc:
            payload[0] = ("error", RuntimeError(f"rank 0: {type(exc).__name__}: {exc}"))
    dist.broadcast_object_list(payload, src=0)
    status, value = payload[0]
    if status == "error":
        raise value
    return value
