"""One reader per dataset: each reads only its own tables and returns an unpoliced manifest.

A reader takes ``(root, label_map, **options)`` and returns a normalised manifest whose ``split``
holds the dataset's official split where it has one (else None) and whose labels still hold -1.
Everything shared (label maps, views, policies, splits) lives in other modules, and the reader of
any CSV described by a column map in :mod:`cxrprobe.data.generic`.
"""

from __future__ import annotations

import ast
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrprobe.data.label_columns import check_label_names, labels_from_columns, labels_from_lists
from cxrprobe.data.labelmap import LabelMap, map_splits, map_views, normalize_sex
from cxrprobe.data.manifest import data_row
from cxrprobe.data.tables import (
    assemble,
    column_by_name,
    extract,
    find_optional_table,
    find_table,
    optional_column,
    parse_age,
    read_table,
)
from cxrprobe.errors import ConfigError, DataFormatError

log = logging.getLogger(__name__)
PathLike = str | os.PathLike


# --- ChestX-ray14 -------------------------------------------------------------------------------


def _nih_image_folders(root: Path, ids: pd.Series) -> list[str]:
    """``images/ID`` when ``images/`` exists or no image folder does; else the ``images_0NN/images``
    folder listing each id (one directory listing per folder, no per-file stat)."""
    folders = sorted(root.glob("images_*/images"))
    if (root / "images").is_dir() or not folders:
        return ["images"] * len(ids)
    where = {name: f.relative_to(root).as_posix() for f in folders for name in os.listdir(f)}
    located = [where.get(i) for i in ids]
    unplaced = sum(w is None for w in located)
    if unplaced:
        log.warning("%d images are in none of the images_*/images folders of %s", unplaced, root)
    return [w or "images" for w in located]


def _nih_official_split(root: Path, ids: pd.Series) -> list[str | None]:
    test_list = root / "test_list.txt"
    train_list = root / "train_val_list.txt"
    if not (test_list.is_file() and train_list.is_file()):
        return [None] * len(ids)
    split_of = dict.fromkeys(train_list.read_text().split(), "train")
    split_of.update(dict.fromkeys(test_list.read_text().split(), "test"))
    return [split_of.get(i) for i in ids]


def read_chestxray14(
    root: Path, label_map: LabelMap, labels_csv: PathLike | None = None
) -> pd.DataFrame:
    """NIH ChestX-ray14: ``Data_Entry_2017*.csv[.gz]`` with ``|``-joined ``Finding Labels``."""
    path = find_table(root, ["Data_Entry_2017*.csv"], labels_csv)
    table = read_table(
        path,
        ["Image Index", "Finding Labels", "Patient ID", "View Position"],
        dtype={"Image Index": str, "Patient ID": str},
    )
    ids = table["Image Index"]
    lists = table["Finding Labels"].map(lambda s: s.split("|") if isinstance(s, str) else np.nan)
    folders = _nih_image_folders(root, ids)
    return assemble(
        labels_from_lists(lists, label_map, str(path)),
        path,
        image_id=ids,
        path=[f"{folder}/{i}" for folder, i in zip(folders, ids, strict=True)],
        patient_id=table["Patient ID"],
        study_id=ids.str.replace(r"\.\w+$", "", regex=True),
        view=map_views(table["View Position"], label_map),
        split=_nih_official_split(root, ids),
        sex=normalize_sex(optional_column(table, "Patient Gender")),
        age=parse_age(optional_column(table, "Patient Age")),
    )


# --- CheXpert -------------------------------------------------------------------------------------


_CHEXPERT_PATH = r"(?:^|/)(?P<patient>patient\d+)/(?P<study>study\d+)/(?P<view>[^/]+?)\.\w+$"


def _chexpert_part(root: Path, path: Path, label_map: LabelMap, split: str) -> pd.DataFrame:
    table = read_table(path, ["Path", "Frontal/Lateral", "AP/PA"], dtype={"Path": str})
    paths = table["Path"].str.replace("\\", "/", regex=False)
    prefix = str(paths.iloc[0]).split("/")[0] if len(paths) else ""
    if prefix.startswith("CheXpert-v1.0") and not (root / prefix).is_dir():
        paths = paths.str.removeprefix(prefix + "/")
    parts = extract(paths, _CHEXPERT_PATH)
    bad = np.flatnonzero(pd.isna(parts["patient"]).to_numpy())
    if bad.size:
        raise DataFormatError(
            f"{path}: {data_row(bad[0])}, column Path: {table['Path'].iloc[bad[0]]!r} is not "
            ".../patientN/studyN/viewN.jpg"
        )
    lateral = table["Frontal/Lateral"].astype(str).str.casefold().eq("lateral")
    raw_view = table["AP/PA"].astype(object).where(~lateral, "LATERAL")
    study = parts["patient"] + "/" + parts["study"]
    return assemble(
        labels_from_columns(table, label_map, str(path)),
        path,
        image_id=study + "/" + parts["view"],
        path=paths,
        patient_id=parts["patient"],
        study_id=study,
        view=map_views(raw_view, label_map),
        split=[split] * len(table),
        sex=normalize_sex(optional_column(table, "Sex")),
        age=parse_age(optional_column(table, "Age")),
    )


def read_chexpert(
    root: Path, label_map: LabelMap, labels_csv: PathLike | None = None
) -> pd.DataFrame:
    """CheXpert: ``train.csv`` (official train) and, when present, ``valid.csv`` (official test:
    the hidden test set is not public, so the radiologist-labelled valid set is the held-out one).
    ``Path`` may start with ``CheXpert-v1.0-small/``; it is kept only if that folder is in root."""
    train = find_table(root, ["train.csv"], labels_csv)
    parts = [_chexpert_part(root, train, label_map, "train")]
    valid = find_optional_table(root, ["valid.csv"])
    if valid is not None and valid.resolve() != train.resolve():
        parts.append(_chexpert_part(root, valid, label_map, "test"))
    return pd.concat(parts, ignore_index=True)


# --- MIMIC-CXR-JPG --------------------------------------------------------------------------------

_MIMIC_KEYS = ["subject_id", "study_id"]


def read_mimic(
    root: Path, label_map: LabelMap, labels_csv: PathLike | None = None, labeler: str = "chexpert"
) -> pd.DataFrame:
    """MIMIC-CXR-JPG 2.0.0: per-study labels (``-chexpert`` or ``-negbio``) joined to the per-image
    ``-metadata`` (``ViewPosition``) and, when present, ``-split`` tables."""
    if labeler not in ("chexpert", "negbio"):
        raise ConfigError(f"--labeler {labeler!r} is not one of chexpert, negbio")
    ids = {c: str for c in ["dicom_id", *_MIMIC_KEYS]}
    labels_path = find_table(root, [f"mimic-cxr-2.0.0-{labeler}.csv"], labels_csv)
    meta_path = find_table(root, ["mimic-cxr-2.0.0-metadata.csv"])
    studies = read_table(labels_path, _MIMIC_KEYS, dtype=ids)
    meta = read_table(meta_path, ["dicom_id", *_MIMIC_KEYS, "ViewPosition"], dtype=ids)
    repeated = np.flatnonzero(studies.duplicated(_MIMIC_KEYS).to_numpy())
    if repeated.size:
        raise DataFormatError(
            f"{labels_path}: {data_row(repeated[0])}: study listed twice; keep one row per study"
        )
    labels = labels_from_columns(studies.drop(columns=_MIMIC_KEYS), label_map, str(labels_path))
    rows = meta.merge(pd.concat([studies[_MIMIC_KEYS], labels], axis=1), on=_MIMIC_KEYS, how="left")
    unlabelled = int(rows[labels.columns].isna().all(axis=1).sum())
    if unlabelled:
        log.info("%d MIMIC images have no %s labels (kept with empty labels)", unlabelled, labeler)
    split = pd.Series([None] * len(rows), dtype=object)
    split_path = find_optional_table(root, ["mimic-cxr-2.0.0-split.csv"])
    if split_path is not None:
        table = read_table(split_path, ["dicom_id", "split"], dtype=ids)
        table["split"] = map_splits(table["split"], label_map, str(split_path))
        split = rows["dicom_id"].map(table.set_index("dicom_id")["split"])
    subject, study = rows["subject_id"], rows["study_id"]
    return assemble(
        rows[labels.columns],
        meta_path,  # a left merge keeps the metadata table's rows in order
        image_id=rows["dicom_id"],
        path="files/p"
        + subject.str[:2]
        + "/p"
        + subject
        + "/s"
        + study
        + "/"
        + rows["dicom_id"]
        + ".jpg",
        patient_id=subject,
        study_id=study,
        view=map_views(rows["ViewPosition"], label_map),
        split=split,
    )


# --- VinDr-CXR ------------------------------------------------------------------------------------

_VINDR_DIRS = ("", "annotations")


def _vindr_reader_labels(
    table: pd.DataFrame, label_map: LabelMap, path: Path
) -> tuple[pd.Series, pd.DataFrame]:
    """(image id per reader row, canonical labels per reader row) from a long or wide table."""
    image = column_by_name(table, "image_id", path)
    rad = column_by_name(table, "rad_id", path)
    if "class_name" in table.columns:  # long: one row per reader finding (boxes repeat rows)
        check_label_names(table["class_name"].dropna(), label_map, str(path))
        lists: dict[tuple[str, str], list[str]] = {}
        for image_id, rad_id, name in zip(
            table[image], table[rad], table["class_name"], strict=True
        ):
            lists.setdefault((image_id, rad_id), []).append(name)
        vocabulary = table["class_name"].dropna().unique()
        labels = labels_from_lists(
            pd.Series(list(lists.values())), label_map, str(path), vocabulary
        )
        return pd.Series([reader[0] for reader in lists], index=labels.index), labels
    labels = labels_from_columns(table.drop(columns=[image, rad]), label_map, str(path))
    return table[image], labels


def aggregate_readers(image_ids: pd.Series, labels: pd.DataFrame, rule: str) -> pd.DataFrame:
    """One row per image: positive when a majority (more than half) of its readers, or ``any``
    reader, marked the finding; NaN when no reader annotated it. Rows keep first-seen order."""
    if rule not in ("majority", "any"):
        raise ConfigError(f"--aggregation {rule!r} is not one of majority, any")
    keys = image_ids.to_numpy()
    positives = (labels == 1).groupby(keys, sort=False).sum()
    annotated = labels.notna().groupby(keys, sort=False).sum()
    hit = positives * 2 > annotated if rule == "majority" else positives > 0
    return hit.astype(np.float32).where(annotated > 0)


def read_vindr(
    root: Path,
    label_map: LabelMap,
    labels_csv: PathLike | None = None,
    aggregation: str = "majority",
) -> pd.DataFrame:
    """VinDr-CXR: per-reader training labels (wide ``image_labels_train.csv`` or long
    ``annotations_train.csv`` / Kaggle ``train.csv`` / ``vinbigdata-train.csv``) aggregated per
    image, plus consensus test labels from ``image_labels_test.csv`` when present. A long table
    annotates only the classes it mentions. No patient ids are released: each image is its own
    patient. Images are ``train/ID.dicom`` and ``test/ID.dicom``."""
    patterns = [
        "image_labels_train.csv",
        "annotations_train.csv",
        "train.csv",
        "vinbigdata-train.csv",
    ]
    path = find_table(root, patterns, labels_csv, _VINDR_DIRS)
    table = read_table(path, [], dtype={"image_id": str})
    image_ids, per_reader = _vindr_reader_labels(table, label_map, path)
    train = aggregate_readers(image_ids, per_reader, aggregation)
    parts = [(train.index.to_series(), train, "train", None)]  # aggregated: no file rows
    test_path = find_optional_table(root, ["image_labels_test.csv"], _VINDR_DIRS)
    if test_path is not None and test_path.resolve() != path.resolve():
        test = read_table(test_path, ["image_id"], dtype={"image_id": str})
        parts.append(
            (
                test["image_id"],
                labels_from_columns(test.drop(columns="image_id"), label_map, str(test_path)),
                "test",
                test_path,
            )
        )
    frames = [
        assemble(
            labels,
            source,
            image_id=ids,
            path=[f"{split}/{i}.dicom" for i in ids],
            patient_id=ids,
            study_id=ids,
            view=map_views(pd.Series([None] * len(ids)), label_map),
            split=[split] * len(ids),
        )
        for ids, labels, split, source in parts
    ]
    return pd.concat(frames, ignore_index=True)


# --- PadChest -------------------------------------------------------------------------------------


def _label_lists(raw: pd.Series, path: Path) -> pd.Series:
    """PadChest ``Labels`` strings (``"['a', 'b']"``) as lists via ``ast.literal_eval``; a blank
    cell or an empty list is not annotated (NaN); anything but a list of strings raises."""
    parsed: dict[str, Any] = {}
    for row, text in enumerate(raw):
        if not isinstance(text, str) or text in parsed:
            continue
        try:
            value = ast.literal_eval(text) if text.strip() else []
        except (ValueError, SyntaxError):
            value = None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise DataFormatError(
                f"{path}: {data_row(row)}, column Labels: {text[:80]!r} is not a list of names"
            )
        names = [v for v in value if v.strip()]
        parsed[text] = names if names else np.nan
    return raw.map(lambda t: parsed.get(t, np.nan) if isinstance(t, str) else np.nan)


def read_padchest(
    root: Path, label_map: LabelMap, labels_csv: PathLike | None = None
) -> pd.DataFrame:
    """PadChest: ``PADCHEST_chest_x_ray_images_labels_160K*.csv[.gz]``; 16-bit PNGs at
    ``ImageDir/ImageID``; age = study year - birth year."""
    path = find_table(root, ["PADCHEST_chest_x_ray_images_labels_160K*.csv"], labels_csv)
    text_columns = ["ImageID", "ImageDir", "PatientID", "StudyID", "Labels"]
    table = read_table(
        path,
        ["ImageID", "ImageDir", "PatientID", "Projection", "Labels"],
        dtype=dict.fromkeys(text_columns, str),
    )
    year = pd.to_numeric(
        optional_column(table, "StudyDate_DICOM").astype(str).str[:4], errors="coerce"
    )
    birth = pd.to_numeric(optional_column(table, "PatientBirth"), errors="coerce")
    return assemble(
        labels_from_lists(_label_lists(table["Labels"], path), label_map, str(path)),
        path,
        image_id=table["ImageID"],
        path=table["ImageDir"].str.replace(r"\.0$", "", regex=True) + "/" + table["ImageID"],
        patient_id=table["PatientID"],
        study_id=optional_column(table, "StudyID"),
        view=map_views(table["Projection"], label_map),
        split=[None] * len(table),
        sex=normalize_sex(optional_column(table, "PatientSex_DICOM")),
        age=year - birth,
    )
