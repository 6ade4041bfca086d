"""Planning and writing a seeded synthetic dataset: radiographs with planted findings and labels.

The images are 16-bit grayscale (like PadChest) so they exercise the 16-bit decoding path.
Findings are planted with a configurable prevalence each: cardiomegaly (a cardiothoracic ratio
above 0.5), pleural effusion (fluid with a meniscus at a lung base), nodule/mass (a round
opacity), consolidation (a patchy fuzzy opacity) and pneumothorax (a pleural line with no lung
markings beyond it). Cardiomegaly and effusion are made clearly visible down to 64 px; the others
are subtler. Global variation (patient size, positioning, exposure, contrast, noise) keeps any
single pixel from separating the classes.

Everything is seeded: the same arguments give the same bytes. Each patient and image draws from
its own seed, so patient ``k`` is the same whatever ``n`` is.

Examples
--------
>>> import numpy as np
>>> image = render_radiograph(np.random.default_rng(0), {"cardiomegaly": True}, size=64)
>>> image.dtype, image.shape
(dtype('uint16'), (64, 64))
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from cxrprobe.data.findings import in_vocabulary_order
from cxrprobe.data.manifest import BASE_COLUMNS, SPLITS
from cxrprobe.data.synthetic import anatomy as anat
from cxrprobe.data.synthetic.render import chest_density, expose
from cxrprobe.errors import ConfigError
from cxrprobe.progress import ProgressFactory, start_bar
from cxrprobe.provenance import atomic_write_bytes, atomic_write_text

SYNTHETIC_FINDINGS: tuple[str, ...] = (
    "cardiomegaly",
    "pleural_effusion",
    "nodule_mass",
    "consolidation",
    "pneumothorax",
)
NO_FINDING = "no_finding"
LABEL_COLUMNS: tuple[str, ...] = tuple(in_vocabulary_order((NO_FINDING, *SYNTHETIC_FINDINGS)))
"""The label columns in the manifest's canonical (vocabulary) order."""
MANIFEST_COLUMNS: tuple[str, ...] = (*BASE_COLUMNS, *LABEL_COLUMNS)
DEFAULT_PREVALENCE: dict[str, float] = {
    "cardiomegaly": 0.3,
    "pleural_effusion": 0.3,
    "nodule_mass": 0.15,
    "consolidation": 0.15,
    "pneumothorax": 0.1,
}
IMAGE_FORMATS: dict[str, str] = {"png": ".png", "tiff": ".tif"}
_IMAGES_PER_PATIENT = (1, 2, 3)
_IMAGES_PER_PATIENT_P = (0.5, 0.3, 0.2)
_AP_FRACTION = 0.3
# Film noise fills the low bits, so zlib saves little (level 1: 15 % smaller, twice as slow).
_PNG_COMPRESS_LEVEL = 0
_MIN_SIZE = 32
_PER_IMAGE = tuple(name for name in SYNTHETIC_FINDINGS if name != "cardiomegaly")
_STREAMS = ("anatomy", "pose", "exposure", *_PER_IMAGE)


@dataclass(frozen=True)
class SyntheticImage:
    """One planned image: identifiers, patient attributes, view and planted findings."""

    image_id: str
    patient_id: str
    study_id: str
    view: str
    sex: str
    age: int
    findings: dict[str, bool]
    seed: tuple[int, ...]
    anatomy: anat.PatientAnatomy

    @property
    def no_finding(self) -> bool:
        return not any(self.findings.values())


def render_radiograph(
    rng: np.random.Generator,
    findings: Mapping[str, bool],
    size: int = 256,
    view: str = "PA",
    *,
    anatomy: anat.PatientAnatomy | None = None,
) -> np.ndarray:
    """Draw one frontal chest radiograph with the given findings as a uint16 (size, size) array.

    ``findings`` maps names from :data:`SYNTHETIC_FINDINGS` to booleans (missing = absent).
    ``anatomy`` fixes the patient's body (from :func:`~cxrprobe.data.synthetic.anatomy.
    sample_anatomy`); when given, its cardiothoracic ratio decides cardiomegaly and must agree
    with ``findings``. Everything else (pose, exposure, noise, where findings sit) comes from
    ``rng``, one independent stream per part: the same ``rng`` state with and without a finding
    gives the same patient, pose, exposure and noise, so the two images differ by the finding
    alone.
    """
    _check_render_args(findings, size, view)
    streams = dict(zip(_STREAMS, _split(rng, len(_STREAMS)), strict=True))
    cardiomegaly = bool(findings.get("cardiomegaly", False))
    if anatomy is None:
        anatomy = anat.sample_anatomy(streams["anatomy"], cardiomegaly=cardiomegaly)
    elif (anatomy.ctr > 0.5) != cardiomegaly:
        raise ConfigError(
            f"anatomy has cardiothoracic ratio {anatomy.ctr:.2f} but findings say "
            f"cardiomegaly={cardiomegaly}; sample the anatomy with cardiomegaly={cardiomegaly}"
        )
    pose = anat.sample_pose(streams["pose"], view)
    planted = {name: streams[name] for name in _PER_IMAGE if findings.get(name)}
    density = chest_density(anat.make_frame(size, pose), anatomy, pose, planted)
    return expose(streams["exposure"], density)


def plan_dataset(
    n: int, seed: int = 0, prevalence: Mapping[str, float] | None = None
) -> list[SyntheticImage]:
    """The ``n`` images of a synthetic dataset: patients with 1-3 images each, views, findings.

    Sex, age and body (including cardiomegaly, a chronic finding) are per patient; the other
    findings and the view are drawn per image, each finding independently with its prevalence.
    """
    if n < 1:
        raise ConfigError(f"n={n}: the number of images must be at least 1")
    if seed < 0:
        raise ConfigError(f"seed={seed}: use a non-negative integer seed")
    rates = _check_prevalence(prevalence)
    images: list[SyntheticImage] = []
    patient = 0
    while len(images) < n:
        patient += 1
        rng = np.random.default_rng([seed, 0, patient])
        count = min(int(rng.choice(_IMAGES_PER_PATIENT, p=_IMAGES_PER_PATIENT_P)), n - len(images))
        body = anat.sample_anatomy(rng, cardiomegaly=rng.random() < rates["cardiomegaly"])
        for study in range(1, count + 1):
            findings = {name: bool(rng.random() < rates[name]) for name in _PER_IMAGE}
            findings["cardiomegaly"] = body.ctr > 0.5
            images.append(
                SyntheticImage(
                    image_id=f"syn_{len(images) + 1:06d}",
                    patient_id=f"synp_{patient:05d}",
                    study_id=f"synp_{patient:05d}_s{study}",
                    view="AP" if rng.random() < _AP_FRACTION else "PA",
                    sex=body.sex,
                    age=body.age,
                    findings=findings,
                    seed=(seed, 1, patient, study),
                    anatomy=body,
                )
            )
    return images


def assign_splits(
    patient_ids: Sequence[str], fractions: Sequence[float] | Mapping[str, float], seed: int = 0
) -> dict[str, str]:
    """Seeded patient-level split: each distinct patient goes to exactly one of train/val/test."""
    shares = _check_split(fractions)
    patients = np.array(sorted(set(patient_ids)))
    order = np.random.default_rng([seed, 2]).permutation(len(patients))
    cuts = np.rint(np.cumsum(shares)[:-1] * len(patients)).astype(int)
    return {
        str(patients[i]): name
        for name, part in zip(SPLITS, np.split(order, cuts), strict=True)
        for i in part
    }


def generate_dataset(
    out_dir: str | os.PathLike,
    n: int = 600,
    size: int = 256,
    seed: int = 0,
    prevalence: Mapping[str, float] | None = None,
    image_format: str = "png",
    split: Sequence[float] | Mapping[str, float] | None = None,
    progress: ProgressFactory | None = None,
) -> Path:
    """Write ``n`` synthetic radiographs and their labels; return the path of ``labels.csv``.

    Images go to ``out_dir/images/<image_id>.png`` (16-bit grayscale; ``image_format="tiff"``
    writes ``.tif``). ``labels.csv`` has the manifest's columns: ``image_id, path, patient_id,
    study_id, view, split, sex, age`` then ``no_finding`` and one 1.0/0.0 column per finding,
    with ``path`` relative to ``out_dir``. ``split`` is empty when ``split`` is None, otherwise
    fractions (train, val, test) assigned per patient. Every file is written atomically (a
    temporary file then a rename) and the CSV last, so an interrupted run leaves no half files
    and no labels pointing at missing images (a ``labels.csv`` from an earlier run is removed
    first). ``progress(total, desc)`` makes the bar (see :mod:`cxrprobe.progress`).
    """
    if image_format not in IMAGE_FORMATS:
        raise ConfigError(
            f"image_format={image_format!r} is not supported; use one of {sorted(IMAGE_FORMATS)}"
        )
    _check_render_args({}, size, "PA")
    out_dir = Path(out_dir)
    plan = plan_dataset(n, seed, prevalence)
    splits = assign_splits([im.patient_id for im in plan], split, seed) if split is not None else {}
    (out_dir / "labels.csv").unlink(missing_ok=True)
    rows = []
    bar = start_bar(progress, len(plan), "synthetic images")
    for image in plan:
        pixels = render_radiograph(
            np.random.default_rng(list(image.seed)),
            image.findings,
            size,
            image.view,
            anatomy=image.anatomy,
        )
        relative = f"images/{image.image_id}{IMAGE_FORMATS[image_format]}"
        atomic_write_bytes(out_dir / relative, encode_image(pixels, image_format))
        rows.append(_manifest_row(image, relative, splits.get(image.patient_id, "")))
        bar.update(1)
    bar.close()
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    writer.writerows(rows)
    return atomic_write_text(out_dir / "labels.csv", buffer.getvalue())


def encode_image(pixels: np.ndarray, image_format: str = "png") -> bytes:
    """Encode a uint16 (H, W) array as a 16-bit grayscale PNG or TIFF that reads back exactly."""
    buffer = io.BytesIO()
    options = {"compress_level": _PNG_COMPRESS_LEVEL} if image_format == "png" else {}
    Image.fromarray(pixels).save(buffer, format=image_format.upper(), **options)
    return buffer.getvalue()


def _manifest_row(image: SyntheticImage, relative: str, split: str) -> list[object]:
    values = {NO_FINDING: image.no_finding, **image.findings}
    labels = [values[name] for name in LABEL_COLUMNS]
    return [
        image.image_id,
        relative,
        image.patient_id,
        image.study_id,
        image.view,
        split,
        image.sex,
        image.age,
        *(f"{float(v):.1f}" for v in labels),
    ]


def _split(rng: np.random.Generator, count: int) -> list[np.random.Generator]:
    """Independent child generators drawn from ``rng`` (same state, same children)."""
    return [np.random.default_rng(seed) for seed in rng.integers(0, 2**63, size=count)]


def _check_render_args(findings: Mapping[str, bool], size: int, view: str) -> None:
    unknown = sorted(set(findings) - set(SYNTHETIC_FINDINGS))
    if unknown:
        raise ConfigError(
            f"unknown synthetic finding(s) {unknown}; use names from {list(SYNTHETIC_FINDINGS)}"
        )
    if view not in anat.VIEWS:
        raise ConfigError(f"view={view!r} is not supported; use one of {list(anat.VIEWS)}")
    if size < _MIN_SIZE:
        raise ConfigError(f"size={size} is too small; use at least {_MIN_SIZE} pixels")


def _check_prevalence(prevalence: Mapping[str, float] | None) -> dict[str, float]:
    rates = dict(DEFAULT_PREVALENCE)
    if prevalence is None:
        return rates
    unknown = sorted(set(prevalence) - set(SYNTHETIC_FINDINGS))
    if unknown:
        raise ConfigError(
            f"prevalence names unknown finding(s) {unknown}; use names from "
            f"{list(SYNTHETIC_FINDINGS)}"
        )
    for name, rate in prevalence.items():
        if not 0.0 <= float(rate) <= 1.0:
            raise ConfigError(f"prevalence[{name!r}]={rate} must be between 0 and 1")
        rates[name] = float(rate)
    return rates


def _check_split(fractions: Sequence[float] | Mapping[str, float]) -> np.ndarray:
    if isinstance(fractions, Mapping):
        unknown = sorted(set(fractions) - set(SPLITS))
        if unknown:
            raise ConfigError(f"split names unknown part(s) {unknown}; use {list(SPLITS)}")
        fractions = [float(fractions.get(name, 0.0)) for name in SPLITS]
    shares = np.asarray(fractions, dtype=float)
    if shares.shape != (3,) or (shares < 0).any() or not np.isclose(shares.sum(), 1.0):
        raise ConfigError(
            f"split={list(fractions)} must be three non-negative fractions (train, val, test) "
            "that sum to 1, e.g. (0.7, 0.15, 0.15)"
        )
    return shares
