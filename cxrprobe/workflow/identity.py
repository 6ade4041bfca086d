"""Content identities of a study step's inputs and outputs: what changed since a step ran.

A store (a folder with ``zarr.json``) is identified by its kind, id, identity, creation time,
row count and completion flag (no data is read); a file by the sha256 of its bytes (not read
again while its size and modification time are as recorded); another folder by the sha256 of
its files, lock files and hidden temporaries left out. :mod:`cxrprobe.workflow.state` records
these with each finished step and compares them on the next run.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cxrprobe.provenance import sha256_file

_STORE_KEYS = ("kind", "store_id", "identity", "created", "rows", "complete", "appending")

Identity = dict[str, Any]


def identity(path: str | os.PathLike, known: Mapping[str, Any] | None = None) -> Identity | None:
    """The content identity of a file, store or folder (None when it does not exist).

    ``known`` is the identity recorded earlier: a file whose size and modification time still
    match it is not read again."""
    path = Path(path)
    if path.is_file():
        return _file_identity(path, known)
    if not path.is_dir():
        return None
    meta = path / "zarr.json"
    if meta.is_file():
        try:
            attrs = json.loads(meta.read_text())["attributes"]["cxrprobe"]
            content: Any = {k: attrs.get(k) for k in _STORE_KEYS}
        except (ValueError, KeyError, TypeError):
            content = meta.read_bytes().hex()
        return {"kind": "store", "digest": _digest(content)}
    before = (known or {}).get("files", {})
    files = {
        name: _file_identity(p, before.get(name))
        for p in sorted(path.rglob("*"))
        if p.is_file() and not _bookkeeping(p.relative_to(path))
        for name in [p.relative_to(path).as_posix()]
    }
    return {
        "kind": "folder",
        "digest": _digest({name: f["digest"] for name, f in files.items()}),
        "files": files,
    }


def _file_identity(path: Path, known: Mapping[str, Any] | None) -> Identity:
    stat = path.stat()
    if (
        known
        and known.get("kind") == "file"
        and known.get("size") == stat.st_size
        and known.get("mtime_ns") == stat.st_mtime_ns
    ):
        return dict(known)
    return {
        "kind": "file",
        "digest": sha256_file(path),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
    }


def _bookkeeping(relative: Path) -> bool:
    """Lock files and hidden temporaries, which say nothing about a folder's content."""
    return any(part.startswith(".") for part in relative.parts) or relative.name.endswith(
        (".lock", ".lock.json")
    )


def _digest(content: Any) -> str:
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def same(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    """Whether two identities name the same content (a missing one matches nothing)."""
    return (
        a is not None
        and b is not None
        and a.get("kind") == b.get("kind")
        and a.get("digest") == b.get("digest")
    )
