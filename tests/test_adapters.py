"""Dataset adapters: one contract every adapter's test inherits, per-format details, real tables."""

from __future__ import annotations

import math
import re
from pathlib import Path

import fixtures_data as fx
import numpy as np
import pandas as pd
import pytest

from cxrprobe.data.adapters import ADAPTERS, datasets_markdown, get_adapter
from cxrprobe.data.manifest import (
    BASE_COLUMNS,
    VIEWS,
    finding_columns,
    manifest_hash,
    read_manifest,
    validate_manifest,
    write_manifest,
)
from cxrprobe.data.targets import apply_uncertain
from cxrprobe.errors import ConfigError, DataFormatError, InputFileError
from tests.conftest import REAL_DATA

DOCS = Path(__file__).resolve().parents[1] / "docs" / "datasets.md"


def _where(table: Path, text: str) -> str:
    """How an error should name the row holding ``text``: found by scanning the file's lines."""
    line = next(n for n, t in enumerate(table.read_text().splitlines(), start=1) if text in t)
    return re.escape(f"{table}: data row {line - 1} (line {line})")


def _value(df: pd.DataFrame, image_id: str, finding: str) -> float:
    rows = df.index[df["image_id"] == image_id]
    assert len(rows) == 1, f"{image_id} should appear once"
    return float(df.at[rows[0], finding])


class AdapterContract:
    """What every adapter guarantees; subclasses set ``name`` and write their fixture."""

    name: str
    options: dict = {}

    def write(self, root: Path) -> dict:
        raise NotImplementedError

    @pytest.fixture
    def dataset(self, tmp_path: Path) -> tuple[Path, dict]:
        root = tmp_path / self.name
        root.mkdir()
        return root, self.write(root)

    def build(self, root: Path, **policies) -> pd.DataFrame:
        return get_adapter(self.name).build(root, **self.options, **policies)

    def test_registered_with_its_label_map(self):
        adapter = get_adapter(self.name)
        assert adapter.name == self.name
        assert adapter.findings and adapter.label_map.source.endswith(f"{self.name}.json")

    def test_builds_a_valid_manifest(self, dataset):
        root, _ = dataset
        df = self.build(root, split="random", val_frac=0.2, test_frac=0.2)
        validate_manifest(df)
        assert list(df.columns[: len(BASE_COLUMNS)]) == list(BASE_COLUMNS)
        assert set(finding_columns(df)) <= set(get_adapter(self.name).findings)
        assert df["view"].isin(VIEWS).all()
        assert df["split"].isin(["train", "val", "test"]).all()
        assert not any(Path(p).is_absolute() for p in df["path"])
        values = df[finding_columns(df)].to_numpy()
        assert np.isin(values[~np.isnan(values)], [1.0, 0.0, -1.0]).all()

    def test_labels_match_the_hand_worked_rows(self, dataset):
        root, expected = dataset
        df = self.build(root, split="random", val_frac=0.2, test_frac=0.2)
        for image_id, labels in expected.items():
            for finding, value in labels.items():
                got = _value(df, image_id, finding)
                assert (math.isnan(got) and math.isnan(value)) or got == value, (
                    image_id,
                    finding,
                    got,
                )

    def test_no_patient_in_two_splits(self, dataset):
        root, _ = dataset
        df = self.build(root, split="random", val_frac=0.2, test_frac=0.2, seed=3)
        assert (df.groupby("patient_id")["split"].nunique() == 1).all()

    def test_deterministic_and_round_trips(self, dataset, tmp_path):
        root, _ = dataset
        first = self.build(root, split="random", val_frac=0.2, test_frac=0.2)
        second = self.build(root, split="random", val_frac=0.2, test_frac=0.2)
        back = read_manifest(write_manifest(first, tmp_path / "m.parquet"))
        assert manifest_hash(first) == manifest_hash(second) == manifest_hash(back)

    def test_uncertain_policy_leaves_no_minus_one(self, dataset):
        root, _ = dataset
        ignored = self.build(root, split="random", val_frac=0.2, test_frac=0.2)
        zeroed = self.build(root, split="random", val_frac=0.2, test_frac=0.2, uncertain="zero")
        findings = finding_columns(ignored)
        assert not (zeroed[findings] == -1).any().any()
        assert (
            (zeroed[findings] == 0).sum()
            == ((ignored[findings] == 0) | (ignored[findings] == -1)).sum()
        ).all()

    def test_frontal_views_only(self, dataset):
        root, _ = dataset
        df = self.build(root, split="random", val_frac=0.2, test_frac=0.2, views="frontal")
        assert df["view"].isin(["PA", "AP"]).all()

    def test_unknown_option_is_a_config_error(self, dataset):
        root, _ = dataset
        with pytest.raises(ConfigError, match="colour"):
            self.build(root, colour="red")

    def test_missing_tables_name_the_root(self, tmp_path):
        empty = tmp_path / "empty"
        empty.mkdir()
        with pytest.raises(InputFileError, match=re.escape(str(empty))):
            self.build(empty, split="random")

    def test_check_files_reports_missing_images(self, dataset):
        root, _ = dataset
        with pytest.raises(InputFileError, match="missing under"):
            self.build(root, split="random", val_frac=0.2, test_frac=0.2, check_files=True)


class TestChestXray14(AdapterContract):
    name = "chestxray14"

    def write(self, root):
        return fx.write_chestxray14(root, folders="none")

    def test_official_lists_and_images_folder(self, tmp_path):
        fx.write_chestxray14(tmp_path, gz=True, folders="images")
        df = get_adapter("chestxray14").build(
            tmp_path, split="official", val_frac=0.2, check_files=True
        )
        test = df.loc[df["split"] == "test", "image_id"]
        assert sorted(test) == ["00000003_000.png", "00000007_000.png"]
        assert (df["split"] == "val").any()
        assert df["path"].str.startswith("images/").all()
        assert df.set_index("image_id").at["00000002_000.png", "view"] == "AP"

    def test_official_release_folders(self, tmp_path):
        fx.write_chestxray14(tmp_path, folders="images_0NN")
        df = get_adapter("chestxray14").build(tmp_path, check_files=True)
        paths = df.set_index("image_id")["path"]
        assert paths["00000001_000.png"] == "images_001/images/00000001_000.png"
        assert paths["00000006_000.png"] == "images_002/images/00000006_000.png"

    def test_official_split_without_lists_says_where_they_go(self, tmp_path):
        fx.write_chestxray14(tmp_path, official=False)
        with pytest.raises(ConfigError, match="test_list.txt"):
            get_adapter("chestxray14").build(tmp_path, split="official")

    def test_unknown_label_names_the_row_and_map(self, tmp_path):
        table = tmp_path / "Data_Entry_2017.csv"
        table.write_text(fx.NIH_TABLE.replace("Infiltration,0,6", "Infiltrate,0,6"))
        where = _where(table, "Infiltrate,")
        with pytest.raises(
            DataFormatError, match=rf"{where}: label 'Infiltrate' .*chestxray14.json"
        ):
            get_adapter("chestxray14").build(tmp_path, split="random")


class TestCheXpert(AdapterContract):
    name = "chexpert"

    def write(self, root):
        return fx.write_chexpert(root, gz=True)

    def test_prefix_stripped_patients_from_path_valid_is_test(self, dataset):
        root, _ = dataset
        df = get_adapter("chexpert").build(root, split="official", val_frac=0.3)
        assert df["path"].str.startswith(("train/", "valid/")).all()
        assert set(df.loc[df["split"] == "test", "patient_id"]) == {"patient64541", "patient64542"}
        assert df.groupby("patient_id")["split"].nunique().max() == 1
        by_id = df.set_index("image_id")
        assert by_id.at["patient00002/study1/view2_lateral", "view"] == "LATERAL"
        assert by_id.at["patient00005/study1/view1_frontal", "view"] == "OTHER"  # AP/PA = LL
        assert by_id.at["patient00006/study1/view1_frontal", "sex"] is None

    def test_prefix_kept_when_that_folder_is_the_root_child(self, tmp_path):
        fx.write_chexpert(tmp_path, valid=False)
        (tmp_path / "CheXpert-v1.0-small").mkdir()
        df = get_adapter("chexpert").build(tmp_path, split="random")
        assert df["path"].str.startswith("CheXpert-v1.0-small/train/").all()

    def test_bad_value_names_file_row_and_column(self, tmp_path):
        table = tmp_path / "train.csv"
        table.write_text(fx.CHEXPERT_TRAIN.replace(",0.0,,,,1.0\n", ",0.0,,,,2.0\n", 1))
        where = _where(table, ",0.0,,,,2.0")
        with pytest.raises(DataFormatError, match=rf"{where}, column 'Support Devices': value 2.0"):
            get_adapter("chexpert").build(tmp_path, split="random")


class TestMimic(AdapterContract):
    name = "mimic"

    def write(self, root):
        return fx.write_mimic(root)

    def test_paths_views_official_split(self, dataset):
        root, _ = dataset
        df = get_adapter("mimic").build(root).set_index("image_id")
        first = "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014"
        assert df.at[first, "path"] == f"files/p10/p10000032/s50414267/{first}.jpg"
        assert df.at["8959e402-2175d68d-edba5a6c-520a6e4e-0e9d0a3c", "view"] == "LATERAL"
        assert df.at["b8c4b9dc-7a6c1a4a-1d5d5f9e-2a0fb1e4-91f2d2b2", "view"] == "OTHER"
        assert df["split"].value_counts().to_dict() == {"train": 4, "val": 2, "test": 1}

    def test_negbio_labeler(self, dataset):
        root, _ = dataset
        df = get_adapter("mimic").build(root, labeler="negbio", split="random")
        assert _value(df, "096052b7-d256dc40-453a102b-fa7d01c6-1b22c6b4", "pneumonia") == 1
        with pytest.raises(ConfigError, match="labeler"):
            get_adapter("mimic").build(root, labeler="radgraph")

    def test_bad_split_name_names_the_split_tables_row(self, tmp_path):
        fx.write_mimic(tmp_path)
        (tmp_path / "mimic-cxr-2.0.0-split.csv.gz").unlink()
        header, *rows = fx.MIMIC_SPLIT.splitlines()
        moved = [r.replace(",validate", ",valdiate") for r in rows if r.startswith("096052b7")]
        table = tmp_path / "mimic-cxr-2.0.0-split.csv"  # its rows in another order than metadata
        table.write_text("\n".join([header, *(r for r in rows if r not in moved), *moved]) + "\n")
        with pytest.raises(
            DataFormatError, match=rf"{_where(table, 'valdiate')}: split 'valdiate' is not a known"
        ):
            get_adapter("mimic").build(tmp_path)


class TestVinDr(AdapterContract):
    name = "vindr"

    def write(self, root):
        return fx.write_vindr(root, kind="long")

    def test_any_reader_aggregation(self, dataset):
        root, _ = dataset
        df = get_adapter("vindr").build(root, aggregation="any")
        assert _value(df, "aaaa", "aortic_enlargement") == 1
        assert _value(df, "cccc", "nodule_mass") == 1

    def test_long_table_annotates_only_its_classes_consensus_test(self, dataset):
        root, _ = dataset
        df = get_adapter("vindr").build(root, split="official", val_frac=0)
        assert math.isnan(_value(df, "aaaa", "tuberculosis"))  # not in the long table
        assert _value(df, "dddd", "tuberculosis") == 0  # the test table has it
        assert df.set_index("image_id")["split"].to_dict() == {
            "aaaa": "train", "bbbb": "train", "cccc": "train", "dddd": "test", "eeee": "test"
        }  # fmt: skip
        assert df.set_index("image_id").at["dddd", "path"] == "test/dddd.dicom"
        assert (df["view"] == "PA").all()

    def test_physionet_wide_tables_merge_before_majority(self, tmp_path):
        expected = fx.write_vindr(tmp_path, kind="wide")
        df = get_adapter("vindr").build(tmp_path, split="random", val_frac=0.2, test_frac=0.2)
        for image_id, labels in expected.items():
            for finding, value in labels.items():
                assert _value(df, image_id, finding) == value, (image_id, finding)

    def test_unknown_class_names_its_row_in_the_long_table(self, tmp_path):
        table = tmp_path / "vinbigdata-train.csv"
        table.write_text(fx.VINDR_LONG.replace("cccc,Nodule/Mass", "cccc,Nodule or mass"))
        with pytest.raises(
            DataFormatError, match=rf"{_where(table, 'Nodule or mass')}: label 'Nodule or mass'"
        ):
            get_adapter("vindr").build(tmp_path, split="random")

    def test_bad_aggregation(self, dataset):
        with pytest.raises(ConfigError, match="majority, any"):
            get_adapter("vindr").build(dataset[0], aggregation="mean")


class TestPadChest(AdapterContract):
    name = "padchest"

    def write(self, root):
        return fx.write_padchest(root)

    def test_projection_age_sex_path(self, dataset):
        root, _ = dataset
        df = get_adapter("padchest").build(root, split="random").set_index("image_id")
        assert df["view"].to_dict() == {
            "img1.png": "PA", "img2.png": "LATERAL", "img3.png": "AP", "img4.png": "PA",
            "img5.png": "OTHER", "img6.png": "AP", "img7.png": "PA",
        }  # fmt: skip
        assert df.at["img1.png", "age"] == 2014 - 1959
        assert math.isnan(df.at["img4.png", "age"]) and df.at["img4.png", "sex"] is None
        assert df.at["img3.png", "path"] == "1/img3.png"

    def test_malformed_labels_name_the_row(self, tmp_path):
        fx.write_padchest(tmp_path)
        table = tmp_path / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz"
        table.unlink()
        plain = tmp_path / table.name.removesuffix(".gz")
        plain.write_text(fx.PADCHEST_TABLE.replace("['normal']", "['normal'"))
        with pytest.raises(DataFormatError, match=rf"{_where(plain, 'img3.png')}, column Labels"):
            get_adapter("padchest").build(tmp_path, split="random")

    def test_no_official_split(self, dataset):
        with pytest.raises(ConfigError, match="no official split"):
            get_adapter("padchest").build(dataset[0], split="official")


class TestGeneric(AdapterContract):
    name = "generic"

    def write(self, root):
        return fx.write_generic(root)

    options = {"column_map": fx.GENERIC_MAP}

    def test_map_file_views_splits_sex(self, dataset):
        root, _ = dataset
        df = get_adapter("generic").build(root, column_map=root / "map.json").set_index("image_id")
        assert df["view"].tolist() == ["PA", "LATERAL", "AP", "PA", "PA"]
        assert df["split"].tolist() == ["train", "train", "test", "val", "train"]
        assert df.at["b/3.png", "sex"] == "M" and df.at["b/3.png", "age"] == 44

    def test_canonical_csv_without_map(self, tmp_path):
        pd.DataFrame(
            {"image_id": ["x1", "x2", "x3"], "patient_id": ["p1", "p1", "p2"],
             "split": ["train", "train", "test"], "cardiomegaly": [1, 0, None], "age": [50, 51, 60]}
        ).to_csv(tmp_path / "labels.csv", index=False)  # fmt: skip
        df = get_adapter("generic").build(tmp_path)
        assert df["path"].tolist() == ["x1", "x2", "x3"]
        assert finding_columns(df) == ["cardiomegaly"]
        assert df["split"].tolist() == ["train", "train", "test"]

    def test_column_map_naming_a_missing_column(self, dataset):
        root, _ = dataset
        bad = {**fx.GENERIC_MAP, "findings": {"Effusions": "pleural_effusion"}}
        with pytest.raises(DataFormatError, match="Effusions"):
            get_adapter("generic").build(root, column_map=bad)

    def test_column_map_typo_and_unknown_finding(self, dataset):
        root, _ = dataset
        with pytest.raises(ConfigError, match="colums"):
            get_adapter("generic").build(root, column_map={"colums": {}})
        with pytest.raises(ConfigError, match="effusion"):
            get_adapter("generic").build(
                root, column_map={**fx.GENERIC_MAP, "findings": {"Effusion": "effusion"}}
            )

    def test_unmapped_value_code(self, dataset):
        root, _ = dataset
        codes = {**fx.GENERIC_MAP, "values": {"yes": 1, "no": 0}}
        with pytest.raises(DataFormatError, match="'maybe'"):
            get_adapter("generic").build(root, column_map=codes)

    def test_uka_grades_thresholded_per_column_sides_merged(self, tmp_path):
        fx.write_uka(tmp_path)
        df = get_adapter("generic").build(tmp_path, column_map=fx.UKA_MAP).set_index("image_id")
        raw = pd.read_csv(tmp_path / "uka.csv", dtype=str).set_index("Image")
        grades = raw.replace(fx.UKA_MAP["values"]).apply(pd.to_numeric, errors="coerce")
        for column, rule in fx.UKA_MAP["findings"].items():
            if "threshold" not in rule:
                continue
            expected = np.where(
                grades[column].isna() | (grades[column] == -1),
                grades[column],
                (grades[column] >= rule["threshold"]).astype(float),
            )
            np.testing.assert_array_equal(df[rule["finding"]].to_numpy(), expected, column)
        for finding in ("pleural_effusion", "atelectasis"):  # derived: either side
            sides = df[[f"{finding}_left", f"{finding}_right"]].to_numpy()
            reference = [
                1.0 if (row == 1).any() else -1.0 if (row == -1).any() else
                0.0 if (row == 0).any() else np.nan
                for row in sides
            ]  # fmt: skip
            np.testing.assert_array_equal(df[finding].to_numpy(), reference, finding)
        assert df.at["u4.png", "atelectasis_right"] == -1  # -1 stays uncertain
        assert df.at["u3.png", "split"] == "test"

    def test_column_values_replace_the_global_map(self, tmp_path):
        fx.write_uka(tmp_path)
        binarise = {"0": 0, "1": 0, "2": 1, "3": 1, "4": 1}  # a map written for graded columns
        own = {**fx.UKA_MAP, "values": binarise, "findings": {
            "EffusionLeft": "pleural_effusion_left",
            "Healthy": {"finding": "no_finding", "values": {"1": 1, "0": 0}},
        }}  # fmt: skip
        df = get_adapter("generic").build(tmp_path, column_map=own)
        healthy = pd.read_csv(tmp_path / "uka.csv")["Healthy"].to_numpy(dtype=float)
        np.testing.assert_array_equal(df["no_finding"].to_numpy(), healthy)  # 1 stays 1
        left = pd.read_csv(tmp_path / "uka.csv")["EffusionLeft"].to_numpy()
        np.testing.assert_array_equal(df["pleural_effusion_left"].to_numpy(), left >= 2)

    def test_misspelt_column_warns_with_the_closest_finding(self, tmp_path, caplog):
        fx.write_uka(tmp_path)
        with caplog.at_level("WARNING", logger="cxrprobe.data.label_columns"):
            df = get_adapter("generic").build(tmp_path, column_map=fx.UKA_MAP)
        warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert len(warned) == 1, warned  # Comment is ignored, every other column is mapped
        assert "'Cardiomegally'" in warned[0]
        assert "closest known finding: cardiomegaly" in warned[0]
        assert "Cardiomegally" not in df.columns
        caplog.clear()
        quiet = {**fx.UKA_MAP, "ignore": ["Comment", "Cardiomegally"]}
        with caplog.at_level("WARNING", logger="cxrprobe.data.label_columns"):
            get_adapter("generic").build(tmp_path, column_map=quiet)
        assert not [r for r in caplog.records if r.levelname == "WARNING"]

    def test_canonical_csv_typo_is_reported(self, tmp_path, caplog):
        pd.DataFrame(
            {"image_id": ["x1", "x2"], "patient_id": ["p1", "p2"], "Cardiomegally": [1, 0],
             "pleural_effusion": [0, 1]}
        ).to_csv(tmp_path / "labels.csv", index=False)  # fmt: skip
        with caplog.at_level("WARNING", logger="cxrprobe.data.label_columns"):
            df = get_adapter("generic").build(tmp_path, split="random", val_frac=0, test_frac=0.5)
        assert finding_columns(df) == ["pleural_effusion"]
        assert any("closest known finding: cardiomegaly" in r.getMessage() for r in caplog.records)

    def test_empty_patient_id_names_its_line(self, tmp_path):
        table = tmp_path / "hospital.csv"
        table.write_text(fx.GENERIC_TABLE.replace("b/4.png,m3,", "b/4.png,,"))
        with pytest.raises(
            DataFormatError, match=rf"{_where(table, 'b/4.png')}, column patient_id"
        ):
            get_adapter("generic").build(tmp_path, column_map=fx.GENERIC_MAP)

    def test_ragged_row_is_one_line(self, tmp_path):
        table = tmp_path / "hospital.csv"
        table.write_text(fx.GENERIC_TABLE.replace("b/4.png,m3,PA,", "b/4.png,m3,PA,extra,"))
        line = next(
            n for n, text in enumerate(table.read_text().splitlines(), start=1) if "extra" in text
        )
        with pytest.raises(DataFormatError) as error:
            get_adapter("generic").build(tmp_path, column_map=fx.GENERIC_MAP)
        assert str(error.value).startswith(f"{table}: cannot read as CSV (")
        assert str(error.value).endswith(f"Expected 10 fields in line {line}, saw 11)")
        assert "\n" not in str(error.value)

    @pytest.mark.parametrize(
        "cell, message",
        [("moderat", r", column 'Cardiomegaly': value 'moderat' is not a grade"),
         ("-2", r", column 'Cardiomegaly': value '-2' is not a grade")],
    )  # fmt: skip
    def test_bad_grade_names_row_and_column(self, tmp_path, cell, message):
        table = tmp_path / "uka.csv"
        table.write_text(
            fx.UKA_TABLE.replace("u3.png,q2,holdout,severe", f"u3.png,q2,holdout,{cell}")
        )
        with pytest.raises(DataFormatError, match=_where(table, "u3.png") + message):
            get_adapter("generic").build(tmp_path, column_map=fx.UKA_MAP)

    @pytest.mark.parametrize(
        "rule, message",
        [({"finding": "cardiomegaly", "threshold": 0}, "'threshold' must be a number above 0"),
         ({"finding": "cardiomegaly", "threshold": "2"}, "'threshold' must be a number above 0"),
         ({"finding": "cardiomegaly", "treshold": 2}, "unknown key.*treshold"),
         ({"threshold": 2}, "no 'finding'"),
         ({"finding": "cardiomegaly", "values": {"x": "one"}}, "'values' must map codes to numbers"),
         ({"finding": "cardiomegally"}, "unknown finding")],
    )  # fmt: skip
    def test_bad_column_rule_names_the_column(self, tmp_path, rule, message):
        fx.write_uka(tmp_path)
        bad = {**fx.UKA_MAP, "findings": {"Cardiomegaly": rule}}
        with pytest.raises(ConfigError, match=f"label 'Cardiomegaly'.*{message}"):
            get_adapter("generic").build(tmp_path, column_map=bad)


def test_registry_and_unknown_name():
    assert set(ADAPTERS) == {"chestxray14", "chexpert", "mimic", "vindr", "padchest", "generic"}
    with pytest.raises(ConfigError, match="known: chestxray14, chexpert"):
        get_adapter("nih")


def test_every_adapter_has_a_contract_test():
    tested = {cls.name for cls in AdapterContract.__subclasses__()}
    assert tested == set(ADAPTERS)


def test_docs_table_is_generated():
    assert DOCS.read_text() == datasets_markdown(), (
        "run: cxrprobe datasets --markdown > docs/datasets.md"
    )


# --- Real tables (skipped when ../shared/data/real is absent) --------------------------------------


@pytest.fixture(scope="module")
def real_root() -> Path:
    if not REAL_DATA.is_dir():
        pytest.skip(f"real data folder {REAL_DATA} not present")
    return REAL_DATA


@pytest.fixture(scope="module")
def nih(real_root):
    raw = pd.read_csv(real_root / "nih" / "Data_Entry_2017_v2020.csv.gz")
    return raw, get_adapter("chestxray14").build(real_root / "nih", split="random", seed=1)


def test_real_chestxray14_counts_match_raw_labels(nih):
    raw, df = nih
    assert len(df) == 112_120 and df["patient_id"].nunique() == 30_805
    names = raw["Finding Labels"].str.split("|").explode()
    direct = {
        "no_finding": ["No Finding"], "pleural_effusion": ["Effusion"], "nodule_mass": ["Mass", "Nodule"],
        "nodule": ["Nodule"], "mass": ["Mass"],
        "infiltration": ["Infiltration"], "pleural_thickening": ["Pleural_Thickening"],
        "cardiomegaly": ["Cardiomegaly"], "hernia": ["Hernia"], "pneumothorax": ["Pneumothorax"],
    }  # fmt: skip
    for finding, sources in direct.items():
        expected = names.isin(sources).groupby(level=0).any().sum()
        assert (df[finding] == 1).sum() == expected, finding
    assert df[finding_columns(df)].notna().all().all()
    assert df["view"].value_counts().to_dict() == raw["View Position"].value_counts().to_dict()


def test_real_chestxray14_split_is_patient_level(nih):
    _, df = nih
    assert (df.groupby("patient_id")["split"].nunique() == 1).all()
    patients = df.groupby("split")["patient_id"].nunique() / df["patient_id"].nunique()
    assert abs(patients["val"] - 0.1) < 0.001 and abs(patients["test"] - 0.2) < 0.001


@pytest.fixture(scope="module")
def chexpert(real_root):
    raw = pd.read_csv(real_root / "chexpert" / "train.csv.gz")
    return raw, get_adapter("chexpert").build(real_root / "chexpert", split="random")


@pytest.mark.parametrize("policy", ["ignore", "zero", "one"])
def test_real_chexpert_counts_under_each_uncertain_policy(chexpert, policy):
    raw, built = chexpert
    df = apply_uncertain(built, policy)
    assert len(df) == 223_414
    columns = {"Pleural Effusion": "pleural_effusion", "No Finding": "no_finding",
               "Lung Opacity": "lung_opacity", "Support Devices": "support_devices",
               "Enlarged Cardiomediastinum": "enlarged_cardiomediastinum", "Pneumonia": "pneumonia"}  # fmt: skip
    for column, finding in columns.items():
        ones, zeros, uncertain = ((raw[column] == v).sum() for v in (1, 0, -1))
        expected = {
            "ignore": (ones, zeros, uncertain),
            "zero": (ones, zeros + uncertain, 0),
            "one": (ones + uncertain, zeros, 0),
        }[policy]
        got = tuple((df[finding] == v).sum() for v in (1, 0, -1))
        assert got == expected, (finding, policy)
        assert df[finding].isna().sum() == raw[column].isna().sum()


def test_real_chexpert_paths_and_patients(chexpert):
    raw, df = chexpert
    assert not df["path"].str.startswith("CheXpert").any()
    assert (df["path"] == raw["Path"].str.removeprefix("CheXpert-v1.0-small/")).all()
    assert df["patient_id"].nunique() == raw["Path"].str.extract(r"(patient\d+)")[0].nunique()
    assert (df.groupby("patient_id")["split"].nunique() == 1).all()


@pytest.fixture(scope="module")
def vindr(real_root):
    raw = pd.read_csv(real_root / "vindr" / "vinbigdata-train.csv.gz")
    readers = raw.drop_duplicates(["image_id", "class_name", "rad_id"])
    votes = readers.groupby(["image_id", "class_name"])["rad_id"].nunique().unstack(fill_value=0)
    adapter = get_adapter("vindr")
    built = {rule: adapter.build(real_root / "vindr", aggregation=rule, allow_empty_test=True)
             .set_index("image_id") for rule in ("majority", "any")}  # fmt: skip
    return votes, built


@pytest.mark.parametrize("rule, needed", [("majority", 2), ("any", 1)])
def test_real_vindr_aggregation_matches_direct_vote_count(vindr, rule, needed):
    votes, built = vindr
    df = built[rule]
    assert len(df) == 15_000
    classes = {"No finding": "no_finding", "Aortic enlargement": "aortic_enlargement",
               "Cardiomegaly": "cardiomegaly", "Pleural thickening": "pleural_thickening",
               "Pulmonary fibrosis": "fibrosis", "Nodule/Mass": "nodule_mass", "Lung Opacity": "lung_opacity",
               "Pleural effusion": "pleural_effusion", "Other lesion": "other_lesion",
               "Infiltration": "infiltration", "ILD": "ild", "Calcification": "calcification",
               "Consolidation": "consolidation", "Atelectasis": "atelectasis", "Pneumothorax": "pneumothorax"}  # fmt: skip
    assert set(classes) == set(votes.columns)
    for name, finding in classes.items():
        expected = (votes[name] >= needed).reindex(df.index)
        assert (df[finding] == expected.astype(float)).all(), (rule, finding)
    assert set(finding_columns(df)) == set(classes.values())
