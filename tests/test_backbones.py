"""Backbones coming in, end to end: a tiny Hugging Face ``transformers``-layout DINOv2 (RAD-DINO
style, with its own --mean/--std) and a tiny timm DenseNet-121 are extracted by the CLI from their
weight files and probed; stored features equal a direct ``model(x)`` of the original model."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cxrprobe.cache.embeddings import POOLED_FEATURES, open_embeddings
from cxrprobe.cache.extract import extract_embeddings
from cxrprobe.cache.images import build_image_cache, open_images
from cxrprobe.cli import main
from cxrprobe.data.preprocess import PreprocessConfig, to_model_input
from cxrprobe.errors import ConfigError, StoreMismatchError
from cxrprobe.probe.run import ProbeConfig, run_probe
from cxrprobe.stats.predictions import read_predictions
from cxrprobe.weights import save_state_dict
from tests.image_fixtures import make_image_dataset
from tests.model_fixtures import TINY_DENSENET, TINY_VIT, tiny_model, to_transformers_dinov2

ROWS = 24
RAD_MEAN, RAD_STD = (0.5307,) * 3, (0.2583,) * 3
FP16 = {"rtol": 2e-3, "atol": 2e-3}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """24 PNGs (train/val/test by patient) in an image cache at 32 px, and two weight files."""
    tmp = tmp_path_factory.mktemp("backbones")
    df, root = make_image_dataset(tmp, ROWS, size=40)
    build_image_cache(df, root, tmp / "images.zarr", PreprocessConfig(size=32), workers=1)
    dino = tiny_model("vit_base_patch14_dinov2", seed=21, img_size=28, **TINY_VIT)
    save_state_dict(to_transformers_dinov2(dino.state_dict()), tmp / "rad-dino.safetensors")
    densenet = tiny_model("densenet121", seed=22, **TINY_DENSENET)
    save_state_dict(densenet.state_dict(), tmp / "densenet.safetensors")
    return {"dir": tmp, "images": tmp / "images.zarr", "dino": dino, "densenet": densenet}


def extract(*args: str) -> tuple[int, str]:
    common = ["--images", "images.zarr", "--device", "cpu", "--batch-size", "8", "--workers", "0"]
    result = CliRunner().invoke(main, [*args, *common])
    return result.exit_code, result.output + repr(result.exception)


def direct(model: torch.nn.Module, images, mean, std, size: int) -> torch.Tensor:
    x = to_model_input(torch.from_numpy(images), mean, std, size=size)
    with torch.no_grad():
        return model(x)


def probe(store, out, features=None) -> dict:
    config = ProbeConfig(store=store, out=out, features=features, device="cpu", grid=(0.1, 1.0))
    return run_probe(config)


def test_transformers_dinov2_with_its_own_normalisation(data, monkeypatch):
    monkeypatch.chdir(data["dir"])  # relative paths on the command line
    code, output = extract(
        *("-v", "extract", "--init", "dinov2", "--weights", "rad-dino.safetensors"),
        *("--model-kwargs", json.dumps(TINY_VIT), "--size", "28", "--out", "dino.zarr"),
        *("--mean", "0.5307", "--std", "0.2583,0.2583,0.2583"),
    )
    assert code == 0, output
    assert "INFO cxrprobe.weights: loaded transformers DINOv2 checkpoint" in output  # -v

    emb = open_embeddings(data["dir"] / "dino.zarr")
    images = open_images(data["images"]).read(slice(None))
    expected = direct(data["dino"], images, RAD_MEAN, RAD_STD, 28)
    np.testing.assert_allclose(emb.features("cls"), expected.numpy(), **FP16)
    model = emb.identity["model"]
    assert model["mean"] == list(RAD_MEAN) and model["std"] == list(RAD_STD)
    assert emb.provenance["model"]["normalization"] == "--mean/--std"

    run = json.loads((data["dir"] / "dino.zarr.cxrprobe" / "run.json").read_text())
    assert run["cwd"] == str(data["dir"])
    for option, name in (("weights", "rad-dino.safetensors"), ("out", "dino.zarr")):
        assert run["config"][option] == os.path.join(str(data["dir"]), name)
    assert run["config"]["mean"] == [0.5307]

    summary = probe(data["dir"] / "dino.zarr", data["dir"] / "dino_probe.json")
    assert summary["config"]["features"] == "cls"
    pred = read_predictions(data["dir"] / "dino_probe.json")
    assert pred.ids == [i for i, s in zip(emb.ids, emb.split, strict=True) if s == "test"]

    with pytest.raises(StoreMismatchError, match="std"):  # resuming with other statistics
        extract_embeddings(
            data["dir"] / "dino.zarr",
            init="dinov2",
            weights=data["dir"] / "rad-dino.safetensors",
            images=data["images"],
            img_size=28,
            model_kwargs=TINY_VIT,
            mean=RAD_MEAN,
            device="cpu",
        )


def test_densenet_extracts_pooled_features_and_probes(data, monkeypatch):
    monkeypatch.chdir(data["dir"])
    code, output = extract(
        *("extract", "--init", "timm:densenet121", "--weights", "densenet.safetensors"),
        *("--model-kwargs", json.dumps(TINY_DENSENET), "--size", "32", "--out", "cnn.zarr"),
    )
    assert code == 0, output

    emb = open_embeddings(data["dir"] / "cnn.zarr")
    spec = emb.provenance["model"]
    images = open_images(data["images"]).read(slice(None))
    model = data["densenet"]
    pooled = direct(model, images, spec["mean"], spec["std"], 32)  # model(x): the pooled vector
    x = to_model_input(torch.from_numpy(images), spec["mean"], spec["std"], size=32)
    with torch.no_grad():
        fmap_mean = model.forward_features(x).mean(dim=(2, 3))
    np.testing.assert_allclose(emb.features("cls"), pooled.numpy(), **FP16)
    np.testing.assert_allclose(emb.features("mean"), fmap_mean.numpy(), **FP16)
    assert emb.readout == "pooled" and emb.dim == 17 and emb.n_layers == 0
    assert emb.identity["features"] == POOLED_FEATURES
    assert emb.identity["model"]["readout"] == "pooled"

    info = CliRunner().invoke(main, ["info", "cnn.zarr"])
    assert info.exit_code == 0 and "pooled features" in info.output, info.output

    summary = probe(data["dir"] / "cnn.zarr", data["dir"] / "cnn_probe.json")
    assert summary["config"]["features"] == "cls"
    both = probe(data["dir"] / "cnn.zarr", data["dir"] / "cnn_both.json", "cls+mean")
    assert both["feature_dim"] == 34
    with pytest.raises(ConfigError, match="pooled features of densenet121"):
        probe(data["dir"] / "cnn.zarr", data["dir"] / "cnn_last.json", "last2")

    code, output = extract(
        *("extract", "--init", "timm:densenet121", "--weights", "densenet.safetensors"),
        *("--model-kwargs", json.dumps(TINY_DENSENET), "--layers", "2", "--out", "cnn2.zarr"),
    )
    assert code == 2 and "--layers stores the class token of each block" in output, output
