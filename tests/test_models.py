"""The initialisation registry: every init path with tiny models saved in the test, never a download."""

from __future__ import annotations

import hashlib

import pytest
import timm
import torch
from timm.layers import resample_abs_pos_embed

from cxrprobe import hub
from cxrprobe.errors import ConfigError, InputFileError, WeightsError
from cxrprobe.models import INITS, check_embeddable, create_model, resolve_init
from cxrprobe.weights import save_state_dict
from tests.model_fixtures import TINY_DENSENET, tiny_model, to_transformers_dinov2

TINY = {"depth": 2, "embed_dim": 64, "num_heads": 2}


def tiny_timm(arch: str, img_size: int, seed: int, **extra) -> torch.nn.Module:
    """A tiny model built by timm directly (the reference), with its own seed."""
    torch.manual_seed(seed)
    return timm.create_model(
        arch, pretrained=False, num_classes=0, img_size=img_size, **TINY, **extra
    ).eval()


def same_output(a: torch.nn.Module, b: torch.nn.Module, size: int, atol: float = 1e-6) -> bool:
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return torch.allclose(a.eval().forward_features(x), b.eval().forward_features(x), atol=atol)


def to_dinov2_format(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Reverse timm's DINOv2 conversion: the key layout of the original torch-hub checkpoints."""
    original = {k: v.clone() for k, v in state.items()}
    dim = original["cls_token"].shape[-1]
    original["mask_token"] = torch.zeros(1, dim)
    if "reg_token" in original:  # timm folds the class position embedding into cls_token
        original["register_tokens"] = original.pop("reg_token")
        cls_pos = torch.randn(1, 1, dim, generator=torch.Generator().manual_seed(2))
        original["cls_token"] = original["cls_token"] - cls_pos
        original["pos_embed"] = torch.cat([cls_pos, original["pos_embed"]], dim=1)
    return original


@pytest.mark.parametrize("init", ["dinov2", "dinov2-reg", "imagenet"])
@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_hub_inits_load_a_local_file(tmp_path, init, fmt):
    arch = INITS[init].arch
    size = 28 if "patch14" in arch else 32
    reference = tiny_timm(arch, size, seed=7)
    path = tmp_path / f"w.{fmt}"
    if fmt == "safetensors":
        save_state_dict(reference.state_dict(), path)
    else:
        torch.save(reference.state_dict(), path)
    model, spec = create_model(init, weights=path, img_size=size, model_kwargs=TINY)
    assert same_output(model, reference, size)
    cfg = timm.models.get_pretrained_cfg(arch)  # timm's own config, not a literal
    assert spec.arch == arch and spec.init == init
    assert spec.mean == tuple(cfg.mean) and spec.std == tuple(cfg.std)
    assert spec.patch_size == (14 if "patch14" in arch else 16)
    assert spec.num_prefix_tokens == (5 if "reg4" in arch else 1)
    assert spec.embed_dim == 64 and spec.img_size == size
    assert spec.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert spec.weights_source == "file" and spec.model_kwargs == TINY
    assert spec.to_dict()["mean"] == list(cfg.mean)
    assert spec.readout == "token" and spec.normalization == "model config"


@pytest.mark.parametrize("init", ["dinov2", "dinov2-reg"])
def test_original_dinov2_checkpoint_is_converted(tmp_path, init):
    reference = tiny_timm(INITS[init].arch, 28, seed=3)
    path = tmp_path / "dinov2_vitb14_pretrain.pth"
    torch.save(to_dinov2_format(reference.state_dict()), path)
    model, _ = create_model(init, weights=path, img_size=28, model_kwargs=TINY)
    assert same_output(model, reference, 28, atol=1e-4)  # reg: cls_token - pos + pos rounds


def test_position_embeddings_are_resampled_to_the_input_size(tmp_path):
    small = tiny_timm(INITS["dinov2"].arch, 28, seed=4)
    save_state_dict(small.state_dict(), tmp_path / "w.safetensors")
    model, spec = create_model(
        "dinov2", weights=tmp_path / "w.safetensors", img_size=56, model_kwargs=TINY
    )
    expected = resample_abs_pos_embed(small.pos_embed.detach(), (4, 4), num_prefix_tokens=1)
    assert spec.img_size == 56 and model.patch_embed.grid_size == (4, 4)
    assert torch.allclose(model.pos_embed, expected, atol=1e-6)
    assert torch.equal(model.blocks[1].mlp.fc1.weight, small.blocks[1].mlp.fc1.weight)


def test_mimic_needs_weights_and_drops_a_classifier_head(tmp_path):
    with pytest.raises(WeightsError, match="--weights PATH"):
        create_model("mimic", model_kwargs=TINY)
    torch.manual_seed(5)
    trained = timm.create_model(
        "vit_base_patch16_224", pretrained=False, num_classes=14, img_size=32, **TINY
    ).eval()
    torch.save({"model": trained.state_dict(), "epoch": 9}, tmp_path / "mimic.pth")
    model, spec = create_model(
        "mimic", weights=tmp_path / "mimic.pth", img_size=32, model_kwargs=TINY
    )
    assert same_output(model, trained, 32)
    assert spec.arch == "vit_base_patch16_224"
    headed, _ = create_model(
        "mimic", weights=tmp_path / "mimic.pth", img_size=32, num_classes=14, model_kwargs=TINY
    )
    assert torch.equal(headed.head.weight, trained.head.weight)


def test_random_is_reproducible_and_leaves_the_global_seed_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a, spec = create_model("random", img_size=32, model_kwargs=TINY)
    after = torch.rand(1)
    b, _ = create_model("random", img_size=32, model_kwargs=TINY)
    assert torch.equal(before, after)
    assert all(
        torch.equal(x, y)
        for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )
    assert spec.weights_sha256 is None and spec.weights_source == "random"
    assert spec.arch == "vit_base_patch16_224"
    other, spec = create_model(
        "random", arch="vit_base_patch14_dinov2", img_size=28, model_kwargs=TINY
    )
    assert spec.patch_size == 14


def test_timm_name_and_local_file_inits(tmp_path):
    reference = tiny_timm("vit_tiny_patch16_224", 32, seed=6)
    save_state_dict(reference.state_dict(), tmp_path / "tiny.safetensors")
    model, spec = create_model(
        "timm:vit_tiny_patch16_224",
        weights=tmp_path / "tiny.safetensors",
        img_size=32,
        model_kwargs=TINY,
    )
    assert same_output(model, reference, 32) and spec.init == "timm:vit_tiny_patch16_224"
    path = str(tmp_path / "tiny.safetensors")
    model, spec = create_model(path, arch="vit_tiny_patch16_224", img_size=32, model_kwargs=TINY)
    assert same_output(model, reference, 32)
    assert spec.init == path and spec.weights_path == path and spec.weights_source == "file"


def test_bad_init_combinations_are_refused_with_the_option_named(tmp_path):
    with pytest.raises(ConfigError, match="not a known initialisation"):
        resolve_init("dinov3")
    with pytest.raises(ConfigError, match="unknown timm model"):
        resolve_init("timm:no_such_model")
    with pytest.raises(ConfigError, match="--arch"):
        resolve_init("dinov2", arch="vit_small_patch16_224")
    with pytest.raises(ConfigError, match="no --weights"):
        resolve_init("random", weights="w.safetensors")
    with pytest.raises(InputFileError, match="missing.pth"):
        resolve_init(str(tmp_path / "missing.pth"), arch="vit_base_patch16_224")
    (tmp_path / "w.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match="needs --arch"):
        resolve_init(str(tmp_path / "w.safetensors"))
    with pytest.raises(ConfigError, match="--size 504 or 518"):
        create_model("dinov2", weights=tmp_path / "w.safetensors", img_size=512, model_kwargs=TINY)
    with pytest.raises(ConfigError, match="no_such_option.*--model-kwargs"):
        create_model("random", arch="resnet18", img_size=32, model_kwargs={"no_such_option": 1})


def test_checkpoints_that_do_not_fit_list_the_keys(tmp_path):
    deeper = timm.create_model(
        "vit_base_patch16_224",
        pretrained=False,
        num_classes=0,
        img_size=32,
        depth=3,
        embed_dim=64,
        num_heads=2,
    )
    save_state_dict(deeper.state_dict(), tmp_path / "deep.safetensors")
    with pytest.raises(WeightsError, match=r"unexpected: blocks\.2\."):
        create_model("mimic", weights=tmp_path / "deep.safetensors", img_size=32, model_kwargs=TINY)
    wider = timm.create_model(
        "vit_base_patch16_224",
        pretrained=False,
        num_classes=0,
        img_size=32,
        depth=2,
        embed_dim=32,
        num_heads=2,
    )
    save_state_dict(wider.state_dict(), tmp_path / "narrow.safetensors")
    with pytest.raises(WeightsError, match="wrong shape"):
        create_model(
            "mimic", weights=tmp_path / "narrow.safetensors", img_size=32, model_kwargs=TINY
        )
    partial = {k: v for k, v in deeper.state_dict().items() if not k.startswith("norm.")}
    partial = {k: v for k, v in partial.items() if not k.startswith("blocks.2.")}
    save_state_dict(partial, tmp_path / "partial.safetensors")
    with pytest.raises(WeightsError, match=r"missing: norm\.weight, norm\.bias"):
        create_model(
            "mimic", weights=tmp_path / "partial.safetensors", img_size=32, model_kwargs=TINY
        )


@pytest.fixture
def no_hub(monkeypatch):
    """No cached hub files and no download: any attempt to reach the network fails the test."""
    import huggingface_hub

    def forbidden(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", forbidden)
    return monkeypatch


def test_offline_hub_init_names_the_file_to_pass(no_hub):
    no_hub.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError) as err:
        create_model("dinov2", model_kwargs=TINY, img_size=28)
    message = str(err.value)
    assert "dinov2_vitb14_pretrain.pth" in message
    assert "timm/vit_base_patch14_dinov2.lvd142m" in message and "--weights PATH" in message
    with pytest.raises(WeightsError, match="timm/vit_base_patch16_224.augreg_in21k"):
        create_model("imagenet", model_kwargs=TINY, img_size=32)


def test_no_network_fails_fast_without_a_download(no_hub):
    no_hub.delenv("HF_HUB_OFFLINE", raising=False)
    no_hub.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)

    def unreachable(*args, **kwargs):
        raise OSError("Name or service not known")

    no_hub.setattr(hub.socket, "create_connection", unreachable)
    with pytest.raises(WeightsError, match="dinov2_vitb14_reg4_pretrain.pth"):
        create_model("dinov2-reg", model_kwargs=TINY, img_size=28)


def test_hub_weights_already_in_the_cache_are_used(tmp_path, no_hub):
    reference = tiny_timm(INITS["dinov2"].arch, 28, seed=8)
    path = save_state_dict(reference.state_dict(), tmp_path / "model.safetensors")
    no_hub.setattr(
        "huggingface_hub.try_to_load_from_cache",
        lambda repo, name: str(path) if name == "model.safetensors" else None,
    )
    model, spec = create_model("dinov2", model_kwargs=TINY, img_size=28)
    assert same_output(model, reference, 28)
    assert spec.weights_source == "hf-hub:timm/vit_base_patch14_dinov2.lvd142m"
    assert spec.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("init", ["dinov2", "dinov2-reg"])
@pytest.mark.parametrize("wrapper", ["", "dinov2."])
def test_transformers_dinov2_checkpoint_loads_into_the_timm_model(tmp_path, init, wrapper, caplog):
    """A RAD-DINO-style file (transformers Dinov2Model keys; or Dinov2ForImageClassification's,
    head included) gives the model it was made from."""
    reference = tiny_timm(INITS[init].arch, 28, seed=9)
    hf = {wrapper + k: v for k, v in to_transformers_dinov2(reference.state_dict()).items()}
    if wrapper:
        hf["classifier.weight"] = torch.zeros(3, 128)
    path = save_state_dict(hf, tmp_path / "model.safetensors")
    with caplog.at_level("INFO", logger="cxrprobe"):
        model, spec = create_model(init, weights=path, img_size=28, model_kwargs=TINY)
    assert "loaded transformers DINOv2 checkpoint" in caplog.text
    x = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), reference(x), atol=1e-4)
    assert same_output(model, reference, 28, atol=1e-4)
    assert spec.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_real_transformers_dinov2_model_matches_when_installed(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.Dinov2Config(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=256,
        image_size=28,
        patch_size=14,
    )
    torch.manual_seed(10)
    hf = transformers.Dinov2Model(config).eval()
    path = save_state_dict(hf.state_dict(), tmp_path / "model.safetensors")
    model, _ = create_model("dinov2", weights=path, img_size=28, model_kwargs=TINY)
    x = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = hf(pixel_values=x).last_hidden_state
        assert torch.allclose(model.eval().forward_features(x), expected, atol=1e-4)


def test_mean_and_std_replace_the_model_config():
    cfg = timm.models.get_pretrained_cfg("vit_base_patch16_224")
    _, default = create_model("random", img_size=32, model_kwargs=TINY)
    assert default.mean == tuple(cfg.mean) and default.std == tuple(cfg.std)
    _, spec = create_model(
        "random", img_size=32, model_kwargs=TINY, mean=[0.5307], std=(0.2583, 0.2583, 0.2583)
    )
    assert spec.mean == (0.5307,) * 3 and spec.std == (0.2583,) * 3
    assert spec.normalization == "--mean/--std" and spec.to_dict()["std"] == [0.2583] * 3
    with pytest.raises(ConfigError, match="--mean takes 1 or 3 values"):
        create_model("random", img_size=32, model_kwargs=TINY, mean=[0.5, 0.5])
    with pytest.raises(ConfigError, match="--std must be positive"):
        create_model("random", img_size=32, model_kwargs=TINY, std=[0.2, 0.0, 0.2])


def test_cnns_load_and_read_out_pooled_features(tmp_path):
    reference = tiny_model("densenet121", seed=11, **TINY_DENSENET)
    path = save_state_dict(reference.state_dict(), tmp_path / "densenet.safetensors")
    model, spec = create_model(
        "timm:densenet121", weights=path, img_size=40, model_kwargs=TINY_DENSENET
    )
    x = torch.randn(2, 3, 40, 40, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        assert torch.equal(model.eval()(x), reference(x))
    cfg = timm.models.get_pretrained_cfg("densenet121")
    assert spec.readout == "pooled" and spec.patch_size is None and spec.num_prefix_tokens == 0
    assert spec.embed_dim == reference.num_features == 17 and spec.img_size == 40
    assert spec.mean == tuple(cfg.mean) and spec.std == tuple(cfg.std)
    check_embeddable(model, spec)
    with pytest.raises(ConfigError, match="--drop-path: timm model densenet121"):
        create_model("random", arch="densenet121", drop_path_rate=0.1, model_kwargs=TINY_DENSENET)
    _, resnet = create_model("random", arch="resnet18", img_size=32, drop_path_rate=0.1)
    assert resnet.readout == "pooled" and resnet.embed_dim == 512


def test_a_head_wider_than_the_feature_map_cannot_fill_a_store():
    model, spec = create_model("random", arch="mobilenetv3_small_050", img_size=32)
    with pytest.raises(ConfigError, match=r"mobilenetv3_small_050: its pooled features \(1024"):
        check_embeddable(model, spec)
