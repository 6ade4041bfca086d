"""Fine-tuning recipes: ``--recipe study`` resolves to the study's code as transcribed from it,
explicit options win over any recipe, a study-recipe run feeds the model plain [0, 1] pixels in
float32 and keeps the epoch of lowest validation loss, and a study TOML's ``recipe`` key
round-trips through the printed command.

Runs use a tiny ViT (depth 2, width 64) on 32 px images.
"""

from __future__ import annotations

import csv
import json
import logging

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cxrprobe.cache.source import from_arrays
from cxrprobe.cache.store import RowMetadata
from cxrprobe.cli import main
from cxrprobe.data.preprocess import PRESETS
from cxrprobe.finetune import FinetuneConfig, finetune
from cxrprobe.finetune.recipe import finetune_config
from cxrprobe.finetune.trainer import Classifier
from cxrprobe.stats.predictions import read_predictions
from tests.image_fixtures import make_image_dataset

TINY = {"depth": 2, "embed_dim": 64, "num_heads": 2}
# The study's training code (tayebiarasteh/vit-med at bcc0db8), transcribed independently of
# cxrprobe's RECIPES: main_vitmed.py:30-31,74-75,94,103-104; config.yaml:2,4,15;
# Train_Valid_vitmed.py:126,129,394; data_provider.py:98-101.
STUDY = {
    "lr": 1e-5,
    "weight_decay": 0.0,
    "batch_size": 30,
    "epochs": 100,
    "size": 224,
    "schedule": "constant",
    "warmup_epochs": 0.0,
    "layer_decay": 1.0,
    "clip_grad": None,
    "drop_path": 0.0,
    "accum_steps": 1,
    "precision": "fp32",
    "class_weights": True,
    "hflip": 0.5,
    "rotate": 7.0,
    "rotate_mode": "nearest",
    "patience": None,
    "select_by": "loss",
    "mean": (0.0, 0.0, 0.0),
    "std": (1.0, 1.0, 1.0),
}
# cxrprobe's defaults before recipes existed, kept as the 'modern' recipe.
MODERN = {
    "lr": 1e-5,
    "weight_decay": 0.01,
    "batch_size": 32,
    "epochs": 10,
    "size": 224,
    "schedule": "constant",
    "clip_grad": None,
    "precision": "auto",
    "class_weights": True,
    "hflip": 0.5,
    "rotate": 7.0,
    "rotate_mode": "bilinear",
    "patience": 5,
    "select_by": "auroc",
    "mean": None,
    "std": None,
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run 10× faster on one thread than on two contended ones (shared CI boxes)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _cli_config(*args: str) -> FinetuneConfig:
    words = ["--init", "random", *args, "--out", "run"]
    params = main.commands["finetune"].make_context("finetune", words).params
    return finetune_config(params)


def _settings(config: FinetuneConfig, names) -> dict:
    return {name: getattr(config, name) for name in names}


# ------------------------------------------------------------------------ resolving a recipe
def test_the_study_recipe_resolves_to_the_studys_code():
    for config in (FinetuneConfig.from_recipe("study"), _cli_config("--recipe", "study")):
        assert _settings(config, STUDY) == STUDY
        assert config.recipe == "study"
        assert {"epochs", "batch_size", "weight_decay", "mean", "std"} <= set(config.recipe_filled)
    assert _settings(_cli_config(), MODERN) == MODERN  # --recipe modern is the default
    assert _settings(FinetuneConfig(), MODERN) == MODERN
    assert _cli_config().recipe == "modern"


def test_explicit_options_override_the_recipe():
    config = _cli_config(
        "--recipe", "study", "--epochs", "2", "--weight-decay", "0.05", "--patience", "3",
        "--precision", "bf16", "--rotate-mode", "bilinear", "--select-by", "auroc",
    )  # fmt: skip
    given = {"epochs": 2, "weight_decay": 0.05, "patience": 3, "precision": "bf16"}
    assert _settings(config, given) == given
    assert (config.rotate_mode, config.select_by) == ("bilinear", "auroc")
    assert (config.batch_size, config.mean, config.recipe) == (30, (0.0, 0.0, 0.0), "study")
    assert not set(given) & set(config.recipe_filled)
    assert "batch_size" in config.recipe_filled
    # 0 means "never stop early" and still counts as given; an explicit value equal to the
    # recipe's is recorded as explicit
    never = _cli_config("--patience", "0", "--epochs", "10")
    assert never.patience is None and not {"patience", "epochs"} & set(never.recipe_filled)
    # mean and std go together: either one keeps the recipe's normalisation out
    only_mean = _cli_config("--recipe", "study", "--mean", "0.5")
    assert (only_mean.mean, only_mean.std) == ((0.5,), None)
    assert FinetuneConfig.from_recipe("study", lr=3e-4).lr == 3e-4


def test_unknown_recipes_and_choices_are_refused():
    from cxrprobe.errors import ConfigError

    with pytest.raises(ConfigError, match="--recipe must be one of modern, study, got 'paper'"):
        FinetuneConfig.from_recipe("paper")
    bad = CliRunner().invoke(main, ["finetune", "--recipe", "paper", "--out", "x"])
    assert bad.exit_code == 2 and "'paper' is not one of 'modern', 'study'" in bad.output
    problems = FinetuneConfig(rotate_mode="cubic", select_by="f1").problems()
    assert any("--rotate-mode" in p for p in problems)
    assert any("--select-by" in p for p in problems)


def test_help_shows_every_recipes_value():
    text = " ".join(CliRunner().invoke(main, ["finetune", "--help"]).output.split())
    for fragment in (
        "[modern: 10, study: 100]",  # --epochs
        "[modern: 32, study: 30]",  # --batch-size
        "[modern: 0.01, study: 0.0]",  # --weight-decay
        "[modern: auto, study: fp32]",  # --precision
        "[modern: 5, study: off]",  # --patience
        "[modern: auroc, study: loss]",  # --select-by
    ):
        assert fragment in text, fragment


# ------------------------------------------------------------------------ a study-recipe run
def _toy_source(n: int = 48, seed: int = 0):
    """Bright images are positive for 'a', a white square for 'b'; splits 32/8/8."""
    rng = np.random.default_rng(seed)
    bright = np.arange(n) % 2
    square = rng.integers(0, 2, n)
    images = (
        rng.integers(10, 90, size=(n, 32, 32)).astype(np.uint8)
        + (bright * 120).astype(np.uint8)[:, None, None]
    )
    for i in np.flatnonzero(square):
        top, left = rng.integers(0, 24, 2)
        images[i, top : top + 8, left : left + 8] = 255
    split = np.array(["train"] * 32 + ["val"] * 8 + ["test"] * (n - 40))
    meta = RowMetadata(
        ids=np.array([f"img{i:03d}" for i in range(n)]),
        split=split,
        patient_id=np.array([f"p{i}" for i in range(n)]),
        labels=np.stack([bright, square], axis=1).astype(np.float32),
        findings=("a", "b"),
    )
    return images, from_arrays(images, meta)


def test_a_study_recipe_run_feeds_plain_pixels_in_float32_and_keeps_the_lowest_val_loss(
    tmp_path, monkeypatch
):
    images, source = _toy_source()
    seen = []
    original = Classifier.forward

    def spy(self, x):
        logits = original(self, x)
        seen.append((self.training, x.detach().clone(), torch.is_autocast_enabled("cpu"), logits))
        return logits

    monkeypatch.setattr(Classifier, "forward", spy)
    config = FinetuneConfig.from_recipe(
        "study", init="random", model_kwargs=dict(TINY), size=32, epochs=2, device="cpu"
    )
    result = finetune(config, source, tmp_path / "run")

    # float32 throughout, never autocast
    assert all(not autocast and logits.dtype == torch.float32 for *_, autocast, logits in seen)
    # evaluation input: image / 255 replicated to 3 channels (no mean/std normalisation)
    val_rows = np.flatnonzero(source.metadata.split == "val")
    first_eval = next(x for training, x, *_ in seen if not training)
    expected = (torch.from_numpy(images[val_rows]).float() / 255.0)[:, None].expand(-1, 3, -1, -1)
    assert torch.equal(first_eval, expected)
    # training input: batch 30 with the partial last batch dropped (32 training rows, one step
    # per epoch); augmented by flip and nearest-neighbour rotation, so every value is a pixel
    # of some training image / 255 or the black fill, and the channels stay equal
    train_batches = [x for training, x, *_ in seen if training]
    assert [len(x) for x in train_batches] == [30, 30]
    allowed = set((np.unique(images[source.metadata.split == "train"]) / np.float32(255)).tolist())
    for x in train_batches:
        assert set(torch.unique(x).tolist()) <= allowed | {0.0}
        assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])

    # the run record states the recipe and what it filled; all epochs ran (no early stopping)
    record = json.loads((tmp_path / "run" / "run.json").read_text())["config"]
    assert record["recipe"] == "study" and record["plan"]["precision"] == "fp32"
    assert record["mean"] == [0.0, 0.0, 0.0] and record["std"] == [1.0, 1.0, 1.0]
    assert record["model"]["normalization"] == "recipe study: none ([0, 1] input)"
    assert (record["model"]["mean"], record["model"]["std"]) == ([0.0] * 3, [1.0] * 3)
    assert "batch_size" in record["recipe_filled"] and "epochs" not in record["recipe_filled"]
    summary = result.summary
    assert summary["recipe"] == "study" and summary["select_by"] == "loss"
    assert summary["epochs_completed"] == 2 and not summary["stopped_early"]

    # the best epoch has the lowest validation loss, and that loss is the pos_weight-weighted BCE
    # of the kept model's validation probabilities (a direct computation)
    with open(tmp_path / "run" / "log.csv") as fh:
        log = list(csv.DictReader(fh))
    losses = [float(row["val_loss"]) for row in log]
    assert summary["best_epoch"] == int(np.argmin(losses)) + 1
    train = source.metadata.labels[source.metadata.split == "train"]
    pos_weight = (train == 0).sum(axis=0) / (train == 1).sum(axis=0)
    val = read_predictions(tmp_path / "run" / "val_predictions.json")
    p, y = val.scores, val.targets
    bce = -(pos_weight * y * np.log(p) + (1 - y) * np.log(1 - p))
    assert bce.mean() == pytest.approx(min(losses), rel=1e-4)
    assert summary["best_val_loss"] == pytest.approx(min(losses), rel=1e-6)


def test_the_recorded_normalisation_names_who_set_it():
    from cxrprobe.finetune.trainer import recipe_normalization

    study = FinetuneConfig.from_recipe("study", init="random")
    assert recipe_normalization(study) == "recipe study: none ([0, 1] input)"
    given = FinetuneConfig.from_recipe("study", init="random", mean=(0.5,), std=(0.25,))
    assert recipe_normalization(given) is None  # the model spec says --mean/--std
    assert recipe_normalization(FinetuneConfig.from_recipe("modern", init="random")) is None


def test_a_run_started_before_recipes_existed_resumes_as_modern(tmp_path):
    from dataclasses import replace

    from cxrprobe.errors import ConfigError
    from cxrprobe.finetune.checkpoint import load_checkpoint, save_checkpoint

    _, source = _toy_source()
    config = FinetuneConfig(
        init="random", model_kwargs=dict(TINY), size=32, epochs=2, batch_size=8, device="cpu"
    )
    finetune(replace(config, stop_after=1), source, tmp_path / "run")
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    saved = load_checkpoint(last)
    for key in ("recipe", "recipe_filled", "rotate_mode", "select_by"):  # as an older run saved
        del saved["identity"][key]
    save_checkpoint(last, saved)
    with pytest.raises(ConfigError, match="other settings.*rotate_mode: 'bilinear' then"):
        finetune(replace(config, rotate_mode="nearest"), source, tmp_path / "run", resume=True)
    assert finetune(config, source, tmp_path / "run", resume=True).finished


# ------------------------------------------------------------------ images and the study preset
@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """30 PNGs, their manifest and an image cache built with the default preset at 32 px."""
    from cxrprobe.cache.images import build_image_cache
    from cxrprobe.data.manifest import write_manifest
    from cxrprobe.data.preprocess import PreprocessConfig

    folder = tmp_path_factory.mktemp("recipe")
    df, root = make_image_dataset(folder, 30, size=40)
    write_manifest(df, folder / "manifest.parquet")
    build_image_cache(df, root, folder / "images.zarr", PreprocessConfig(size=32), workers=1)
    return folder, root


def _run(out, *source):
    args = ["finetune", "--recipe", "study", "--init", "random", "--model-kwargs", json.dumps(TINY)]
    args += ["--size", "32", "--epochs", "1", "--batch-size", "4", "--workers", "0"]
    return CliRunner().invoke(main, [*args, "--device", "cpu", "--out", str(out), *source])


def test_study_recipe_warns_about_a_cache_of_another_preset(dataset, tmp_path, caplog):
    folder, _ = dataset
    with caplog.at_level(logging.WARNING, logger="cxrprobe"):
        result = _run(tmp_path / "run", "--images", str(folder / "images.zarr"))
    assert result.exit_code == 0, result.output
    assert "recipe study" in result.output  # the printed summary names the recipe
    assert "--recipe study expects images preprocessed with the 'study' preset" in caplog.text
    assert "cxrprobe preprocess --preset study" in caplog.text
    record = json.loads((tmp_path / "run" / "run.json").read_text())["config"]
    assert record["recipe"] == "study" and record["batch_size"] == 4
    assert "batch_size" not in record["recipe_filled"] and "weight_decay" in record["recipe_filled"]


def test_study_recipe_reads_raw_files_with_the_study_preset(dataset, tmp_path, caplog):
    folder, root = dataset
    with caplog.at_level(logging.WARNING, logger="cxrprobe"):
        result = _run(
            tmp_path / "run", "--manifest", str(folder / "manifest.parquet"), "--root", str(root)
        )
    assert result.exit_code == 0, result.output
    assert "expects images preprocessed" not in caplog.text
    record = json.loads((tmp_path / "run" / "run.json").read_text())["config"]
    assert record["dataset"]["preprocess"] == PRESETS["study"].with_size(32).to_dict()


# ------------------------------------------------------------------------------ study TOML
def test_the_study_toml_recipe_key_round_trips_through_the_printed_command(tmp_path):
    import shlex

    from cxrprobe.workflow.config import load_study
    from cxrprobe.workflow.plan import build_plan

    (tmp_path / "study.toml").write_text(
        'out = "run"\ndevice = "cpu"\n[finetune]\nrecipe = "study"\nepochs = 2\n'
        '[[datasets]]\nname = "d"\nadapter = "generic"\nroot = "data"\n'
        '[[inits]]\nname = "r"\ninit = "random"\narch = "vit_base_patch16_224"\n'
        'methods = ["finetune"]\n'
    )
    step = next(
        s
        for s in build_plan(load_study(tmp_path / "study.toml", main.commands), main.commands)
        if s.stage == "finetune"
    )
    assert "--recipe study" in step.command
    words = shlex.split(step.command)
    config = finetune_config(main.commands["finetune"].make_context("finetune", words[2:]).params)
    assert (config.recipe, config.epochs, config.batch_size, config.precision) == (
        "study",
        2,
        30,
        "fp32",
    )
    assert "epochs" not in config.recipe_filled and "weight_decay" in config.recipe_filled
