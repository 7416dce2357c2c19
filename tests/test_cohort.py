"""The synthetic OASIS-2-shaped cohort: layout, file format, spreadsheet, ground truth, determinism
and the ageing model. Generation happens once (the ``tiny_cohort`` session fixture) plus two runs
that check reproducibility."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from brainage.cli import app
from brainage.cohort import (
    DEMO,
    GROUND_TRUTH,
    OASIS2,
    REAL_OASIS2,
    SPREADSHEET,
    SUMMARY,
    TINY,
    aged_tissues,
    demographics,
    load_anatomy,
    measure,
    sample_cohort,
    spreadsheet_statistics,
    subject_anatomy,
    summary_table,
    synthesize,
    true_brain_age_mae,
)
from brainage.errors import InputError

COLUMNS = [
    "Subject ID", "MRI ID", "Group", "Visit", "MR Delay", "M/F", "Hand",
    "Age", "EDUC", "SES", "MMSE", "CDR", "eTIV", "nWBV", "ASF",
]  # fmt: skip  # the spreadsheet's columns in two rows


def seed_of(root: Path) -> int:
    return json.loads((root / SUMMARY).read_text())["seed"]


def hashes(root: Path) -> dict[str, str]:
    return {path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def sheet(tiny_cohort: Path) -> pd.DataFrame:
    return pd.read_excel(tiny_cohort / SPREADSHEET)


@pytest.fixture(scope="module")
def truth(tiny_cohort: Path) -> pd.DataFrame:
    return pd.read_csv(tiny_cohort / GROUND_TRUTH)


def test_layout_is_oasis2_raw(tiny_cohort: Path, sheet: pd.DataFrame) -> None:
    # no progress folder or temporary file is left once the synthesis has finished
    assert sorted(p.name for p in tiny_cohort.iterdir()) == [
        "OAS2_RAW_PART1", "OAS2_RAW_PART2", SUMMARY, GROUND_TRUTH, SPREADSHEET,
    ]  # fmt: skip  # values grouped in a row
    sessions = {p.name: p for part in ("OAS2_RAW_PART1", "OAS2_RAW_PART2") for p in (tiny_cohort / part).iterdir()}
    assert sorted(sessions) == sorted(sheet["MRI ID"])
    assert all(re.fullmatch(r"OAS2_\d{4}_MR\d", name) for name in sessions)
    for folder in sessions.values():
        assert [p.name for p in folder.iterdir()] == ["RAW"]
        assert sorted(p.name for p in (folder / "RAW").iterdir()) == [
            "mpr-1.nifti.hdr", "mpr-1.nifti.img", "mpr-2.nifti.hdr", "mpr-2.nifti.img",
        ]  # fmt: skip  # values grouped in a row
    # a subject's sessions stay in one part; both parts are used
    parts = {name[:9]: folder.parent.name for name, folder in sessions.items()}
    assert all(sessions[name].parent.name == parts[name[:9]] for name in sessions)
    assert set(parts.values()) == {"OAS2_RAW_PART1", "OAS2_RAW_PART2"}


def test_scans_have_the_oasis2_header_geometry(tiny_cohort: Path) -> None:
    image = nib.load(next(tiny_cohort.glob("OAS2_RAW_PART1/*/RAW/mpr-1.nifti.hdr")))
    assert type(image) is nib.Nifti1Pair
    assert image.get_data_dtype() == np.int16
    assert image.shape == (*TINY.shape, 1)
    assert image.header.get_zooms() == (*TINY.zooms, 1.0)
    assert image.header["qform_code"] == 1 and image.header["sform_code"] == 0
    codes = nib.aff2axcodes(image.affine)
    assert codes != ("R", "A", "S") and codes[2] in ("L", "R"), codes  # sagittal: 3rd axis left–right
    data = np.asarray(image.dataobj)[..., 0].astype(float)
    assert data.min() >= 0 and data.max() > 300
    # the head (bright voxels) sits near the world origin, the centre of the field of view
    head = np.argwhere(data > np.percentile(data, 80))
    centre = nib.affines.apply_affine(image.affine, head.mean(0))
    assert np.abs(centre).max() < 35, centre


def test_spreadsheet_has_the_oasis2_columns_and_dtypes(tiny_cohort: Path, sheet: pd.DataFrame) -> None:
    assert list(sheet.columns) == COLUMNS
    assert len(sheet) == TINY.n_sessions and sheet["Subject ID"].nunique() == TINY.n_subjects
    for column in ("Visit", "MR Delay", "Age", "EDUC", "eTIV"):
        assert pd.api.types.is_integer_dtype(sheet[column]), column
    for column in ("SES", "MMSE"):
        assert pd.api.types.is_float_dtype(sheet[column]) and sheet[column].isna().any(), column
    assert set(sheet["CDR"]) <= {0.0, 0.5, 1.0, 2.0}
    assert (sheet["nWBV"] == sheet["nWBV"].round(3)).all() and (sheet["ASF"] == (1755 / sheet["eTIV"]).round(3)).all()
    assert sheet["Age"].between(60, 96).all() and sheet["eTIV"].between(1100, 2000).all()
    assert sheet["nWBV"].between(0.6, 0.85).all()
    groups = sheet.drop_duplicates("Subject ID")["Group"].value_counts()
    assert groups.to_dict() == {"Nondemented": TINY.nondemented, "Demented": TINY.demented, "Converted": TINY.converted}
    for _, visits in sheet.groupby("Subject ID"):
        assert visits["MR Delay"].iloc[0] == 0 and (visits["MR Delay"].diff().dropna() >= 365).all()
        assert visits["eTIV"].max() < 1.05 * visits["eTIV"].min() and visits["Age"].is_monotonic_increasing
    converted = sheet[sheet["Group"] == "Converted"].sort_values("MR Delay")
    assert converted["CDR"].iloc[0] == 0 and converted["CDR"].iloc[-1] == 0.5
    assert (sheet.loc[sheet["Group"] == "Nondemented", "CDR"] == 0).all()
    numbers = sorted(int(s[5:]) for s in sheet["Subject ID"].unique())
    assert numbers[0] == 1 and numbers[-1] > len(numbers)  # subject numbers skip, as in OASIS-2
    # time stamps are fixed, so the workbook's bytes depend on its content only
    with zipfile.ZipFile(tiny_cohort / SPREADSHEET) as archive:
        assert {info.date_time for info in archive.infolist()} == {(2010, 1, 1, 0, 0, 0)}
        assert "2010-01-01T00:00:00Z" in archive.read("docProps/core.xml").decode()


def test_ground_truth_joins_one_row_per_scan(tiny_cohort: Path, sheet: pd.DataFrame, truth: pd.DataFrame) -> None:
    scans = sorted(p.relative_to(tiny_cohort).as_posix() for p in tiny_cohort.rglob("*.nifti.hdr"))
    assert sorted(truth["path"]) == scans and len(scans) == TINY.n_scans
    assert not truth.duplicated(["MRI ID", "scan"]).any()
    joined = truth.merge(sheet, on="MRI ID", how="left", validate="many_to_one", suffixes=("", "_sheet"))
    assert joined["Subject ID_sheet"].notna().all() and (joined["Age"] == joined["Age_sheet"]).all()
    assert (joined["brain_age"] == joined["age"] + joined["brain_age_offset"]).where(joined["Group"] == "Nondemented", True).all()
    assert not {"brain_age", "brain_age_offset", "age"} & set(sheet.columns)  # hidden from the spreadsheet
    summary = json.loads((tiny_cohort / SUMMARY).read_text())
    assert summary["preset"]["name"] == "tiny" and summary["counts"]["sessions"] == TINY.n_sessions
    assert summary["counts"]["scans"] == TINY.n_scans and summary["ageing_model"]["offset_sd"] == 3.0
    true_mae = (truth["brain_age"] - truth["Age"]).abs().mean()
    assert summary["true_brain_age_mae"]["scan"] == pytest.approx(true_mae, abs=1e-4) and true_mae > 1.0
    assert "perfect brain reader" in summary["true_brain_age_mae_description"]


def test_same_seed_gives_the_same_bytes_with_two_workers_from_the_cli(tiny_cohort: Path, tmp_path: Path) -> None:
    out = tmp_path / "again"
    args = ["synth", "--out", str(out), "--preset", "tiny", "--seed", str(seed_of(tiny_cohort)), "--workers", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "True brain age (a perfect brain reader)" in result.output and "48 scan(s) written" in result.output
    assert hashes(out) == hashes(tiny_cohort)
    again = CliRunner().invoke(app, args)  # the folder is no longer empty: one clear line, exit 2
    assert again.exit_code == 2 and again.stderr.strip() == f"error: {out}: already exists and is not an empty folder; choose a new one"


def test_another_seed_gives_another_cohort(tiny_cohort: Path, tmp_path: Path) -> None:
    synthesize(tmp_path, TINY, seed=seed_of(tiny_cohort) + 1)
    ours, theirs = hashes(tiny_cohort), hashes(tmp_path)
    assert ours[SPREADSHEET] != theirs[SPREADSHEET] and ours[GROUND_TRUTH] != theirs[GROUND_TRUTH]
    first = "OAS2_RAW_PART1/OAS2_0001_MR1/RAW/mpr-1.nifti.img"  # every cohort starts with this scan
    assert ours[first] != theirs[first]


def test_synthesize_refuses_a_folder_that_is_not_empty(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="already exists and is not an empty folder"):
        synthesize(tmp_path, TINY)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_ageing_grows_ventricles_and_csf_and_shrinks_grey_matter() -> None:
    subject = sample_cohort(TINY, seed=3)[0]
    space = subject_anatomy(subject, load_anatomy(TINY.resolution))
    young, old = (measure(space, aged_tissues(space, age)) for age in (62.0, 90.0))
    assert old.ventricles > 1.5 * young.ventricles
    assert old.csf > young.csf + 50 and old.gm < young.gm - 30 and old.wm < young.wm
    assert old.nwbv < young.nwbv - 0.05 and old.icv == young.icv


def test_true_brain_age_drives_the_anatomy(truth: pd.DataFrame) -> None:
    sessions = truth.drop_duplicates("MRI ID")
    assert sessions["brain_age"].corr(sessions["nwbv"]) < -0.95  # the exact tissue volumes
    for _, visits in sessions.sort_values("age").groupby("Subject ID"):
        assert visits["nwbv"].iloc[-1] < visits["nwbv"].iloc[0]


def test_the_spreadsheet_follows_from_the_records(tiny_cohort: Path, sheet: pd.DataFrame, truth: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(sheet, demographics(TINY, seed_of(tiny_cohort)), check_dtype=False)
    # the measured nWBV is the exact one plus the recorded errors, give or take the atlas's grid
    sessions = truth.drop_duplicates("MRI ID").merge(sheet, on="MRI ID")
    error = sessions["nWBV"] - sessions["nwbv"] - sessions["nwbv_error_subject"] - sessions["nwbv_error_session"]
    assert error.abs().max() < 0.02 and sessions["nwbv_error_subject"].std() > 0.01
    recorded = json.loads((tiny_cohort / SUMMARY).read_text())["spreadsheet"]
    assert recorded["synthetic"] == pytest.approx(spreadsheet_statistics(sheet), abs=5e-4)
    assert recorded["real_oasis2"] == REAL_OASIS2


def test_the_oasis2_spreadsheet_tells_as_much_as_the_real_one() -> None:
    subjects = sample_cohort(OASIS2, seed=0)
    measured = spreadsheet_statistics(demographics(OASIS2, seed=0))
    for key in ("r_age_nwbv", "r_age_nwbv_nondemented", "r_etiv_male", "r_age_etiv"):
        assert measured[key] == pytest.approx(REAL_OASIS2[key], abs=0.1), key
    assert 0.75 <= measured["ridge_to_mean_mae"] <= 0.92
    # the spreadsheet no longer reads brain age better than the true brain age itself
    assert measured["ridge_mae"] > true_brain_age_mae(subjects)["session"]


def test_the_demo_spreadsheet_is_weak_too() -> None:
    measured = spreadsheet_statistics(demographics(DEMO, seed=0))
    assert -0.75 < measured["r_age_nwbv"] < -0.3 and 0.7 < measured["ridge_to_mean_mae"] < 1.0


def test_oasis2_preset_samples_people_like_oasis2() -> None:
    subjects = sample_cohort(OASIS2, seed=0)
    sessions = [session for subject in subjects for session in subject.sessions]
    assert (len(subjects), len(sessions), sum(len(s.scans) for s in sessions)) == (150, 373, 1368)
    assert [sum(s.group == g for s in subjects) for g in ("Nondemented", "Demented", "Converted")] == [72, 64, 14]
    assert 0.55 < np.mean([s.sex == "F" for s in subjects]) < 0.65
    assert {len(s.sessions) for s in subjects} == {2, 3, 4, 5} and {len(s.scans) for s in sessions} == {3, 4}
    ages = [s.age_years for s in sessions]
    assert min(ages) >= 60 and max(ages) <= 96 and 6 < np.std(ages) < 9
    assert sample_cohort(OASIS2, seed=0) == subjects and sample_cohort(OASIS2, seed=1) != subjects


def test_a_cohort_without_a_group_is_summarised_without_it(tmp_path: Path) -> None:
    no_converted = dataclasses.replace(TINY, name="no-converted", nondemented=4, demented=1, converted=0, visits=((1, 5),), repeats=((1, 5),))
    table = summary_table(synthesize(tmp_path, no_converted, seed=3, workers=1))
    assert table["group"].tolist() == ["Nondemented", "Demented", "all"]
    assert table.set_index("group").loc["all", "subjects"] == 5 and table["eTIV"].notna().all()
