"""A fine-tuning run as an initialisation: ``--init run:DIR`` and ``--weights DIR/checkpoints/best.pt``.

One tiny fine-tune (1 epoch, a depth-2 ViT on 32 px synthetic radiographs) is made through the
CLI; its backbone is then extracted and checked against timm's model loaded by hand from the
checkpoint. Folders that are not finished runs are refused with what is missing.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from click.testing import CliRunner

from cxrprobe.cache import open_embeddings
from cxrprobe.cache.images import open_images
from cxrprobe.cli import main
from cxrprobe.data.synthetic import generate_dataset
from cxrprobe.errors import ConfigError, InputFileError, WeightsError
from cxrprobe.models import create_model

ARCH = "vit_base_patch16_224"
TINY = {"depth": 2, "embed_dim": 64, "num_heads": 2}
SIZE = 32


def _cli(*args: str) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def _finetune(images: Path, out: Path, *extra: str) -> None:
    _cli(
        "finetune", "--init", "random", "--arch", ARCH, "--model-kwargs", json.dumps(TINY),
        "--images", images, "--size", SIZE, "--epochs", "1", "--batch-size", "8", "--lr", "1e-3",
        "--device", "cpu", "--workers", "0", "--out", out, *extra,
    )  # fmt: skip


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    """Synthetic data → manifest → 32 px image cache → a finished 1-epoch fine-tune."""
    tmp = tmp_path_factory.mktemp("runinit")
    generate_dataset(tmp / "data", n=48, size=40, seed=5, split=(0.6, 0.2, 0.2))
    _cli("manifest", "generic", "--root", tmp / "data", "--out", tmp / "m.parquet")
    _cli(
        "preprocess", "--manifest", tmp / "m.parquet", "--root", tmp / "data",
        "--out", tmp / "images.zarr", "--size", SIZE, "--workers", "1",
    )  # fmt: skip
    _finetune(tmp / "images.zarr", tmp / "run")
    return {"tmp": tmp, "images": tmp / "images.zarr", "run": tmp / "run"}


def _reference_backbone(checkpoint: Path) -> torch.nn.Module:
    """timm's model with the checkpoint's ``backbone.*`` tensors loaded by hand, in eval mode."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["model"]
    backbone = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    model = timm.create_model(ARCH, pretrained=False, num_classes=0, img_size=SIZE, **TINY)
    model.load_state_dict(backbone, strict=True)
    return model.eval()


def _model_input(pixels: np.ndarray) -> torch.Tensor:
    """uint8 (n, S, S) → the normalised 3-channel input, with timm's own mean/std for ARCH."""
    cfg = timm.models.get_pretrained_cfg(ARCH)
    x = torch.from_numpy(pixels).float().div(255.0)[:, None].repeat(1, 3, 1, 1)
    mean, std = (
        torch.tensor(cfg.mean)[None, :, None, None],
        torch.tensor(cfg.std)[None, :, None, None],
    )
    return (x - mean) / std


def test_extract_with_init_run_gives_the_finetuned_backbone(made):
    out = made["tmp"] / "emb.zarr"
    _cli(
        "extract", "--init", f"run:{made['run']}", "--images", made["images"], "--size", SIZE,
        "--out", out, "--device", "cpu", "--workers", "0", "--dtype", "float32",
    )  # fmt: skip
    emb = open_embeddings(out)
    checkpoint = made["run"] / "checkpoints" / "best.pt"
    cache = open_images(made["images"])
    pixels = cache.read(np.arange(len(cache)))
    with torch.no_grad():
        expected = _reference_backbone(checkpoint).forward_features(_model_input(pixels))[:, 0]
    np.testing.assert_allclose(emb.features("cls"), expected.numpy(), atol=1e-5)
    model = emb.provenance["model"]
    assert model["init"] == f"run:{made['run'].resolve()}"
    assert model["weights_source"] == f"run:{made['run'].resolve()}"
    assert model["weights_path"] == str(checkpoint.resolve())
    assert model["weights_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert model["arch"] == ARCH and model["model_kwargs"] == TINY  # taken from the run


def test_weights_best_pt_loads_the_same_backbone(made):
    checkpoint = made["run"] / "checkpoints" / "best.pt"
    from_run, spec = create_model(f"run:{made['run']}", img_size=SIZE)
    from_file, file_spec = create_model("mimic", weights=checkpoint, img_size=SIZE)
    x = _model_input(np.random.default_rng(0).integers(0, 255, (2, SIZE, SIZE), dtype=np.uint8))
    with torch.no_grad():
        expected = _reference_backbone(checkpoint).forward_features(x)
        assert torch.allclose(from_run.eval().forward_features(x), expected, atol=1e-6)
        assert torch.allclose(from_file.eval().forward_features(x), expected, atol=1e-6)
    assert file_spec.arch == ARCH and file_spec.model_kwargs == TINY  # recorded in best.pt
    assert spec.weights_sha256 == file_spec.weights_sha256
    assert spec.mean == tuple(timm.models.get_pretrained_cfg(ARCH).mean)


def test_options_contradicting_the_run_are_refused(made):
    run, checkpoint = made["run"], made["run"] / "checkpoints" / "best.pt"
    with pytest.raises(ConfigError, match="drop --weights"):
        create_model(f"run:{run}", weights=checkpoint, img_size=SIZE)
    with pytest.raises(ConfigError, match="--arch vit_small_patch16_224 contradicts"):
        create_model(f"run:{run}", arch="vit_small_patch16_224", img_size=SIZE)
    with pytest.raises(ConfigError, match="drop --model-kwargs"):
        create_model(f"run:{run}", model_kwargs={"depth": 1}, img_size=SIZE)
    with pytest.raises(WeightsError, match="fine-tuned as vit_base_patch16_224"):
        create_model("dinov2", weights=checkpoint, img_size=28)


def test_a_folder_that_is_not_a_finished_run_is_refused(made, tmp_path):
    with pytest.raises(InputFileError, match="no such folder"):
        create_model(f"run:{tmp_path / 'absent'}")
    with pytest.raises(ConfigError, match=r"not a fine-tuning run folder \(no run.json\)"):
        create_model(f"run:{tmp_path}")
    (tmp_path / "run.json").write_text(json.dumps({"command": "cxrprobe extract"}))
    with pytest.raises(ConfigError, match="run.json is from `cxrprobe extract`"):
        create_model(f"run:{tmp_path}")

    unfinished = tmp_path / "unfinished"
    _finetune(made["images"], unfinished, "--epochs", "2", "--stop-after", "1")
    with pytest.raises(ConfigError) as info:
        create_model(f"run:{unfinished}")
    message = str(info.value)
    assert "not finished (no summary.json; 1 epoch(s) in log.csv)" in message
    assert f"--out {unfinished} --resume" in message

    copied = tmp_path / "copied"
    shutil.copytree(made["run"], copied)
    (copied / "checkpoints" / "best.pt").unlink()
    result = CliRunner().invoke(
        main, ["extract", "--init", f"run:{copied}", "--images", str(made["images"]),
               "--out", str(tmp_path / "e.zarr"), "--device", "cpu"],
    )  # fmt: skip
    assert result.exit_code == 1
    assert "checkpoints/best.pt (the best validation epoch's weights) is missing" in result.output
    assert "Traceback" not in result.output
