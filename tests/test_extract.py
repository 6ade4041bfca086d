"""Embedding extraction: equality with a direct forward, failures, refusal, append, resume after a
kill, the raw-files path, the GPU path, and the ``extract``/``info``/``export`` commands."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cxrprobe.cache.embeddings import open_embeddings
from cxrprobe.cache.extract import extract_embeddings
from cxrprobe.cache.images import build_image_cache, open_images
from cxrprobe.cache.layout import StoreFiles
from cxrprobe.cache.store import RowStore
from cxrprobe.cli import main
from cxrprobe.data.preprocess import PreprocessConfig, to_model_input
from cxrprobe.errors import ConfigError, IncompleteStoreError, StoreMismatchError
from cxrprobe.models import create_model
from cxrprobe.weights import save_state_dict
from tests.image_fixtures import make_image_dataset

TINY = {"depth": 2, "embed_dim": 64, "num_heads": 2}
ARCH = "vit_base_patch16_224"
CFG = PreprocessConfig(size=32)
CORRUPT = 3
ROWS = 10


def run(out, source, **overrides):
    """extract_embeddings with the tiny test model on CPU; ``source`` is {images=...} or {manifest=, root=}."""
    kwargs = {
        "init": "random",
        "arch": ARCH,
        "model_kwargs": TINY,
        "img_size": 32,
        "batch_size": 3,
        "num_workers": 0,
        "device": "cpu",
        "shard_rows": 4,
        **source,
        **overrides,
    }
    return extract_embeddings(out, **kwargs)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """10 PNGs (row 3 corrupt), their image cache at 32 px, and a finished extraction from it."""
    tmp = tmp_path_factory.mktemp("extract")
    df, root = make_image_dataset(tmp, ROWS, size=40, corrupt=[CORRUPT])
    build_image_cache(df, root, tmp / "images.zarr", CFG, workers=1, shard_rows=4)
    summary = run(tmp / "emb.zarr", {"images": tmp / "images.zarr"}, layers=2)
    return {
        "df": df,
        "root": root,
        "images": tmp / "images.zarr",
        "emb": tmp / "emb.zarr",
        "summary": summary,
    }


def stores_equal(a: Path, b: Path) -> None:
    x, y = open_embeddings(a), open_embeddings(b)
    assert x.feature_kinds == y.feature_kinds
    for name in x.feature_kinds:
        np.testing.assert_array_equal(x.features(name, dtype=None), y.features(name, dtype=None))
    np.testing.assert_array_equal(x.ids, y.ids)
    np.testing.assert_array_equal(x.failed, y.failed)
    assert x.store.failures() == y.store.failures()


def direct_reference(images: np.ndarray, arch: str, size: int, layers: int):
    """CLS, patch mean and per-block normed CLS computed here, block by block, from the model."""
    model, spec = create_model("random", arch=arch, img_size=size, model_kwargs=TINY)
    model.eval()
    x = to_model_input(torch.from_numpy(images), spec.mean, spec.std, size=size)
    with torch.no_grad():
        out = model.forward_features(x)
        tokens = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
        per_block = []
        for block in model.blocks:
            tokens = block(tokens)
            per_block.append(model.norm(tokens)[:, 0])
    cls = out[:, 0].numpy()
    mean = out[:, model.num_prefix_tokens :].mean(dim=1).numpy()
    return cls, mean, torch.stack(per_block[-layers:], dim=1).numpy() if layers else None


@pytest.mark.parametrize(
    ("arch", "size", "layers"),
    [
        (ARCH, 32, 2),
        ("vit_base_patch14_reg4_dinov2.lvd142m", 28, 0),
    ],  # registers: 5 prefix tokens; resized input
)
def test_stored_features_equal_a_direct_forward(data, tmp_path, arch, size, layers):
    if arch == ARCH:
        emb = open_embeddings(data["emb"])
    else:
        run(
            tmp_path / "emb.zarr",
            {"images": data["images"]},
            arch=arch,
            img_size=size,
            layers=layers,
        )
        emb = open_embeddings(tmp_path / "emb.zarr")
    images = open_images(data["images"]).read(slice(None))
    cls, mean, per_block = direct_reference(images, arch, size, layers)
    good = np.arange(ROWS) != CORRUPT
    tol = {"rtol": 2e-3, "atol": 2e-3}  # float16 storage
    np.testing.assert_allclose(emb.features("cls")[good], cls[good], **tol)
    np.testing.assert_allclose(emb.features("mean")[good], mean[good], **tol)
    if layers:
        np.testing.assert_allclose(
            emb.features("layers").reshape(ROWS, layers, -1)[good], per_block[good], **tol
        )
        np.testing.assert_array_equal(emb.features("last1"), emb.features("cls"))
    assert emb.provenance["model"]["arch"] == arch and emb.identity["model"]["img_size"] == size


def test_a_corrupt_image_is_listed_and_masked_as_nan(data):
    emb = open_embeddings(data["emb"])
    summary = data["summary"]
    assert [f["row"] for f in summary["failures"]] == [CORRUPT]
    assert summary["failures"][0]["image_id"] == f"img{CORRUPT:03d}"
    assert (
        "cannot decode" in summary["failures"][0]["reason"]
        or "corrupt" in summary["failures"][0]["reason"]
    )
    assert summary["images"] == ROWS - 1 and summary["rows"] == ROWS and summary["computed"] == ROWS
    assert emb.failed.tolist() == [i == CORRUPT for i in range(ROWS)]
    for name in emb.feature_kinds:
        values = emb.features(name)
        assert np.isnan(values[CORRUPT]).all()
        assert np.isfinite(np.delete(values, CORRUPT, axis=0)).all()
    assert CORRUPT not in emb.rows().tolist()
    assert emb.labels.shape == (ROWS, 2) and emb.findings == ("cardiomegaly", "pleural_effusion")


def test_the_raw_files_path_gives_the_cache_path_result(data, tmp_path):
    summary = run(
        tmp_path / "raw.zarr",
        {"manifest": data["df"], "root": data["root"]},
        layers=2,
        num_workers=1,
    )
    assert [f["row"] for f in summary["failures"]] == [CORRUPT]
    stores_equal(tmp_path / "raw.zarr", data["emb"])
    emb = open_embeddings(tmp_path / "raw.zarr")
    assert emb.identity["preprocess"] == open_embeddings(data["emb"]).identity["preprocess"]
    assert emb.store.attrs["manifest_hash"] == emb.provenance["manifest_hash"]


def test_rerun_is_a_no_op_and_other_settings_are_refused(data, tmp_path):
    out = tmp_path / "emb.zarr"
    source = {"images": data["images"]}
    run(out, source)
    again = run(out, source)
    assert again["computed"] == 0 and again["shards_resumed"] == again["shards"] == 3
    with pytest.raises(StoreMismatchError, match="img_size"):
        run(out, source, img_size=48)
    model, _ = create_model("random", arch=ARCH, img_size=32, model_kwargs=TINY)
    torch.nn.init.normal_(model.cls_token)
    weights = save_state_dict(model.state_dict(), tmp_path / "other.safetensors")
    with pytest.raises(StoreMismatchError, match="weights_sha256"):
        run(out, source, init="mimic", weights=weights)
    with pytest.raises(StoreMismatchError, match="dtype"):
        run(out, source, dtype="float32")
    with pytest.raises(StoreMismatchError, match="different manifest"):
        run(out, {"manifest": data["df"].iloc[::-1].reset_index(drop=True), "root": data["root"]})
    replaced = run(out, source, init="mimic", weights=weights, overwrite=True)
    assert replaced["computed"] == ROWS
    assert (
        open_embeddings(out).identity["model"]["weights_sha256"]
        == replaced["model"]["weights_sha256"]
    )


def test_new_manifest_rows_are_appended(data, tmp_path):
    df, root = data["df"], data["root"]
    out = tmp_path / "grow.zarr"
    run(out, {"manifest": df.iloc[:6], "root": root})
    grown = run(out, {"manifest": df, "root": root})
    assert (
        grown["rows"] == ROWS and grown["computed"] == ROWS - 4
    )  # the partial shard (rows 4-5) is redone
    run(tmp_path / "full.zarr", {"manifest": df, "root": root})
    stores_equal(out, tmp_path / "full.zarr")


def test_bad_options_are_refused(data, tmp_path):
    with pytest.raises(ConfigError, match="not both"):
        run(tmp_path / "x.zarr", {"images": data["images"], "manifest": data["df"]})
    with pytest.raises(ConfigError, match="--layers 3 exceeds"):
        run(tmp_path / "x.zarr", {"images": data["images"]}, layers=3)
    with pytest.raises(ConfigError, match="--dtype"):
        run(tmp_path / "x.zarr", {"images": data["images"]}, dtype="int8")
    assert not (tmp_path / "x.zarr").exists()


SCRIPT = """
import json, sys, time
from cxrprobe.cache.extract import extract_embeddings
args = json.loads(sys.argv[1])
delay = args.pop("delay", 0.0)
class Slow:
    def update(self, n):
        time.sleep(delay)
    def close(self):
        pass
summary = extract_embeddings(args.pop("out"), progress=lambda total, desc: Slow(), **args)
print("SUMMARY", json.dumps({k: summary[k] for k in ("rows", "computed", "shards_resumed")}))
"""


def script_args(out: Path, images: Path, **extra) -> str:
    return json.dumps(
        {
            "out": str(out),
            "images": str(images),
            "init": "random",
            "arch": ARCH,
            "model_kwargs": TINY,
            "img_size": 32,
            "batch_size": 2,
            "num_workers": 0,
            "device": "cpu",
            "shard_rows": 2,
            "layers": 1,
            **extra,
        }
    )


@pytest.mark.slow
def test_resume_after_sigkill_gives_the_uninterrupted_store(data, tmp_path):
    script = tmp_path / "extract_script.py"
    script.write_text(SCRIPT)
    out = tmp_path / "killed.zarr"
    proc = subprocess.Popen(
        [sys.executable, str(script), script_args(out, data["images"], delay=0.4)],
        cwd=Path(__file__).resolve().parents[1],
    )
    deadline = time.monotonic() + 120
    try:
        while not list(StoreFiles(out).folder.glob("progress-*/shard-*.json")):
            assert proc.poll() is None, "the extraction ended before it could be killed"
            assert time.monotonic() < deadline, "no shard finished in time"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    done = len(RowStore.open(out).done_shards())
    assert 1 <= done < 5
    with pytest.raises(IncompleteStoreError):
        open_embeddings(out)
    args = json.loads(script_args(out, data["images"]))
    del args["out"]
    resumed = extract_embeddings(out, **args)
    assert resumed["shards_resumed"] == done and resumed["computed"] == ROWS - 2 * done
    extract_embeddings(tmp_path / "clean.zarr", **args)
    stores_equal(out, tmp_path / "clean.zarr")


@pytest.mark.gpu
def test_cuda_bf16_matches_cpu_float32(data, tmp_path):
    run(tmp_path / "cpu.zarr", {"images": data["images"]}, dtype="float32", layers=2)
    run(
        tmp_path / "gpu.zarr",
        {"images": data["images"]},
        dtype="float32",
        layers=2,
        device="cuda",
        num_workers=1,
    )
    cpu, gpu = open_embeddings(tmp_path / "cpu.zarr"), open_embeddings(tmp_path / "gpu.zarr")
    assert gpu.provenance["device"] == torch.cuda.get_device_name()
    for kind in ("cls", "mean", "layers"):
        a, b = cpu.features(kind), gpu.features(kind)
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
        good = ~np.isnan(a).any(axis=1)
        scale = np.abs(a[good]).max()
        assert np.abs(a[good] - b[good]).max() <= 0.05 * scale  # bf16 autocast vs float32


@pytest.mark.gpu
def test_cuda_compiled_matches_eager(data, tmp_path):
    run(tmp_path / "eager.zarr", {"images": data["images"]}, device="cuda", num_workers=1)
    run(
        tmp_path / "compiled.zarr",
        {"images": data["images"]},
        device="cuda",
        num_workers=1,
        compile=True,
    )
    a, b = open_embeddings(tmp_path / "eager.zarr"), open_embeddings(tmp_path / "compiled.zarr")
    np.testing.assert_allclose(a.features("cls+mean"), b.features("cls+mean"), rtol=0.05, atol=0.05)


# ----------------------------------------------------------------------------------- commands
CLI_MODEL = [
    "--init",
    "random",
    "--arch",
    ARCH,
    "--model-kwargs",
    json.dumps(TINY),
    "--size",
    "32",
    "--workers",
    "0",
    "--device",
    "cpu",
    "--batch-size",
    "3",
    "--shard-rows",
    "4",
]


def test_cli_extract_info_export(data, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli.zarr"
    result = runner.invoke(
        main,
        [
            "extract",
            *CLI_MODEL,
            "--layers",
            "2",
            "--images",
            str(data["images"]),
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert f"{ROWS} rows, {ROWS - 1} embedded, 1 failures" in result.output
    assert "images/s" in result.output and f"failed row {CORRUPT}" in result.output
    stores_equal(out, data["emb"])
    run_record = json.loads(StoreFiles(out).run.read_text())
    assert run_record["config"]["init"] == "random" and "torch" in run_record["versions"]
    assert [f["row"] for f in json.loads(StoreFiles(out).failures.read_text())] == [CORRUPT]
    assert not (out / "run.json").exists() and not (out / "failures.json").exists()

    result = runner.invoke(main, ["info", str(out)])
    assert result.exit_code == 0, result.output
    assert (
        "embeddings store, 10 rows, complete" in result.output
        and "cls: (10, 64) float16" in result.output
    )
    assert (
        "failures: 1" in result.output and "model: random (vit_base_patch16_224)" in result.output
    )
    described = json.loads(runner.invoke(main, ["info", str(out), "--json"]).output)
    assert described["splits"] == dict(sorted(data["df"]["split"].value_counts().items()))
    assert described["arrays"]["layers"]["shape"] == [ROWS, 2, 64]
    images_info = runner.invoke(main, ["info", str(data["images"])])
    assert "images store" in images_info.output

    result = runner.invoke(main, ["export", str(out), "--h5", str(tmp_path / "e.h5")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "e.h5").is_file() and (tmp_path / "e.h5.run.json").is_file()
    result = runner.invoke(main, ["export", str(out), "--npz", str(tmp_path / "e.npz")])
    assert result.exit_code == 0 and (tmp_path / "e.npz").is_file()


def test_cli_extract_from_raw_files(data, tmp_path):
    manifest = tmp_path / "manifest.csv"
    data["df"].to_csv(manifest, index=False)
    out = tmp_path / "raw.zarr"
    result = CliRunner().invoke(
        main,
        [
            "extract",
            *CLI_MODEL,
            "--layers",
            "2",
            "--manifest",
            str(manifest),
            "--root",
            str(data["root"]),
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    stores_equal(out, data["emb"])


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (
            ["extract", *CLI_MODEL, "--model-kwargs", "{depth", "--images", "I", "--out", "O"],
            2,
            "--model-kwargs",
        ),
        (["extract", *CLI_MODEL, "--out", "O"], 2, "either --images"),
        (
            ["extract", "--init", "mimic", "--images", "{images}", "--out", "O"],
            1,
            "needs --weights PATH",
        ),
        (
            ["extract", *CLI_MODEL, "--images", "{images}", "--root", "R", "--out", "O"],
            2,
            "--root and --preset",
        ),
        (
            ["extract", *CLI_MODEL, "--size", "48", "--images", "{images}", "--out", "{emb}"],
            1,
            "--overwrite",
        ),
        (["info", "nowhere.zarr"], 1, "not a cxrprobe store"),
        (["export", "{emb}"], 2, "exactly one of --h5"),
        (
            ["export", "{images}", "--npz", "x.npz"],
            1,
            "is an image cache (from `cxrprobe preprocess`), but this takes an embedding store "
            "(from `cxrprobe extract`)",
        ),
    ],
)
def test_cli_errors_are_one_line_messages(data, tmp_path, monkeypatch, args, code, message):
    monkeypatch.chdir(tmp_path)  # relative outputs (a writer lock beside "O") land in tmp_path
    args = [
        a.replace("{images}", str(data["images"])).replace("{emb}", str(data["emb"])) for a in args
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == code, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_commands_have_help_with_an_example():
    for name in ("extract", "info", "export"):
        result = CliRunner().invoke(main, [name, "--help"])
        assert result.exit_code == 0 and "Example:" in result.output


def test_a_failing_write_stops_the_run_with_its_error(data, tmp_path, monkeypatch):
    def disk_full(self, shard, data, failures):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(RowStore, "write_shard", disk_full)
    with pytest.raises(OSError, match="No space left"):
        run(tmp_path / "full.zarr", {"images": data["images"]})
    monkeypatch.undo()
    assert RowStore.open(tmp_path / "full.zarr").done_shards() == set()
    with pytest.raises(IncompleteStoreError):
        open_embeddings(tmp_path / "full.zarr")


def test_the_first_batch_compute_is_timed_apart(data, tmp_path, monkeypatch):
    """A slow first forward (as under --compile) shows in first_compute_seconds, not later."""
    from cxrprobe.cache.pipeline import Extractor

    compute, calls = Extractor._compute, []

    def slow_first(self, images):
        calls.append(len(images))
        if len(calls) in (1, 3):  # the first batch, and a later one that must not count
            time.sleep(0.4)
        return compute(self, images)

    monkeypatch.setattr(Extractor, "_compute", slow_first)
    timings = run(tmp_path / "t.zarr", {"images": data["images"]})["timings"]
    assert len(calls) > 3 and timings["seconds"] >= 0.8
    assert 0.4 <= timings["first_compute_seconds"] < 0.8
