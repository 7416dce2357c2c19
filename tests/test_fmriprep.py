"""fMRIPrep derivatives: native ``desc-preproc_T1w`` with its ``desc-brain_mask``; the mask replaces our skull stripping."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from brainage.cli import app
from brainage.io import discover
from brainage.preprocess.template import template_on_grid

AFFINE = np.array([[3.0, 0, 0, -90], [0, 3.0, 0, -126], [0, 0, 3.0, -72], [0, 0, 0, 1]])
SHAPE = (60, 70, 60)


def write_pair(anat: Path, prefix: str, seed: int, mask: bool = True, xfm: bool = True) -> Path:
    """``<prefix>_desc-preproc_T1w.nii.gz`` (the MNI template plus noise, a bright 'skull' outside
    the brain) and ``<prefix>_desc-brain_mask.nii.gz``, plus the MNI transform and MNI-space copies."""
    anat.mkdir(parents=True, exist_ok=True)
    template, brain = template_on_grid(AFFINE, SHAPE)
    rng = np.random.default_rng(seed)
    data = np.asarray(template, dtype=np.float32) * 1000 + rng.normal(0, 20, SHAPE).astype(np.float32)
    data[~np.asarray(brain)] += 300  # what a wrong mask would let in
    image = anat / f"{prefix}_desc-preproc_T1w.nii.gz"
    nib.save(nib.Nifti1Image(data, AFFINE), image)
    if mask:
        nib.save(nib.Nifti1Image(np.asarray(brain, dtype=np.uint8), AFFINE), anat / f"{prefix}_desc-brain_mask.nii.gz")
    if xfm:
        (anat / f"{prefix}_from-T1w_to-MNI152NLin2009cAsym_mode-image_xfm.h5").write_bytes(b"\x89HDF\r\n\x1a\n")
    nib.save(nib.Nifti1Image(data, AFFINE), anat / f"{prefix}_space-MNI152NLin2009cAsym_desc-preproc_T1w.nii.gz")
    return image


def make_fmriprep(bids: Path) -> Path:
    """A raw dataset with participants.tsv and its derivatives/fmriprep: two people, one at two sessions,
    one image without a mask."""
    bids.mkdir(parents=True)
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "raw", "BIDSVersion": "1.9.0"}))
    pd.DataFrame({"participant_id": ["sub-01", "sub-02", "sub-03"], "age": [70, 64.5, 50], "sex": ["F", "M", "F"]}).to_csv(
        bids / "participants.tsv", sep="\t", index=False
    )
    (bids / "sub-01").mkdir()
    pd.DataFrame({"session_id": ["ses-1", "ses-2"], "age": [70.0, 72.5]}).to_csv(bids / "sub-01/sub-01_sessions.tsv", sep="\t", index=False)
    root = bids / "derivatives" / "fmriprep"
    root.mkdir(parents=True)
    description = {"Name": "fMRIPrep - fMRI PREProcessing workflow", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
                   "GeneratedBy": [{"Name": "fMRIPrep", "Version": "24.1.0"}]}  # fmt: skip  # keys grouped in rows
    (root / "dataset_description.json").write_text(json.dumps(description))
    write_pair(root / "sub-01/ses-1/anat", "sub-01_ses-1", 1)
    write_pair(root / "sub-01/ses-2/anat", "sub-01_ses-2", 2, xfm=False)
    write_pair(root / "sub-02/anat", "sub-02", 3)
    write_pair(root / "sub-03/anat", "sub-03", 4, mask=False)
    return root


def test_fmriprep_tree_is_discovered_with_masks(tmp_path: Path) -> None:
    root = make_fmriprep(tmp_path / "bids")
    found = discover(root)
    assert found.kind == "fmriprep"
    manifest = found.manifest.set_index("scan_id")
    assert manifest.index.tolist() == ["sub-01_ses-1_desc-preproc_T1w", "sub-01_ses-2_desc-preproc_T1w", "sub-02_desc-preproc_T1w"]
    assert manifest["session_id"].tolist() == ["sub-01_ses-1", "sub-01_ses-2", "sub-02"]
    assert manifest["age"].tolist() == [70.0, 72.5, 64.5]
    assert all(Path(mask).name.endswith("_desc-brain_mask.nii.gz") and Path(mask).is_file() for mask in manifest["mask_path"])
    assert manifest.loc["sub-02_desc-preproc_T1w", "xfm_path"].endswith("_from-T1w_to-MNI152NLin2009cAsym_mode-image_xfm.h5")
    assert pd.isna(manifest.loc["sub-01_ses-2_desc-preproc_T1w", "xfm_path"])
    assert [(Path(p.path).name, p.cause) for p in found.problems] == [
        ("sub-03_desc-preproc_T1w.nii.gz", "no brain mask beside it (expected sub-03_desc-brain_mask.nii.gz)")
    ]
    result = CliRunner().invoke(app, ["inspect", str(root)])
    assert result.exit_code == 0 and "fmriprep" in result.output


def test_prepare_uses_the_fmriprep_mask_instead_of_skull_stripping(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from brainage.preprocess import load_cache, make_config, prepare, stages
    from brainage.preprocess.cache import _read_spatial

    def no_skull_stripping(*args: object, **kwargs: object) -> None:
        raise AssertionError("skull stripping ran although fMRIPrep's mask was there")

    monkeypatch.setattr(stages, "skull_strip", no_skull_stripping)
    if hasattr(stages, "skull_strip_coarse"):
        monkeypatch.setattr(stages, "skull_strip_coarse", no_skull_stripping)
    root = make_fmriprep(tmp_path / "bids")
    (root / "sub-02/anat/sub-02_desc-brain_mask.nii.gz").write_bytes(b"not a mask")  # a broken mask: one problem
    config = make_config("standard", shape=(32, 32, 32), voxel_size=6.0)
    report = prepare(root, tmp_path / "cache", config)
    assert sorted(Path(problem.path).name for problem in report.problems) == ["sub-02_desc-brain_mask.nii.gz", "sub-03_desc-preproc_T1w.nii.gz"]
    cache = load_cache(tmp_path / "cache")
    assert len(cache) == 2 and cache.manifest["qc_score"].min() > 0.5
    spatial = [_read_spatial(path) for path in sorted((tmp_path / "cache/spatial").glob("*.npz"))]
    _, brain = template_on_grid(AFFINE, SHAPE)
    assert len(spatial) == 2 and all(np.array_equal(found.mask, np.asarray(brain)) for found in spatial)
    again = prepare(root, tmp_path / "cache", config)
    assert again.cached == 2 and again.done == 0


def test_preprocess_scan_finds_the_mask_beside_an_fmriprep_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``predict`` runs for a scan that is not cached: the mask beside it is used too."""
    from brainage.preprocess import make_config, preprocess_scan, stages

    monkeypatch.setattr(stages, "skull_strip", lambda *args, **kwargs: pytest.fail("skull stripping ran"))
    image = write_pair(tmp_path / "sub-01/anat", "sub-01", 5)
    prepared = preprocess_scan(image, make_config("standard", shape=(32, 32, 32), voxel_size=6.0))
    _, brain = template_on_grid(AFFINE, SHAPE)
    assert np.array_equal(prepared.spatial.mask, np.asarray(brain)) and prepared.qc_score > 0.5
