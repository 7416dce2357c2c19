"""BIDS as OASIS-3 ships it: sessions named by days since entry, ``acq``/``run`` repeat scans of one
session, per-session ages from ``sessions.tsv``."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from brainage.io import discover


def write_scan(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(seed).uniform(0, 100, (8, 8, 6)).astype(np.int16)
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return path


def make_oasis3(root: Path) -> Path:
    """Two OASIS-3 people: one with two acquisitions and two runs at ses-d0000, one seen twice."""
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text('{"Name": "oasis3-like", "BIDSVersion": "1.9.0"}')
    write_scan(root / "sub-OAS30001/ses-d0000/anat/sub-OAS30001_ses-d0000_acq-TSE_run-01_T1w.nii.gz", 1)
    write_scan(root / "sub-OAS30001/ses-d0000/anat/sub-OAS30001_ses-d0000_acq-TSE_run-02_T1w.nii.gz", 2)
    write_scan(root / "sub-OAS30001/ses-d0000/anat/sub-OAS30001_ses-d0000_acq-MPRAGE_T1w.nii.gz", 3)
    write_scan(root / "sub-OAS30002/ses-d0365/anat/sub-OAS30002_ses-d0365_run-01_T1w.nii.gz", 4)
    write_scan(root / "sub-OAS30002/ses-d1461/anat/sub-OAS30002_ses-d1461_run-01_T1w.nii.gz", 5)
    pd.DataFrame({"participant_id": ["sub-OAS30001", "sub-OAS30002"], "AgeatEntry": ["65.2", "70"], "sex": ["F", "M"]}).to_csv(
        root / "participants.tsv", sep="\t", index=False
    )
    return root


def test_oasis3_days_sessions_and_repeat_scans(tmp_path: Path) -> None:
    found = discover(make_oasis3(tmp_path / "oasis3"))
    manifest = found.manifest.set_index("scan_id")
    assert found.problems == []
    first = manifest[manifest["subject_id"] == "sub-OAS30001"]
    assert len(first) == 3 and set(first["session_id"]) == {"sub-OAS30001_ses-d0000"}
    assert sorted(first["acq"]) == ["MPRAGE", "TSE", "TSE"]
    assert manifest.loc["sub-OAS30001_ses-d0000_acq-TSE_run-02_T1w", "run"] == "02"
    assert first["age"].tolist() == [65.2] * 3
    second = manifest[manifest["subject_id"] == "sub-OAS30002"].sort_values("session_id")
    assert second["session_id"].tolist() == ["sub-OAS30002_ses-d0365", "sub-OAS30002_ses-d1461"]
    assert second["age"].tolist() == pytest.approx([70 + 365 / 365.25, 70 + 1461 / 365.25])


def test_sessions_tsv_age_wins_over_days_since_entry(tmp_path: Path) -> None:
    root = make_oasis3(tmp_path / "oasis3")
    pd.DataFrame({"session_id": ["ses-d0365"], "age": ["71.5"]}).to_csv(root / "sub-OAS30002/sub-OAS30002_sessions.tsv", sep="\t", index=False)
    manifest = discover(root).manifest.set_index("session_id")
    assert manifest.loc["sub-OAS30002_ses-d0365", "age"] == 71.5
    assert manifest.loc["sub-OAS30002_ses-d1461", "age"] == pytest.approx(70 + 1461 / 365.25)


def test_session_without_any_age_is_one_problem(tmp_path: Path) -> None:
    root = make_oasis3(tmp_path / "oasis3")
    write_scan(root / "sub-OAS30002/ses-baseline/anat/sub-OAS30002_ses-baseline_T1w.nii.gz", 6)
    found = discover(root)
    assert len(found.manifest) == 5
    assert [problem.cause for problem in found.problems] == ["sub-OAS30002 ses-baseline: missing age"]
