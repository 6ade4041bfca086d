"""The shared device and torchrun helpers: device names, rank environment, one-process context."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from cxrprobe.devices import check_device_name, ranks_from_env, resolve_device, setup, teardown
from cxrprobe.errors import ConfigError


def test_device_names():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto") == torch.device(expected)
    for bad in ("tpu", "mps", "cuda:x", "gpu"):
        with pytest.raises(ConfigError, match=r"--device .* use auto, cpu, cuda or cuda:N"):
            resolve_device(bad)
    assert check_device_name("cuda:3") == "cuda:3"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_cuda_without_cuda_is_refused(name):
    with pytest.raises(ConfigError, match="CUDA is not available.*--device cpu"):
        resolve_device(name)


@pytest.mark.gpu
def test_cuda_takes_the_local_rank():
    count = torch.cuda.device_count()
    assert resolve_device("cuda", local_rank=count + 1) == torch.device("cuda", (count + 1) % count)
    assert resolve_device("auto", local_rank=0) == torch.device("cuda", 0)


def test_ranks_from_env(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert ranks_from_env() == (0, 1, 0)
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert ranks_from_env() == (2, 4, 2)  # LOCAL_RANK defaults to RANK
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert ranks_from_env() == (2, 4, 0)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ConfigError, match="rank must lie in"):
        ranks_from_env()
    monkeypatch.setenv("RANK", "one")
    with pytest.raises(ConfigError, match="must be integers"):
        ranks_from_env()


def test_one_process_context_joins_no_group(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    ctx = setup("cpu")
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.distributed) == (0, 1, True, False)
    assert ctx.device == torch.device("cpu") and not ctx.owns_group
    assert not torch.distributed.is_initialized()
    teardown(ctx)


def test_light_imports_do_not_load_torch():
    code = (
        "import sys, cxrprobe.cli, cxrprobe.cli.options, cxrprobe.cli.output, cxrprobe.devices, cxrprobe.probe, "
        "cxrprobe.stats.predictions; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
