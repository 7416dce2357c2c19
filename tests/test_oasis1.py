"""OASIS-1 cross-sectional layout: ``disc*/OAS1_*_MR*/RAW/*_anon.hdr|img`` with oasis_cross-sectional.csv."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from brainage.cli import app
from brainage.io import discover
from brainage.io.oasis1 import group_from_cdr
from brainage.predict import find_inputs

COLUMNS = ["ID", "M/F", "Hand", "Age", "Educ", "SES", "MMSE", "CDR", "eTIV", "nWBV", "ASF", "Delay"]


def write_pair(path: Path, seed: int) -> Path:
    """An Analyze-style NIfTI pair, as OASIS-1 ships its raw scans."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(seed).uniform(0, 100, (8, 8, 6, 1)).astype(np.int16)
    nib.save(nib.Nifti1Pair(data, np.eye(4)), path)
    return path


def make_oasis1(root: Path) -> Path:
    """Two discs; a young person without CDR, a demented one, a control with a reliability re-scan."""
    layout = {
        "disc1": {"OAS1_0001_MR1": 2, "OAS1_0002_MR1": 1},
        "disc2": {"OAS1_0003_MR1": 3, "OAS1_0003_MR2": 2, "OAS1_0004_MR1": 1},
    }
    seed = 0
    for disc, sessions in layout.items():
        for session, repeats in sessions.items():
            for n in range(1, repeats + 1):
                seed += 1
                write_pair(root / disc / session / "RAW" / f"{session}_mpr-{n}_anon.hdr", seed)
            (root / disc / session / "PROCESSED").mkdir()
    rows = [
        ["OAS1_0001_MR1", "F", "R", 21, "", "", "", "", 1600, 0.85, 1.1, ""],
        ["OAS1_0002_MR1", "M", "R", 74, 2, 3, 24, 0.5, 1500, 0.70, 1.2, ""],
        ["OAS1_0003_MR1", "F", "R", 80, 4, 1, 30, 0, 1400, 0.72, 1.25, ""],
        ["OAS1_0003_MR2", "F", "R", "", "", "", "", "", 1410, 0.72, 1.24, 20],
        ["OAS1_0005_MR1", "M", "R", 66, 3, 2, 29, 0, 1500, 0.75, 1.2, ""],
    ]
    pd.DataFrame(rows, columns=COLUMNS).to_csv(root / "oasis_cross-sectional.csv", index=False)
    return root


def test_group_from_cdr() -> None:
    assert [group_from_cdr(value) for value in (0, "0", 0.5, 2, None, "", "N/A")] == [
        "Nondemented", "Nondemented", "Demented", "Demented", None, None, None,
    ]  # fmt: skip  # values grouped in a row


def test_discs_and_csv_are_discovered(tmp_path: Path) -> None:
    root = make_oasis1(tmp_path / "oasis1")
    found = discover(root)
    assert found.kind == "oasis1" and found.demographics == root / "oasis_cross-sectional.csv"
    manifest = found.manifest.set_index("scan_id")
    assert manifest.index.tolist() == [
        "OAS1_0001_MR1_mpr-1", "OAS1_0001_MR1_mpr-2", "OAS1_0002_MR1_mpr-1", "OAS1_0003_MR1_mpr-1",
        "OAS1_0003_MR1_mpr-2", "OAS1_0003_MR1_mpr-3", "OAS1_0003_MR2_mpr-1", "OAS1_0003_MR2_mpr-2",
    ]  # fmt: skip  # ids grouped in rows
    assert manifest["path"].str.endswith("_anon.hdr").all()
    assert manifest.loc["OAS1_0001_MR1_mpr-1", "group"] != manifest.loc["OAS1_0001_MR1_mpr-1", "group"]  # no CDR: unknown
    assert manifest.loc["OAS1_0002_MR1_mpr-1", ["group", "cdr", "mmse"]].tolist() == ["Demented", 0.5, 24.0]
    rescan = manifest.loc["OAS1_0003_MR2_mpr-1"]
    assert rescan["subject_id"] == "OAS1_0003" and rescan["session_id"] == "OAS1_0003_MR2"
    assert rescan["age"] == pytest.approx(80 + 20 / 365.25) and rescan["mr_delay"] == 20.0
    assert rescan["group"] == "Nondemented" and rescan["cdr"] == 0.0 and rescan["etiv"] == 1410.0
    assert manifest.loc["OAS1_0003_MR1_mpr-1", "mr_delay"] == 0.0
    assert [Path(problem.path).name for problem in found.problems] == ["OAS1_0004_MR1_mpr-1_anon.hdr"]
    assert "no row for ID OAS1_0004_MR1" in found.problems[0].cause
    assert found.rows_without_scans == ["OAS1_0005_MR1"]


def test_bad_rows_and_files_are_one_line_problems_and_the_rest_goes_on(tmp_path: Path) -> None:
    root = make_oasis1(tmp_path / "oasis1")
    frame = pd.read_csv(root / "oasis_cross-sectional.csv", dtype=str)
    frame.loc[1, "Age"] = "old"
    frame.to_csv(root / "oasis_cross-sectional.csv", index=False)
    (root / "disc2/OAS1_0003_MR1/RAW/OAS1_0003_MR1_mpr-2_anon.img").unlink()
    found = discover(root)
    causes = {(Path(problem.path).name, problem.cause) for problem in found.problems}
    assert ("oasis_cross-sectional.csv", "row 3 (OAS1_0002_MR1): non-numeric Age 'old'") in causes
    assert any(name == "OAS1_0003_MR1_mpr-2_anon.hdr" and "missing image file" in cause for name, cause in causes)
    assert len(found.manifest) == 6


def test_csv_in_the_parent_and_demographics_option(tmp_path: Path) -> None:
    root = make_oasis1(tmp_path / "oasis1")
    moved = tmp_path / "elsewhere.csv"
    (root / "oasis_cross-sectional.csv").rename(moved)
    assert len(discover(root, demographics=moved).manifest) == 8
    moved.rename(root / "oasis_cross-sectional.csv")
    assert len(discover(root / "disc2").manifest) == 5  # one disc; the spreadsheet in its parent


def test_inspect_and_predict_inputs(tmp_path: Path) -> None:
    root = make_oasis1(tmp_path / "oasis1")
    result = CliRunner().invoke(app, ["inspect", str(root)])
    assert result.exit_code == 0, result.output
    assert "oasis1" in result.output and "Demented 1" in result.output
    rows, problems = find_inputs(root)
    assert len(rows) == 8 and rows["age"].notna().all() and len(problems) == 1


def test_the_oasis1_preset_is_sized_like_oasis1() -> None:
    from brainage.cohort import AGEING, get_preset, sample_cohort

    preset = get_preset("oasis1")
    people = sample_cohort(preset, 0)
    first = np.array([person.sessions[0].age for person in people])
    groups = np.array([person.group for person in people])
    assert len(people) == 416 and preset.n_sessions == 436 and sum(len(p.sessions) == 2 for p in people) == 20
    assert 18 <= first.min() < 25 and 90 < first.max() < 97 and (first < 60).sum() > 100
    assert first[groups == "Demented"].min() >= 60 and (groups == "Demented").sum() == 100
    delays = [person.sessions[1].mr_delay for person in people if len(person.sessions) == 2]
    assert max(delays) < 120  # re-scans days later, as OASIS-1's reliability sessions
    assert AGEING.atrophy(25) < AGEING.atrophy(40) < AGEING.atrophy(59)  # anatomy changes below 60 too


@pytest.mark.slow
def test_synth_writes_the_oasis1_layout_that_discovery_reads(tmp_path: Path, tiny_cohort: Path) -> None:
    out = tmp_path / "oasis1"
    result = CliRunner().invoke(app, ["synth", "--out", str(out), "--preset", "tiny", "--layout", "oasis1", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert sorted(path.name for path in out.iterdir()) == ["cohort.json", "disc1", "ground_truth.csv", "oasis_cross-sectional.csv"]
    sheet = pd.read_csv(out / "oasis_cross-sectional.csv")
    assert sheet.columns.tolist() == COLUMNS
    found = discover(out)
    assert found.kind == "oasis1" and found.problems == [] and len(found.manifest) == 48
    assert found.manifest["subject_id"].str.match(r"OAS1_\d{4}$").all()
    rescans = sheet[sheet["Delay"].notna()]
    assert len(rescans) == 12 and rescans[["Educ", "SES", "MMSE", "CDR"]].isna().all().all()
    # the same people and voxels as the OASIS-2 layout of the same seed
    truth = pd.read_csv(out / "ground_truth.csv")
    row = truth.iloc[0]
    original = (
        tiny_cohort
        / pd.read_csv(tiny_cohort / "ground_truth.csv").set_index(["MRI ID", "scan"]).loc[(row["MRI ID"].replace("OAS1_", "OAS2_"), row["scan"]), "path"]
    )
    assert (out / row["path"]).with_suffix(".img").read_bytes() == Path(original).with_suffix(".img").read_bytes()
