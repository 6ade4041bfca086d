"""Shared fixtures: device parametrisation, the real-data folder, tiny models."""

from __future__ import annotations

from pathlib import Path

import pytest

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def real_data() -> Path:
    """The shared real metadata and images beside the checkout; skips when absent."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"real data folder {REAL_DATA} not present")
    return REAL_DATA


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request) -> str:
    """Run a test body on CPU and, where present, on CUDA."""
    return request.param


class RecordedBar:
    """A progress bar that remembers its total, description, updates and whether it was closed."""

    def __init__(self, total: int | None, desc: str) -> None:
        self.total, self.desc, self.updates, self.closed = total, desc, [], False

    def update(self, n: int = 1) -> None:
        self.updates.append(n)

    def close(self) -> None:
        self.closed = True

    @property
    def done(self) -> int:
        return sum(self.updates)


class BarRecorder(list):
    """A ``cxrprobe.progress`` factory that keeps every bar it makes (it is the list of them)."""

    def __call__(self, total: int | None, desc: str) -> RecordedBar:
        self.append(RecordedBar(total, desc))
        return self[-1]


@pytest.fixture
def bars() -> BarRecorder:
    """Pass as ``progress=bars``; then inspect ``bars`` (one RecordedBar per bar opened)."""
    return BarRecorder()


def torchrun(script, *args: str, env: dict | None = None):
    """Run ``script ARGS`` as 2 CPU processes under ``torch.distributed.run`` (standalone)."""
    import subprocess
    import sys

    return subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(script),
            *args,
        ],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
