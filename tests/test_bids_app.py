"""The BIDS App: participant jobs (run separately, as on a cluster), the group level, and a derivatives
dataset that the BIDS validators on PyPI accept."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from brainage.bids_app import input_scans, run_bids_app, validate_derivatives
from brainage.cli import app

pytest.importorskip("bids_validator")


def write_scan(path: Path, seed: int) -> Path:
    """A 32³ 4 mm volume in positive world coordinates, where the seed pipeline's grid sees it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    data = rng.uniform(0, 100, (32, 32, 32)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([4.0, 4.0, 4.0, 1.0])), path)
    return path


def make_dataset(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "study", "BIDSVersion": "1.9.0"}))
    write_scan(root / "sub-01/ses-1/anat/sub-01_ses-1_run-1_T1w.nii.gz", 1)
    write_scan(root / "sub-01/ses-1/anat/sub-01_ses-1_run-2_T1w.nii.gz", 2)
    write_scan(root / "sub-01/ses-2/anat/sub-01_ses-2_T1w.nii.gz", 3)
    write_scan(root / "sub-02/anat/sub-02_acq-mprage_T1w.nii.gz", 4)
    write_scan(root / "sub-03/anat/sub-03_T1w.nii.gz", 5)
    (root / "sub-04/anat").mkdir(parents=True)
    (root / "sub-04/anat/sub-04_T1w.nii.gz").write_bytes(b"not a scan")
    pd.DataFrame({"participant_id": ["sub-01", "sub-02", "sub-03", "sub-04"], "age": ["70", "64.5", "n/a", "50"]}).to_csv(
        root / "participants.tsv", sep="\t", index=False
    )
    pd.DataFrame({"session_id": ["ses-1", "ses-2"], "age": [70.0, 72.0]}).to_csv(root / "sub-01/sub-01_sessions.tsv", sep="\t", index=False)
    return root


def test_input_scans_keep_scans_without_age(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "bids")
    scans, _ = input_scans(root, ["03"])
    assert scans["filename"].tolist() == ["anat/sub-03_T1w.nii.gz"] and scans["age"].isna().all()
    scans, _ = input_scans(root)
    assert scans.set_index("scan_id").loc["sub-01_ses-2_T1w", "age"] == 72.0


def test_participant_jobs_then_group_make_a_valid_derivatives_dataset(tmp_path: Path, untrained_checkpoints: list[Path]) -> None:
    root = make_dataset(tmp_path / "bids")
    out = tmp_path / "derivatives" / "brainage"
    model = str(untrained_checkpoints[0])
    runner = CliRunner()
    first = runner.invoke(app, ["bids", str(root), str(out), "participant", "--model", model, "--participant-label", "01"])
    assert first.exit_code == 0, first.output
    assert sorted(path.relative_to(out).as_posix() for path in out.rglob("*") if path.is_file()) == [
        "dataset_description.json",
        "sub-01/ses-1/sub-01_ses-1_scans.json", "sub-01/ses-1/sub-01_ses-1_scans.tsv",
        "sub-01/ses-2/sub-01_ses-2_scans.json", "sub-01/ses-2/sub-01_ses-2_scans.tsv",
    ]  # fmt: skip  # a session's files per row
    second = runner.invoke(app, ["bids", str(root), str(out), "participant", "--model", model, "--participant-label", "sub-02", "03", "04"])
    assert second.exit_code == 0, second.output
    assert "sub-04_T1w.nii.gz" in second.output  # the broken scan: one line, the others go on
    group = runner.invoke(app, ["bids", str(root), str(out), "group"])
    assert group.exit_code == 0, group.output

    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["GeneratedBy"][0]["Name"] == "brainage"
    session = pd.read_csv(out / "sub-01/ses-1/sub-01_ses-1_scans.tsv", sep="\t", na_values="n/a", keep_default_na=False)
    assert session["filename"].tolist() == ["anat/sub-01_ses-1_run-1_T1w.nii.gz", "anat/sub-01_ses-1_run-2_T1w.nii.gz"]
    assert {"age", "brain_age", "brain_age_corrected", "brain_age_gap", "brain_age_gap_corrected", "qc_score"} <= set(session)
    assert np.allclose(session["brain_age_gap"], session["brain_age"] - 70.0, atol=1e-3)
    sidecar = json.loads((out / "sub-01/ses-1/sub-01_ses-1_scans.json").read_text())
    assert sidecar["Model"]["Name"] == "resnet" and sidecar["Preprocessing"]["pipeline"] == "tutorial"
    assert sidecar["brain_age"]["Units"] == "year"
    ageless = (out / "sub-03/sub-03_scans.tsv").read_text().splitlines()[1].split("\t")
    header = (out / "sub-03/sub-03_scans.tsv").read_text().splitlines()[0].split("\t")
    assert dict(zip(header, ageless, strict=False))["brain_age_gap"] == "n/a" and dict(zip(header, ageless, strict=False))["brain_age"] != "n/a"

    table = pd.read_csv(out / "phenotype/brainage.tsv", sep="\t", na_values="n/a", keep_default_na=False)
    assert table["participant_id"].tolist() == ["sub-01", "sub-01", "sub-02", "sub-03"]
    assert table["n_scans"].tolist() == [2, 1, 1, 1]
    assert table.loc[0, "brain_age"] == pytest.approx(session["brain_age"].mean(), abs=1e-3)
    assert validate_derivatives(out) == []
    (out / "sub-01/ses-1/sub-01_ses-1_brainage.tsv").write_text("a\n1\n")  # not a BIDS name: the check does refuse
    assert validate_derivatives(out) == [str(out / "sub-01/ses-1/sub-01_ses-1_brainage.tsv")]


def test_errors_are_one_line(tmp_path: Path, untrained_checkpoints: list[Path]) -> None:
    root = make_dataset(tmp_path / "bids")
    runner = CliRunner()
    no_model = runner.invoke(app, ["bids", str(root), str(tmp_path / "out"), "participant"])
    assert no_model.exit_code == 2 and "needs --model" in no_model.output
    no_results = runner.invoke(app, ["bids", str(root), str(tmp_path / "out"), "group"])
    assert no_results.exit_code == 2 and "run the participant level first" in no_results.output
    level = runner.invoke(app, ["bids", str(root), str(tmp_path / "out"), "everyone"])
    assert level.exit_code == 2 and "choose participant or group" in level.output
    with pytest.raises(Exception, match="no T1w scan"):
        run_bids_app(root, tmp_path / "out", "participant", untrained_checkpoints[0], ["99"])


def test_fmriprep_input_takes_the_images_with_a_brain_mask(tmp_path: Path) -> None:
    from test_fmriprep import make_fmriprep

    root = make_fmriprep(tmp_path / "bids")
    scans, problems = input_scans(root)
    assert scans["scan_id"].tolist() == ["sub-01_ses-1_desc-preproc_T1w", "sub-01_ses-2_desc-preproc_T1w", "sub-02_desc-preproc_T1w"]
    assert scans["age"].tolist() == [70.0, 72.5, 64.5]
    assert [problem.cause for problem in problems] == ["no brain mask beside it (expected sub-03_desc-brain_mask.nii.gz)"]


def test_columns_a_model_adds_are_written_and_averaged(tmp_path: Path, untrained_checkpoints: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """An interval (or any brain_age_* column) that predict returns reaches both TSVs."""
    from brainage.predict import BrainAgeModel

    original = BrainAgeModel.predict

    def with_interval(self, *args, **kwargs):
        table = original(self, *args, **kwargs)
        return table.assign(brain_age_lower=table["brain_age"] - 5, brain_age_upper=table["brain_age"] + 5, brain_age_q90=1.0)

    monkeypatch.setattr(BrainAgeModel, "predict", with_interval)
    root = make_dataset(tmp_path / "bids")
    out = tmp_path / "out"
    run_bids_app(root, out, "participant", untrained_checkpoints[0], ["01"])
    run_bids_app(root, out, "group")
    session = pd.read_csv(out / "sub-01/ses-1/sub-01_ses-1_scans.tsv", sep="\t")
    assert np.allclose(session["brain_age_upper"] - session["brain_age_lower"], 10, atol=1e-3) and "brain_age_q90" in session
    group = pd.read_csv(out / "phenotype/brainage.tsv", sep="\t")
    assert {"brain_age_lower", "brain_age_upper", "brain_age_q90"} <= set(group)
    assert validate_derivatives(out) == []
