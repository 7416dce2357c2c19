"""DICOM input: series written by pydicom (16 slices of 32×32, MR image storage), converted for real by dcm2niix."""

from __future__ import annotations

import datetime
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("dcm2niix")

from pydicom.dataset import FileDataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402

from brainage.cli import app  # noqa: E402
from brainage.io import discover  # noqa: E402
from brainage.io.dicom import dicom_age, dicom_rows  # noqa: E402
from brainage.predict import find_inputs  # noqa: E402

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def write_series(
    folder: Path,
    description: str = "MPRAGE",
    patient: str = "P001",
    age: str | None = "071Y",
    sex: str = "F",
    slices: int = 16,
    side: int = 32,
    seed: int = 0,
    study_date: str = "20200101",
    spacing: float = 1.0,
    thickness: float = 1.2,
) -> list[Path]:
    """A synthetic axial MR series, one file per slice, with a proper geometry and SOP class:
    ``side`` × ``side`` pixels of ``spacing`` mm, ``slices`` slices ``thickness`` mm apart."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    volume = (rng.uniform(0, 1000, (slices, side, side)) * np.linspace(0.5, 1, side)).astype(np.uint16)
    series_uid, study_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    paths = []
    for k in range(slices):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"IM{k:04d}"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = MR_IMAGE_STORAGE
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality = "MR"
        ds.Manufacturer = "SIEMENS"
        ds.MagneticFieldStrength = 3
        ds.PatientID, ds.PatientName, ds.PatientSex = patient, f"{patient}^Test", sex
        if age is not None:
            ds.PatientAge = age
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = study_date
        ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = "120000"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.SeriesNumber, ds.InstanceNumber, ds.AcquisitionNumber = 3, k + 1, 1
        ds.SeriesDescription = ds.ProtocolName = description
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        ds.ScanningSequence, ds.SequenceVariant, ds.MRAcquisitionType = "GR\\IR", "SP\\MP", "3D"
        ds.RepetitionTime, ds.EchoTime, ds.InversionTime, ds.FlipAngle = 2300, 2.98, 900, 9
        ds.ImagePositionPatient = [-side * spacing / 2, -side * spacing / 2, k * thickness]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [spacing, spacing]
        ds.SliceThickness = thickness
        ds.SliceLocation = k * thickness
        ds.Rows = ds.Columns = side
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = volume[k].tobytes()
        ds.ContentDate, ds.ContentTime = datetime.date.today().strftime("%Y%m%d"), "120000"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


@pytest.fixture()
def convert_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "converted"
    monkeypatch.setenv("BRAINAGE_DICOM_DIR", str(folder))
    return folder


def make_study(root: Path, slices: int = 16, spacing: float = 1.0, thickness: float = 1.2) -> Path:
    """A T1 series of one person, a localizer, a T2 series, and a T1 series with a corrupt file;
    the two T1 series with ``slices`` slices of ``spacing`` mm pixels, ``thickness`` mm apart."""
    geometry = {"slices": slices, "spacing": spacing, "thickness": thickness}
    write_series(root / "P001/t1_mprage", "t1_mprage_sag", seed=1, **geometry)
    write_series(root / "P001/localizer", "localizer", slices=3, seed=2)
    write_series(root / "P001/t2", "t2_tse_axial", seed=3)
    write_series(root / "P002/spgr", "3D SPGR", patient="P002", age="064Y", sex="M", seed=4, **geometry)
    (root / "P001/t1_mprage/broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00garbage")
    return root


def test_dicom_age() -> None:
    assert [dicom_age(text) for text in ("071Y", "006M", "052W", "", None, "old")] == [71.0, 0.5, pytest.approx(52 * 7 / 365.25), None, None, None]


def test_a_series_is_converted_by_dcm2niix_and_discovered(tmp_path: Path, convert_dir: Path) -> None:
    root = make_study(tmp_path / "dicom")
    found = discover(root)
    assert found.kind == "dicom"
    manifest = found.manifest.set_index("subject_id")
    assert manifest.index.tolist() == ["P001", "P002"]
    assert manifest.loc["P001", "age"] == 71.0 and manifest.loc["P001", "sex"] == "F"
    assert manifest.loc["P002", ["age", "sex", "session_id"]].tolist() == [64.0, "M", "P002_20200101"]
    image = nib.load(manifest.loc["P001", "path"])
    assert image.shape == (32, 32, 16)
    assert np.allclose(image.header.get_zooms()[:3], (1.0, 1.0, 1.2), atol=1e-3)
    assert Path(manifest.loc["P001", "path"]).is_relative_to(convert_dir)
    causes = sorted(problem.cause.split(" (")[0] for problem in found.problems)
    assert causes == [
        "skipped: a localizer, not a T1-weighted scan",
        "skipped: not a T1-weighted series by its SeriesDescription/ProtocolName",
        "unreadable DICOM file",
    ], found.problems
    again = discover(root)  # converted once: the second discovery reuses the NIfTI
    assert again.manifest["path"].tolist() == found.manifest["path"].tolist()


def test_conversion_is_reproducible_so_caches_match(tmp_path: Path) -> None:
    write_series(tmp_path / "dicom/s", "MPRAGE", seed=5)
    first, _ = dicom_rows(tmp_path / "dicom", tmp_path / "a")
    second, _ = dicom_rows(tmp_path / "dicom", tmp_path / "b")
    assert Path(first["path"][0]).read_bytes() == Path(second["path"][0]).read_bytes()


def test_predict_takes_series_without_age_and_inspect_lists_problems(tmp_path: Path, convert_dir: Path) -> None:
    write_series(tmp_path / "dicom/anon", "MPRAGE", patient="ANON", age=None, seed=6)
    write_series(tmp_path / "dicom/named", "T1 MPRAGE", patient="P9", age="080Y", seed=7)
    rows, problems = find_inputs(tmp_path / "dicom")
    assert sorted(rows["subject_id"]) == ["ANON", "P9"] and problems == []
    assert rows.set_index("subject_id")["age"].isna().tolist() == [True, False]
    result = CliRunner().invoke(app, ["inspect", str(tmp_path / "dicom")])
    assert result.exit_code == 0, result.output
    assert "dicom" in result.output and "no age: the series has no PatientAge" in result.output


def test_prepare_and_predict_a_dicom_folder(tmp_path: Path, convert_dir: Path, untrained_checkpoints: list[Path]) -> None:
    from brainage.predict import BrainAgeModel
    from brainage.preprocess import load_cache

    # A field of view that can hold a brain (128 × 128 × 104 mm): a smaller one is refused as inadequate.
    root = make_study(tmp_path / "dicom", slices=26, spacing=4.0, thickness=4.0)
    result = CliRunner().invoke(app, ["prepare", str(root), "--out", str(tmp_path / "cache"), "--pipeline", "seed"])
    assert result.exit_code == 0, result.output
    cache = load_cache(tmp_path / "cache")
    assert sorted(cache.manifest["subject_id"]) == ["P001", "P002"]
    model = BrainAgeModel.load(untrained_checkpoints[0])
    predictions = model.predict(root, cache=tmp_path / "cache")
    assert sorted(predictions["subject_id"]) == ["P001", "P002"] and predictions["brain_age"].notna().all()
    assert len(model.problems_) == 3  # the localizer, the T2 series and the broken file
