"""Label maps by name or file: the current directory never hides an adapter's packaged map."""

from __future__ import annotations

import dataclasses
import json
from importlib import resources

import pytest

from cxrprobe.data.adapters import ADAPTERS
from cxrprobe.data.labelmap import key, load_label_map
from cxrprobe.errors import ConfigError, InputFileError


def _packaged(name: str) -> dict:
    """The shipped JSON, read straight from the package (the reference)."""
    text = resources.files("cxrprobe.data").joinpath("label_maps", f"{name}.json").read_text()
    return json.loads(text)


@pytest.fixture
def lookalikes(tmp_path, monkeypatch):
    """A working directory holding a folder or a (non-JSON) file named like every adapter."""
    for i, name in enumerate(ADAPTERS):
        if i % 2:
            (tmp_path / name).write_text("not a label map")
        else:
            (tmp_path / name).mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_adapter_loads_its_packaged_map_whatever_the_current_directory_holds(lookalikes, name):
    adapter = dataclasses.replace(ADAPTERS[name])  # a fresh instance: nothing cached
    label_map = adapter.label_map
    assert label_map.source == f"label_maps/{adapter.label_map_name}.json"
    assert set(label_map.labels) == {key(n) for n in _packaged(adapter.label_map_name)["labels"]}


def test_a_folder_is_never_a_label_map(lookalikes):
    assert load_label_map("chestxray14").source == "label_maps/chestxray14.json"  # a folder here
    (lookalikes / "maps.json").mkdir()
    with pytest.raises(InputFileError, match="label map maps.json is not a file"):
        load_label_map("maps.json")


def test_a_user_map_is_a_file_with_or_without_json_suffix(tmp_path):
    data = {"labels": {"Big heart": "cardiomegaly"}, "unmapped": "ignore"}
    for name in ("mine.json", "mine.map"):
        (tmp_path / name).write_text(json.dumps(data))
        label_map = load_label_map(tmp_path / name)
        assert label_map.source == str(tmp_path / name)
        assert dict(label_map.labels) == {"big heart": ("cardiomegaly",)}
    with pytest.raises(InputFileError, match="missing.json is not a file"):
        load_label_map(tmp_path / "missing.json")


def test_unknown_name_lists_the_packaged_maps(lookalikes):
    with pytest.raises(
        ConfigError, match=r"no packaged label map named 'nih' \(known: chestxray14"
    ):
        load_label_map("nih")
    (lookalikes / "sub").mkdir()
    (lookalikes / "sub" / "chexpert.json").write_text("{}")  # beside a folder, not packaged
    (lookalikes / "sub" / "chexpert").mkdir()
    with pytest.raises(ConfigError, match="no packaged label map named '.*sub/chexpert'"):
        load_label_map(lookalikes / "sub" / "chexpert")
