"""Progress bars and log messages: bars in SLURM/nohup logs, the probe grid's bar, ``-v``/``-vv``."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
from click.testing import CliRunner

from cxrprobe.cache.embeddings import create_embeddings
from cxrprobe.cache.store import RowMetadata
from cxrprobe.cli import configure_logging, main
from cxrprobe.probe.run import ProbeConfig, run_probe
from cxrprobe.progress import tqdm_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _run_bar(stream, updates: int = 50) -> str:
    bar = tqdm_bar(updates, "extract", stream=stream)
    for _ in range(updates):
        bar.update(1)
    bar.close()
    return stream.getvalue()


def test_a_log_file_gets_whole_lines_at_the_interval(monkeypatch):
    monkeypatch.delenv("CXRPROBE_PROGRESS", raising=False)
    monkeypatch.setenv("CXRPROBE_PROGRESS_INTERVAL", "3600")
    text = _run_bar(io.StringIO())
    lines = text.splitlines()
    assert "\r" not in text and text.endswith("\n")
    assert len(lines) == 2  # the start and the end: nothing in between within the interval
    assert lines[0].startswith("extract:   0%") and "0/50" in lines[0]
    assert "100%" in lines[-1] and "50/50" in lines[-1] and "img/s" in lines[-1]

    monkeypatch.setenv("CXRPROBE_PROGRESS_INTERVAL", "0")
    assert len(_run_bar(io.StringIO()).splitlines()) > 10  # every update once the interval is 0


def test_a_terminal_redraws_in_place_and_progress_0_hides_bars(monkeypatch):
    monkeypatch.delenv("CXRPROBE_PROGRESS_INTERVAL", raising=False)
    monkeypatch.delenv("CXRPROBE_PROGRESS", raising=False)
    assert "\r" in _run_bar(_Terminal())
    monkeypatch.setenv("CXRPROBE_PROGRESS", "0")
    assert _run_bar(io.StringIO()) == "" and _run_bar(_Terminal()) == ""


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    rng = np.random.default_rng(0)
    n, findings = 120, ("effusion", "edema")
    x = rng.standard_normal((n, 8)).astype(np.float32)
    labels = (x[:, :2] + rng.standard_normal((n, 2)) > 0).astype(np.float32)
    meta = RowMetadata(
        np.array([f"img{i:03d}" for i in range(n)]),
        np.array(["train"] * 60 + ["val"] * 30 + ["test"] * 30),
        np.array([f"p{i:03d}" for i in range(n)]),
        labels,
        findings,
    )
    path = tmp_path_factory.mktemp("grid") / "emb.zarr"
    create_embeddings(path, meta, {"cls": x, "mean": x}, dtype="float32")
    return path


@pytest.mark.parametrize("backend", ["torch", "sklearn"])
def test_the_probe_grid_bar_has_a_total(store, tmp_path, bars, backend):
    grid = (0.01, 0.1, 1.0)
    config = ProbeConfig(
        store=store, out=tmp_path / "p.json", backend=backend, device="cpu", grid=grid, max_iter=200
    )
    run_probe(config, progress=bars)
    (bar,) = bars
    assert bar.desc == "fitting grid" and bar.closed
    if backend == "torch":  # iterations, bounded by max_iter; converged well before it
        assert bar.total == 200 and 0 < bar.done < 200
    else:  # one fit per finding and grid value
        assert bar.total == bar.done == 2 * len(grid)


@pytest.fixture
def quiet_logging():
    yield
    configure_logging(0)


def test_verbose_flags_show_library_log_records(capsys, quiet_logging):
    log = logging.getLogger("cxrprobe.example")
    for flags, shown in (([], set()), (["-v"], {"INFO"}), (["-vv"], {"INFO", "DEBUG"})):
        result = CliRunner().invoke(main, [*flags, "info", "--help"])
        assert result.exit_code == 0, result.output
        capsys.readouterr()
        log.info("an info line")
        log.debug("a debug line")
        err = capsys.readouterr().err
        assert ("INFO cxrprobe.example: an info line" in err) == ("INFO" in shown), flags
        assert ("DEBUG cxrprobe.example: a debug line" in err) == ("DEBUG" in shown), flags
        assert err.count("an info line") <= 1  # one handler, however often main ran


def test_library_warnings_are_warning_lines_without_flags(capsys, quiet_logging):
    log = logging.getLogger("cxrprobe.example")
    for _ in range(2):  # main runs once per command: still one line per record
        assert CliRunner().invoke(main, ["info", "--help"]).exit_code == 0
    capsys.readouterr()
    log.info("an info line")
    log.warning("k=%d exceeds the %d training rows", 50, 10)
    err = capsys.readouterr().err
    assert err == "Warning: k=50 exceeds the 10 training rows\n"
