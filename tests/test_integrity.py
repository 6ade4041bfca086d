"""Data integrity under kills, races, full disks and typos (docs/fault-tolerance.md).

Kills land at exact code points: a child process patches the store method where the kill must
happen to SIGKILL itself there, so no cleanup handler runs (an exception would run them). Races
use two real processes; full disks a small tmpfs where root may mount one, else a patched write.
"""

from __future__ import annotations

import errno
import inspect
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from cxrprobe.cache.images import SHARD_DELAY_ENV, build_image_cache, open_images
from cxrprobe.cache.info import describe_store
from cxrprobe.cache.store import ArraySpec, RowMetadata, RowStore
from cxrprobe.cli import main
from cxrprobe.data.manifest import read_manifest, write_manifest
from cxrprobe.data.preprocess import PRESETS, PreprocessConfig
from cxrprobe.errors import (
    IncompleteStoreError,
    OutputError,
    OutputLockedError,
    StoreMismatchError,
    WeightsError,
)
from cxrprobe.outputs import WriterLock, check_output_location, check_replaceable
from tests.fixtures_data import write_chestxray14
from tests.image_fixtures import make_image_dataset, preprocess_args, write_png

REPO = Path(__file__).resolve().parents[1]
SPEC = [ArraySpec("x", (3,), "float32", float("nan"), chunk_rows=2)]
CFG = PreprocessConfig(size=24, aspect="pad", equalize=True)


def _meta(n: int) -> RowMetadata:
    labels = (np.arange(n * 2).reshape(n, 2) % 3 == 0).astype(np.float32)
    return RowMetadata(
        ids=np.array([f"img{i}" for i in range(n)]),
        split=np.array(["train", "val", "test", "train"] * (n // 4 + 1))[:n],
        patient_id=np.array([f"p{i // 2}" for i in range(n)]),
        labels=labels,
        findings=("cardiomegaly", "pleural_effusion"),
    )


def _open_or_create(path: Path, n: int, **kw) -> RowStore:
    return RowStore.open_or_create(
        path,
        kind="test",
        metadata=_meta(n),
        arrays=SPEC,
        shard_rows=4,
        identity={"model": "a"},
        **kw,
    )


def _fill(store: RowStore) -> None:
    """Write every pending shard with row r holding (r, r, r): the reference is ``np.arange``."""
    for shard in store.pending_shards():
        rows = store.shard_slice(shard)
        values = np.repeat(np.arange(rows.start, rows.stop, dtype=np.float32)[:, None], 3, axis=1)
        store.write_shard(shard, {"x": values}, {})
    store.finalize()


def _done_records(store: Path) -> list[Path]:
    """The done records beside ``store`` (``STORE.cxrprobe/progress-<store id>/``)."""
    return list(store.with_name(store.name + ".cxrprobe").glob("progress-*/shard-*.json"))


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# -------------------------------------------------------------- kills at exact code points
KILL_AT = """
from __future__ import annotations
import os, signal
import numpy as np
from cxrprobe.cache.store import ArraySpec, RowMetadata, RowStore

SPEC = [ArraySpec("x", (3,), "float32", float("nan"), chunk_rows=2)]


def kill_when(owner, name, when=lambda *a, **k: True):
    original = getattr(owner, name)

    def patched(*args, **kwargs):
        if when(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)

    setattr(owner, name, patched)
"""


def _run_killed(tmp_path: Path, body: str) -> None:
    """Run ``body`` in a child that SIGKILLs itself at the patched point; check it did die."""
    helpers = [inspect.getsource(f) for f in (_meta, _open_or_create, _fill)]
    code = "\n".join([KILL_AT, *helpers, textwrap.dedent(body)])
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def test_kill_during_store_creation_leaves_no_half_store_and_rerun_works(tmp_path):
    out = tmp_path / "s.zarr"
    _run_killed(
        tmp_path,
        f"""
        kill_when(RowStore, "_create_data_array")  # row metadata written, data arrays not yet
        _open_or_create({str(out)!r}, 10)
        """,
    )
    assert not out.exists()  # built beside and never renamed into place
    assert [p.name for p in tmp_path.glob(".s.zarr.building-*")]
    store = _open_or_create(out, 10)  # the rerun creates it and removes the leftover
    assert not list(tmp_path.glob(".s.zarr.*"))
    _fill(store)
    again = RowStore.open(out, kind="test")
    assert again.is_complete and again.metadata().first_difference(_meta(10)) is None
    np.testing.assert_array_equal(again.array("x")[:, 0], np.arange(10))


def test_half_made_store_is_reported_and_recreated(tmp_path):
    """A store left half made (as older versions did) is named as such and redone on rerun."""
    out = tmp_path / "s.zarr"
    _open_or_create(out, 10)
    for name in ("ids", "patient_id"):
        for f in sorted((out / name).rglob("*"), reverse=True):
            f.rmdir() if f.is_dir() else f.unlink()
        (out / name).rmdir()
    with pytest.raises(IncompleteStoreError, match="half-made test store: its creation was"):
        RowStore.open(out)
    with pytest.raises(IncompleteStoreError, match="no ids, patient_id array"):
        describe_store(out)
    result = CliRunner().invoke(main, ["info", str(out)])
    assert result.exit_code == 1 and "half-made" in result.output
    store = _open_or_create(out, 10)
    _fill(store)
    np.testing.assert_array_equal(RowStore.open(out).strings("ids"), _meta(10).ids)


@pytest.mark.parametrize(
    "point",
    [
        'kill_when(RowStore, "_grow")',  # marked incomplete, nothing grown yet
        'kill_when(zarr.Group, "create_array", lambda self, name, **k: name == "split")',
    ],
    ids=["before-growing", "mid-metadata-rewrite"],
)
def test_kill_during_append_is_never_complete_and_resumes(tmp_path, point):
    out = tmp_path / "s.zarr"
    _fill(_open_or_create(out, 10))
    _run_killed(
        tmp_path,
        f"""
        import zarr
        {point}
        _open_or_create({str(out)!r}, 15)
        """,
    )
    store = RowStore._open(out, "r", "test")
    assert not store.is_complete
    with pytest.raises(IncompleteStoreError, match="appending rows 10-14 was interrupted"):
        RowStore.open(out)
    with pytest.raises(StoreMismatchError, match="does not start with its first 10 rows"):
        other = _meta(15)
        other.ids[2] = "changed"
        RowStore.open_or_create(
            out, kind="test", metadata=other, arrays=SPEC, shard_rows=4, identity={"model": "a"}
        )
    resumed = _open_or_create(out, 15)
    assert resumed.pending_shards() == [2, 3] and not resumed.is_complete
    _fill(resumed)
    final = RowStore.open(out)
    assert final.is_complete and final.metadata().first_difference(_meta(15)) is None
    np.testing.assert_array_equal(final.array("x")[:, 2], np.arange(15))


def test_kill_before_the_complete_flag_leaves_the_store_incomplete(tmp_path):
    out = tmp_path / "s.zarr"
    _run_killed(
        tmp_path,
        f"""
        kill_when(RowStore, "_set_attrs", lambda self, **v: v.get("complete") is True)
        store = _open_or_create({str(out)!r}, 10)
        _fill(store)
        """,
    )
    store = RowStore.open(out)
    assert "failed" in store.group and not store.is_complete  # the mask came before the flag
    assert describe_store(out)["complete"] is False
    _fill(_open_or_create(out, 10))
    assert RowStore.open(out).is_complete


def test_appended_rows_are_never_reported_complete(tmp_path):
    """The issue's case: rows added to a finished cache read as zeros until their shards exist."""
    df, root = make_image_dataset(tmp_path, 6, size=20)
    build_image_cache(df.iloc[:4], root, tmp_path / "c.zarr", CFG, workers=1, shard_rows=2)
    store = RowStore.open_or_create(
        tmp_path / "c.zarr",
        kind="images",
        metadata=RowMetadata.from_manifest(df),
        arrays=RowStore.open(tmp_path / "c.zarr").array_specs,
        shard_rows=2,
        identity=RowStore.open(tmp_path / "c.zarr").identity,
    )
    assert store.n_rows == 6 and store.pending_shards() == [2]
    assert describe_store(tmp_path / "c.zarr")["complete"] is False
    with pytest.raises(IncompleteStoreError):
        open_images(tmp_path / "c.zarr")
    summary = build_image_cache(df, root, tmp_path / "c.zarr", CFG, workers=1, shard_rows=2)
    assert summary["computed"] == 2 and open_images(tmp_path / "c.zarr").store.is_complete


# ------------------------------------------------------------------ --overwrite never destroys
@pytest.fixture
def dataset(tmp_path):
    """6 small images and their manifest (Parquet)."""
    df, root = make_image_dataset(tmp_path, 6, size=20)
    return df, root, write_manifest(df, tmp_path / "manifest.parquet")


def test_overwrite_refuses_a_folder_that_is_not_a_store(dataset, tmp_path):
    _, root, manifest = dataset
    raw = tmp_path / "rawdata"
    (raw / "images").mkdir(parents=True)
    (raw / "images" / "a.png").write_bytes(b"pixels")
    (raw / "labels.csv").write_text("id,label\na,1\n")
    before = _tree(raw)
    result = CliRunner().invoke(main, preprocess_args(manifest, root, raw, "--overwrite"))
    assert result.exit_code == 1
    assert f"{raw} is not a cxrprobe 'images' output (it holds images, labels.csv)" in result.output
    assert _tree(raw) == before
    with pytest.raises(OutputError, match="not a cxrprobe 'test' output"):
        _open_or_create(raw, 10, overwrite=True)
    assert _tree(raw) == before


def test_overwrite_refuses_another_kind_and_files_but_replaces_its_own_kind(tmp_path):
    _fill(_open_or_create(tmp_path / "s.zarr", 10))
    with pytest.raises(OutputError, match="is a cxrprobe 'test' output, not 'images'"):
        RowStore.create(
            tmp_path / "s.zarr",
            kind="images",
            metadata=_meta(4),
            arrays=SPEC,
            shard_rows=4,
            identity={},
        )
    assert RowStore.open(tmp_path / "s.zarr").is_complete
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(OutputError, match="notes.txt is a file"):
        _open_or_create(tmp_path / "notes.txt", 10, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    (tmp_path / "empty").mkdir()
    check_replaceable(tmp_path / "empty", "test")  # an empty folder is fine
    fresh = _open_or_create(tmp_path / "s.zarr", 8, overwrite=True)
    assert fresh.n_rows == 8 and fresh.pending_shards() == [0, 1] and not fresh.is_complete
    assert not list(tmp_path.glob(".s.zarr.*"))  # nothing left beside it


# -------------------------------------------------------------------------- one writer a store
def test_a_second_writer_is_refused_with_the_holders_pid_and_host(dataset, tmp_path):
    df, root, _ = dataset
    out = tmp_path / "c.zarr"
    with WriterLock(out):
        holder = json.loads((tmp_path / "c.zarr.lock.json").read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(OutputLockedError, match=f"pid {os.getpid()} on host "):
            build_image_cache(df, root, out, CFG, workers=1, shard_rows=2)
    assert not out.exists() and not (tmp_path / "c.zarr.lock.json").exists()
    build_image_cache(df, root, out, CFG, workers=1, shard_rows=2)  # free again afterwards
    assert open_images(out).store.is_complete


def _cli(*args: str, **kw) -> subprocess.Popen:
    code = "from cxrprobe.cli import main; main()"
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def _wait_for(condition, proc: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_two_processes_on_one_store_the_second_is_refused(dataset, tmp_path):
    """A real race: while one preprocess holds the store (paused mid-run), a second one with the
    same settings and one rebuilding it with other settings are both refused; the first then
    finishes a store equal to an undisturbed build."""
    df, root, manifest = dataset
    out = tmp_path / "c.zarr"
    first = _cli(*preprocess_args(manifest, root, out), env={**os.environ, SHARD_DELAY_ENV: "0.2"})
    _wait_for(lambda: (tmp_path / "c.zarr.lock.json").exists(), first)
    first.send_signal(signal.SIGSTOP)
    try:
        same = _cli(*preprocess_args(manifest, root, out))
        other = _cli(*preprocess_args(manifest, root, out, "--size", "32", "--overwrite"))
        for second in (same, other):
            _, err = second.communicate(timeout=120)
            assert second.returncode == 1, err
            assert f"being written by another process (pid {first.pid} on host " in err
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    cli_cfg = replace(PRESETS["default"], size=24)
    build_image_cache(df, root, tmp_path / "clean.zarr", cli_cfg, workers=1, shard_rows=2)
    raced, clean = open_images(out), open_images(tmp_path / "clean.zarr")
    assert raced.size == 24 and raced.store.is_complete
    assert raced.read(slice(None)).tobytes() == clean.read(slice(None)).tobytes()


# ------------------------------------------------------------- full disks and read-only folders
def _mount_tmpfs(folder: Path, options: str) -> bool:
    """Mount a tmpfs at ``folder`` (root only); False where that is not possible."""
    if os.geteuid() != 0:
        return False
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder nobody may write in: a read-only tmpfs as root, else a 0555 folder."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    if not _mount_tmpfs(folder, "ro,size=64k"):
        pytest.skip("running as root but cannot mount a read-only tmpfs")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


@pytest.fixture
def small_disk(tmp_path):
    """A 160 KB tmpfs (root only); remount it with ``size=...`` to grow it."""
    folder = tmp_path / "disk"
    folder.mkdir()
    if not _mount_tmpfs(folder, "size=160k"):
        pytest.skip("needs root and tmpfs to fill a real disk (the patched-write test covers it)")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_full_disk_while_writing_shards_is_one_line_and_resumes(dataset, tmp_path, monkeypatch):
    import zarr.storage._local as local

    df, root, manifest = dataset
    out = tmp_path / "c.zarr"
    original = local._put

    def full_after_two_shards(path, value, exclusive=False):
        if "/images/c/" in str(path) and len(_done_records(out)) >= 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return original(path, value, exclusive=exclusive)

    monkeypatch.setattr(local, "_put", full_after_two_shards)
    result = CliRunner().invoke(main, preprocess_args(manifest, root, out))
    assert result.exit_code == 1
    assert f"{out}/images/c/2/0/0: cannot write (no space left on the device" in result.output
    assert "then run the same command again: finished shards are kept" in result.output
    assert not RowStore.open(out).is_complete
    monkeypatch.setattr(local, "_put", original)
    result = CliRunner().invoke(main, preprocess_args(manifest, root, out))
    assert result.exit_code == 0 and "2 of 3 shards kept" in result.output
    clean = build_image_cache(
        df, root, tmp_path / "clean.zarr", replace(PRESETS["default"], size=24), workers=1
    )
    assert open_images(out).read(slice(None)).tobytes() == (
        open_images(clean["out"]).read(slice(None)).tobytes()
    )


def _noise_dataset(tmp_path: Path, n: int, size: int) -> tuple[Path, Path]:
    """``n`` uniform-noise PNGs (incompressible) and their manifest."""
    rng = np.random.default_rng(1)
    root = tmp_path / "noise"
    rows = []
    for i in range(n):
        write_png(root / f"n{i}.png", rng.integers(0, 256, (size, size), dtype=np.uint8))
        rows.append({"image_id": f"n{i}", "path": f"n{i}.png", "patient_id": f"p{i}"})
    frame = pd.DataFrame(rows).assign(
        study_id=None, view="PA", split="train", sex="F", age=50.0, cardiomegaly=0.0
    )
    return root, write_manifest(frame, tmp_path / "noise.parquet")


def test_a_real_full_disk_is_one_line_and_a_bigger_one_resumes(small_disk, tmp_path):
    root, manifest = _noise_dataset(tmp_path, 32, 64)
    out = small_disk / "c.zarr"
    args = [*preprocess_args(manifest, root, out, "--size", "64", "--no-equalize")]
    args[args.index("--shard-rows") + 1] = "4"
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    error = result.output.strip().splitlines()[-1]  # one line, after the progress bar's
    assert error.startswith(f"Error: {out}") and "cannot write (no space left on the dev" in error
    subprocess.run(["mount", "-o", "remount,size=4m", str(small_disk)], check=True)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    args[args.index("--out") + 1] = str(tmp_path / "clean.zarr")
    assert CliRunner().invoke(main, args).exit_code == 0
    resumed, clean = open_images(out), open_images(tmp_path / "clean.zarr")
    assert resumed.read(slice(None)).tobytes() == clean.read(slice(None)).tobytes()


def test_read_only_output_fails_before_any_work(dataset, read_only_dir):
    _, root, manifest = dataset
    out = read_only_dir / "c.zarr"
    result = CliRunner().invoke(main, preprocess_args(manifest, root, out))
    assert result.exit_code == 1
    assert f"{out}: cannot write in {read_only_dir} (" in result.output
    for command in (
        ["evaluate", "missing.json", "--out", str(read_only_dir / "eval.json")],
        ["compare", "a.json", "b.json", "--markdown", str(read_only_dir / "cmp.md")],
    ):
        result = CliRunner().invoke(main, command)
        # the inputs do not exist: failing on the output first shows it is checked before work
        assert result.exit_code == 1 and "cannot write in" in result.output, result.output


def test_a_file_where_a_folder_belongs_is_refused(dataset, tmp_path):
    _, root, manifest = dataset
    (tmp_path / "c.zarr").write_text("not a folder")
    result = CliRunner().invoke(main, preprocess_args(manifest, root, tmp_path / "c.zarr"))
    assert result.exit_code == 1
    assert "c.zarr is a file, but an output folder is expected there" in result.output
    (tmp_path / "plain").write_text("x")
    with pytest.raises(OutputError, match="plain is a file, so .* cannot be created inside it"):
        check_output_location(tmp_path / "plain" / "sub" / "c.zarr")
    with pytest.raises(OutputError, match="is a folder, but an output file is expected"):
        check_output_location(tmp_path, "file")
    assert check_output_location(tmp_path / "new" / "deeper" / "x.zarr") == (
        tmp_path / "new" / "deeper" / "x.zarr"
    )
    assert not (tmp_path / "new").exists()  # checking creates nothing


# ------------------------------------------------------------------------- damaged input files
def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    import torch

    from cxrprobe.weights import load_state_dict

    path = tmp_path / "w.pth"
    torch.save({"w": torch.arange(1000.0)}, path)
    assert torch.equal(load_state_dict(path)["w"], torch.arange(1000.0))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(WeightsError, match="w.pth: truncated or damaged checkpoint"):
        load_state_dict(path)


def test_non_utf8_table_names_file_and_line_and_encoding_option_reads_it(tmp_path):
    utf8, latin = tmp_path / "utf8", tmp_path / "latin"
    for root in (utf8, latin):
        write_chestxray14(root)
    table = (utf8 / "Data_Entry_2017_v2020.csv").read_text()
    table = table.replace(",3,60,F,PA,2500,", ",3,60,F,PA,2500µ,")
    (utf8 / "Data_Entry_2017_v2020.csv").write_text(table, encoding="utf-8")
    (latin / "Data_Entry_2017_v2020.csv").write_text(table, encoding="latin-1")
    args = ["manifest", "chestxray14", "--root", str(latin), "-o", str(tmp_path / "m.parquet")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert (
        f"{latin / 'Data_Entry_2017_v2020.csv'}: data row 4 (line 5) is not valid utf-8 text"
        in result.output
    )
    assert "--encoding" in result.output
    assert CliRunner().invoke(main, [*args, "--encoding", "latin-1"]).exit_code == 0
    reference = tmp_path / "ref.parquet"
    ok = CliRunner().invoke(
        main, ["manifest", "chestxray14", "--root", str(utf8), "-o", str(reference)]
    )
    assert ok.exit_code == 0
    pd.testing.assert_frame_equal(read_manifest(tmp_path / "m.parquet"), read_manifest(reference))
    result = CliRunner().invoke(main, [*args, "--encoding", "klingon"])
    assert result.exit_code == 2 and "--encoding 'klingon' is not a known" in result.output


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_manifest_and_atomic_files_get_the_umask_mode(tmp_path, umask):
    from cxrprobe.provenance import atomic_write_json

    df, _ = make_image_dataset(tmp_path, 2, size=12)
    old = os.umask(umask)
    try:
        written = [
            write_manifest(df, tmp_path / "m.parquet"),
            atomic_write_json(tmp_path / "r.json", {"a": 1}),
        ]
        (tmp_path / "plain").write_text("an ordinary open(): the reference mode")
    finally:
        os.umask(old)
    reference = (tmp_path / "plain").stat().st_mode & 0o777
    assert reference == 0o666 & ~umask
    assert [p.stat().st_mode & 0o777 for p in written] == [reference, reference]


# ----------------------------------------------------------- kills and Ctrl-C leave nothing behind
def _children(pid: int) -> list[int]:
    """Live (not zombie) processes whose parent is ``pid``, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _start_pool_run(dataset, tmp_path: Path) -> tuple[subprocess.Popen, list[int], Path]:
    """A preprocess with 2 workers and slow shards, once its workers have finished a shard."""
    _, root, manifest = dataset
    out = tmp_path / "c.zarr"
    args = preprocess_args(manifest, root, out)
    args[args.index("--workers") + 1] = "2"
    args[args.index("--shard-rows") + 1] = "1"
    proc = _cli(*args, env={**os.environ, SHARD_DELAY_ENV: "0.5"}, start_new_session=True)
    _wait_for(lambda: _done_records(out), proc)
    children = _children(proc.pid)
    assert len(children) >= 2  # two workers (and the resource tracker)
    return proc, children, out


def _all_gone(pids: list[int], seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not any(_alive(p) for p in pids)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_sigkill_of_preprocess_leaves_no_worker_writing(dataset, tmp_path):
    proc, children, out = _start_pool_run(dataset, tmp_path)
    proc.kill()
    proc.wait()
    assert _all_gone(children), [p for p in children if _alive(p)]
    done = sorted(p.name for p in _done_records(out))
    time.sleep(1.2)  # more than two shard delays: a surviving worker would have written again
    assert sorted(p.name for p in _done_records(out)) == done
    assert 1 <= len(done) < 6


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_ctrl_c_exits_130_says_how_to_resume_and_stops_the_workers(dataset, tmp_path):
    proc, children, out = _start_pool_run(dataset, tmp_path)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole group
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Interrupted (Ctrl-C): finished shards are kept: run the same command again" in err
    assert "Traceback" not in err
    assert _all_gone(children), [p for p in children if _alive(p)]
    assert not RowStore.open(out).is_complete


# ------------------------------------------------- the other writers: extract, probe, finetune
def test_extract_takes_the_store_lock_before_building_the_model(dataset, tmp_path):
    from cxrprobe.cache.extract import extract_embeddings

    df, root, _ = dataset
    build_image_cache(df, root, tmp_path / "c.zarr", CFG, workers=1)
    # an unknown init would fail when the model is built: the lock is refused first
    with (
        WriterLock(tmp_path / "emb.zarr"),
        pytest.raises(OutputLockedError, match=f"pid {os.getpid()} on host"),
    ):
        extract_embeddings(
            tmp_path / "emb.zarr", init="no-such-init", images=tmp_path / "c.zarr", device="cpu"
        )
    assert not (tmp_path / "emb.zarr").exists()


def test_probe_and_finetune_check_their_output_before_any_work(tmp_path, read_only_dir):
    from cxrprobe.finetune.recipe import FinetuneConfig, finetune
    from cxrprobe.probe.run import ProbeConfig, run_probe

    missing = tmp_path / "missing.zarr"  # failing on the output, not on this, shows the order
    with pytest.raises(OutputError, match="cannot write in"):
        run_probe(ProbeConfig(store=missing, out=read_only_dir / "pred.json"))
    with pytest.raises(OutputError, match="cannot write in"):
        finetune(FinetuneConfig(), None, read_only_dir / "run")


def test_finetune_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path):
    from cxrprobe.finetune.recipe import FinetuneConfig, finetune

    folder = tmp_path / "results"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "mine.pt").write_bytes(b"user weights")
    (folder / "notes.md").write_text("keep")
    before = _tree(folder)
    with pytest.raises(OutputError, match="is not a cxrprobe 'finetune' output"):
        finetune(FinetuneConfig(), None, folder, overwrite=True)
    assert _tree(folder) == before


def test_cli_turns_write_faults_and_ctrl_c_into_one_line():
    import click

    from cxrprobe.cli.output import library_errors

    @click.command()
    @click.argument("fault")
    def command(fault):
        with library_errors():
            if fault == "full":
                raise OSError(errno.ENOSPC, "No space left on device", "/data/pred.json")
            if fault == "missing":
                raise FileNotFoundError(errno.ENOENT, "No such file", "/data/in.json")
            raise KeyboardInterrupt

    full = CliRunner().invoke(command, ["full"])
    assert full.exit_code == 1
    assert full.output.startswith("Error: /data/pred.json: cannot write (no space left on the")
    assert len(full.output.splitlines()) == 1
    missing = CliRunner().invoke(command, ["missing"])
    assert isinstance(missing.exception, FileNotFoundError)  # not a write fault: not reworded
    interrupted = CliRunner().invoke(command, ["ctrl-c"])
    assert interrupted.exit_code == 130
    assert "Interrupted (Ctrl-C): run the same command again." in interrupted.output
