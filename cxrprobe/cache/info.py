"""What a store holds, as a JSON-ready description and as a few lines of text (``cxrprobe info``)."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from cxrprobe.cache.store import RowStore

SHOWN_FAILURES = 5


def describe_store(path: str | os.PathLike) -> dict[str, Any]:
    """Kind, rows, arrays, findings, split counts, failures, completeness, the files beside the
    store (bookkeeping folder, ``rows.parquet``, run record), identity and provenance."""
    store = RowStore.open(path)
    attrs = store.attrs
    meta = store.metadata()
    failures = store.failures()
    failed = np.zeros(store.n_rows, dtype=bool)
    failed[list(failures)] = True
    ids = meta.ids
    return {
        "path": str(store.path),
        "kind": store.kind,
        "rows": store.n_rows,
        "complete": store.is_complete,
        "shards": {
            "total": store.n_shards,
            "pending": len(store.pending_shards()),
            "rows_per_shard": store.shard_rows,
        },
        "arrays": {
            spec.name: {"shape": list(store.array(spec.name).shape), "dtype": spec.dtype}
            for spec in store.array_specs
        },
        "findings": list(meta.findings),
        "positives": {
            name: int(np.nansum(meta.labels[:, j] == 1)) for j, name in enumerate(meta.findings)
        },
        "splits": dict(sorted(Counter(meta.split.tolist()).items())),
        "splits_usable": dict(sorted(Counter(meta.split[~failed].tolist()).items())),
        "failures": {
            "count": len(failures),
            "first": [
                {"row": r, "image_id": str(ids[r]), "reason": failures[r]}
                for r in sorted(failures)[:SHOWN_FAILURES]
            ],
        },
        "format_version": store.format_version,
        "files": {
            "bookkeeping": str(store.files.folder),
            **{
                name: str(path) if path.is_file() else None
                for name, path in (
                    ("rows_table", store.files.rows),
                    ("run_record", store.files.run),
                )
            },
        },
        "manifest_hash": attrs.get("manifest_hash") or store.provenance.get("manifest_hash"),
        "identity": store.identity,
        "provenance": store.provenance,
    }


def format_description(d: dict[str, Any]) -> str:
    """A short human summary of :func:`describe_store`'s output."""
    status = (
        "complete"
        if d["complete"]
        else f"INCOMPLETE ({d['shards']['pending']} of {d['shards']['total']} shards pending)"
    )
    lines = [f"{d['path']}: {d['kind']} store, {d['rows']} rows, {status}"]
    for name, array in d["arrays"].items():
        lines.append(f"  {name}: {tuple(array['shape'])} {array['dtype']}")
    splits = ", ".join(f"{k or '(none)'} {v}" for k, v in d["splits"].items())
    lines.append(f"  splits: {splits}")
    if d["findings"]:
        lines.append(
            f"  findings ({len(d['findings'])}): "
            + ", ".join(f"{k} {v}+" for k, v in d["positives"].items())
        )
    lines.append(f"  failures: {d['failures']['count']}")
    lines += [
        f"    row {f['row']} ({f['image_id']}): {f['reason']}" for f in d["failures"]["first"]
    ]
    model = d["provenance"].get("model")
    if model:
        weights = model.get("weights_sha256")
        lines.append(
            f"  model: {model['init']} ({model['arch']}), input {model['img_size']} px, "
            f"{'patch ' + str(model['patch_size']) if model.get('patch_size') else 'pooled features'}, "
            f"weights {weights[:12] + '…' if weights else model.get('weights_source')}"
        )
    if "device" in d["provenance"]:
        versions = d["provenance"].get("versions", {})
        lines.append(
            f"  made on {d['provenance']['device']} with torch {versions.get('torch')}, timm {versions.get('timm')}"
        )
    if d["manifest_hash"]:
        lines.append(f"  manifest sha256 {d['manifest_hash'][:16]}…")
    beside = [Path(p).name for p in (d["files"]["rows_table"], d["files"]["run_record"]) if p]
    if beside:
        lines.append(f"  beside it: {d['files']['bookkeeping']} ({', '.join(beside)})")
    return "\n".join(lines)
