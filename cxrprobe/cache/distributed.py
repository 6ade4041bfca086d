"""The one collective extraction adds to :mod:`cxrprobe.devices`: run on rank 0, share the result.

Extraction scales out by shards: rank 0 opens (or creates) the store and broadcasts the list of
pending shards; rank ``r`` computes ``pending[r::world]`` and writes them directly; after a
barrier rank 0 finalises. Without ``torchrun`` everything runs on a single rank.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from cxrprobe.devices import DistContext
from cxrprobe.errors import CxrprobeError

T = TypeVar("T")


def run_on_main(ctx: DistContext, fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 and give its result (or its error) to every rank.

    An error on rank 0 is re-raised on every rank, so no rank waits forever at a barrier.
    """
    if not ctx.distributed:
        return fn()
    import torch.distributed as dist

    payload: list[Any] = [None]
    if ctx.is_main:
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
