"""Adequacy: scans no brain-age model can read are refused with their reason, in predict and prepare;
orientation is never assumed silently; the package imports without POSIX-only modules."""

from __future__ import annotations

import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from nibabel.processing import resample_from_to

from brainage.io.images import OrientationWarning, assumed_orientation, load_scan
from brainage.predict import BrainAgeModel
from brainage.preprocess import load_cache, make_config, prepare
from brainage.preprocess.adequacy import AdequacyConfig, header_reasons, measure, reasons
from brainage.preprocess.qc import ARRANGEMENTS
from brainage.preprocess.stages import reorient_ras
from brainage.preprocess.template import template_on_grid


def _head(tiny_cohort: Path) -> nib.Nifti1Image:
    """The first scan of the synthetic cohort, resampled with nibabel onto a 1 mm grid over its field of view."""
    image = nib.squeeze_image(nib.load(sorted(tiny_cohort.glob("OAS2_RAW_PART*/*/RAW/mpr-*.nifti.hdr"))[0]))
    zooms = np.asarray(image.header.get_zooms()[:3])
    shape = tuple(int(n) for n in np.asarray(image.shape) * zooms)
    return resample_from_to(image, (shape, image.affine @ np.diag([*(1 / zooms), 1.0])), order=1)


def _slab(head: nib.Nifti1Image, path: Path) -> Path:
    """A clinical axial slab: 25 slices of 6.5 mm through the head's centre, 1 mm in plane."""
    centre = head.affine @ [*((np.asarray(head.shape) - 1) / 2), 1.0]
    affine = np.diag([1.0, 1.0, 6.5, 1.0])
    affine[:3, 3] = centre[:3] - affine[:3, :3] @ [(head.shape[0] - 1) / 2, (head.shape[1] - 1) / 2, 12]
    nib.save(resample_from_to(head, ((head.shape[0], head.shape[1], 25), affine), order=1), path)
    return path


def _crop(head: nib.Nifti1Image, path: Path) -> Path:
    """A 33 × 41 × 25 crop of the centre of the brain (1 mm voxels)."""
    start = (np.asarray(head.shape) - (33, 41, 25)) // 2
    nib.save(head.slicer[start[0] : start[0] + 33, start[1] : start[1] + 41, start[2] : start[2] + 25], path)
    return path


@pytest.fixture
def unreadable(tiny_cohort: Path, tmp_path: Path) -> tuple[Path, Path]:
    head = _head(tiny_cohort)
    return _slab(head, tmp_path / "slab.nii.gz"), _crop(head, tmp_path / "crop.nii.gz")


def test_the_slab_and_the_crop_are_refused_by_their_headers(unreadable: tuple[Path, Path]) -> None:
    slab, crop = unreadable
    assert header_reasons(slab) == ["thick slices: 6.5 mm along axis 3, in-plane 1 mm (at most 3 mm)"]
    assert header_reasons(crop) == ["field of view 33 × 41 × 25 mm cannot hold a whole brain (at least 100 mm along every axis)"]
    assert header_reasons(slab, AdequacyConfig(max_voxel_mm=7.0)) == []  # a setting


def test_predict_gives_them_no_brain_age_and_goes_on(untrained_checkpoints: list[Path], tiny_cohort: Path, unreadable: tuple[Path, Path]) -> None:
    good = sorted(tiny_cohort.glob("OAS2_RAW_PART*/*/RAW/mpr-*.nifti.hdr"))[0]
    model = BrainAgeModel.load(untrained_checkpoints[0])
    table = model.predict([*unreadable, good], cache=None).set_index("scan_id")
    assert model.problems_ == []
    assert table.loc["slab", "inadequate"].startswith("thick slices: 6.5 mm") and table.loc["crop", "inadequate"].startswith("field of view 33 × 41 × 25 mm")
    assert table.loc[["slab", "crop"], "brain_age"].isna().all() and not table.loc[["slab", "crop"], "qc_flagged"].any()
    assert table.loc["OAS2_0001_MR1_mpr-1", "inadequate"] == "" and np.isfinite(table.loc["OAS2_0001_MR1_mpr-1", "brain_age"])  # the ids of its OASIS layout
    forced = model.predict([*unreadable, good], cache=None, force=True).set_index("scan_id")
    assert forced["brain_age"].notna().all() and forced.loc["slab", "inadequate"] == table.loc["slab", "inadequate"]


def test_prepare_leaves_them_out_with_their_reason(tiny_cohort: Path, unreadable: tuple[Path, Path], tmp_path: Path) -> None:
    good = sorted(tiny_cohort.glob("OAS2_RAW_PART*/*/RAW/mpr-*.nifti.hdr"))[0]
    manifest = pd.DataFrame({"path": [*map(str, unreadable), str(good)], "subject_id": ["a", "b", "c"], "scan_id": ["slab", "crop", "good"], "age": 70.0})
    report = prepare(manifest.assign(session_id=manifest["subject_id"], sex="F", group="Nondemented", cdr=0.0), tmp_path / "cache", "seed")
    assert report.manifest["scan_id"].tolist() == ["good"]
    causes = {Path(problem.path).name: problem.cause for problem in report.problems}
    assert causes["slab.nii.gz"].startswith("not adequate for brain age: thick slices")
    assert causes["crop.nii.gz"].startswith("not adequate for brain age: field of view")


def test_post_registration_measures_and_their_reasons() -> None:
    config = make_config("standard")
    template, brain = template_on_grid(config.affine, config.shape)
    volume = np.where(brain, (template - template[brain].mean()) / template[brain].std(), -3.0).astype(np.float32)
    whole = measure(volume, config.affine, (400, 400, 400), _centred(400), np.eye(4))
    assert whole["brain_coverage"] == 1.0 and whole["wm_gm_contrast"] > 0.5 and whole["orientation_gain"] <= 0
    assert reasons(whole) == []
    top = _centred(400)
    top[2, 3] = 5.0  # the field of view starts 5 mm above the MNI origin: the lower brain is outside it
    assert 0.3 < measure(volume, config.affine, (400, 400, 400), top, np.eye(4))["brain_coverage"] < 0.8
    t2 = measure(-volume, config.affine, (400, 400, 400), _centred(400), np.eye(4))
    assert t2["wm_gm_contrast"] < 0 and any(reason.startswith("not T1-like") for reason in reasons(t2))
    swapped = measure(np.ascontiguousarray(np.swapaxes(volume, 1, 2)), config.affine, (400, 400, 400), _centred(400), np.eye(4))
    assert ARRANGEMENTS[int(swapped["orientation_best"])][0] == "as (x, z, y)"
    assert reasons(swapped) == [
        f"orientation: the brain fits the template better with its axes as (x, z, y) (+{swapped['orientation_gain']:.2f}); is the header's orientation wrong?"
    ]
    mirrored = measure(np.ascontiguousarray(volume[::-1]), config.affine, (400, 400, 400), _centred(400), np.eye(4))
    assert mirrored["orientation_gain"] < 0.01  # a left–right mirror fits the symmetric template as well: not detectable here


def _centred(size: int) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, 3] = -(size - 1) / 2
    return affine


def test_load_cache_flags_inadequate_scans_so_training_leaves_them_out(tiny_cache_seed: Path, tmp_path: Path) -> None:
    cache = shutil.copytree(tiny_cache_seed, tmp_path / "cache")
    manifest = pd.read_csv(cache / "manifest.csv")
    assert not load_cache(cache).manifest["qc_flagged"].any()
    manifest["brain_coverage"] = [0.5] + [1.0] * (len(manifest) - 1)
    manifest.to_csv(cache / "manifest.csv", index=False)
    loaded = load_cache(cache).manifest
    assert loaded["qc_flagged"].sum() == 1 and loaded.loc[loaded["qc_flagged"], "inadequate"].iat[0].startswith("only 50 % of the brain")
    assert not load_cache(cache, AdequacyConfig(min_brain_coverage=0.4)).manifest["qc_flagged"].any()


def _analyze(data: np.ndarray, zooms: tuple[float, ...], path: Path) -> Path:
    """``data`` written as OASIS-1 writes its RAW scans: an Analyze 7.5 pair, 16-bit big-endian, no orientation."""
    header = nib.AnalyzeHeader(endianness=">")
    header.set_data_dtype(">i2")
    header.set_data_shape(data.shape)
    header.set_zooms(zooms)
    nib.save(nib.AnalyzeImage(data.astype(">i2"), None, header), path)
    assert path.read_bytes()[:4] == (348).to_bytes(4, "big")  # a big-endian Analyze header
    return path


def test_an_oasis1_raw_analyze_scan_is_warned_about_and_oriented_as_oasis_stores_it(tiny_cohort: Path, tmp_path: Path) -> None:
    original = sorted(tiny_cohort.glob("OAS2_RAW_PART*/*/RAW/mpr-*.nifti.hdr"))[0]  # sagittal, PIR in its qform, as OASIS-2 stores it
    image = nib.load(original)
    data = np.asarray(image.dataobj)  # 4-D with a trailing axis of 1, as OASIS stores it
    path = _analyze(data, image.header.get_zooms(), tmp_path / "OAS1_0001_MR1_mpr-1_anon.hdr")
    with pytest.warns(
        OrientationWarning,
        match=r"Analyze 7\.5 header: no orientation stored; read as OASIS-1 RAW scans are stored, PIR \(voxel axes 1, 2, 3 pointing posterior, inferior, right\)",
    ):
        scan = load_scan(path)
    reference = load_scan(original)
    assert "".join(nib.aff2axcodes(scan.affine)) == "PIR" == "".join(nib.aff2axcodes(reference.affine))
    np.testing.assert_allclose(scan.affine[:3, :3], reference.affine[:3, :3])
    np.testing.assert_array_equal(reorient_ras(scan.data, scan.affine)[0], reorient_ras(reference.data, reference.affine)[0])  # the same head, the same way up
    other = _analyze(data, image.header.get_zooms(), tmp_path / "scan.hdr")
    with pytest.warns(OrientationWarning, match=r"assumed LAS \(voxel axes 1, 2, 3 pointing left, anterior, superior\); wrong if"):
        assert "".join(nib.aff2axcodes(load_scan(other).affine)) == "LAS"  # any other Analyze file: nibabel's default, named


def test_nifti_without_orientation_codes_is_warned_about(tmp_path: Path) -> None:
    data = np.random.default_rng(0).uniform(0, 100, (8, 8, 6)).astype(np.float32)
    unset = nib.Nifti1Image(data, np.eye(4))
    unset.set_qform(None, code=0)
    unset.set_sform(None, code=0)
    nib.save(unset, tmp_path / "unset.nii")
    with pytest.warns(OrientationWarning, match="NIfTI header with qform_code = sform_code = 0: no orientation stored; assumed LAS"):
        load_scan(tmp_path / "unset.nii")
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "set.nii")
    assert assumed_orientation(tmp_path / "set.nii") is None
    with warnings.catch_warnings():
        warnings.simplefilter("error", OrientationWarning)
        load_scan(tmp_path / "set.nii")


def test_the_package_imports_without_posix_only_modules() -> None:
    """As on Windows: fcntl, resource, termios and pwd cannot be imported."""
    code = (
        "import sys\n"
        "for name in ('fcntl', 'resource', 'termios', 'pwd', 'grp'): sys.modules[name] = None\n"
        "import brainage.preprocess.cache, brainage.predict, brainage.cli, brainage.utils\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr.strip().splitlines()[-1]
