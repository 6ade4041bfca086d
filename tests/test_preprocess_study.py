"""The ``study`` preset against a transcription of the study's preprocessing code.

The transcription follows tayebiarasteh/chestx ``data/csv_data_preprocess.py`` (class
``normalizer_resizer``): read with ``cv2.imread`` + ``COLOR_BGR2GRAY`` or pydicom's
``pixel_array``, ``scipy.ndimage.zoom(order=2)`` to size x size, min-max, skimage's
``img_as_ubyte``, ``np.invert`` for MONOCHROME1, ``cv2.equalizeHist``. It uses cv2 and skimage
when installed, otherwise a numpy transcription of their documented arithmetic. The ``default``
and ``paper`` presets are pinned by hashes of their output, computed before ``study`` was added.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import zoom

from cxrprobe.data.preprocess import (
    NO_NORMALIZATION,
    PRESETS,
    PreprocessConfig,
    equalize_hist,
    load_preprocessed,
    preprocess,
    to_model_input,
)
from cxrprobe.errors import ConfigError
from tests.image_fixtures import radiograph_like, write_dicom, write_jpeg, write_png

REAL_FORMATS = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")


# ------------------------------------------------------------------------ the transcription
def _study_read(path: Path) -> tuple[np.ndarray, bool]:
    """The study's reading: (pixels, is MONOCHROME1). JPEG-baseline DICOMs use Pillow's decoder,
    the one cxrprobe pins (decoders differ by a grey level; see docs/images.md)."""
    if path.suffix.lower() in (".dcm", ".dicom"):
        import pydicom

        ds = pydicom.dcmread(path)
        ds.pixel_array_options(decoding_plugin="pillow")
        return ds.pixel_array, ds[0x0028, 0x0004].value == "MONOCHROME1"
    try:
        import cv2
    except ImportError:
        pixels = np.asarray(Image.open(path))
        if pixels.dtype == np.uint16:  # cv2.imread(IMREAD_COLOR): libpng keeps the high byte
            pixels = (pixels >> 8).astype(np.uint8)
        if pixels.ndim == 3:  # COLOR_BGR2GRAY, documented as 0.299 R + 0.587 G + 0.114 B
            pixels = np.rint(pixels[..., :3] @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)
        return pixels, False
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2GRAY), False


def _img_as_ubyte(unit: np.ndarray) -> np.ndarray:
    try:
        from skimage.util import img_as_ubyte
    except ImportError:  # skimage's float → uint8: multiply by 255 in float64, round half to even
        return np.clip(np.rint(np.multiply(unit, 255, dtype=np.float64)), 0, 255).astype(np.uint8)
    return img_as_ubyte(unit)


def _equalize_hist(image: np.ndarray) -> np.ndarray:
    try:
        import cv2
    except ImportError:  # cv2.equalizeHist: float scale = 255.f / (n - hist[lowest]), lut by loop
        hist = np.bincount(image.ravel(), minlength=256)
        lowest = int(np.flatnonzero(hist)[0])
        if hist[lowest] == image.size:
            return image.copy()
        scale = np.float32(255.0) / np.float32(image.size - hist[lowest])
        lut, running = np.zeros(256, dtype=np.uint8), 0
        for value in range(lowest + 1, 256):
            running += int(hist[value])
            lut[value] = min(255, int(np.rint(np.float32(running) * scale)))
        return lut[image]
    return cv2.equalizeHist(image)


def _study_preprocess(path: Path, size: int) -> np.ndarray:
    """The study's normalizer_resizer for one file, with HEIGHT = WIDTH = size."""
    img, monochrome1 = _study_read(path)
    img = zoom(img, np.divide((size, size), img.shape), order=2)
    min_, max_ = np.min(img), np.max(img)
    img = (img - min_) / (max_ - min_)
    img = _img_as_ubyte(img)
    if monochrome1:
        img = np.invert(img)
    return _equalize_hist(img)


# --------------------------------------------------------------------------------- fixtures
def _fixture_files(folder: Path) -> list[Path]:
    """One file per reading path: 8/16-bit PNG, colour-encoded PNG, JPEG, DICOM (MONOCHROME1 with
    rescale + window, MONOCHROME2 with a VOI LUT, signed)."""
    stored = radiograph_like(45, 37, seed=3, dtype="uint16") >> 4
    lut = np.linspace(0, 255, 4096).astype(int) ** 2 // 255  # a non-linear VOI LUT
    return [
        write_png(folder / "eight.png", radiograph_like(41, 63, seed=1)),
        write_png(folder / "sixteen.png", radiograph_like(58, 40, seed=2, dtype="uint16")),
        write_png(folder / "rgb.png", np.stack([radiograph_like(33, 52, seed=4)] * 3, axis=-1)),
        write_jpeg(folder / "photo.jpg", radiograph_like(50, 47, seed=5)),
        write_dicom(
            folder / "m1.dcm",
            stored,
            photometric="MONOCHROME1",
            bits_stored=12,
            rescale=(2.0, -100.0),
            window=(2000.0, 3000.0),
        ),
        write_dicom(folder / "voi.dcm", stored, bits_stored=12, voi_lut=(0, 8, lut.tolist())),
        write_dicom(folder / "signed.dcm", (stored.astype(np.int16) - 2048), bits_stored=12),
    ]


@pytest.mark.parametrize("size", [32, 64, 96])
def test_study_preset_is_the_study_code_on_every_format(tmp_path, size):
    for path in _fixture_files(tmp_path):
        out = load_preprocessed(path, PRESETS["study"].with_size(size))
        reference = _study_preprocess(path, size)
        assert out.shape == (size, size) and out.dtype == np.uint8
        np.testing.assert_array_equal(out, reference, err_msg=path.name)


def test_study_preset_on_every_real_image(real_data):
    paths = sorted(p for p in (real_data / "images").rglob("*") if p.suffix.lower() in REAL_FORMATS)
    assert len(paths) >= 10, "expected the shared real images (PNG, JPEG, DICOM)"
    assert any(p.name == "Fake_MONOHR1.dcm" for p in paths)
    for path in paths:
        out = load_preprocessed(path, PRESETS["study"])
        diff = np.abs(out.astype(int) - _study_preprocess(path, 224))
        assert diff.max() <= 1, f"{path.name}: differs from the study's code by {diff.max()}"


def test_study_preset_at_the_public_codes_size_512(real_data):
    """The published normalizer_resizer writes 512 x 512 (HEIGHT, WIDTH = 512, 512)."""
    for path in (
        sorted((real_data / "images" / "dicom").glob("*.dcm"))[:1]
        + sorted((real_data / "images" / "misc").glob("*.jpg"))[:1]
    ):
        out = load_preprocessed(path, PRESETS["study"].with_size(512))
        assert np.abs(out.astype(int) - _study_preprocess(path, 512)).max() <= 1, path.name


def test_study_ignores_dicom_luts_and_inverts_after_8_bit(tmp_path):
    stored = radiograph_like(40, 30, seed=6, dtype="uint16") >> 4
    plain = write_dicom(tmp_path / "plain.dcm", stored, bits_stored=12)
    windowed = write_dicom(
        tmp_path / "win.dcm", stored, bits_stored=12, rescale=(3.0, 7.0), window=(900.0, 400.0)
    )
    mono1 = write_dicom(tmp_path / "m1.dcm", stored, photometric="MONOCHROME1", bits_stored=12)
    study = PRESETS["study"].with_size(24)
    np.testing.assert_array_equal(
        load_preprocessed(windowed, study), load_preprocessed(plain, study)
    )
    default = PRESETS["default"].with_size(24)
    assert not np.array_equal(
        load_preprocessed(windowed, default), load_preprocessed(plain, default)
    )
    # MONOCHROME1: the 8-bit image of the stored values, inverted, then equalised
    resized = zoom(stored, np.divide((24, 24), stored.shape), order=2).astype(np.float64)
    eight = np.rint((resized - resized.min()) / (resized.max() - resized.min()) * 255)
    inverted = (255 - eight).astype(np.uint8)
    np.testing.assert_array_equal(load_preprocessed(mono1, study), _equalize_hist(inverted))


def test_study_crop_is_the_study_step_on_the_centre_square():
    stored = radiograph_like(30, 50, seed=7, dtype="uint16")
    cropped = replace(PRESETS["study"], aspect="crop", size=20)
    out = preprocess(stored, cropped)
    np.testing.assert_array_equal(out, preprocess(stored[:, 10:40], PRESETS["study"].with_size(20)))


def test_exact_cv2_equalisation_differs_from_double_precision_only_at_ties():
    # n - cdf[lowest] = 262144 puts a double/single-precision rounding tie at cdf = 196865
    flat = np.zeros(262145, dtype=np.uint8)
    flat[1 : 1 + 196865] = 1
    flat[1 + 196865 :] = 2
    image = flat.reshape(5, 52429)
    single, double = equalize_hist(image, exact_cv2=True), equalize_hist(image)
    np.testing.assert_array_equal(single, _equalize_hist(image))
    assert abs(int(single[0, 1]) - int(double[0, 1])) == 1
    assert single[-1, -1] == double[-1, -1] == 255


# ------------------------------------------------------------------- presets and configuration
EXPECTED_HASHES = {  # sha256 of outputs on _pinned_files() at 32 and 64, computed before `study`
    "default": "90928fb263ff89a95bd93143e3543315458c6ce85c83eed1e0dc43db08595b72",
    "paper": "5636de351d2f6d096f278d5a385d44f9fef9c39973b26cba00376c77723f158f",
    "pad": "7f4a85d65544850f2e960e77db4a2854f79b0361f714ba1ed0e11ee35e3952d8",
    "crop": "882572e0a52ecbf20bc3044e48570283e8cca44b63baeac8f2b107c75057e0cf",
}


def _pinned_files(folder: Path) -> list[Path]:
    """Lossless files only (a JPEG encoder upgrade must not move the hashes)."""
    stored = radiograph_like(45, 37, seed=3, dtype="uint16") >> 4
    rgb = np.stack([radiograph_like(33, 52, seed=4)] * 3, axis=-1)
    rgb[..., 2] //= 2
    return [
        write_png(folder / "eight.png", radiograph_like(41, 63, seed=1)),
        write_png(folder / "sixteen.png", radiograph_like(58, 40, seed=2, dtype="uint16")),
        write_png(folder / "rgb.png", rgb),
        write_dicom(folder / "m1.dcm", stored, photometric="MONOCHROME1", bits_stored=12),
        write_dicom(
            folder / "win.dcm",
            stored,
            bits_stored=12,
            rescale=(2.0, -100.0),
            window=(2000.0, 3000.0),
        ),
    ]


@pytest.mark.parametrize("name", sorted(EXPECTED_HASHES))
def test_default_and_paper_pixels_unchanged(tmp_path, name):
    base = PRESETS["paper"] if name == "paper" else PRESETS["default"]
    cfg = replace(base, aspect=name) if name in ("pad", "crop") else base
    digest = hashlib.sha256()
    files = _pinned_files(tmp_path)
    for size in (32, 64):
        for path in files:
            digest.update(load_preprocessed(path, cfg.with_size(size)).tobytes())
    assert digest.hexdigest() == EXPECTED_HASHES[name]


def test_first_release_identity_is_kept_and_study_round_trips():
    first = {"size": 224, "aspect": "stretch", "minmax": True, "resample": "bilinear"}
    assert PRESETS["default"].to_dict() == {**first, "equalize": False}
    assert PRESETS["paper"].to_dict() == {**first, "equalize": True}
    assert PreprocessConfig.from_dict({**first, "equalize": True}) == PRESETS["paper"]
    study = PRESETS["study"].to_dict()
    assert study["decode"] == "raw" and study["resize_first"] and study["resample"] == "spline2"
    assert PreprocessConfig.from_dict(study) == PRESETS["study"]


def test_study_settings_are_validated():
    with pytest.raises(ConfigError, match="--aspect pad"):
        replace(PRESETS["study"], aspect="pad")
    with pytest.raises(ConfigError, match="needs minmax"):
        replace(PRESETS["study"], minmax=False)
    with pytest.raises(ConfigError, match="decode must be one of"):
        PreprocessConfig(decode="voi")


def test_no_normalization_is_torchvision_to_tensor():
    """The study's online step: cv2's 3-channel image → ToPILImage → ToTensor, no Normalize."""
    from torchvision import transforms

    images = np.stack([radiograph_like(12, 12, seed=s) for s in range(2)])
    out = to_model_input(torch.from_numpy(images), *NO_NORMALIZATION)
    expected = torch.stack(
        [transforms.ToTensor()(Image.fromarray(np.stack([im] * 3, axis=-1))) for im in images]
    )
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
