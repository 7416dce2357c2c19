"""Discovery of OASIS-2, BIDS and table sources on real (tiny) files, and `brainage inspect`."""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from brainage.cli import app
from brainage.errors import InputError
from brainage.io import (
    CORE_COLUMNS,
    DEMOGRAPHICS_COLUMNS,
    OASIS_EXTRA_COLUMNS,
    check_scans,
    discover,
    load_scan,
    read_demographics,
    read_manifest,
    summarize,
    validate_manifest,
    write_manifest,
)

SHAPE = (8, 8, 6)


def write_scan(path: Path, seed: int = 0, data: np.ndarray | None = None) -> Path:
    """A tiny random volume; a ``.hdr`` name gives an Analyze-style NIfTI pair like OASIS's."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if data is None:
        data = np.random.default_rng(seed).uniform(0, 100, (*SHAPE, 1)).astype(np.int16)
    kind = nib.Nifti1Pair if path.name.endswith(".hdr") else nib.Nifti1Image
    nib.save(kind(data, np.eye(4)), path)
    return path


def oasis_row(session: str, age: object = 75, sex: str = "F", group: str = "Nondemented", cdr: float = 0.0) -> dict:
    subject, visit = session.rsplit("_MR", 1)
    return {
        "Subject ID": subject, "MRI ID": session, "Group": group, "Visit": int(visit), "MR Delay": 0,
        "M/F": sex, "Hand": "R", "Age": age, "EDUC": 14, "SES": 2.0, "MMSE": 29.0, "CDR": cdr,
        "eTIV": 1500, "nWBV": 0.75, "ASF": 1.2,
    }  # fmt: skip  # keys grouped in rows


def make_oasis(
    root: Path,
    layout: dict[str, dict[str, int]],
    rows: list[dict] | None = None,
    sheet: Path | None = None,
) -> Path:
    """Write ``root/<part>/<MRI ID>/RAW/mpr-<n>.nifti.hdr|img`` (part "" = directly under root)
    and, unless ``sheet`` is None, the spreadsheet (.xlsx or .csv by its suffix)."""
    seed = 0
    for part, sessions in layout.items():
        for session, repeats in sessions.items():
            for n in range(1, repeats + 1):
                seed += 1
                write_scan(root / part / session / "RAW" / f"mpr-{n}.nifti.hdr", seed)
    if sheet is not None:
        if rows is None:
            rows = [oasis_row(s) for s in dict.fromkeys(s for sessions in layout.values() for s in sessions)]
        frame = pd.DataFrame(rows)
        if sheet.suffix == ".xlsx":
            frame.to_excel(sheet, index=False)
        else:
            frame.to_csv(sheet, index=False)
    return root


TWO_PARTS = {
    "OAS2_RAW_PART1": {"OAS2_0001_MR1": 3, "OAS2_0001_MR2": 2},
    "OAS2_RAW_PART2": {"OAS2_0002_MR1": 4},
}


# --- OASIS-2 --------------------------------------------------------------------------------------


def test_oasis_both_parts_xlsx(tmp_path: Path) -> None:
    root = tmp_path / "oasis"
    rows = [
        oasis_row("OAS2_0001_MR1", 70, "M", "Converted", 0.0),
        oasis_row("OAS2_0001_MR2", 72, "M", "Converted", 0.5),
        oasis_row("OAS2_0002_MR1", 88, "F", "Demented", 1.0),
    ]
    make_oasis(root, TWO_PARTS, rows, root / "oasis_longitudinal_demographics.xlsx")
    found = discover(root)
    manifest = found.manifest
    assert found.kind == "oasis2" and found.problems == [] and found.rows_without_scans == []
    assert found.demographics == root / "oasis_longitudinal_demographics.xlsx"
    assert list(manifest.columns) == [*CORE_COLUMNS, *OASIS_EXTRA_COLUMNS]
    assert manifest["scan_id"].tolist() == [
        "OAS2_0001_MR1_mpr-1", "OAS2_0001_MR1_mpr-2", "OAS2_0001_MR1_mpr-3",
        "OAS2_0001_MR2_mpr-1", "OAS2_0001_MR2_mpr-2",
        "OAS2_0002_MR1_mpr-1", "OAS2_0002_MR1_mpr-2", "OAS2_0002_MR1_mpr-3", "OAS2_0002_MR1_mpr-4",
    ]  # fmt: skip  # a session's scans per row
    assert manifest["subject_id"].tolist() == ["OAS2_0001"] * 5 + ["OAS2_0002"] * 4
    assert manifest["age"].tolist() == [70.0] * 3 + [72.0] * 2 + [88.0] * 4
    assert manifest["age"].dtype == np.float64 and manifest["cdr"].dtype == np.float64
    assert manifest["cdr"].tolist() == [0.0] * 3 + [0.5] * 2 + [1.0] * 4
    assert set(manifest["sex"]) == {"M", "F"}
    assert manifest.loc[8, "group"] == "Demented" and manifest.loc[8, "etiv"] == 1500.0
    assert all(Path(p).is_absolute() and p.endswith(".nifti.hdr") for p in manifest["path"])
    assert "OAS2_RAW_PART2" in manifest.loc[8, "path"]
    assert load_scan(manifest.loc[0, "path"]).data.shape == SHAPE


def test_oasis_csv_in_parent_and_sessions_directly_under_root(tmp_path: Path) -> None:
    root = tmp_path / "data"
    sheet = tmp_path / "oasis_longitudinal_demographics-8d83e569fa2e2d30.csv"
    make_oasis(root, {"": {"OAS2_0001_MR1": 2, "OAS2_0002_MR1": 1}}, sheet=sheet)
    found = discover(root)
    assert found.demographics == sheet and found.problems == []
    assert found.manifest["session_id"].tolist() == ["OAS2_0001_MR1"] * 2 + ["OAS2_0002_MR1"]


def test_oasis_one_level_down_after_untarring(tmp_path: Path) -> None:
    make_oasis(tmp_path / "downloads", TWO_PARTS, sheet=None)
    rows = [oasis_row(s) for sessions in TWO_PARTS.values() for s in sessions]
    pd.DataFrame(rows).to_csv(tmp_path / "OASIS_demographics.csv", index=False)
    found = discover(tmp_path)
    assert len(found.manifest) == 9 and found.problems == []


def test_explicit_demographics_wins_over_the_one_found(tmp_path: Path) -> None:
    root = make_oasis(tmp_path / "oasis", {"": {"OAS2_0001_MR1": 1}}, sheet=tmp_path / "oasis" / "x_demographics.csv")
    other = tmp_path / "elsewhere" / "ages.xlsx"
    other.parent.mkdir()
    pd.DataFrame([oasis_row("OAS2_0001_MR1", age=91)]).to_excel(other, index=False)
    found = discover(root, demographics=other)
    assert found.demographics == other
    assert found.manifest["age"].tolist() == [91.0]


def test_demographics_not_found_or_ambiguous(tmp_path: Path) -> None:
    root = make_oasis(tmp_path / "oasis", {"": {"OAS2_0001_MR1": 1}})
    with pytest.raises(InputError, match=r"no \*demographics\*.xlsx or .csv .* --demographics"):
        discover(root)
    for name in ("a_demographics.csv", "b_demographics.csv"):
        pd.DataFrame([oasis_row("OAS2_0001_MR1")]).to_csv(root / name, index=False)
    with pytest.raises(InputError, match="several demographics spreadsheets"):
        discover(root)
    pd.DataFrame([oasis_row("OAS2_0001_MR1", age=66)]).to_excel(root / "c_demographics.xlsx", index=False)
    assert discover(root).manifest["age"].tolist() == [66.0]  # the original .xlsx is preferred


def test_oasis_bad_items_are_listed_and_the_rest_goes_on(tmp_path: Path) -> None:
    root = tmp_path / "oasis"
    layout = {
        "OAS2_RAW_PART1": {"OAS2_0001_MR1": 2, "OAS2_0002_MR1": 1, "OAS2_0003_MR1": 1, "OAS2_0004_MR1": 1},
        "OAS2_RAW_PART2": {"OAS2_0005_MR1": 1, "OAS2_0006_MR1": 1, "OAS2_0099_MR1": 1},
    }
    rows = [
        oasis_row("OAS2_0001_MR1"),
        oasis_row("OAS2_0002_MR1", age="unknown"),
        oasis_row("OAS2_0003_MR1", age=None),
        oasis_row("OAS2_0004_MR1"),
        oasis_row("OAS2_0005_MR1", age=80),
        oasis_row("OAS2_0005_MR1", age=81),
        oasis_row("OAS2_0006_MR1"),
        oasis_row("OAS2_0007_MR1"),
    ]
    sheet = tmp_path / "oasis_longitudinal_demographics.csv"
    make_oasis(root, layout, rows, sheet)
    part1 = root / "OAS2_RAW_PART1"
    (part1 / "OAS2_0001_MR1/RAW/mpr-2.nifti.img").unlink()
    truncated = part1 / "OAS2_0004_MR1/RAW/mpr-1.nifti.img"
    truncated.write_bytes(truncated.read_bytes()[:100])
    four_d = root / "OAS2_RAW_PART2/OAS2_0006_MR1/RAW/mpr-2.nifti.hdr"
    write_scan(four_d, data=np.ones((*SHAPE, 2), np.int16))

    found = discover(root)
    causes = {(Path(p.path).name, p.cause) for p in found.problems}
    assert ("mpr-2.nifti.hdr", "missing image file mpr-2.nifti.img beside it") in causes
    assert any(name == "mpr-1.nifti.img" and cause.startswith("truncated") for name, cause in causes)
    assert any(name == "mpr-2.nifti.hdr" and "2 volumes" in cause for name, cause in causes)
    assert (sheet.name, "row 3 (OAS2_0002_MR1): non-numeric age 'unknown'") in causes
    assert (sheet.name, "row 4 (OAS2_0003_MR1): missing age") in causes
    assert (sheet.name, "duplicate MRI ID OAS2_0005_MR1 (rows 6, 7): left out") in causes
    assert ("mpr-1.nifti.hdr", f"no row for MRI ID OAS2_0099_MR1 in {sheet.name}") in causes
    assert len(found.problems) == 7
    assert found.scans_without_rows == [str(root / "OAS2_RAW_PART2/OAS2_0099_MR1/RAW/mpr-1.nifti.hdr")]
    assert found.rows_without_scans == ["OAS2_0007_MR1"]
    summary = summarize(found).set_index("item")["value"]
    assert summary["rows without scans"] == "1 (OAS2_0007_MR1)" and summary["problems"] == "7"
    assert summary["scans without a spreadsheet row"] == "1"
    assert found.manifest["scan_id"].tolist() == ["OAS2_0001_MR1_mpr-1", "OAS2_0006_MR1_mpr-1"]


def test_duplicate_session_folder_in_both_parts_is_left_out(tmp_path: Path) -> None:
    layout = {"OAS2_RAW_PART1": {"OAS2_0001_MR1": 1}, "OAS2_RAW_PART2": {"OAS2_0001_MR1": 1, "OAS2_0002_MR1": 1}}
    root = make_oasis(tmp_path / "o", layout, sheet=tmp_path / "demographics.csv")
    found = discover(root)
    assert found.manifest["scan_id"].tolist() == ["OAS2_0002_MR1_mpr-1"]
    assert [p.cause for p in found.problems] == ["duplicate scan_id OAS2_0001_MR1_mpr-1: left out with every copy"] * 2


@pytest.mark.parametrize("suffix", [".xlsx", ".csv"])
def test_read_demographics_names_columns_and_parses_numbers(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"demographics{suffix}"
    rows = [oasis_row("OAS2_0001_MR1", age=87), oasis_row("OAS2_0001_MR2", age="n/a")]
    frame = pd.DataFrame(rows).rename(columns={"M/F": "m/f", "MR Delay": "MR delay"}).drop(columns=["Hand"])
    (frame.to_excel if suffix == ".xlsx" else frame.to_csv)(path, index=False)
    demographics = read_demographics(path)
    assert list(demographics.columns) == list(DEMOGRAPHICS_COLUMNS)
    assert demographics["Age"].tolist()[0] == 87.0 and math.isnan(demographics["Age"].tolist()[1])
    assert demographics["M/F"].tolist() == ["F", "F"] and demographics["Hand"].isna().all()


@pytest.mark.parametrize("heading", ["Sex", "sex", "Gender", "M/F"])
def test_the_sex_column_is_read_under_its_usual_headings(tmp_path: Path, heading: str) -> None:
    """A public CSV export of OASIS-2 heads the column Sex: it must not come back as missing."""
    root = make_oasis(tmp_path / "o", {"": {"OAS2_0001_MR1": 1, "OAS2_0002_MR1": 1}})
    rows = [oasis_row("OAS2_0001_MR1", sex="M"), oasis_row("OAS2_0002_MR1", sex="F")]
    pd.DataFrame(rows).rename(columns={"M/F": heading}).to_csv(root / "demographics.csv", index=False)
    assert discover(root).manifest["sex"].tolist() == ["M", "F"]


def test_a_scan_table_reads_a_gender_column_as_sex(tmp_path: Path) -> None:
    write_scan(tmp_path / "a.nii.gz")
    table = tmp_path / "scans.csv"
    pd.DataFrame({"path": ["a.nii.gz"], "subject_id": ["s1"], "age": [70], "Gender": ["female"]}).to_csv(table, index=False)
    assert discover(table).manifest["sex"].tolist() == ["F"]


# --- BIDS -----------------------------------------------------------------------------------------


def make_bids(root: Path) -> Path:
    (root / "dataset_description.json").parent.mkdir(parents=True)
    (root / "dataset_description.json").write_text('{"Name": "tiny", "BIDSVersion": "1.9.0"}')
    write_scan(root / "sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz", 1)
    write_scan(root / "sub-01/ses-2/anat/sub-01_ses-2_T1w.nii.gz", 2)
    write_scan(root / "sub-02/anat/sub-02_T1w.nii", 3)
    write_scan(root / "sub-02/anat/sub-02_run-2_T1w.nii.gz", 4)
    write_scan(root / "sub-03/anat/sub-03_T1w.nii.gz", 5)
    (root / "sub-02/anat/sub-02_T1w.json").write_text("{}")
    pd.DataFrame(
        {
            "participant_id": ["sub-01", "sub-02", "sub-03", "sub-04"],
            "age": ["60", "45.5", "n/a", "30"],
            "sex": ["male", "F", "F", "M"],
            "group": ["control", "patient", "control", "control"],
        }
    ).to_csv(root / "participants.tsv", sep="\t", index=False)
    return root


def test_bids_without_sessions_tsv(tmp_path: Path) -> None:
    found = discover(make_bids(tmp_path / "bids"))
    manifest = found.manifest
    assert found.kind == "bids"
    assert manifest["scan_id"].tolist() == ["sub-01_ses-1_T1w", "sub-01_ses-2_T1w", "sub-02_T1w", "sub-02_run-2_T1w"]
    assert manifest["session_id"].tolist() == ["sub-01_ses-1", "sub-01_ses-2", "sub-02", "sub-02"]
    assert manifest["age"].tolist() == [60.0, 60.0, 45.5, 45.5]
    assert manifest["sex"].tolist() == ["M", "M", "F", "F"]
    assert manifest["group"].tolist() == ["control", "control", "patient", "patient"]
    assert [(Path(p.path).name, p.cause) for p in found.problems] == [("participants.tsv", "sub-03: missing age")]
    assert found.rows_without_scans == ["sub-04"]


def test_bids_sessions_tsv_ages_override(tmp_path: Path) -> None:
    root = make_bids(tmp_path / "bids")
    pd.DataFrame({"session_id": ["ses-1", "2"], "age": ["61.2", "n/a"], "scanner": ["A", "B"]}).to_csv(
        root / "sub-01/sub-01_sessions.tsv", sep="\t", index=False
    )
    write_scan(root / "sub-05/anat/sub-05_T1w.nii.gz", 6)  # no participants row
    found = discover(root)
    manifest = found.manifest.set_index("scan_id")
    assert manifest.loc["sub-01_ses-1_T1w", "age"] == 61.2
    assert manifest.loc["sub-01_ses-2_T1w", "age"] == 60.0  # n/a in sessions.tsv: participants.tsv
    assert manifest.loc["sub-01_ses-1_T1w", "scanner"] == "A" and manifest.loc["sub-01_ses-2_T1w", "scanner"] == "B"
    assert found.scans_without_rows == [str(root / "sub-05/anat/sub-05_T1w.nii.gz")]


def test_bids_without_any_age_is_fatal(tmp_path: Path) -> None:
    root = tmp_path / "bids"
    write_scan(root / "sub-01/anat/sub-01_T1w.nii.gz")
    with pytest.raises(InputError) as info:
        discover(root)
    assert info.value.path == str(root / "participants.tsv") and "file not found" in info.value.cause


# --- table ----------------------------------------------------------------------------------------


def test_table_with_relative_paths(tmp_path: Path) -> None:
    write_scan(tmp_path / "scans/a.nii.gz", 1)
    write_scan(tmp_path / "scans/b/t1.nii", 2)
    write_scan(tmp_path / "scans/c/t1.nii", 3)
    table = tmp_path / "lists/scans.csv"
    table.parent.mkdir()
    pd.DataFrame(
        {
            "Path": ["../scans/a.nii.gz", str(tmp_path / "scans/b/t1.nii"), "../scans/c/t1.nii", "../scans/d.nii"],
            "Subject ID": ["s2", "s1", "s1", "s3"],
            "Session_ID": [None, "v1", "v2", None],
            "Age": ["33", "40.5", "41", "20"],
            "diagnosis": ["x", "y", "z", "w"],
        }
    ).to_csv(table, index=False)
    found = discover(table)
    manifest = found.manifest
    assert found.kind == "table"
    assert manifest["scan_id"].tolist() == ["v1_t1", "v2_t1", "s2_a"]  # stems repeat: session prefix
    assert manifest["path"].tolist() == [
        str(tmp_path / "scans/b/t1.nii"), str(tmp_path / "scans/c/t1.nii"), str(tmp_path / "scans/a.nii.gz"),
    ]  # fmt: skip  # values grouped in a row
    assert manifest["session_id"].tolist() == ["v1", "v2", "s2"]
    assert manifest["diagnosis"].tolist() == ["y", "z", "x"]
    assert manifest["sex"].isna().all() and manifest["cdr"].isna().all()
    assert [(p.path, p.cause) for p in found.problems] == [(str(tmp_path / "scans/d.nii"), "file not found")]


def test_table_bad_rows_and_missing_columns(tmp_path: Path) -> None:
    write_scan(tmp_path / "a.nii.gz")
    table = tmp_path / "scans.csv"
    rows = {"path": ["a.nii.gz", "a.nii.gz", None], "subject_id": ["s1", "s2", "s3"], "age": ["abc", "-4", "50"]}
    pd.DataFrame(rows).to_csv(table, index=False)
    found = discover(table)
    assert found.manifest.empty
    assert [p.cause for p in found.problems] == [
        "row 2 (a.nii.gz): non-numeric age 'abc'",
        "row 3 (a.nii.gz): age -4 is outside 0–130 years",
        "row 4: missing path",
    ]
    pd.DataFrame({"path": ["a.nii.gz"], "age": [50]}).to_csv(table, index=False)
    with pytest.raises(InputError, match="missing column\\(s\\): subject_id"):
        discover(table)


def test_source_that_cannot_be_told_apart(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="cannot tell what this folder holds"):
        discover(tmp_path)
    with pytest.raises(InputError, match=r"not a folder nor a .csv/.tsv table"):
        discover(tmp_path / "notes.txt")
    with pytest.raises(InputError, match="no such file or folder"):
        discover(tmp_path / "absent")
    (tmp_path / "OAS2_RAW_PART1.tar.gz").write_bytes(b"")
    with pytest.raises(InputError, match="extract it first"):
        discover(tmp_path)


# --- manifest, summary, data check ----------------------------------------------------------------


def test_manifest_validation_and_round_trip(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "scan_id": ["b", "a"], "subject_id": ["s10", "s2"], "session_id": ["s10", "s2"], "path": ["/x", "/y"],
            "age": ["70", 65], "sex": ["female", None], "group": [None, "g"], "cdr": [None, "0.5"],
        }
    )  # fmt: skip  # columns grouped in rows
    manifest = validate_manifest(frame, "test")
    assert manifest["subject_id"].tolist() == ["s2", "s10"]  # natural order
    assert manifest["age"].tolist() == [65.0, 70.0] and manifest["sex"].tolist()[1] == "F"
    path = tmp_path / "manifest.csv"
    write_manifest(manifest, path)
    pd.testing.assert_frame_equal(read_manifest(path), manifest)
    with pytest.raises(InputError, match="test: missing column\\(s\\): cdr"):
        validate_manifest(frame.drop(columns="cdr"), "test")
    with pytest.raises(InputError, match="duplicate scan_id: a"):
        validate_manifest(frame.assign(scan_id="a"), "test")
    with pytest.raises(InputError, match="age must be finite"):
        validate_manifest(frame.assign(age=[70, math.inf]), "test")


def test_summary_and_data_check(tmp_path: Path) -> None:
    root = make_oasis(tmp_path / "o", TWO_PARTS, sheet=tmp_path / "demographics.xlsx")
    flat = root / "OAS2_RAW_PART2/OAS2_0002_MR1/RAW/mpr-3.nifti.hdr"
    write_scan(flat, data=np.full((*SHAPE, 1), 3, np.int16))
    found = discover(root)
    summary = dict(zip(summarize(found)["item"], summarize(found)["value"], strict=False))
    assert summary["subjects"] == "2" and summary["sessions"] == "3" and summary["scans"] == "9"
    assert summary["age range (years)"] == "75.0–75.0 (mean 75.0)"
    assert summary["sessions per group"] == "Nondemented 3"
    assert summary["problems"] == "0"
    for workers in (1, 2):
        problems = check_scans(found.manifest["path"], workers=workers)
        assert [(p.path, p.cause) for p in problems] == [(str(flat), "constant image (every voxel is 3)")]


# --- CLI ------------------------------------------------------------------------------------------


def test_inspect_prints_summary_and_problems(tmp_path: Path) -> None:
    (tmp_path / "sheets").mkdir()
    sheet = tmp_path / "sheets/ages.csv"  # not found automatically: given with --demographics
    root = make_oasis(tmp_path / "o", TWO_PARTS, sheet=sheet)
    (root / "OAS2_RAW_PART1/OAS2_0001_MR2/RAW/mpr-1.nifti.img").unlink()
    write_scan(root / "OAS2_RAW_PART2/OAS2_0002_MR1/RAW/mpr-2.nifti.hdr", data=np.zeros((*SHAPE, 1), np.int16))
    result = CliRunner().invoke(app, ["inspect", str(root), "--demographics", str(sheet), "--check-data"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert any("subjects" in line and " 2 " in line for line in lines)
    assert any("scans " in line and " 8 " in line for line in lines)
    assert any("missing image file mpr-1.nifti.img beside it" in line for line in lines)
    assert any("mpr-2.nifti.hdr: constant image (every voxel is 0)" in line for line in lines)
    assert any("scans that fail to load" in line and " 1 " in line for line in lines)


def test_inspect_fatal_error_is_one_red_line_and_exit_2(tmp_path: Path) -> None:
    root = make_oasis(tmp_path / "o", {"": {"OAS2_0001_MR1": 1}})
    sheet = tmp_path / "demographics.csv"
    pd.DataFrame([oasis_row("OAS2_0001_MR1")]).drop(columns="MRI ID").to_csv(sheet, index=False)
    result = CliRunner().invoke(app, ["inspect", str(root)])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [f"error: {sheet}: missing column(s): MRI ID"]
    assert "Traceback" not in result.output


# --- the shared synthetic cohort ------------------------------------------------------------------


def test_tiny_cohort_is_discovered_whole(tiny_cohort: Path) -> None:
    found = discover(tiny_cohort)
    assert found.kind == "oasis2"
    assert found.problems == [] and found.scans_without_rows == []
    manifest = found.manifest
    assert len(manifest) > 0 and manifest["subject_id"].nunique() > 1
    assert (manifest.groupby("session_id")["subject_id"].nunique() == 1).all()
    assert check_scans(manifest["path"]) == []
