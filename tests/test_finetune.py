"""Fine-tuning: loss, class weights, lr groups, augmentations, sharding, resume, selection, CLI.

Every training run uses a tiny ViT (depth 2, width 64) on 32 px images and a few dozen rows.
"""

from __future__ import annotations

import csv
import json
import logging
import random
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from sklearn.metrics import roc_auc_score

from cxrprobe.cache.source import from_arrays, from_cache
from cxrprobe.cache.store import RowMetadata
from cxrprobe.cli import main
from cxrprobe.errors import ConfigError, DataFormatError
from cxrprobe.finetune import (
    FinetuneConfig,
    augment,
    checkpoint,
    distributed,
    finetune,
    loss,
    schedule,
)
from cxrprobe.finetune.trainer import Trainer
from cxrprobe.stats.predictions import read_predictions
from tests.image_fixtures import make_image_dataset

TINY = {"depth": 2, "embed_dim": 64, "num_heads": 2}
FINDINGS = ("cardiomegaly", "pleural_effusion")


def toy_source(n: int = 48, seed: int = 0):
    """Bright images have cardiomegaly; a white square means effusion; splits 32/8/8 (n = 48)."""
    rng = np.random.default_rng(seed)
    bright = np.arange(n) % 2
    square = rng.integers(0, 2, n)
    images = (
        rng.integers(40, 90, size=(n, 32, 32)).astype(np.uint8)
        + (bright * 90).astype(np.uint8)[:, None, None]
    )
    for i in np.flatnonzero(square):
        top, left = rng.integers(0, 24, 2)
        images[i, top : top + 8, left : left + 8] = 255
    labels = np.stack([bright, square], axis=1).astype(np.float32)
    labels[::7, 1] = np.nan  # not annotated: masked out of the loss
    n_train, n_val = n * 2 // 3, n // 6
    split = np.array(["train"] * n_train + ["val"] * n_val + ["test"] * (n - n_train - n_val))
    ids = np.array([f"img{i:03d}" for i in range(n)])
    meta = RowMetadata(
        ids=ids,
        split=split,
        patient_id=np.array([f"p{i}" for i in range(n)]),
        labels=labels,
        findings=FINDINGS,
    )
    return from_arrays(images, meta)


def tiny_config(**overrides) -> FinetuneConfig:
    base = FinetuneConfig(
        init="random",
        model_kwargs=dict(TINY),
        size=32,
        epochs=2,
        batch_size=8,
        lr=1e-3,
        device="cpu",
        num_workers=0,
    )
    return replace(base, **overrides)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run 10× faster on one thread than on two contended ones (shared CI boxes)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def source():
    return toy_source()


# ---------------------------------------------------------------------------------- the loss
def test_masked_bce_matches_a_manual_computation():
    logits = torch.tensor([[0.3, -1.2, 2.0], [1.5, 0.1, -0.7], [-0.4, 0.9, 0.2]])
    targets = torch.tensor([[1.0, 0.0, float("nan")], [-1.0, 1.0, 0.0], [0.0, float("nan"), 1.0]])
    weight = torch.tensor([2.0, 0.5, 3.0])
    terms = []
    for i in range(3):
        for j in range(3):
            t = float(targets[i, j])
            if t not in (0.0, 1.0):  # NaN and uncertain -1 are masked
                continue
            p = 1.0 / (1.0 + np.exp(-float(logits[i, j])))
            terms.append(-(float(weight[j]) * t * np.log(p) + (1.0 - t) * np.log(1.0 - p)))
    got = loss.masked_bce(logits, targets, weight)
    assert got.item() == pytest.approx(np.mean(terms), rel=1e-6)
    total, count = loss.masked_bce_sum(logits, targets, weight)
    assert count.item() == len(terms) == 6
    assert total.item() == pytest.approx(np.sum(terms), rel=1e-6)


def test_masked_bce_without_labels_is_zero_with_zero_gradient():
    logits = torch.randn(2, 3, requires_grad=True)
    value = loss.masked_bce(logits, torch.full((2, 3), float("nan")))
    value.backward()
    assert value.item() == 0.0
    assert torch.equal(logits.grad, torch.zeros(2, 3))


# -------------------------------------------------------------------- optimiser and schedule
def test_layer_decay_groups_give_each_layer_its_rate():
    from cxrprobe.models import create_model

    backbone, _ = create_model("random", img_size=32, model_kwargs=TINY)
    head = torch.nn.Linear(64, 2)
    groups = schedule.param_groups(backbone, head, lr=1.0, weight_decay=0.05, layer_decay=0.5)
    rate = {id(p): g["lr"] for g in groups for p in g["params"]}
    decay = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    named = dict(backbone.named_parameters())
    assert len(rate) == sum(1 for _ in backbone.parameters()) + 2  # every parameter exactly once
    assert rate[id(named["patch_embed.proj.weight"])] == rate[id(named["pos_embed"])] == 0.25
    assert rate[id(named["blocks.0.attn.qkv.weight"])] == 0.5
    assert rate[id(named["blocks.1.mlp.fc1.weight"])] == rate[id(named["norm.weight"])] == 1.0
    assert rate[id(head.weight)] == rate[id(head.bias)] == 1.0
    assert decay[id(named["blocks.0.attn.qkv.weight"])] == decay[id(head.weight)] == 0.05
    for name in ("blocks.0.attn.qkv.bias", "norm.weight", "cls_token", "pos_embed"):
        assert decay[id(named[name])] == 0.0
    flat = schedule.param_groups(backbone, head, lr=1e-3, weight_decay=0.05, layer_decay=1.0)
    assert {g["lr"] for g in flat} == {1e-3}
    with pytest.raises(ConfigError, match="--layer-decay"):
        schedule.param_groups(backbone, head, lr=1.0, weight_decay=0.0, layer_decay=1.5)


def test_warmup_then_cosine_and_scaled_groups():
    mult = schedule.WarmupCosine(total_steps=10, warmup_steps=2, schedule="cosine", min_ratio=0.1)
    assert [mult(0), mult(1)] == [0.5, 1.0]
    assert mult(2) == pytest.approx(1.0)
    assert mult(6) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * 4 / 8)))
    assert mult(10) == pytest.approx(0.1)
    assert schedule.WarmupCosine(10, 0, "constant")(7) == 1.0
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.AdamW(
        [{"params": [params[0]], "lr": 1.0}, {"params": [params[1]], "lr": 0.5}]
    )
    sched = schedule.make_scheduler(opt, schedule.WarmupCosine(4, 2, "cosine"))
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.25]  # step 0 of the warm-up
    opt.step()
    sched.step()
    assert [g["lr"] for g in opt.param_groups] == [1.0, 0.5]
    with pytest.raises(ConfigError, match="--schedule"):
        schedule.WarmupCosine(4, 0, "linear")


# ----------------------------------------------------------------------------- augmentations
def test_hflip_mirrors_exactly_the_chosen_images():
    images = torch.rand(3, 3, 5, 6)
    out = augment.hflip(images, torch.tensor([True, False, True]))
    assert torch.equal(out[0], torch.flip(images[0], dims=[-1]))
    assert torch.equal(out[1], images[1])
    assert torch.equal(out[2], torch.flip(images[2], dims=[-1]))


def test_rotation_identity_at_zero_and_matches_rot90():
    images = torch.rand(2, 3, 8, 8)
    same = augment.rotate(images, torch.zeros(2), fill=-1.0)
    assert torch.equal(same, images) and same.shape == images.shape
    quarter = augment.rotate(images, torch.full((2,), 90.0))
    torch.testing.assert_close(quarter, torch.rot90(images, 1, dims=(-2, -1)), atol=1e-5, rtol=0)
    tilted = augment.rotate(torch.ones(1, 1, 16, 16), torch.tensor([45.0]), fill=-2.0)
    assert tilted.shape == (1, 1, 16, 16)
    assert tilted[0, 0, 0, 0].item() == pytest.approx(-2.0)  # the corner comes from outside: fill
    assert tilted[0, 0, 8, 8].item() == pytest.approx(1.0)


def test_nearest_rotation_only_moves_pixels():
    images = torch.rand(2, 3, 8, 8)
    quarter = augment.rotate(images, torch.full((2,), 90.0), mode="nearest")
    assert torch.equal(quarter, torch.rot90(images, 1, dims=(-2, -1)))
    small = augment.rotate(images, torch.tensor([7.0, -5.0]), mode="nearest")
    assert set(small.unique().tolist()) <= set(images.unique().tolist()) | {0.0}
    bilinear = augment.rotate(images, torch.tensor([7.0, -5.0]))
    assert not set(bilinear.unique().tolist()) <= set(images.unique().tolist()) | {0.0}
    with pytest.raises(ConfigError, match="--rotate-mode must be one of bilinear, nearest"):
        augment.rotate(images, torch.zeros(2), mode="bicubic")


def _splitmix64(z: int) -> int:
    """SplitMix64 (Steele, Lea & Flood 2014) on a Python int: the slow reference."""
    mask = (1 << 64) - 1
    z = (z + 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)


def _reference_uniform(seed: int, epoch: int, row: int, k: int) -> float:
    key = _splitmix64(_splitmix64(seed) ^ epoch)
    z = _splitmix64((_splitmix64(key ^ row) + k * 0x9E3779B97F4A7C15) & ((1 << 64) - 1))
    return (z >> 11) * 2.0**-53


def test_augmentation_draws_depend_only_on_seed_epoch_and_row():
    rows = np.array([17, 3, 250_000, 0, 3])
    draws = augment.row_uniforms(5, 2, rows)
    expected = [[_reference_uniform(5, 2, int(r), k) for k in range(2)] for r in rows]
    assert draws.tolist() == expected  # bit-exact against the Python-int reference
    # the same row gets the same draws in any batch (so in any process); other epochs and
    # seeds draw anew
    np.testing.assert_array_equal(augment.row_uniforms(5, 2, rows[::-1]), draws[::-1])
    np.testing.assert_array_equal(augment.row_uniforms(5, 2, torch.tensor([3])), draws[1:2])
    assert not np.isin(augment.row_uniforms(5, 3, rows), draws).any()
    assert not np.isin(augment.row_uniforms(6, 2, rows), draws).any()
    many = augment.row_uniforms(0, 0, np.arange(20_000))
    assert many.min() >= 0 and many.max() < 1
    np.testing.assert_allclose(many.mean(axis=0), 0.5, atol=0.01)
    assert abs(np.corrcoef(many.T)[0, 1]) < 0.03  # flip and angle draws are unrelated


def test_random_flip_rotate_follows_its_draws():
    images = torch.rand(4, 3, 8, 8)
    draws = np.array([[0.1, 0.5], [0.9, 0.5], [0.49, 0.5], [0.5, 0.5]])  # angle draw 0.5: 0°
    out = augment.random_flip_rotate(images, draws, flip_p=0.5, max_degrees=7.0)
    flipped = torch.tensor([True, False, True, False])
    assert torch.equal(out[flipped], images[flipped].flip(-1))
    assert torch.equal(out[~flipped], images[~flipped])
    turned = augment.random_flip_rotate(images, np.array([[1.0, 1.0]] * 4), 0.5, 7.0)
    assert torch.allclose(turned, augment.rotate(images, torch.full((4,), 7.0)))


# ------------------------------------------------------------------ sharding and checkpoints
@pytest.mark.parametrize("n,world", [(10, 2), (11, 3), (5, 4)])
def test_shard_order_equals_distributed_sampler(n, world):
    from torch.utils.data import DistributedSampler

    for rank in range(world):
        sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=5)
        sampler.set_epoch(3)
        assert distributed.shard_order(n, 3, 5, rank, world).tolist() == list(sampler)
    ranks = [distributed.eval_shard(n, r, world) for r in range(world)]
    assert sorted(np.concatenate(ranks).tolist()) == list(range(n))


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    checkpoint.seed_everything(4)
    random.gauss(0, 1)  # leaves a cached Gaussian in Python's state
    state = checkpoint.capture_rng(torch.device("cpu"))
    # saved as every rank's states stacked (world, ...): this is rank 1's row
    stacked = {k: torch.stack([torch.zeros_like(v), v]) for k, v in state.items()}
    path = checkpoint.save_checkpoint(tmp_path / "c.pt", {"rng": stacked, "epoch": 3})
    draws = (random.random(), np.random.rand(), torch.rand(2), random.gauss(0, 1))
    loaded = checkpoint.load_checkpoint(path)
    checkpoint.restore_rng({k: v[1] for k, v in loaded["rng"].items()}, torch.device("cpu"))
    again = (random.random(), np.random.rand(), torch.rand(2), random.gauss(0, 1))
    assert draws[:2] == again[:2] and draws[3] == again[3]
    assert torch.equal(draws[2], again[2])


def test_load_checkpoint_refuses_pickled_objects(tmp_path):
    torch.save({"obj": ConfigError("x")}, tmp_path / "bad.pt")
    with pytest.raises(DataFormatError, match="bad.pt"):
        checkpoint.load_checkpoint(tmp_path / "bad.pt")


# ------------------------------------------------------------------------------- training runs
def test_loss_falls_and_the_planted_signal_is_learned(source, tmp_path, device):
    result = finetune(tiny_config(epochs=4, device=device), source, tmp_path / "run")
    assert result.summary["precision"] == ("bf16" if device == "cuda" else "fp32")
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < 0.6 * losses[0]
    pred = read_predictions(tmp_path / "run" / "predictions.json")
    meta = source.metadata
    test_rows = np.flatnonzero(meta.split == "test")
    assert pred.ids == meta.ids[test_rows].tolist()
    assert roc_auc_score(meta.labels[test_rows, 0], pred.scores[:, 0]) > 0.9  # brightness
    assert pred.score_kind == "probability" and pred.provenance["method"] == "finetune"
    assert pred.provenance["split"] == "test" and pred.provenance["init"] == "random"
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["config"]["lr"] == 1e-3 and "torch" in record["versions"]
    train = pd.DataFrame(meta.labels[meta.split == "train"], columns=list(FINDINGS))
    expected = {
        f: (train[f] == 0).sum() / (train[f] == 1).sum() for f in FINDINGS
    }  # NaN not counted
    assert record["config"]["pos_weight"] == pytest.approx(expected)


def test_resume_continues_exactly_like_the_uninterrupted_run(source, tmp_path):
    config = tiny_config(drop_path=0.1, schedule="cosine", warmup_epochs=0.5, accum_steps=2)
    whole = finetune(config, source, tmp_path / "whole")
    first = finetune(replace(config, stop_after=1), source, tmp_path / "parts")
    assert not first.finished and not (tmp_path / "parts" / "predictions.json").exists()
    resumed = finetune(config, source, tmp_path / "parts", resume=True)
    assert resumed.history[1]["train_loss"] == pytest.approx(
        whole.history[1]["train_loss"], rel=1e-6, abs=1e-7
    )
    assert resumed.history[1]["val_mean_auroc"] == whole.history[1]["val_mean_auroc"]
    a = read_predictions(tmp_path / "whole" / "predictions.json").scores
    b = read_predictions(tmp_path / "parts" / "predictions.json").scores
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_resuming_a_finished_run_leaves_it_as_it_is(source, tmp_path):
    config = tiny_config(epochs=1)
    out = tmp_path / "run"
    finetune(config, source, out)
    # as a run finished under torchrun records it (this process has world size 1)
    summary = json.loads((out / "summary.json").read_text())
    (out / "summary.json").write_text(json.dumps({**summary, "world_size": 2}))
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    again = finetune(config, source, out, resume=True)
    assert again.unchanged and again.finished and again.summary["world_size"] == 2
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    with pytest.raises(ConfigError, match="other settings.*lr"):
        finetune(replace(config, lr=1e-4), source, out, resume=True)
    # killed after its last checkpoint but before its predictions: resuming scores it
    scores = read_predictions(out / "predictions.json").scores
    (out / "predictions.json").unlink()
    rescored = finetune(config, source, out, resume=True)
    assert rescored.finished and not rescored.unchanged
    np.testing.assert_array_equal(read_predictions(out / "predictions.json").scores, scores)


def test_the_best_epoch_is_chosen_on_validation_never_on_test(source, tmp_path, monkeypatch):
    scored = []
    original = Trainer.predict_logits

    def spy(self, rows):
        scored.append(set(source.metadata.split[rows]))
        return original(self, rows)

    monkeypatch.setattr(Trainer, "predict_logits", spy)
    result = finetune(tiny_config(epochs=3, lr=3e-4), source, tmp_path / "run")
    assert scored[:3] == [{"val"}] * 3  # during training only the validation split is scored
    assert scored[3:] == [{"val"}, {"test"}]  # test once, at the end, with the best weights
    with open(tmp_path / "run" / "log.csv") as fh:
        log = list(csv.DictReader(fh))
    assert {row["selection_split"] for row in log} == {"val"}
    aurocs = [float(row["val_mean_auroc"]) for row in log]
    assert result.summary["best_epoch"] == int(np.argmax(aurocs)) + 1
    val = read_predictions(tmp_path / "run" / "val_predictions.json")
    recomputed = np.mean(
        [
            roc_auc_score(
                val.targets[~np.isnan(val.targets[:, j]), j],
                val.scores[~np.isnan(val.targets[:, j]), j],
            )
            for j in range(2)
        ]
    )
    assert recomputed == pytest.approx(max(aurocs), abs=1e-9)  # best.pt is the best-val epoch
    assert val.provenance["selection_split"] == "val"


def test_early_stopping_after_patience_epochs(source, tmp_path):
    result = finetune(tiny_config(epochs=5, lr=1e-12, patience=1), source, tmp_path / "run")
    assert result.summary["stopped_early"] and result.summary["epochs_completed"] == 2
    assert result.summary["best_epoch"] == 1


def test_run_errors_and_warnings_name_the_problem(source, tmp_path, caplog):
    with pytest.raises(ConfigError, match="--batch-size 9 is not divisible"):
        finetune(tiny_config(batch_size=9, accum_steps=2), source, tmp_path / "a")
    with pytest.raises(ConfigError, match="--epochs must be >= 1.*--lr must be positive"):
        finetune(tiny_config(epochs=0, lr=0.0), source, tmp_path / "a")
    with pytest.raises(ConfigError, match="test split \\('holdout'\\) has no usable rows"):
        finetune(tiny_config(test_split="holdout"), source, tmp_path / "a")
    one_class = replace(
        source, metadata=replace(source.metadata, labels=np.ones_like(source.metadata.labels))
    )
    with pytest.raises(ConfigError, match="validation split"):
        finetune(tiny_config(), one_class, tmp_path / "a")
    train_one_class = one_class.metadata.labels.copy()
    train_one_class[source.metadata.split != "train"] = source.metadata.labels[
        source.metadata.split != "train"
    ]
    with caplog.at_level(logging.WARNING):
        finetune(
            tiny_config(epochs=1),
            replace(source, metadata=replace(source.metadata, labels=train_one_class)),
            tmp_path / "b",
        )
    assert "pos_weight set to 1 for cardiomegaly, pleural_effusion" in caplog.text
    finetune(tiny_config(epochs=1), source, tmp_path / "done")
    with pytest.raises(ConfigError, match="pass --resume"):
        finetune(tiny_config(epochs=1), source, tmp_path / "done")
    with pytest.raises(ConfigError, match="other settings.*lr"):
        finetune(tiny_config(epochs=1, lr=1e-4), source, tmp_path / "done", resume=True)


# ------------------------------------------------------------------------------------- CLI
MANIFEST_POLICIES = {"uncertain": "zero", "blank": "missing"}


@pytest.fixture(scope="module")
def cache_dataset(tmp_path_factory):
    """A 30-image cache at 32 px with one corrupt file (row 3, validation split)."""
    from cxrprobe.cache.images import build_image_cache
    from cxrprobe.data.manifest import write_manifest
    from cxrprobe.data.preprocess import PreprocessConfig

    folder = tmp_path_factory.mktemp("ft_cache")
    df, root = make_image_dataset(folder, 30, size=40, corrupt=[3])
    manifest = write_manifest(df, folder / "manifest.parquet", MANIFEST_POLICIES)
    build_image_cache(manifest, root, folder / "images.zarr", PreprocessConfig(size=32), workers=1)
    return folder, root


def _cli_args(out, *extra):
    return [
        "finetune",
        "--init",
        "random",
        "--model-kwargs",
        json.dumps(TINY),
        "--size",
        "32",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--lr",
        "1e-3",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--out",
        str(out),
        *extra,
    ]


def test_cli_trains_on_the_cache_and_leaves_failed_images_out(cache_dataset, tmp_path):
    folder, _ = cache_dataset
    out = tmp_path / "run"
    result = CliRunner().invoke(main, _cli_args(out, "--images", str(folder / "images.zarr")))
    assert result.exit_code == 0, result.output
    assert "best epoch 1" in result.output and "failures.json" in result.output
    pred = read_predictions(out / "predictions.json")
    df = pd.read_parquet(folder / "manifest.parquet")
    assert pred.ids == df.loc[df["split"] == "test", "image_id"].tolist()
    val = read_predictions(out / "val_predictions.json")
    assert "img003" not in val.ids and len(val.ids) == (df["split"] == "val").sum() - 1
    failures = json.loads((out / "failures.json").read_text())
    assert [(f["row"], f["split"]) for f in failures] == [(3, "val")]
    assert pred.provenance["dataset"]["kind"] == "image-cache"
    # the manifest's label policies travel through the image cache into the predictions
    assert pred.provenance["dataset"]["label_policies"] == MANIFEST_POLICIES
    source = from_cache(folder / "images.zarr")  # its provenance is what `extract` stores
    assert source.provenance["label_policies"] == MANIFEST_POLICIES
    assert pred.provenance["training_targets"] == {"uncertain": "ignore", "blank": "missing"}


def test_cli_raw_files_record_decode_failures_in_training(cache_dataset, tmp_path):
    folder, root = cache_dataset
    df = pd.read_parquet(folder / "manifest.parquet")
    df.loc[0, "path"] = df.loc[3, "path"]  # row 0 (train) now points at the corrupt file
    df.to_parquet(tmp_path / "m.parquet")
    out = tmp_path / "run"
    result = CliRunner().invoke(
        main, _cli_args(out, "--manifest", str(tmp_path / "m.parquet"), "--root", str(root))
    )
    assert result.exit_code == 0, result.output
    failures = {f["row"]: f["split"] for f in json.loads((out / "failures.json").read_text())}
    assert failures == {0: "train", 3: "val"}
    assert json.loads((out / "run.json").read_text())["config"]["dataset"]["kind"] == "raw-files"


def test_cli_option_errors(cache_dataset, tmp_path):
    folder, root = cache_dataset
    runner = CliRunner()
    neither = runner.invoke(main, _cli_args(tmp_path / "a"))
    assert neither.exit_code == 2 and "--images CACHE" in neither.output
    both = runner.invoke(
        main,
        _cli_args(
            tmp_path / "a",
            "--images",
            str(folder / "images.zarr"),
            "--manifest",
            str(folder / "manifest.parquet"),
        ),
    )
    assert both.exit_code == 2 and "exclude each other" in both.output
    root_only = runner.invoke(
        main,
        _cli_args(tmp_path / "a", "--images", str(folder / "images.zarr"), "--root", str(root)),
    )
    assert root_only.exit_code == 2 and "--root" in root_only.output
    missing = runner.invoke(
        main, _cli_args(tmp_path / "a", "--images", str(tmp_path / "nope.zarr"))
    )
    assert missing.exit_code == 1 and "nope.zarr" in missing.output
    bad_json = runner.invoke(
        main,
        [
            *_cli_args(tmp_path / "a", "--images", str(folder / "images.zarr")),
            "--model-kwargs",
            "{depth",
        ],
    )
    assert bad_json.exit_code == 2 and "--model-kwargs" in bad_json.output
    helped = runner.invoke(main, ["finetune", "--help"])
    assert helped.exit_code == 0 and "Example:" in helped.output
    no_init = _cli_args(tmp_path / "a", "--images", str(folder / "images.zarr"))
    del no_init[1:3]  # "--init", "random": like extract, finetune never picks a model itself
    forgot = runner.invoke(main, no_init)
    assert forgot.exit_code == 2 and "Missing option '--init'" in forgot.output
    assert not (tmp_path / "a").exists()


# ------------------------------------------------------------------ --findings, --uncertain, --blank
def test_findings_subset_trains_and_scores_only_those(source, tmp_path):
    result = finetune(tiny_config(epochs=1, findings="cardiomegaly"), source, tmp_path / "run")
    pred = read_predictions(tmp_path / "run" / "predictions.json")
    assert pred.labels == ["cardiomegaly"] and pred.scores.shape[1] == 1
    test_rows = np.flatnonzero(source.metadata.split == "test")
    np.testing.assert_array_equal(pred.targets[:, 0], source.metadata.labels[test_rows, 0])
    assert list(result.summary["test_auroc"]) == ["cardiomegaly"]
    record = json.loads((tmp_path / "run" / "run.json").read_text())["config"]
    assert record["findings"] == ["cardiomegaly"] and list(record["pos_weight"]) == ["cardiomegaly"]
    with open(tmp_path / "run" / "log.csv") as fh:
        header = next(csv.reader(fh))
    assert "val_auroc_cardiomegaly" in header and "val_auroc_pleural_effusion" not in header


@pytest.mark.parametrize(
    "spec, message",
    [
        ("efusion", "unknown finding or set 'efusion' (did you mean 'pleural_effusion'?)"),
        ("edema", "does not provide edema; it provides: cardiomegaly, pleural_effusion"),
    ],
)
def test_findings_the_source_cannot_give_are_refused_with_what_exists(
    source, tmp_path, spec, message
):
    with pytest.raises(ConfigError) as caught:
        finetune(tiny_config(findings=spec), source, tmp_path / "run")
    assert message in str(caught.value)
    assert not (tmp_path / "run" / "run.json").exists()


def test_blank_negative_trains_on_blanks_as_zeros_and_judges_on_the_labels(
    source, tmp_path, monkeypatch
):
    from cxrprobe.finetune import trainer as trainer_module

    seen = []
    original = trainer_module.masked_bce_sum

    def spy(logits, targets, pos_weight=None):
        seen.append(targets.detach().cpu().numpy().copy())
        return original(logits, targets, pos_weight)

    monkeypatch.setattr(trainer_module, "masked_bce_sum", spy)
    config = tiny_config(epochs=1, uncertain="zero", blank="negative")
    finetune(config, source, tmp_path / "run")
    meta = source.metadata
    train = meta.labels[meta.split == "train"]
    assert np.isnan(train).any()  # the toy source has training blanks
    expected = np.where(np.isnan(train), 0.0, train)  # by hand: blank -> 0 (no -1 here)
    trained = np.concatenate(seen)
    order = lambda a: a[np.lexsort(a.T[::-1])]  # noqa: E731 (rows as a multiset)
    np.testing.assert_array_equal(order(trained), order(expected))
    record = json.loads((tmp_path / "run" / "run.json").read_text())["config"]
    weights = {f: (expected[:, j] == 0).sum() / (expected[:, j] == 1).sum()
               for j, f in enumerate(FINDINGS)}  # fmt: skip
    assert record["pos_weight"] == pytest.approx(weights)
    pred = read_predictions(tmp_path / "run" / "predictions.json")
    test_rows = np.flatnonzero(meta.split == "test")
    np.testing.assert_array_equal(pred.targets, meta.labels[test_rows])  # blanks stay blank
    assert pred.provenance["training_targets"] == {"uncertain": "zero", "blank": "negative"}
    with pytest.raises(ConfigError, match="--blank must be one of missing, negative"):
        finetune(tiny_config(blank="zero"), source, tmp_path / "bad")


def test_runs_saved_before_the_label_settings_still_resume(tmp_path):
    from cxrprobe.finetune.run import check_resumable

    now = tiny_config().to_dict()
    before = {k: v for k, v in now.items() if k not in ("uncertain", "blank", "findings")}
    check_resumable(before, now, tmp_path / "last.pt")  # the defaults are what they ran with
    with pytest.raises(ConfigError, match="blank: 'missing' then, 'negative' now"):
        check_resumable(before, {**now, "blank": "negative"}, tmp_path / "last.pt")
