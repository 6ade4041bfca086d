"""Synthetic stand-ins for the study's six datasets, each in its real release's layout.

One pool of synthetic radiographs (:mod:`cxrprobe.data.synthetic`) is written under every
dataset's own table names, columns, label spellings and image paths (VinDr-CXR's wide reader
tables and ``train/ID.dicom``, ChestX-ray14's ``Data_Entry_2017_v2020.csv`` and official lists,
CheXpert's ``train.csv``, MIMIC-CXR-JPG's gzipped chexpert/metadata tables and ``files/pXX/...``,
PadChest's labels CSV and ``ImageDir/ImageID``, a UKA-like graded table with its column map).
The images are PNG bytes whatever the suffix: cxrprobe tells formats by their first bytes. A
label the synthetic images plant (cardiomegaly, effusion, nodule/mass, consolidation,
pneumothorax, no finding) keeps its planted value; every other label of the study's sets is a
seeded coin flip, so every finding has both classes.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path

import numpy as np

from cxrprobe.data.synthetic import generate_dataset

# The synthetic findings under each dataset's own names (None: no such label there).
_PLANTED = {
    "cardiomegaly": "cardiomegaly",
    "pleural_effusion": "pleural_effusion",
    "nodule_mass": "nodule_mass",
    "consolidation": "consolidation",
    "pneumothorax": "pneumothorax",
    "no_finding": "no_finding",
}
VINDR = {
    "Cardiomegaly": "cardiomegaly",
    "Pleural effusion": "pleural_effusion",
    "Pneumonia": None,
    "Atelectasis": None,
    "No finding": "no_finding",
    "Consolidation": "consolidation",
    "Pneumothorax": "pneumothorax",
    "Pleural thickening": None,
    "Lung Opacity": None,
    "Pulmonary fibrosis": None,
    "Nodule/Mass": "nodule_mass",
}
NIH = {
    "Cardiomegaly": "cardiomegaly",
    "Effusion": "pleural_effusion",
    "Pneumonia": None,
    "Atelectasis": None,
    "Consolidation": "consolidation",
    "Pneumothorax": "pneumothorax",
    "Fibrosis": None,
    "Emphysema": None,
    "Hernia": None,
    "Pleural_Thickening": None,
    "Edema": None,
    "Nodule": "nodule_mass",
    "Mass": None,
}
CHEXPERT = {
    "No Finding": "no_finding",
    "Enlarged Cardiomediastinum": None,
    "Cardiomegaly": "cardiomegaly",
    "Lung Opacity": None,
    "Lung Lesion": "nodule_mass",
    "Edema": None,
    "Consolidation": "consolidation",
    "Pneumonia": None,
    "Atelectasis": None,
    "Pneumothorax": "pneumothorax",
    "Pleural Effusion": "pleural_effusion",
    "Pleural Other": None,
    "Fracture": None,
    "Support Devices": None,
}
PADCHEST = {
    "cardiomegaly": "cardiomegaly",
    "pleural effusion": "pleural_effusion",
    "pneumonia": None,
    "atelectasis": None,
    "consolidation": "consolidation",
    "pneumothorax": "pneumothorax",
    "emphysema": None,
    "hiatal hernia": None,
    "scoliosis": None,
    "hilar congestion": None,
    "aortic elongation": None,
    "kyphosis": None,
    "copd signs": None,
    "pleural thickening": None,
    "nodule": "nodule_mass",
    "pulmonary mass": None,
    "infiltrates": None,
}
UKA = {
    "Cardiomegaly": "cardiomegaly",
    "Congestion": None,
    "Effusion left": "pleural_effusion",
    "Effusion right": None,
    "Infiltrates left": None,
    "Infiltrates right": None,
    "Atelectasis left": None,
    "Atelectasis right": None,
}
UKA_GRADES = ("none", "questionable", "mild", "moderate", "severe")
UKA_COLUMNS = {
    "csv": "uka.csv",
    "columns": {"image_id": "Image", "patient_id": "Patient", "split": "Set", "view": "View"},
    "splits": {"training": "train", "holdout": "test"},
    "values": {grade: i for i, grade in enumerate(UKA_GRADES)},
    "findings": {
        **{
            column: {"finding": finding, "threshold": 2}
            for column, finding in {
                "Cardiomegaly": "cardiomegaly",
                "Congestion": "congestion",
                "Effusion left": "pleural_effusion_left",
                "Effusion right": "pleural_effusion_right",
                "Infiltrates left": "pneumonia_left",
                "Infiltrates right": "pneumonia_right",
                "Atelectasis left": "atelectasis_left",
                "Atelectasis right": "atelectasis_right",
            }.items()
        },
        "Healthy": {"finding": "no_finding", "values": {"1": 1, "0": 0}},
    },
}


class Pool:
    """The synthetic images and labels every stand-in is written from."""

    def __init__(self, folder: Path, n: int, seed: int) -> None:
        generate_dataset(folder, n=n, size=40, seed=seed)
        with open(folder / "labels.csv", newline="") as fh:
            self.rows = list(csv.DictReader(fh))
        self.folder = folder
        self.rng = np.random.default_rng(seed)
        patients = sorted({r["patient_id"] for r in self.rows})
        test = set(patients[: max(2, len(patients) // 4)])
        self.test = [r["patient_id"] in test for r in self.rows]  # for official splits

    def image(self, row: dict, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((self.folder / row["path"]).read_bytes())

    def label(self, row: dict, planted: str | None) -> int:
        """The planted value of ``planted`` (a synthetic finding), else a coin flip."""
        if planted is not None:
            return int(float(row[_PLANTED[planted]]))
        return int(self.rng.random() < 0.5)


def _csv(path: Path, header: list[str], rows: list[list], gz: bool = False) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(buffer.getvalue().encode()))
    else:
        path.write_text(buffer.getvalue())


def write_vindr(pool: Pool, root: Path) -> None:
    """Wide per-reader training table (three readers agreeing) and the consensus test table."""
    train, test = [], []
    for i, (row, is_test) in enumerate(zip(pool.rows, pool.test, strict=True)):
        image_id = f"{i:032x}"
        labels = [pool.label(row, planted) for planted in VINDR.values()]
        if is_test:
            test.append([image_id, *labels])
        else:
            train += [[image_id, rad, *labels] for rad in ("R8", "R9", "R10")]
        pool.image(row, root / ("test" if is_test else "train") / f"{image_id}.dicom")
    _csv(root / "annotations" / "image_labels_train.csv", ["image_id", "rad_ID", *VINDR], train)
    _csv(root / "annotations" / "image_labels_test.csv", ["image_id", *VINDR], test)


def write_chestxray14(pool: Pool, root: Path) -> None:
    """Data_Entry_2017_v2020.csv with '|'-joined labels, the official lists, images/."""
    header = [
        "Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age",
        "Patient Gender", "View Position", "OriginalImage[Width", "Height]",
        "OriginalImagePixelSpacing[x", "y]",
    ]  # fmt: skip
    rows, lists = [], {"train_val_list.txt": [], "test_list.txt": []}
    for i, (row, is_test) in enumerate(zip(pool.rows, pool.test, strict=True)):
        patient = int(row["patient_id"].split("_")[-1])
        name = f"{patient:08d}_{i:03d}.png"
        found = [label for label, p in NIH.items() if pool.label(row, p)]
        rows.append(
            [name, "|".join(found) or "No Finding", i, patient, row["age"], row["sex"],
             row["view"], 40, 40, 0.143, 0.143]
        )  # fmt: skip
        lists["test_list.txt" if is_test else "train_val_list.txt"].append(name)
        pool.image(row, root / "images" / name)
    _csv(root / "Data_Entry_2017_v2020.csv", header, rows)
    for name, names in lists.items():
        (root / name).write_text("\n".join(names) + "\n")


def write_chexpert(pool: Pool, root: Path) -> None:
    """train.csv with CheXpert-v1.0-small/ paths, 1/0/-1/blank labels (frontal views only)."""
    header = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT]
    rows = []
    for i, row in enumerate(pool.rows):
        path = (
            f"train/patient{int(row['patient_id'].split('_')[-1]):05d}/study{i}/view1_frontal.jpg"
        )
        labels = [_chexpert_value(pool, pool.label(row, planted)) for planted in CHEXPERT.values()]
        rows.append(
            [f"CheXpert-v1.0-small/{path}", row["sex"], row["age"], "Frontal", row["view"], *labels]
        )
        pool.image(row, root / path)
    _csv(root / "train.csv", header, rows)


def _chexpert_value(pool: Pool, value: int) -> str:
    """A positive stays 1.0; a negative is written 0.0, -1.0 (uncertain) or left blank, as in
    CheXpert and MIMIC, all of which the study (and --uncertain zero --blank negative) reads as 0."""
    return "1.0" if value else str(pool.rng.choice(["0.0", "-1.0", ""]))


def write_mimic(pool: Pool, root: Path) -> None:
    """The gzipped -chexpert (per study) and -metadata (per image) tables and files/pXX/... jpgs."""
    labels, meta = [], []
    for i, row in enumerate(pool.rows):
        subject, study, dicom = (
            f"1{int(row['patient_id'].split('_')[-1]):07d}",
            f"5{i:07d}",
            f"d{i:08x}",
        )
        labels.append(
            [
                subject,
                study,
                *(_chexpert_value(pool, pool.label(row, p)) for p in CHEXPERT.values()),
            ]
        )
        meta.append([dicom, subject, study, row["view"]])
        pool.image(
            row, root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom}.jpg"
        )
    _csv(
        root / "mimic-cxr-2.0.0-chexpert.csv",
        ["subject_id", "study_id", *CHEXPERT],
        labels,
        gz=True,
    )
    _csv(
        root / "mimic-cxr-2.0.0-metadata.csv",
        ["dicom_id", "subject_id", "study_id", "ViewPosition"],
        meta,
        gz=True,
    )


def write_padchest(pool: Pool, root: Path) -> None:
    """The gzipped labels CSV with a Python list of report labels, 16-bit PNGs in ImageDir/."""
    header = [
        "ImageID", "ImageDir", "StudyDate_DICOM", "StudyID", "PatientID", "PatientBirth",
        "PatientSex_DICOM", "ViewPosition_DICOM", "Projection", "MethodProjection", "Labels",
    ]  # fmt: skip
    rows = []
    for i, row in enumerate(pool.rows):
        found = [label for label, p in PADCHEST.items() if pool.label(row, p)]
        projection = "AP_horizontal" if row["view"] == "AP" and i % 2 else row["view"]
        name = f"img{i:04d}.png"
        rows.append(
            [name, i % 3, "20150101", f"s{i}", row["patient_id"], 1950, row["sex"][:1], "",
             projection, "Supervised", repr(found or ["normal"])]
        )  # fmt: skip
        pool.image(row, root / str(i % 3) / name)
    _csv(root / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv", header, rows, gz=True)


def write_uka(pool: Pool, root: Path, column_map: Path) -> None:
    """A UKA-like bedside table graded none..severe per finding and side, with its column map."""
    header = ["Image", "Patient", "Set", "View", *UKA, "Healthy"]
    rows = []
    for i, (row, is_test) in enumerate(zip(pool.rows, pool.test, strict=True)):
        grades = [
            UKA_GRADES[
                int(pool.rng.integers(2, 5)) if pool.label(row, p) else int(pool.rng.integers(0, 2))
            ]
            for p in UKA.values()
        ]
        healthy = int(all(g in UKA_GRADES[:2] for g in grades))
        name = f"u{i:04d}.png"
        rows.append(
            [name, row["patient_id"], "holdout" if is_test else "training", "AP", *grades, healthy]
        )
        pool.image(row, root / name)
    _csv(root / "uka.csv", header, rows)
    column_map.write_text(json.dumps(UKA_COLUMNS))


def write_standins(folder: Path, n: int = 40, seed: int = 0) -> dict[str, Path]:
    """Every dataset's stand-in under ``folder``; returns each dataset's root (and ``uka_columns``,
    the column map's path)."""
    pool = Pool(folder / "pool", n, seed)
    roots = {
        name: folder / name
        for name in ("vindr", "chestxray14", "chexpert", "mimic", "padchest", "uka")
    }
    write_vindr(pool, roots["vindr"])
    write_chestxray14(pool, roots["chestxray14"])
    write_chexpert(pool, roots["chexpert"])
    write_mimic(pool, roots["mimic"])
    write_padchest(pool, roots["padchest"])
    roots["uka_columns"] = folder / "uka_columns.json"
    write_uka(pool, roots["uka"], roots["uka_columns"])
    return roots
