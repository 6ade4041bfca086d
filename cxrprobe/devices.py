"""Which device a process computes on, and its place in a ``torchrun`` job.

``resolve_device`` turns a ``--device`` value into a ``torch.device``. :func:`setup` reads
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (set by ``torchrun``; without them one process of
one), picks this rank's device and joins the process group (NCCL on CUDA, gloo on CPU);
:func:`teardown` leaves it. Area-specific collectives (extraction's shard plan, fine-tuning's
gathers) live with their areas and take the :class:`DistContext`. torch is imported inside the
functions, so importing this module stays light.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cxrprobe.errors import ConfigError

if TYPE_CHECKING:
    import torch

TIMEOUT = _dt.timedelta(hours=2)  # ranks wait at barriers while slower ranks finish their work
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")
DEVICE_HELP = "auto, cpu, cuda or cuda:N"


def check_device_name(name: str) -> str:
    """``name`` if it is a ``--device`` value (auto, cpu, cuda, cuda:N); checked without torch."""
    if not DEVICE_PATTERN.fullmatch(name):
        raise ConfigError(f"--device {name!r} is not a device; use {DEVICE_HELP}")
    return name


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` → ``cuda:LOCAL_RANK`` when CUDA is available, else CPU; ``cuda`` → ``cuda:LOCAL_RANK``.

    ``cpu`` and ``cuda:N`` are taken as they are. An unknown name, or CUDA asked for where there
    is none, is a ConfigError naming ``--device``.
    """
    import torch

    check_device_name(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"--device {name}: CUDA is not available on this machine; use --device cpu or auto"
            )
        if device.index is None:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
    return device


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job (``rank 0 of 1`` outside torchrun) and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool = False  # True when :func:`setup` joined the process group

    @property
    def is_main(self) -> bool:
        """Rank 0 plans, writes the outputs and shows progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def ranks_from_env() -> tuple[int, int, int]:
    """``(RANK, WORLD_SIZE, LOCAL_RANK)`` as set by torchrun (defaults: ``(0, 1, RANK)``)."""
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
    return rank, world, local


def is_main_rank() -> bool:
    """Whether this process is rank 0 (or not under torchrun); reads only the environment."""
    return int(os.environ.get("RANK", 0)) == 0


def setup(device: str = "auto") -> DistContext:
    """This process's context; joins the torchrun process group when there is more than one rank."""
    rank, world, local = ranks_from_env()
    dev = resolve_device(device, local)
    if dev.type == "cuda":
        import torch

        torch.cuda.set_device(dev)
    ctx = DistContext(rank, world, local, dev)
    if not ctx.distributed:
        return ctx
    import torch.distributed as dist

    if dist.is_initialized():
        return ctx
    kwargs = {"device_id": dev} if dev.type == "cuda" else {}
    dist.init_process_group(
        backend="nccl" if dev.type == "cuda" else "gloo", timeout=TIMEOUT, **kwargs
    )
    return DistContext(rank, world, local, dev, owns_group=True)


def teardown(ctx: DistContext, clean: bool = True) -> None:
    """Leave the process group if :func:`setup` joined it.

    ``clean``: wait for the other ranks first. After an error there is no barrier (the other ranks
    may be inside another collective); the process exits and ``torchrun`` stops the rest.
    """
    if not ctx.owns_group:
        return
    import torch.distributed as dist

    if clean:
        dist.barrier()
    dist.destroy_process_group()


@contextlib.contextmanager
def torchrun_context(device: str = "auto") -> Iterator[DistContext]:
    """:func:`setup` on entry, :func:`teardown` on exit (without the barrier after an error)."""
    ctx = setup(device)
    try:
        yield ctx
    except BaseException:
        teardown(ctx, clean=False)
        raise
    teardown(ctx)


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (no-op for one rank)."""
    if ctx.distributed:
        import torch.distributed as dist

        dist.barrier()
