"""Decoders against the written pixels and hand-computed DICOM transforms; the real sample files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrprobe.data.decode import read_grayscale, read_raw, sniff_format
from cxrprobe.errors import DecodeError, InputFileError, MissingDependencyError
from tests.image_fixtures import (
    jpeg_bytes,
    radiograph_like,
    write_corrupt,
    write_dicom,
    write_jpeg,
    write_png,
)

STORED_12 = radiograph_like(24, 32, seed=3, dtype="uint16") >> 4  # 12-bit values 0..4095


# ------------------------------------------------------------------------------- PNG and JPEG
def test_png_8bit_exact(tmp_path):
    pixels = radiograph_like(20, 30)
    gray = read_grayscale(write_png(tmp_path / "a.png", pixels))
    assert gray.dtype == np.float32 and gray.shape == pixels.shape
    np.testing.assert_array_equal(np.rint(gray * 255), pixels)


def test_png_16bit_exact(tmp_path):
    pixels = radiograph_like(20, 30, dtype="uint16")
    assert np.any(pixels & 0xFF)  # low byte used: an 8-bit read would lose it
    gray = read_grayscale(write_png(tmp_path / "a.png", pixels))
    np.testing.assert_array_equal(
        np.rint(gray.astype(np.float64) * 65535).astype(np.uint16), pixels
    )


def test_rgb_png_equal_channels_is_lossless(tmp_path):
    pixels = radiograph_like(16, 18)
    gray = read_grayscale(write_png(tmp_path / "a.png", np.stack([pixels] * 3, axis=-1)))
    np.testing.assert_array_equal(np.rint(gray * 255), pixels)


def test_rgb_png_colour_uses_bt601_luminance(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(8, 9, 3), dtype=np.uint8)
    gray = read_grayscale(write_png(tmp_path / "a.png", rgb))
    r, g, b = (rgb[..., c].astype(np.float64) for c in range(3))
    np.testing.assert_allclose(gray, (0.299 * r + 0.587 * g + 0.114 * b) / 255, atol=1e-6)


def test_jpeg_within_tolerance(tmp_path):
    pixels = radiograph_like(64, 48)
    gray = read_grayscale(write_jpeg(tmp_path / "a.jpg", pixels, quality=95))
    error = np.abs(gray * 255 - pixels)
    assert error.mean() < 2.0 and error.max() <= 12


def test_format_is_told_by_content_not_suffix(tmp_path):
    pixels = radiograph_like(10, 12)
    png_named_dicom = write_png(tmp_path / "x.dicom", pixels)
    assert sniff_format(png_named_dicom) == "png"
    np.testing.assert_array_equal(np.rint(read_grayscale(png_named_dicom) * 255), pixels)
    jpeg_named_png = write_jpeg(tmp_path / "y.png", pixels)
    assert sniff_format(jpeg_named_png) == "jpeg"


# -------------------------------------------------------------------------------------- DICOM
def test_dicom_monochrome2_scaled_by_bits_stored(tmp_path):
    gray = read_grayscale(write_dicom(tmp_path / "a.dcm", STORED_12, bits_stored=12))
    np.testing.assert_allclose(gray, STORED_12 / 4095, atol=1e-6)


def test_dicom_monochrome1_is_inverted(tmp_path):
    mono2 = read_grayscale(write_dicom(tmp_path / "m2.dcm", STORED_12, bits_stored=12))
    mono1 = read_grayscale(
        write_dicom(tmp_path / "m1.dcm", STORED_12, bits_stored=12, photometric="MONOCHROME1")
    )
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)


def _hand_window(values: np.ndarray, centre: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 LINEAR window, output scaled to [0, 1]."""
    c, w = centre - 0.5, width - 1
    out = ((values - c) / w + 0.5).astype(np.float64)
    out[values <= c - w / 2] = 0.0
    out[values > c + w / 2] = 1.0
    return out


def test_dicom_window_centre_width(tmp_path):
    gray = read_grayscale(
        write_dicom(tmp_path / "w.dcm", STORED_12, bits_stored=12, window=(2000, 1200))
    )
    np.testing.assert_allclose(
        gray, _hand_window(STORED_12.astype(np.float64), 2000, 1200), atol=1e-6
    )
    assert 0 < (gray == 0).mean() < 1 and 0 < (gray == 1).mean() < 1  # the window clips both ends


def test_dicom_rescale_then_window_in_rescaled_units(tmp_path):
    slope, intercept = 2.0, -100.0
    path = write_dicom(
        tmp_path / "r.dcm",
        STORED_12,
        bits_stored=12,
        rescale=(slope, intercept),
        window=(3900, 2000),
    )
    rescaled = STORED_12.astype(np.float64) * slope + intercept
    np.testing.assert_allclose(read_grayscale(path), _hand_window(rescaled, 3900, 2000), atol=1e-6)


def test_dicom_rescale_without_window_keeps_range(tmp_path):
    path = write_dicom(tmp_path / "r.dcm", STORED_12, bits_stored=12, rescale=(-1.0, 4095.0))
    # a negative slope maps the stored range onto itself reversed: bright becomes dark
    np.testing.assert_allclose(read_grayscale(path), 1.0 - STORED_12 / 4095, atol=1e-6)


def test_dicom_voi_lut_sequence_8bit_lut_on_12bit_values(tmp_path):
    lut = np.rint(255 * np.sqrt(np.arange(4096) / 4095)).astype(int)
    path = write_dicom(tmp_path / "v.dcm", STORED_12, bits_stored=12, voi_lut=(0, 8, lut))
    np.testing.assert_allclose(read_grayscale(path), lut[STORED_12] / 255, atol=1e-6)


def test_dicom_voi_lut_first_mapped_value_and_clamping(tmp_path):
    lut = np.linspace(0, 65535, 1000).astype(int)
    path = write_dicom(tmp_path / "v.dcm", STORED_12, bits_stored=12, voi_lut=(1000, 16, lut))
    expected = lut[np.clip(STORED_12.astype(int) - 1000, 0, 999)] / 65535
    np.testing.assert_allclose(read_grayscale(path), expected, atol=1e-6)


def test_dicom_jpeg_baseline_decoded_by_pillow(tmp_path):
    pixels = radiograph_like(32, 40)
    gray = read_grayscale(write_dicom(tmp_path / "j.dcm", pixels, jpeg_baseline=True))
    pillow = np.asarray(Image.open(io.BytesIO(jpeg_bytes(pixels))))
    np.testing.assert_array_equal(np.rint(gray * 255), pillow)  # the pinned decoder, bit for bit


def test_dicom_without_preamble_named_dicom(tmp_path):
    pixels = radiograph_like(10, 12)
    path = write_dicom(tmp_path / "raw.dicom", pixels, preamble=False)
    assert path.read_bytes()[128:132] != b"DICM"
    np.testing.assert_array_equal(np.rint(read_grayscale(path) * 255), pixels)


def test_dicom_lossless_without_decoder_names_the_extra(tmp_path, monkeypatch):
    import pydicom
    import pydicom.pixels
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLosslessSV1

    path = write_dicom(tmp_path / "l.dcm", radiograph_like(8, 8))
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    ds.PixelData = encapsulate([b"\xff\xd8 lossless bitstream"])
    ds["PixelData"].VR = "OB"
    ds.save_as(path)

    class Unavailable:
        is_available = False
        missing_dependencies = ["pylibjpeg - requires pylibjpeg>=2.0"]
        available_plugins = ()

    monkeypatch.setattr(pydicom.pixels, "get_decoder", lambda uid: Unavailable())
    with pytest.raises(MissingDependencyError, match=r"l\.dcm.*cxrprobe\[dicom\]"):
        read_grayscale(path)


# ------------------------------------------------------------------- raw (the study's reading)
def test_raw_png_is_8_bit_with_the_high_byte_of_16_bit(tmp_path):
    eight = radiograph_like(20, 30)
    raw = read_raw(write_png(tmp_path / "a.png", eight))
    assert raw.pixels.dtype == np.uint8 and not raw.monochrome1
    np.testing.assert_array_equal(raw.pixels, eight)
    sixteen = radiograph_like(20, 30, dtype="uint16")
    raw = read_raw(write_png(tmp_path / "b.png", sixteen))
    np.testing.assert_array_equal(raw.pixels, sixteen // 256)  # libpng's strip_16, as cv2.imread


def test_raw_colour_is_opencv_fixed_point_gray(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    raw = read_raw(write_png(tmp_path / "c.png", rgb)).pixels
    try:
        import cv2
    except ImportError:  # BT.601 rounded to nearest: fixed-point weights are within 1e-4 of it
        reference = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        assert np.abs(raw - reference).max() <= 0.52
    else:
        np.testing.assert_array_equal(raw, cv2.cvtColor(rgb[..., ::-1].copy(), cv2.COLOR_BGR2GRAY))
    equal = np.stack([radiograph_like(16, 16)] * 3, axis=-1)
    np.testing.assert_array_equal(
        read_raw(write_png(tmp_path / "e.png", equal)).pixels, equal[..., 0]
    )


def test_raw_dicom_is_stored_values_without_luts(tmp_path):
    path = write_dicom(
        tmp_path / "w.dcm",
        STORED_12,
        photometric="MONOCHROME1",
        bits_stored=12,
        rescale=(2.0, -100.0),
        window=(2000.0, 3000.0),
    )
    raw = read_raw(path)
    assert raw.monochrome1  # left to the caller, which inverts after its 8-bit step
    np.testing.assert_array_equal(raw.pixels, STORED_12)
    signed = STORED_12.astype(np.int16) - 2048
    raw = read_raw(write_dicom(tmp_path / "s.dcm", signed, bits_stored=12, voi_lut=(0, 8, [1, 2])))
    assert raw.pixels.dtype == np.int16 and not raw.monochrome1
    np.testing.assert_array_equal(raw.pixels, signed)


def test_raw_refuses_colour_dicom(tmp_path):
    import pydicom

    path = write_dicom(tmp_path / "rgb.dcm", radiograph_like(8, 8))
    ds = pydicom.dcmread(path)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.PixelData = np.repeat(radiograph_like(8, 8)[..., None], 3, axis=-1).tobytes()
    ds.save_as(path)
    assert read_grayscale(path).shape == (8, 8)
    with pytest.raises(DecodeError, match=r"rgb\.dcm: colour DICOM.*--preset default"):
        read_raw(path)


# ----------------------------------------------------------------------------- bad files
def test_missing_file_names_it(tmp_path):
    with pytest.raises(InputFileError, match=r"nope\.png: image file not found"):
        read_grayscale(tmp_path / "nope.png")


@pytest.mark.parametrize(
    "make",
    [
        lambda p: write_corrupt(p / "bad.png"),
        lambda p: _truncated_jpeg(p / "bad.jpg"),
        lambda p: _write(p / "bad.png", b""),
        lambda p: _write(p / "bad.png", b"just some text, not an image"),
        lambda p: _write(p / "bad.dcm", b"\0" * 128 + b"DICM" + b"\x02\x00garbage"),
    ],
    ids=["corrupt-png", "truncated-jpeg", "empty", "text", "corrupt-dicom"],
)
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_corrupt_files_raise_decode_error_naming_them(tmp_path, make):
    path = make(tmp_path)
    with pytest.raises(DecodeError, match=rf"{path.name}.*(re-copy|drop its row|convert)"):
        read_grayscale(path)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _truncated_jpeg(path: Path) -> Path:
    data = jpeg_bytes(radiograph_like(64, 64, seed=1))
    return _write(path, data[: len(data) // 2])


# ------------------------------------------------------------------------------ real samples
def _real_images(real_data: Path) -> list[Path]:
    folder = real_data / "images"
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".dcm"))


def test_real_files_decode_to_sensible_grayscale(real_data):
    paths = _real_images(real_data)
    assert len(paths) >= 18
    for path in paths:
        gray = read_grayscale(path)
        assert gray.ndim == 2 and min(gray.shape) >= 256, path
        assert np.isfinite(gray).all() and gray.min() >= 0 and gray.max() <= 1, path
        assert gray.std() > 0.1, path  # a real picture, not a constant or near-blank frame
        assert _lungs_vs_mediastinum(gray) < 0 or path.name == "Fake_MONOHR1.dcm", path


def test_real_monochrome1_is_inverse_of_its_monochrome2_twin(real_data):
    folder = real_data / "images" / "dicom"
    mono1 = read_grayscale(folder / "Fake_MONOHR1.dcm")
    mono2 = read_grayscale(next(p for p in folder.glob("*.dcm") if p.name != "Fake_MONOHR1.dcm"))
    # the fake carries the twin's stored pixels under MONOCHROME1, so decoding must invert them
    assert np.corrcoef(mono1.ravel(), mono2.ravel())[0, 1] < -0.99
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)
    assert _lungs_vs_mediastinum(mono2) < -0.2  # the genuine MONOCHROME2 one: dark lungs


def test_real_raw_reading_is_the_displayed_reading_of_8_bit_files(real_data):
    """The shared files are 8-bit without LUTs: both readings agree, MONOCHROME1 aside."""
    for path in _real_images(real_data):
        if path.parent.name == "actualmed":
            continue  # large; read by tests/test_preprocess_study.py
        raw = read_raw(path)
        displayed = np.rint(read_grayscale(path) * 255).astype(np.uint8)
        expected = 255 - displayed if raw.monochrome1 else displayed
        assert raw.monochrome1 == (path.name == "Fake_MONOHR1.dcm"), path
        np.testing.assert_array_equal(raw.pixels, expected, err_msg=path.name)


def _lungs_vs_mediastinum(gray: np.ndarray) -> float:
    """Mean lung-field intensity minus mean mediastinum intensity on a frontal film."""
    h, w = gray.shape
    rows = slice(int(0.3 * h), int(0.6 * h))
    lungs = np.r_[
        gray[rows, int(0.2 * w) : int(0.35 * w)].ravel(),
        gray[rows, int(0.65 * w) : int(0.8 * w)].ravel(),
    ]
    return float(lungs.mean() - gray[rows, int(0.45 * w) : int(0.55 * w)].mean())
