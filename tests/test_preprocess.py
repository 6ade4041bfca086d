"""The offline step against a step-by-step reference; aspect policies; the model-input transform."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cxrprobe.data.preprocess import (
    PRESETS,
    PreprocessConfig,
    equalize_hist,
    load_preprocessed,
    preprocess,
    square_resize,
    to_model_input,
)
from cxrprobe.errors import ConfigError, DecodeError, InputFileError
from tests.image_fixtures import radiograph_like, write_png


def _reference_equalize(image: np.ndarray) -> np.ndarray:
    """Histogram equalisation written out with Python loops (the cv2.equalizeHist formula)."""
    counts = [0] * 256
    for value in image.ravel().tolist():
        counts[value] += 1
    lowest = next(v for v in range(256) if counts[v])
    total, running, lut = image.size, 0, [0] * 256
    for v in range(256):
        running += counts[v]
        if v >= lowest:
            lut[v] = int(np.rint((running - counts[lowest]) * 255.0 / (total - counts[lowest])))
    return np.array(lut, dtype=np.uint8)[image]


def _reference_paper(gray: np.ndarray, size: int) -> np.ndarray:
    """The paper preset written out: min-max → 8-bit → equalise → stretch-resize (torch, antialiased)."""
    g = gray.astype(np.float64)
    unit = (g - g.min()) / (g.max() - g.min())
    eight = np.rint(unit * 255).astype(np.uint8)
    equalised = _reference_equalize(eight)
    if equalised.shape == (size, size):
        return equalised
    x = torch.from_numpy(equalised).to(torch.float32)[None, None]
    resized = F.interpolate(
        x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    return resized[0, 0].round().clamp(0, 255).to(torch.uint8).numpy()


def _gray(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A decoded-like float image that does not span [0, 1] (so min-max has work to do)."""
    return (
        0.2
        + 0.5 * radiograph_like(height, width, seed=seed, dtype="uint16").astype(np.float32) / 65535
    )


def test_paper_preset_settings():
    cfg = PRESETS["paper"]
    assert (cfg.aspect, cfg.equalize, cfg.minmax) == ("stretch", True, True)
    assert (cfg.decode, cfg.resize_first) == ("display", False)


def test_paper_preset_exact_before_resize():
    gray = _gray(40, 40)
    out = preprocess(gray, PRESETS["paper"].with_size(40))
    np.testing.assert_array_equal(out, _reference_paper(gray, 40))


@pytest.mark.parametrize("size", [32, 96])
def test_paper_preset_matches_reference_with_resize(size):
    gray = _gray(70, 110, seed=1)
    out = preprocess(gray, PRESETS["paper"].with_size(size))
    reference = _reference_paper(gray, size)
    assert out.dtype == np.uint8 and out.shape == (size, size)
    diff = np.abs(out.astype(int) - reference)
    assert diff.max() <= 1 and diff.mean() < 0.3  # Pillow vs torch antialiased bilinear rounding


def test_equalize_matches_loop_reference_and_flattens_histogram():
    image = (radiograph_like(50, 60, seed=2) // 2 + 40).astype(np.uint8)  # narrow, offset range
    out = equalize_hist(image)
    np.testing.assert_array_equal(out, _reference_equalize(image))
    assert out.min() == 0 and out.max() == 255
    constant = np.full((4, 4), 17, dtype=np.uint8)
    np.testing.assert_array_equal(equalize_hist(constant), constant)


def test_minmax_spans_full_range_and_default_has_no_equalisation():
    gray = _gray(30, 30)
    out = preprocess(gray, PreprocessConfig(size=30))
    assert out.min() == 0 and out.max() == 255
    expected = np.rint((gray - gray.min()) / (gray.max() - gray.min()) * 255)
    np.testing.assert_allclose(out, expected, atol=1)


def test_constant_image_is_refused():
    with pytest.raises(DecodeError, match="constant"):
        preprocess(np.full((8, 8), 0.5, dtype=np.float32), PreprocessConfig(size=8))


def _thirds(height: int = 30, width: int = 60) -> np.ndarray:
    image = np.full((height, width), 150, dtype=np.uint8)
    image[:, : width // 4] = 50
    image[:, width - width // 4 :] = 250
    return image


def test_pad_keeps_aspect_with_black_bands():
    out = square_resize(np.full((30, 60), 200, dtype=np.uint8), 64, "pad")
    assert out.shape == (64, 64)
    assert (out[:14] == 0).all() and (out[-14:] == 0).all()
    band = np.flatnonzero(out[:, 32] > 100)
    assert abs(len(band) - 32) <= 1  # 30:60 aspect → a band half the height, centred
    assert abs(band.mean() - 31.5) <= 1


def test_crop_keeps_centre_square():
    out = square_resize(_thirds(), 40, "crop")
    assert out.shape == (40, 40) and (out == 150).all()


def test_stretch_maps_whole_image():
    out = square_resize(_thirds(), 40, "stretch")
    assert out.shape == (40, 40)
    assert (out[:, :9] == 50).all() and (out[:, -9:] == 250).all() and (out[:, 12:28] == 150).all()


@pytest.mark.parametrize("aspect", ["stretch", "pad", "crop"])
@pytest.mark.parametrize("size", [224, 336, 518])
def test_any_size_exact_output(aspect, size):
    out = preprocess(_gray(61, 47), PreprocessConfig(size=size, aspect=aspect))
    assert out.shape == (size, size) and out.dtype == np.uint8


def test_config_validation_and_round_trip():
    with pytest.raises(ConfigError, match="--aspect"):
        PreprocessConfig(aspect="letterbox")
    with pytest.raises(ConfigError, match="--size"):
        PreprocessConfig(size=0)
    cfg = PreprocessConfig(size=336, aspect="pad", equalize=True)
    assert PreprocessConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown"):
        PreprocessConfig.from_dict({**cfg.to_dict(), "gamma": 2})


def test_load_preprocessed_errors_name_the_file(tmp_path):
    with pytest.raises(InputFileError, match="gone.png"):
        load_preprocessed(tmp_path / "gone.png", PreprocessConfig(size=8))
    flat = write_png(tmp_path / "flat.png", np.full((9, 9), 80, dtype=np.uint8))
    with pytest.raises(DecodeError, match=r"flat\.png: image is constant"):
        load_preprocessed(flat, PreprocessConfig(size=8))


def test_sixteen_bit_narrow_range_is_stretched(tmp_path):
    twelve_bit = (radiograph_like(32, 32, dtype="uint16") >> 4).astype(np.uint16)
    out = load_preprocessed(write_png(tmp_path / "a.png", twelve_bit), PreprocessConfig(size=32))
    expected = np.rint(twelve_bit / twelve_bit.max() * 255)  # min is 0 by construction
    np.testing.assert_allclose(out, expected, atol=1)


def test_paper_preset_on_a_real_radiograph(real_data):
    path = sorted((real_data / "images" / "actualmed").glob("*.png"))[0]
    out = load_preprocessed(path, PRESETS["paper"])
    assert out.shape == (224, 224)
    # equalised: roughly uniform grey levels (mean near mid-grey, every quarter of the range used)
    assert abs(out.mean() - 127.5) < 12
    assert all(0.15 < ((out >= lo) & (out < lo + 64)).mean() < 0.35 for lo in (0, 64, 128, 192))


# -------------------------------------------------------------------------------- model input
def test_to_model_input_matches_manual(device):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(2, 6, 6), dtype=np.uint8)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    out = to_model_input(torch.from_numpy(images).to(device), mean, std)
    assert out.dtype == torch.float32 and out.shape == (2, 3, 6, 6) and out.device.type == device
    mean_c, std_c = np.array(mean)[:, None, None], np.array(std)[:, None, None]
    manual = (images[:, None].astype(np.float64) / 255 - mean_c) / std_c
    np.testing.assert_allclose(out.cpu().numpy(), manual, atol=1e-6)
    channel_first = to_model_input(torch.from_numpy(images[:, None]).to(device), [0.5], [0.25])
    np.testing.assert_allclose(
        channel_first.cpu().numpy(),
        (np.repeat(images[:, None], 3, 1) / 255 - 0.5) / 0.25,
        atol=1e-6,
    )


def test_to_model_input_resizes_a_ramp_linearly():
    ramp = np.tile(np.arange(32, dtype=np.uint8) * 8, (32, 1))[None]  # value = 8 * column
    out = to_model_input(torch.from_numpy(ramp), [0.0], [1.0], size=16)
    assert out.shape == (1, 3, 16, 16)
    # downsizing by 2: output column j covers input columns 2j, 2j+1 → value 8 * (2j + 0.5)
    expected = 8 * (2 * np.arange(16) + 0.5) / 255
    np.testing.assert_allclose(out[0, 0, 8, 2:-2].numpy(), expected[2:-2], atol=1e-5)


def test_to_model_input_rejects_bad_stats():
    images = torch.zeros((1, 4, 4), dtype=torch.uint8)
    with pytest.raises(ConfigError, match="3 values"):
        to_model_input(images, [0.1, 0.2], [1.0, 1.0])
    with pytest.raises(ConfigError, match="positive"):
        to_model_input(images, [0.5], [0.0])
