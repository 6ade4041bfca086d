"""The synthetic radiograph generator: determinism, the labels file, patients, prevalences, and
that every planted finding is really in the pixels (checked with measures of our own)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage
from scipy.stats import rankdata
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cxrprobe.data.adapters import get_adapter
from cxrprobe.data.findings import FINDING_IDS
from cxrprobe.data.manifest import read_manifest
from cxrprobe.data.synthetic import (
    SYNTHETIC_FINDINGS,
    assign_splits,
    generate_dataset,
    plan_dataset,
    render_radiograph,
)
from cxrprobe.data.synthetic.anatomy import sample_anatomy
from cxrprobe.errors import ConfigError

# Written out here rather than imported, so a change to the layout fails this test: the
# manifest's base columns, then the findings in vocabulary order (cxrprobe.data.findings).
CANONICAL_COLUMNS = [
    "image_id",
    "path",
    "patient_id",
    "study_id",
    "view",
    "split",
    "sex",
    "age",
    "no_finding",
    "cardiomegaly",
    "nodule_mass",
    "consolidation",
    "pleural_effusion",
    "pneumothorax",
]
BALANCED = dict.fromkeys(SYNTHETIC_FINDINGS, 0.5)


def _render(image, size):
    """Re-render a planned image exactly as generate_dataset does."""
    rng = np.random.default_rng(list(image.seed))
    return render_radiograph(rng, image.findings, size, image.view, anatomy=image.anatomy)


def _unit(image: np.ndarray) -> np.ndarray:
    """Robust per-image scaling to [0, 1] (1st-99th percentile), as a preprocessor would."""
    low, high = np.percentile(image, [1, 99])
    return np.clip((image.astype(np.float64) - low) / (high - low), 0.0, 1.0)


@pytest.fixture(scope="module")
def balanced_images():
    """360 images at 64 px with every finding at prevalence 0.5, and their plan."""
    plan = plan_dataset(360, seed=11, prevalence=BALANCED)
    return plan, np.stack([_unit(_render(image, 64)) for image in plan])


def test_render_is_uint16_deterministic_and_seed_dependent():
    first = render_radiograph(np.random.default_rng(3), {"cardiomegaly": True}, size=48)
    again = render_radiograph(np.random.default_rng(3), {"cardiomegaly": True}, size=48)
    other = render_radiograph(np.random.default_rng(4), {"cardiomegaly": True}, size=48)
    assert first.dtype == np.uint16 and first.shape == (48, 48)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    # A real 16-bit range, not 8-bit values stored in 16 bits.
    assert first.max() > 20000 and len(np.unique(first)) > 1000


def test_same_seed_gives_same_bytes_and_other_seed_differs(tmp_path):
    paths = [
        generate_dataset(tmp_path / name, n=5, size=40, seed=seed)
        for name, seed in (("a", 1), ("b", 1), ("c", 2))
    ]
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert len(files) == 5
    for relative in files:
        a, b = ((tmp_path / name / relative).read_bytes() for name in ("a", "b"))
        assert a == b
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert any(
        (tmp_path / "a" / f).read_bytes() != (tmp_path / "c" / f).read_bytes() for f in files
    )


@pytest.mark.parametrize("image_format, suffix", [("png", ".png"), ("tiff", ".tif")])
def test_written_file_reads_back_exactly(tmp_path, image_format, suffix):
    generate_dataset(tmp_path, n=3, size=40, seed=5, image_format=image_format)
    for image in plan_dataset(3, seed=5):
        with Image.open(tmp_path / "images" / f"{image.image_id}{suffix}") as handle:
            assert handle.mode == "I;16"
            read = np.array(handle)
        assert read.dtype == np.uint16
        assert np.array_equal(read, _render(image, 40))


def test_labels_csv_has_canonical_layout_and_consistent_values(tmp_path):
    csv_path = generate_dataset(tmp_path, n=24, size=32, seed=2)
    assert csv_path == tmp_path / "labels.csv"
    table = pd.read_csv(csv_path, keep_default_na=False)
    assert list(table.columns) == CANONICAL_COLUMNS
    assert len(table) == 24 and table["image_id"].is_unique
    for path, image_id in zip(table["path"], table["image_id"], strict=True):
        assert path == f"images/{image_id}.png"
        assert (tmp_path / path).is_file()
    labels = table[CANONICAL_COLUMNS[8:]].astype(float)
    assert set(np.unique(labels.to_numpy())) <= {0.0, 1.0}
    any_finding = labels[CANONICAL_COLUMNS[9:]].max(axis=1)
    assert (labels["no_finding"] == 1.0 - any_finding).all()
    assert set(table["view"]) <= {"PA", "AP"} and set(table["sex"]) <= {"M", "F"}
    assert (table["split"] == "").all()
    assert table["age"].between(18, 90).all()
    # The labels are the planted findings, not something else.
    plan = plan_dataset(24, seed=2)
    for name in SYNTHETIC_FINDINGS:
        assert table[name].tolist() == [float(image.findings[name]) for image in plan]


def test_labels_csv_is_a_valid_manifest_and_generic_dataset(tmp_path):
    """The manifest reader accepts the CSV unchanged, and the generic adapter builds from it."""
    csv_path = generate_dataset(tmp_path, n=12, size=32, seed=6, split=(0.5, 0.25, 0.25))
    raw = pd.read_csv(csv_path, keep_default_na=False)
    manifest = read_manifest(csv_path)
    assert list(manifest.columns) == CANONICAL_COLUMNS
    assert manifest["split"].tolist() == raw["split"].tolist()
    built = get_adapter("generic").build(tmp_path)
    assert built["image_id"].tolist() == raw["image_id"].tolist()
    for name in CANONICAL_COLUMNS[8:]:
        assert built[name].tolist() == raw[name].tolist(), name
    assert all(name in FINDING_IDS for name in SYNTHETIC_FINDINGS)


def test_patient_attributes_are_consistent(tmp_path):
    table = pd.read_csv(generate_dataset(tmp_path, n=40, size=32, seed=8))
    per_patient = table.groupby("patient_id")
    assert (per_patient["sex"].nunique() == 1).all()
    assert (per_patient["age"].nunique() == 1).all()
    assert (per_patient["cardiomegaly"].nunique() == 1).all()  # a chronic, per-patient finding
    assert per_patient.size().between(1, 3).all() and per_patient.size().max() > 1
    assert table["study_id"].is_unique


def test_patient_level_split(tmp_path):
    table = pd.read_csv(generate_dataset(tmp_path, n=60, size=32, seed=4, split=(0.6, 0.2, 0.2)))
    assert set(table["split"]) == {"train", "val", "test"}
    assert (table.groupby("patient_id")["split"].nunique() == 1).all()
    share = table.drop_duplicates("patient_id")["split"].value_counts(normalize=True)
    assert share["train"] == pytest.approx(0.6, abs=0.1)


def test_assign_splits_is_seeded_and_accepts_a_mapping():
    patients = [f"p{i}" for i in range(50)]
    first = assign_splits(patients, {"train": 0.5, "val": 0.5, "test": 0.0}, seed=1)
    assert first == assign_splits(patients, (0.5, 0.5, 0.0), seed=1)
    assert first != assign_splits(patients, (0.5, 0.5, 0.0), seed=2)
    assert sorted(first) == sorted(patients)
    assert list(first.values()).count("train") == 25


def test_prevalences_are_honoured():
    wanted = {
        "cardiomegaly": 0.4,
        "pleural_effusion": 0.25,
        "nodule_mass": 0.1,
        "consolidation": 0.0,
        "pneumothorax": 1.0,
    }
    plan = plan_dataset(3000, seed=9, prevalence=wanted)
    for name, rate in wanted.items():
        observed = np.mean([image.findings[name] for image in plan])
        assert observed == pytest.approx(rate, abs=0.035), name
    assert not any(image.no_finding for image in plan)


def test_plan_is_a_prefix_whatever_n():
    short, long = plan_dataset(10, seed=3), plan_dataset(40, seed=3)
    complete = [im for im in short if im.patient_id != short[-1].patient_id]
    assert complete == long[: len(complete)]


def test_each_planted_finding_changes_only_its_region():
    """The same stream with and without a finding: the difference is the finding alone."""
    size = 96
    checked = 0
    for seed in range(4):
        anatomy = sample_anatomy(np.random.default_rng(seed), cardiomegaly=False)
        base = render_radiograph(np.random.default_rng(seed), {}, size, anatomy=anatomy)
        for name in ("pleural_effusion", "nodule_mass", "consolidation", "pneumothorax"):
            image = render_radiograph(
                np.random.default_rng(seed), {name: True}, size, anatomy=anatomy
            )
            diff = image.astype(float) - base.astype(float)
            changed = np.abs(diff) > 0.02 * base.max()
            area = changed.mean()
            rows = np.nonzero(changed.any(axis=1))[0]
            blobs = ndimage.label(changed)[1]
            if name == "nodule_mass":
                assert 0 < area < 0.02 and diff.max() > 0 and blobs <= 2
            elif name == "consolidation":
                assert 0.005 < area < 0.15 and diff.sum() > 0
            elif name == "pleural_effusion":  # brighter, down to the lung bases
                assert 0.02 < area < 0.3 and diff.min() >= 0
                assert rows.mean() > 0.45 * size and rows.max() > 0.6 * size
            else:  # pneumothorax: a darker apical/lateral rim and a bright pleural line
                assert diff.min() < 0 < diff.max() and 0.005 < area < 0.2
                assert rows.min() < 0.3 * size
            checked += 1
    assert checked == 16


def test_cardiomegaly_and_effusion_visible_to_simple_measures(balanced_images):
    """Hand-made measures with no knowledge of the generator separate the two key findings."""
    plan, images = balanced_images
    n = images.shape[1]
    rows, centre, sides = slice(n // 2, int(0.68 * n)), slice(int(0.35 * n), int(0.72 * n)), []
    heart_box = images[:, rows, centre].mean(axis=(1, 2))
    for cols in (slice(int(0.15 * n), int(0.35 * n)), slice(int(0.65 * n), int(0.85 * n))):
        sides.append(images[:, int(0.5 * n) : int(0.66 * n), cols].mean(axis=(1, 2)))
    bases = np.mean(sides, axis=0)
    cardiomegaly = np.array([image.findings["cardiomegaly"] for image in plan])
    effusion = np.array([image.findings["pleural_effusion"] for image in plan])
    assert roc_auc_score(cardiomegaly, heart_box) > 0.75
    assert roc_auc_score(effusion, bases) > 0.8


def test_linear_model_on_small_pixels_detects_key_findings(balanced_images):
    """A logistic regression on 16x16 block means, held-out patients: AUROC > 0.8."""
    plan, images = balanced_images
    features = images.reshape(len(images), 16, 4, 16, 4).mean(axis=(2, 4)).reshape(len(images), -1)
    patients = np.array([image.patient_id for image in plan])
    held_out = np.isin(patients, np.unique(patients)[::3])
    for name in ("cardiomegaly", "pleural_effusion"):
        y = np.array([image.findings[name] for image in plan])
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
        model.fit(features[~held_out], y[~held_out])
        auroc = roc_auc_score(y[held_out], model.predict_proba(features[held_out])[:, 1])
        assert auroc > 0.8, (name, auroc)


def test_no_single_pixel_is_a_perfect_label(balanced_images):
    """Global variation (pose, size, exposure) keeps any one pixel from separating a finding."""
    plan, images = balanced_images
    flat = images.reshape(len(images), -1)
    ranks = rankdata(flat, axis=0)
    for name in ("cardiomegaly", "pleural_effusion"):
        y = np.array([image.findings[name] for image in plan])
        positives, negatives = y.sum(), (~y).sum()
        # Mann-Whitney AUROC of every pixel at once, checked against sklearn on one pixel.
        auroc = (ranks[y].sum(axis=0) - positives * (positives + 1) / 2) / (positives * negatives)
        assert auroc[2000] == pytest.approx(roc_auc_score(y, flat[:, 2000]))
        assert np.maximum(auroc, 1 - auroc).max() < 0.99, name


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: render_radiograph(np.random.default_rng(0), {"edema": True}), "edema"),
        (lambda: render_radiograph(np.random.default_rng(0), {}, view="LL"), "view"),
        (lambda: render_radiograph(np.random.default_rng(0), {}, size=8), "size"),
        (lambda: plan_dataset(0), "n=0"),
        (lambda: plan_dataset(5, prevalence={"nodule": 0.1}), "nodule"),
        (lambda: plan_dataset(5, prevalence={"pneumothorax": 1.5}), "pneumothorax"),
        (lambda: assign_splits(["a"], (0.5, 0.2, 0.2)), "sum to 1"),
        (lambda: assign_splits(["a"], {"train": 0.5, "dev": 0.5}), "dev"),
    ],
)
def test_bad_arguments_raise_config_errors(call, match):
    with pytest.raises(ConfigError, match=match):
        call()


def test_bad_image_format_and_contradictory_anatomy(tmp_path):
    with pytest.raises(ConfigError, match="jpeg"):
        generate_dataset(tmp_path, n=1, size=32, image_format="jpeg")
    normal = sample_anatomy(np.random.default_rng(0), cardiomegaly=False)
    with pytest.raises(ConfigError, match="cardiothoracic"):
        render_radiograph(np.random.default_rng(0), {"cardiomegaly": True}, anatomy=normal)


def test_progress_bar_counts_every_image(tmp_path, bars):
    generate_dataset(tmp_path, n=4, size=32, progress=bars)
    assert [(b.total, b.done, b.closed) for b in bars] == [(4, 4, True)]
