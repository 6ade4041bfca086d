"""Output locations: checked before any work, replaced only when cxrprobe made them, one writer each.

Every command that writes calls :func:`check_output_location` first, so a read-only folder or a
file where a folder belongs fails in a second, not after hours of work. ``--overwrite`` goes
through :func:`check_replaceable`: only an output of the same kind (a store whose ``zarr.json``
names its kind, or a run folder whose ``run.json`` names its command) or an empty folder is
replaced; anything else is refused with its path. :func:`build_beside` makes a folder appear
whole or not at all (built in a hidden sibling, then renamed into place). :class:`WriterLock` keeps
a second process off an output while one writes it. :func:`output_errors` turns a full disk or a
read-only file system met while writing into one line naming the file and what to do.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

from cxrprobe.errors import CxrprobeError, OutputError, OutputLockedError
from cxrprobe.provenance import atomic_write_json, now_utc

# errno -> what happened and what to do; the first three can only come from writing
_DISK_FULL = {
    errno.ENOSPC: "no space left on the device: free some space or write to another disk",
    errno.EDQUOT: "disk quota exceeded: free some space or write to another disk",
    errno.EROFS: "the file system is read-only: choose a writable output location",
}
_WRITE_FAULTS = {
    **_DISK_FULL,
    errno.EACCES: "permission denied: choose an output location you can write to",
    errno.EPERM: "operation not permitted: choose an output location you can write to",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another output location",
    errno.EISDIR: "a folder is in the way of a file: choose another output location",
}


# ------------------------------------------------------------------------------- early checks
def check_output_location(
    path: str | os.PathLike, kind: Literal["folder", "file"] = "folder"
) -> Path:
    """Fail now, with one line naming ``path``, if the output cannot be written there.

    ``kind`` says what ``path`` will be: a ``"folder"`` (a store or run folder, also given
    siblings such as its lock) or a ``"file"``. A file where a folder is expected (or the
    reverse), a parent that is a file, and a location that refuses a test file (read-only,
    permissions) all raise :class:`~cxrprobe.errors.OutputError`.
    """
    path = Path(path)
    if kind == "folder" and path.exists() and not path.is_dir():
        raise OutputError(
            f"{path} is a file, but an output folder is expected there; move the file away or "
            "choose another output path"
        )
    if kind == "file" and path.is_dir():
        raise OutputError(
            f"{path} is a folder, but an output file is expected there; choose another file name"
        )
    folders = [path.parent] + ([path] if kind == "folder" and path.is_dir() else [])
    for folder in folders:
        existing = _nearest_existing(folder)
        if not existing.is_dir():
            raise OutputError(
                f"{existing} is a file, so {path} cannot be created inside it; choose another "
                "output path"
            )
        _probe_write(existing, path)
    return path


def _nearest_existing(folder: Path) -> Path:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _probe_write(folder: Path, target: Path) -> None:
    """Create and delete an empty file in ``folder`` (``os.access`` says yes to root on a
    read-only mount point folder, and knows nothing of full quotas)."""
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".cxrprobe-write-test-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        reason = _WRITE_FAULTS.get(exc.errno or 0, exc.strerror or str(exc))
        raise OutputError(f"{target}: cannot write in {folder} ({reason})") from exc


# -------------------------------------------------------------------------------- replacing
def output_kind(path: str | os.PathLike) -> str | None:
    """What cxrprobe output the folder ``path`` is: a store's kind from its ``zarr.json``
    (``images``, ``embeddings``), else the command in its ``run.json`` (``finetune``); None when
    it is neither."""
    path = Path(path)
    meta, record = path / "zarr.json", path / "run.json"
    try:
        if meta.is_file():
            return str(json.loads(meta.read_text())["attributes"]["cxrprobe"]["kind"])
        if record.is_file():
            command = str(json.loads(record.read_text())["command"]).split()
            return command[1] if len(command) > 1 and command[0] == "cxrprobe" else None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return None


def check_replaceable(path: str | os.PathLike, kind: str, own_names: Iterable[str] = ()) -> None:
    """Refuse (``OutputError``) to replace ``path`` unless it is missing, an empty folder, an
    output of the same ``kind`` (see :func:`output_kind`), or a folder holding only ``own_names``
    (the files the command itself writes). Every ``--overwrite`` goes through here first."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    todo = "delete or move it yourself, or choose another output path"
    if path.is_symlink() or not path.is_dir():
        link = "a symbolic link" if path.is_symlink() else "a file"
        raise OutputError(
            f"{path} is {link}, not a cxrprobe '{kind}' output; --overwrite does not replace it: "
            f"{todo}"
        )
    entries = sorted(os.listdir(path))
    found = output_kind(path)
    if not entries or found == kind or set(entries) <= set(own_names):
        return
    if found is not None:
        what = f"is a cxrprobe '{found}' output, not '{kind}'"
    else:
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        what = f"is not a cxrprobe '{kind}' output (it holds {shown})"
    raise OutputError(
        f"{path} {what}; --overwrite replaces only a cxrprobe output of kind '{kind}': {todo}"
    )


@contextlib.contextmanager
def build_beside(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty hidden sibling folder to build ``path`` in; on success it takes the place
    of ``path`` (whatever was there is removed: call :func:`check_replaceable` first).

    A kill while building leaves only the hidden sibling, removed by the next build of ``path``;
    ``path`` itself is never half made. The caller should hold ``path``'s :class:`WriterLock`.
    """
    path = Path(path)
    for leftover in path.parent.glob(f".{path.name}.building-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    for leftover in path.parent.glob(f".{path.name}.replaced-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    building = path.with_name(f".{path.name}.building-{os.getpid()}")
    building.parent.mkdir(parents=True, exist_ok=True)
    building.mkdir()
    try:
        yield building
        if path.exists() or path.is_symlink():
            old = path.with_name(f".{path.name}.replaced-{os.getpid()}")
            os.rename(path, old)
            os.rename(building, path)
            shutil.rmtree(old)
        else:
            os.rename(building, path)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise


# -------------------------------------------------------------------------------- one writer
class WriterLock:
    """Exclusive write access to the output ``path`` for this process, kept until released.

    The lock is ``PATH.lock`` beside the output (an OS file lock through ``filelock``, freed by
    the kernel if the process dies); the holder's pid, host, start time and command go to
    ``PATH.lock.json`` so a refused second writer can say who holds it. Under ``torchrun`` only
    rank 0 takes it. Readers never need it.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.holder_path = self.path.with_name(self.path.name + ".lock.json")
        self._lock = None

    def acquire(self) -> None:
        """Take the lock now or raise ``OutputLockedError`` naming the process that holds it."""
        from filelock import FileLock, Timeout

        if self._lock is not None:
            return
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.lock_path), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise OutputLockedError(
                f"{self.path} is being written by another process ({self._holder()}); wait for it "
                "to finish or stop it, then run this command again"
            ) from None
        self._lock = lock
        atomic_write_json(
            self.holder_path,
            {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "since": now_utc(),
                "command": " ".join(sys.argv),
            },
        )

    def _holder(self) -> str:
        try:
            holder = json.loads(self.holder_path.read_text())
            return f"pid {holder['pid']} on host {holder['host']}, since {holder['since']}"
        except (OSError, ValueError, KeyError, TypeError):
            return f"its pid is not recorded yet; lock file {self.lock_path}"

    def release(self) -> None:
        """Give the lock up (nothing happens when it is not held)."""
        if self._lock is None:
            return
        try:
            self.holder_path.unlink(missing_ok=True)
        finally:
            self._lock.release()
            self._lock = None

    close = release

    def __enter__(self) -> WriterLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# ------------------------------------------------------------------------------ write faults
def write_fault(exc: OSError, disk_only: bool = False) -> str | None:
    """What a write error means for the user, or None when it is not a write fault.
    ``disk_only`` keeps only the errors writing alone can cause (full disk, quota, read-only)."""
    return (_DISK_FULL if disk_only else _WRITE_FAULTS).get(exc.errno or 0)


@contextlib.contextmanager
def output_errors(path: str | os.PathLike, then: str = "") -> Iterator[None]:
    """Turn an ``OSError`` met while writing ``path`` (full disk, read-only, permissions) into an
    ``OutputError`` naming the file, what happened and what to do (``then`` is appended)."""
    try:
        yield
    except CxrprobeError:
        raise
    except OSError as exc:
        reason = write_fault(exc)
        if reason is None:
            raise
        where = exc.filename or path
        raise OutputError(f"{where}: cannot write ({reason}){then}") from exc
