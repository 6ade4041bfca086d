"""Tiny hand-made dataset tables in each real format, written into a test's tmp_path.

Each ``write_*`` function writes the tables of one dataset under ``root`` and returns the labels a
correct adapter must produce for a few images (``{image_id: {finding: value}}``), worked out by
hand from the rows below. Column names and file names copy the real releases.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

NAN = float("nan")


def _write(path: Path, text: str, gz: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


NIH_TABLE = """\
Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]
00000001_000.png,Cardiomegaly,0,1,57,M,PA,2682,2749,0.143,0.143
00000001_001.png,Cardiomegaly|Emphysema,1,1,58,M,PA,2894,2729,0.143,0.143
00000002_000.png,No Finding,0,2,81,F,AP,2500,2048,0.171,0.171
00000003_000.png,Mass|Nodule|Effusion,0,3,60,F,PA,2500,2048,0.168,0.168
00000004_000.png,Nodule,0,4,33,M,AP,2048,2500,0.168,0.168
00000005_000.png,Pleural_Thickening|Hernia,0,5,70,F,PA,2992,2991,0.143,0.143
00000006_000.png,Infiltration,0,6,45,M,PA,2500,2048,0.168,0.168
00000007_000.png,No Finding,0,7,29,F,PA,2500,2048,0.168,0.168
"""


def write_chestxray14(
    root: Path, gz: bool = False, official: bool = True, folders: str = "images"
) -> dict:
    """ChestX-ray14: Data_Entry_2017_v2020.csv, optional official lists, image folders."""
    _write(root / "Data_Entry_2017_v2020.csv", NIH_TABLE, gz)
    ids = [line.split(",")[0] for line in NIH_TABLE.splitlines()[1:]]
    if official:
        test = [i for i in ids if i.startswith(("00000003", "00000007"))]
        (root / "test_list.txt").write_text("\n".join(test) + "\n")
        (root / "train_val_list.txt").write_text("\n".join(i for i in ids if i not in test) + "\n")
    if folders == "images_0NN":
        for number, chunk in ((1, ids[:4]), (2, ids[4:])):
            folder = root / f"images_{number:03d}" / "images"
            folder.mkdir(parents=True)
            for name in chunk:
                (folder / name).write_bytes(b"")
    elif folders == "images":
        (root / "images").mkdir()
        for name in ids:
            (root / "images" / name).write_bytes(b"")
    return {
        "00000001_001.png": {
            "cardiomegaly": 1,
            "emphysema": 1,
            "no_finding": 0,
            "nodule_mass": 0,
            "nodule": 0,
            "mass": 0,
        },
        "00000002_000.png": {"no_finding": 1, "cardiomegaly": 0, "pleural_effusion": 0},
        "00000003_000.png": {
            "nodule_mass": 1,
            "nodule": 1,
            "mass": 1,
            "pleural_effusion": 1,
            "cardiomegaly": 0,
            "no_finding": 0,
        },
        "00000004_000.png": {"nodule_mass": 1, "nodule": 1, "mass": 0, "pleural_effusion": 0},
        "00000005_000.png": {"pleural_thickening": 1, "hernia": 1, "infiltration": 0},
    }


CHEXPERT_HEADER = (
    "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,"
    "Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,"
    "Pleural Effusion,Pleural Other,Fracture,Support Devices\n"
)
CHEXPERT_TRAIN = (
    CHEXPERT_HEADER
    + """\
CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg,Female,68,Frontal,AP,1.0,,,,,,,,,0.0,,,,1.0
CheXpert-v1.0-small/train/patient00002/study2/view1_frontal.jpg,Female,87,Frontal,AP,,,-1.0,1.0,,-1.0,-1.0,,-1.0,,-1.0,,1.0,
CheXpert-v1.0-small/train/patient00002/study1/view1_frontal.jpg,Female,83,Frontal,AP,,,,1.0,,,-1.0,,,,,,1.0,
CheXpert-v1.0-small/train/patient00002/study1/view2_lateral.jpg,Female,83,Lateral,,,,,1.0,,,-1.0,,,,,,1.0,
CheXpert-v1.0-small/train/patient00003/study1/view1_frontal.jpg,Male,41,Frontal,PA,,,,,,1.0,,,,0.0,,,,
CheXpert-v1.0-small/train/patient00004/study1/view1_frontal.jpg,Female,20,Frontal,PA,1.0,0.0,,,,,0.0,,,0.0,0.0,,,
CheXpert-v1.0-small/train/patient00005/study1/view1_frontal.jpg,Male,33,Frontal,LL,,,1.0,,,,,,,,1.0,,,
CheXpert-v1.0-small/train/patient00006/study1/view1_frontal.jpg,Unknown,50,Frontal,AP,,,,-1.0,,,,,,,1.0,,,1.0
"""
)
CHEXPERT_VALID = (
    CHEXPERT_HEADER
    + """\
CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg,Male,73,Frontal,AP,0.0,1.0,1.0,1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0
CheXpert-v1.0-small/valid/patient64542/study1/view1_frontal.jpg,Male,70,Frontal,PA,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,1.0
"""
)


def write_chexpert(root: Path, gz: bool = False, valid: bool = True) -> dict:
    """CheXpert: train.csv (+ valid.csv) with CheXpert-v1.0-small/ path prefixes."""
    _write(root / "train.csv", CHEXPERT_TRAIN, gz)
    if valid:
        _write(root / "valid.csv", CHEXPERT_VALID, gz)
    return {
        "patient00001/study1/view1_frontal": {
            "no_finding": 1,
            "pneumothorax": 0,
            "support_devices": 1,
            "edema": NAN,
        },
        "patient00002/study2/view1_frontal": {
            "cardiomegaly": -1,
            "lung_opacity": 1,
            "edema": -1,
            "fracture": 1,
        },
        "patient00004/study1/view1_frontal": {
            "enlarged_cardiomediastinum": 0,
            "pleural_effusion": 0,
        },
        "patient00006/study1/view1_frontal": {"lung_opacity": -1, "pleural_effusion": 1},
    }


MIMIC_LABELS = """\
subject_id,study_id,Atelectasis,Cardiomegaly,Consolidation,Edema,Enlarged Cardiomediastinum,Fracture,Lung Lesion,Lung Opacity,No Finding,Pleural Effusion,Pleural Other,Pneumonia,Pneumothorax,Support Devices
10000032,50414267,,,,,,,,,1.0,,,,,
10000032,53189527,,,,,,,,,1.0,,,,,
10000764,57375967,,,1.0,,,,,,,,,-1.0,,
11000183,51967845,1.0,1.0,,0.0,,,,,,1.0,,,,1.0
12000000,59000000,,,,,,1.0,,,,,,,,
"""
MIMIC_METADATA = """\
dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,StudyDate,StudyTime,ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,PatientOrientationCodeSequence_CodeMeaning
02aa804e-bde0afdd-112c0b34-7bc16630-4e384014,10000032,50414267,CHEST (PA AND LAT),PA,3056,2544,21800506,213014.531,CHEST (PA AND LAT),postero-anterior,Erect
174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962,10000032,50414267,CHEST (PA AND LAT),LATERAL,3056,2544,21800506,213014.531,CHEST (PA AND LAT),lateral,Erect
2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab,10000032,53189527,CHEST (PA AND LAT),PA,3056,2544,21800626,165500.312,CHEST (PA AND LAT),postero-anterior,Erect
096052b7-d256dc40-453a102b-fa7d01c6-1b22c6b4,10000764,57375967,CHEST (PORTABLE AP),AP,2705,2539,21321017,165734.984,CHEST (PORTABLE AP),antero-posterior,Recumbent
8959e402-2175d68d-edba5a6c-520a6e4e-0e9d0a3c,10000764,57375967,CHEST (PORTABLE AP),LL,2705,2539,21321017,165734.984,CHEST (PORTABLE AP),left lateral,Recumbent
b8c4b9dc-7a6c1a4a-1d5d5f9e-2a0fb1e4-91f2d2b2,11000183,51967845,CHEST (PORTABLE AP),AP AXIAL,2539,2705,21500101,101010.000,CHEST (PORTABLE AP),antero-posterior,Recumbent
c0ffee00-00000000-00000000-00000000-00000001,12000000,59000000,CHEST (PA AND LAT),PA,3056,2544,21900101,101010.000,CHEST (PA AND LAT),postero-anterior,Erect
"""
MIMIC_SPLIT = """\
dicom_id,study_id,subject_id,split
02aa804e-bde0afdd-112c0b34-7bc16630-4e384014,50414267,10000032,train
174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962,50414267,10000032,train
2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab,53189527,10000032,train
096052b7-d256dc40-453a102b-fa7d01c6-1b22c6b4,57375967,10000764,validate
8959e402-2175d68d-edba5a6c-520a6e4e-0e9d0a3c,57375967,10000764,validate
b8c4b9dc-7a6c1a4a-1d5d5f9e-2a0fb1e4-91f2d2b2,51967845,11000183,test
c0ffee00-00000000-00000000-00000000-00000001,59000000,12000000,train
"""


def write_mimic(root: Path, split: bool = True) -> dict:
    """MIMIC-CXR-JPG 2.0.0: chexpert labels, metadata and split tables, all .csv.gz."""
    _write(root / "mimic-cxr-2.0.0-chexpert.csv", MIMIC_LABELS, gz=True)
    negbio = MIMIC_LABELS.replace(
        "10000764,57375967,,,1.0,,,,,,,,,-1.0,,", "10000764,57375967,,,0.0,,,,,,,,,1.0,,"
    )
    _write(root / "mimic-cxr-2.0.0-negbio.csv", negbio, gz=True)
    _write(root / "mimic-cxr-2.0.0-metadata.csv", MIMIC_METADATA, gz=True)
    if split:
        _write(root / "mimic-cxr-2.0.0-split.csv", MIMIC_SPLIT, gz=True)
    return {
        "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014": {"no_finding": 1, "cardiomegaly": NAN},
        "096052b7-d256dc40-453a102b-fa7d01c6-1b22c6b4": {"consolidation": 1, "pneumonia": -1},
        "8959e402-2175d68d-edba5a6c-520a6e4e-0e9d0a3c": {"consolidation": 1, "pneumonia": -1},
        "b8c4b9dc-7a6c1a4a-1d5d5f9e-2a0fb1e4-91f2d2b2": {
            "atelectasis": 1,
            "edema": 0,
            "support_devices": 1,
        },
        "c0ffee00-00000000-00000000-00000000-00000001": {"fracture": 1, "no_finding": NAN},
    }


# Image a: 2 of 3 readers say Cardiomegaly (one with two boxes), 1 says Aortic enlargement.
# Image b: all three say No finding. Image c: one reader Nodule/Mass, two No finding.
VINDR_LONG = """\
image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max
aaaa,Cardiomegaly,3,R1,691.0,1375.0,1653.0,1831.0
aaaa,Cardiomegaly,3,R1,700.0,1380.0,1650.0,1830.0
aaaa,Cardiomegaly,3,R2,690.0,1370.0,1650.0,1830.0
aaaa,Aortic enlargement,0,R3,1000.0,700.0,1200.0,900.0
bbbb,No finding,14,R4,,,,
bbbb,No finding,14,R5,,,,
bbbb,No finding,14,R6,,,,
cccc,Nodule/Mass,8,R1,10.0,10.0,50.0,50.0
cccc,No finding,14,R2,,,,
cccc,No finding,14,R3,,,,
"""
VINDR_WIDE_HEADER = "image_id,rad_ID,Aortic enlargement,Cardiomegaly,Rib fracture,Clavicle fracture,Nodule/Mass,Tuberculosis,No finding\n"
VINDR_WIDE = (
    VINDR_WIDE_HEADER
    + """\
aaaa,R1,0,1,0,0,0,0,0
aaaa,R2,0,1,1,0,0,0,0
aaaa,R3,1,0,0,1,0,0,0
bbbb,R4,0,0,0,0,0,0,1
bbbb,R5,0,0,0,0,0,0,1
bbbb,R6,0,0,0,0,0,0,1
"""
)
VINDR_TEST = """\
image_id,Aortic enlargement,Cardiomegaly,Rib fracture,Clavicle fracture,Nodule/Mass,Tuberculosis,No finding
dddd,1,1,0,0,0,0,0
eeee,0,0,0,0,0,0,1
"""


def write_vindr(root: Path, kind: str = "long", test: bool = True) -> dict:
    """VinDr-CXR: long per-reader rows (Kaggle/torchxrayvision file) or PhysioNet wide tables."""
    if kind == "long":
        _write(root / "vinbigdata-train.csv", VINDR_LONG, gz=True)
        expected = {
            "aaaa": {"cardiomegaly": 1, "aortic_enlargement": 0, "no_finding": 0, "nodule_mass": 0},
            "bbbb": {"no_finding": 1, "cardiomegaly": 0},
            "cccc": {"nodule_mass": 0, "no_finding": 1},
        }
    else:
        _write(root / "annotations" / "image_labels_train.csv", VINDR_WIDE)
        expected = {
            "aaaa": {"cardiomegaly": 1, "aortic_enlargement": 0, "fracture": 1, "tuberculosis": 0},
            "bbbb": {"no_finding": 1, "fracture": 0},
        }
    if test:
        _write(root / "annotations" / "image_labels_test.csv", VINDR_TEST)
        expected["dddd"] = {"aortic_enlargement": 1, "cardiomegaly": 1, "no_finding": 0}
        expected["eeee"] = {"no_finding": 1, "cardiomegaly": 0}
    return expected


PADCHEST_TABLE = """\
ImageID,ImageDir,StudyDate_DICOM,StudyID,PatientID,PatientBirth,PatientSex_DICOM,ViewPosition_DICOM,Projection,MethodProjection,Labels
img1.png,0,20140915,s1,p1,1959.0,M,POSTEROANTERIOR,PA,Manual review of DICOM fields,"['pleural effusion', 'cardiomegaly']"
img2.png,0,20140915,s1,p1,1959.0,M,LATERAL,L,Manual review of DICOM fields,"['pleural effusion', 'cardiomegaly']"
img3.png,1,20150101,s2,p2,1980.0,F,,AP_horizontal,Supervised,['normal']
img4.png,1,20150101,s3,p3,,O,,PA,Supervised,"['nodule', ' pulmonary mass', 'scoliosis']"
img5.png,2,20160202,s4,p4,1940.0,F,,COSTAL,Supervised,
img6.png,2,20160202,s5,p5,1950.0,M,,AP,Supervised,"['exclude']"
img7.png,2,20160202,s6,p6,1950.0,M,,PA,Supervised,"['rib fracture', 'NSG tube', 'copd signs', 'descendent aortic elongation', 'hilar congestion', 'kyphosis']"
"""


def write_padchest(root: Path) -> dict:
    """PadChest: the 160K labels CSV with Labels as a Python list in a string."""
    _write(root / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv", PADCHEST_TABLE, gz=True)
    return {
        "img1.png": {"pleural_effusion": 1, "cardiomegaly": 1, "no_finding": 0},
        "img3.png": {"no_finding": 1, "pleural_effusion": 0},
        "img4.png": {"nodule_mass": 1, "nodule": 1, "mass": 1, "scoliosis": 1, "no_finding": 0},
        "img5.png": {"no_finding": NAN, "cardiomegaly": NAN},
        "img6.png": {"no_finding": 0, "cardiomegaly": 0},
        "img7.png": {
            "fracture": 1,
            "support_devices": 1,
            "copd": 1,
            "pneumothorax": 0,
            "aortic_elongation": 1,
            "aortic_enlargement": 1,
            "congestion": 1,
            "kyphosis": 1,
            "scoliosis": 0,
        },
    }


GENERIC_TABLE = """\
File,MRN,Projection,Set,Gender,AgeYears,Effusion,Mass,Nodule,Cardio
a/1.png,m1,PA,training,F,61,yes,no,maybe,no
a/2.png,m1,Lateral,training,F,61,yes,no,no,no
b/3.png,m2,AP,holdout,M,44,no,yes,no,
b/4.png,m3,PA,validation,M,35,no,no,no,yes
c/5.png,m4,frontal pa,training,F,52,,no,no,no
"""
GENERIC_MAP = {
    "csv": "hospital.csv",
    "columns": {
        "image_id": "File",
        "path": "File",
        "patient_id": "MRN",
        "view": "Projection",
        "split": "Set",
        "sex": "Gender",
        "age": "AgeYears",
    },
    "findings": {
        "Effusion": "pleural_effusion",
        "Mass": "nodule_mass",
        "Nodule": "nodule_mass",
        "Cardio": "cardiomegaly",
    },
    "views": {"frontal pa": "PA"},
    "splits": {"holdout": "test"},
    "values": {"yes": 1, "no": 0, "maybe": -1},
}


def write_generic(root: Path) -> dict:
    """A private-style CSV with its own column names and a JSON column map beside it."""
    _write(root / "hospital.csv", GENERIC_TABLE)
    (root / "map.json").write_text(json.dumps(GENERIC_MAP))
    return {
        "a/1.png": {"pleural_effusion": 1, "nodule_mass": -1, "cardiomegaly": 0},
        "b/3.png": {"nodule_mass": 1, "cardiomegaly": NAN},
        "c/5.png": {"pleural_effusion": NAN, "nodule_mass": 0},
    }


# A UKA-like bedside table: severity graded 0-4 per side (text or numbers), "Healthy" 1/0, a misspelt
# label column and a free-text column the map ignores.
UKA_TABLE = """\
Image,Patient,Set,Cardiomegaly,EffusionLeft,EffusionRight,AtelectasisLeft,AtelectasisRight,Healthy,Cardiomegally,Comment
u1.png,q1,training,mild,0,3,none,none,0,1,ok
u2.png,q1,training,none,0,0,questionable,none,1,0,
u3.png,q2,holdout,severe,1,,severe,moderate,0,1,portable
u4.png,q3,training,questionable,2,1,none,-1,0,0,
u5.png,q4,training,,4,0,mild,none,0,,
"""
UKA_MAP = {
    "csv": "uka.csv",
    "columns": {"image_id": "Image", "patient_id": "Patient", "split": "Set"},
    "splits": {"holdout": "test"},
    "values": {"none": 0, "questionable": 1, "mild": 2, "moderate": 3, "severe": 4},
    "findings": {
        "Cardiomegaly": {"finding": "cardiomegaly", "threshold": 2},
        "EffusionLeft": {"finding": "pleural_effusion_left", "threshold": 2},
        "EffusionRight": {"finding": "pleural_effusion_right", "threshold": 2},
        "AtelectasisLeft": {"finding": "atelectasis_left", "threshold": 2},
        "AtelectasisRight": {"finding": "atelectasis_right", "threshold": 2},
        "Healthy": {"finding": "no_finding", "values": {"1": 1, "0": 0}},
    },
    "ignore": ["Comment"],
}


def write_uka(root: Path) -> Path:
    """The UKA-like table; returns its path (the column map is ``UKA_MAP``)."""
    return _write(root / "uka.csv", UKA_TABLE)
