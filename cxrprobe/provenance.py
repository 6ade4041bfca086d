"""Provenance and atomic output: what made a file, and writes that never leave half a file."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import sys
import tempfile
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

_PACKAGES = ("cxrprobe", "torch", "timm", "numpy", "zarr", "h5py", "scikit-learn", "pandas")


def versions(extra: Iterable[str] = ()) -> dict[str, str]:
    """Installed versions of the packages that decide results, plus Python and platform."""
    found = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in (*_PACKAGES, *extra):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def now_utc() -> str:
    """The current time as an ISO-8601 UTC string (seconds precision)."""
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes (weights, manifests), read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def to_jsonable(value: Any) -> Any:
    """Convert numpy scalars/arrays, paths and tuples into plain JSON types.

    Paths are written absolute (against the current folder), so a record still says which file
    was meant when it is read from elsewhere.
    """
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.path.abspath(os.fspath(value))
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def _umask() -> int:
    """The process umask, so atomic files get normal modes: read from ``/proc`` on Linux (setting
    and restoring it, the only other way, briefly changes it for every thread)."""
    try:
        status = Path("/proc/self/status").read_text()
        return int(
            next(line for line in status.splitlines() if line.startswith("Umask:")).split()[1], 8
        )
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, then ``os.replace`` it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON (numpy values converted)."""
    return atomic_write_text(path, json.dumps(to_jsonable(obj), indent=2, allow_nan=False) + "\n")


def run_record(command: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """The record every output gets: command, resolved config (paths absolute), the folder it ran
    in, versions and time."""
    return {
        "command": command,
        "config": to_jsonable(dict(config)),
        "cwd": os.getcwd(),
        "versions": versions(),
        "time": now_utc(),
    }


def write_run_record(target: str | os.PathLike, command: str, config: Mapping[str, Any]) -> Path:
    """Write the run record (resolved config and versions): ``target/run.json`` for an output
    folder, or ``target`` itself when it names a ``.json`` file (``*.run.json`` beside a
    single-file output; a Zarr store's is :attr:`cxrprobe.cache.layout.StoreFiles.run`, outside
    its hierarchy)."""
    target = Path(target)
    path = target if target.suffix == ".json" else target / "run.json"
    return atomic_write_json(path, run_record(command, config))
