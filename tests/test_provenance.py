"""Provenance records: paths written absolute, the folder a command ran in, atomic JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path

from cxrprobe.provenance import to_jsonable, write_run_record


def test_paths_in_records_are_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = {"out": Path("runs/a"), "nested": {"weights": [Path("w.safetensors")]}, "split": "val"}
    assert to_jsonable(config) == {
        "out": str(tmp_path / "runs" / "a"),
        "nested": {"weights": [str(tmp_path / "w.safetensors")]},
        "split": "val",  # plain strings are never guessed to be paths
    }
    written = write_run_record(Path("runs"), "cxrprobe test", config)
    assert written == Path("runs") / "run.json"
    record = json.loads(written.read_text())
    assert record["cwd"] == os.getcwd() == str(tmp_path)
    assert record["config"]["out"] == str(tmp_path / "runs" / "a")
    assert record["command"] == "cxrprobe test" and "versions" in record
