"""Worker processes for whole-shard tasks: they die with their parent and leave Ctrl-C to it.

:func:`run_pool` runs tasks in spawned processes and stops them all at the first error or
Ctrl-C, without waiting for running tasks (a shard cut short has no done record and is redone on
resume). A SIGKILLed parent leaves no worker writing: each worker ends when its parent dies.
Workers count finished items in one shared counter (:func:`pool_tick`), which the parent turns
into progress.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from cxrprobe.errors import IncompleteStoreError

T = TypeVar("T")
Tick = Callable[[int], Any]

_counter: Any = None  # per worker process: a shared count of finished items
_PR_SET_PDEATHSIG = 1  # Linux prctl option: a signal for this process when its parent dies


def pool_tick() -> Tick | None:
    """In a worker of :func:`run_pool`, the tick that adds to the shared counter; else None."""
    return _count_in_pool if _counter is not None else None


def _init_worker(counter: Any, parent: int) -> None:
    global _counter
    _counter = counter
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _die_with_parent(parent)


def _die_with_parent(parent: int) -> None:
    """End this worker when ``parent`` dies, so a SIGKILLed parent leaves no worker writing.

    Linux delivers SIGKILL through ``prctl(PR_SET_PDEATHSIG)``; elsewhere (or if that fails) a
    daemon thread notices the new parent pid within a second.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _count_in_pool(n: int) -> None:
    with _counter.get_lock():
        _counter.value += n


def run_pool(
    run: Callable[[T], Any], tasks: Sequence[T], workers: int, tick: Tick | None, where: str
) -> None:
    """Run ``run(task)`` for every task in ``workers`` spawned processes; the first error stops
    the run (rerun resumes). ``tick(n)`` reports finished items; ``where`` (the store) names
    the output in the message of a died worker."""
    ctx = mp.get_context("spawn")
    counter = ctx.Value("q", 0)
    pool = ProcessPoolExecutor(
        max_workers=min(workers, len(tasks)),
        mp_context=ctx,
        initializer=_init_worker,
        initargs=(counter, os.getpid()),
    )
    reported = 0
    try:
        futures: set[Future] = {pool.submit(run, task) for task in tasks}
        while futures:
            done, futures = wait(futures, timeout=0.5, return_when=FIRST_COMPLETED)
            for future in done:
                future.result()
            if tick is not None:
                value = counter.value
                tick(value - reported)
                reported = value
    except BrokenProcessPool as exc:
        _stop(pool)
        raise IncompleteStoreError(
            f"{where}: a worker process died ({exc}); finished shards are kept: run the same "
            "command again to resume (with fewer --workers if memory ran out)"
        ) from exc
    except BaseException:
        _stop(pool)
        raise
    pool.shutdown()


def _stop(pool: ProcessPoolExecutor) -> None:
    """Kill the workers now: after an error or Ctrl-C, running shards are not waited for (a
    shard cut short has no done record and is redone on resume)."""
    for process in list((pool._processes or {}).values()):  # no public way before Python 3.14
        process.kill()
    pool.shutdown(wait=True, cancel_futures=True)
