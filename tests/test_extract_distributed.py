"""torchrun with 2 CPU processes (gloo): each rank writes its own shards; the store equals one process's."""

from __future__ import annotations

import json

import pytest
import torch

from cxrprobe.cache.embeddings import open_embeddings
from cxrprobe.cache.extract import extract_embeddings
from cxrprobe.cache.images import build_image_cache
from cxrprobe.cache.store import RowStore
from cxrprobe.data.preprocess import PreprocessConfig
from tests.conftest import torchrun
from tests.image_fixtures import make_image_dataset
from tests.test_extract import ARCH, TINY, stores_equal

SCRIPT = """
import json, os, sys
from cxrprobe.cache.extract import extract_embeddings
args = json.loads(sys.argv[1])
summary = extract_embeddings(args.pop("out"), **args)
print(f"RANK {os.environ['RANK']} SUMMARY", json.dumps({k: summary[k] for k in ("rows", "computed", "world_size")}))
"""


@pytest.mark.slow
def test_two_ranks_write_the_same_store_as_one_process(tmp_path):
    df, root = make_image_dataset(tmp_path, 9, size=36, corrupt=[4])
    build_image_cache(
        df, root, tmp_path / "images.zarr", PreprocessConfig(size=32), workers=1, shard_rows=3
    )
    args = {
        "images": str(tmp_path / "images.zarr"),
        "init": "random",
        "arch": ARCH,
        "model_kwargs": TINY,
        "img_size": 32,
        "batch_size": 2,
        "num_workers": 0,
        "device": "cpu",
        "shard_rows": 2,
        "layers": 1,
    }
    script = tmp_path / "extract_script.py"
    script.write_text(SCRIPT)
    out = tmp_path / "ranks.zarr"
    result = torchrun(script, json.dumps({**args, "out": str(out)}))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "RANK 0 SUMMARY" in result.stdout and "RANK 1 SUMMARY" in result.stdout
    threads = torch.get_num_threads()
    # torchrun gives each rank one thread, and CPU sums depend on the thread count
    torch.set_num_threads(1)
    try:
        single = extract_embeddings(tmp_path / "single.zarr", **args)
    finally:
        torch.set_num_threads(threads)
    stores_equal(out, tmp_path / "single.zarr")
    emb = open_embeddings(out)
    assert emb.provenance["world_size"] == 2 and single["world_size"] == 1
    assert [f["row"] for f in emb.store.attrs["failures"]] == [4]
    assert RowStore.open(out).done_shards() == set(range(5))
