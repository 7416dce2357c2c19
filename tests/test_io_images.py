"""brainage.io.images on real files written by nibabel: every format it reads (the bad files are in
tests/test_bad_input.py)."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brainage.io import check_scan_file, load_scan, scan_stem

SHAPE = (8, 8, 6)
AFFINE = np.array([[1.5, 0, 0, -6], [0, 1.5, 0, -6], [0, 0, 2.0, -5], [0, 0, 0, 1]])


def volume(shape: tuple[int, ...] = SHAPE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 100, shape).astype(np.float32)


def write(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    """Save ``data`` in the format the name implies (.nii, .nii.gz, .hdr pair, .mgz)."""
    name = path.name
    if name.endswith(".hdr"):
        image = nib.Nifti1Pair(data, affine)
    elif name.endswith(".mgz"):
        image = nib.MGHImage(data, affine)
    else:
        image = nib.Nifti1Image(data, affine)
    nib.save(image, path)
    return path


@pytest.mark.parametrize("name", ["t1.nii", "t1.nii.gz", "mpr-1.nifti.hdr", "t1.mgz"])
def test_load_scan_reads_every_format(tmp_path: Path, name: str) -> None:
    data = volume()
    path = write(tmp_path / name, data)
    check_scan_file(path)
    scan = load_scan(path)
    assert scan.path == path
    assert scan.data.dtype == np.float32 and scan.data.shape == SHAPE
    np.testing.assert_allclose(scan.data, data, rtol=1e-6)
    assert scan.affine.dtype == np.float64 and scan.affine.shape == (4, 4)
    np.testing.assert_allclose(scan.affine, AFFINE, atol=1e-5)
    assert scan.zooms == pytest.approx((1.5, 1.5, 2.0))


def test_pair_loads_from_either_name(tmp_path: Path) -> None:
    data = volume()
    header = write(tmp_path / "mpr-2.nifti.hdr", data)
    image = tmp_path / "mpr-2.nifti.img"
    np.testing.assert_array_equal(load_scan(image).data, load_scan(header).data)
    assert scan_stem(header) == scan_stem(image) == "mpr-2"


def test_analyze_pair_with_integer_data(tmp_path: Path) -> None:
    data = np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE)
    path = tmp_path / "old.hdr"
    nib.save(nib.AnalyzeImage(data, np.diag([1.0, 1.0, 1.25, 1.0])), path)
    scan = load_scan(path)
    assert scan.data.dtype == np.float32
    np.testing.assert_array_equal(scan.data, data.astype(np.float32))
    assert scan.zooms == pytest.approx((1.0, 1.0, 1.25))


def test_one_trailing_volume_is_squeezed(tmp_path: Path) -> None:
    data = volume((*SHAPE, 1))
    path = write(tmp_path / "mpr-1.nifti.hdr", data)
    scan = load_scan(path)
    assert scan.data.shape == SHAPE
    np.testing.assert_allclose(scan.data, data[..., 0])


def test_qform_is_used_when_sform_code_is_zero(tmp_path: Path) -> None:
    image = nib.Nifti1Image(volume(), None)
    image.set_qform(AFFINE, code=1)
    image.set_sform(np.diag([9.0, 9.0, 9.0, 1.0]), code=0)
    path = tmp_path / "q.nii"
    nib.save(image, path)
    np.testing.assert_allclose(load_scan(path).affine, AFFINE, atol=1e-5)


def test_partial_nans_become_zero(tmp_path: Path) -> None:
    data = volume()
    data[0, 0, :] = np.nan
    data[1, 1, 1] = np.inf
    scan = load_scan(write(tmp_path / "t1.nii.gz", data))
    assert np.isfinite(scan.data).all()
    assert (scan.data[0, 0, :] == 0).all() and scan.data[1, 1, 1] == 0
    assert scan.data[2, 2, 2] == pytest.approx(data[2, 2, 2])


def test_multi_member_gzip_passes_the_size_check(tmp_path: Path) -> None:
    """The gzip trailer only gives the last member's length; the check must then count the stream."""
    plain = write(tmp_path / "t1.nii", volume()).read_bytes()
    path = tmp_path / "two-members.nii.gz"
    path.write_bytes(gzip.compress(plain[:500]) + gzip.compress(plain[500:]))
    check_scan_file(path)
    assert load_scan(path).data.shape == SHAPE
