"""brainage.io.images on real files written by nibabel: every format, every bad case."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brainage.errors import InputError
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


def _truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def _append(path: Path, extra: int) -> None:
    with path.open("ab") as handle:
        handle.write(b"\0" * extra)


def _missing_img(tmp: Path) -> tuple[Path, Path]:
    path = write(tmp / "mpr-1.nifti.hdr", volume())
    (tmp / "mpr-1.nifti.img").unlink()
    return path, path


def _missing_hdr(tmp: Path) -> tuple[Path, Path]:
    write(tmp / "mpr-1.nifti.hdr", volume())
    (tmp / "mpr-1.nifti.hdr").unlink()
    return tmp / "mpr-1.nifti.img", tmp / "mpr-1.nifti.img"


def _truncated_nii(tmp: Path) -> tuple[Path, Path]:
    path = write(tmp / "t1.nii", volume())
    _truncate(path, path.stat().st_size - 100)
    return path, path


def _truncated_img(tmp: Path) -> tuple[Path, Path]:
    path = write(tmp / "mpr-1.nifti.hdr", volume())
    _truncate(tmp / "mpr-1.nifti.img", 200)
    return path, tmp / "mpr-1.nifti.img"


def _truncated_gz(tmp: Path) -> tuple[Path, Path]:
    path = write(tmp / "t1.nii.gz", volume())
    _truncate(path, path.stat().st_size // 2)
    return path, path


def _oversized_nii(tmp: Path) -> tuple[Path, Path]:
    path = write(tmp / "t1.nii", volume())
    _append(path, 64)
    return path, path


def _oversized_img(tmp: Path) -> tuple[Path, Path]:
    path = write(tmp / "mpr-1.nifti.hdr", volume())
    _append(tmp / "mpr-1.nifti.img", 4)
    return path, tmp / "mpr-1.nifti.img"


def _four_d(tmp: Path) -> tuple[Path, Path]:
    path = write(tmp / "bold.nii.gz", volume((*SHAPE, 3)))
    return path, path


def _two_d(tmp: Path) -> tuple[Path, Path]:
    path = write(tmp / "slice.nii", volume((8, 8)))
    return path, path


def _single_slice(tmp: Path) -> tuple[Path, Path]:
    path = write(tmp / "slice.nii", volume((8, 8, 1)))
    return path, path


def _unsupported(tmp: Path) -> tuple[Path, Path]:
    path = tmp / "scan.png"
    path.write_bytes(b"\x89PNG")
    return path, path


def _absent(tmp: Path) -> tuple[Path, Path]:
    return tmp / "nowhere.nii.gz", tmp / "nowhere.nii.gz"


def _garbage(tmp: Path) -> tuple[Path, Path]:
    path = tmp / "noise.nii"
    path.write_bytes(b"not an image at all" * 30)
    return path, path


#: bad file → (what it is, words the cause must contain); all detectable from the header alone.
HEADER_CASES = {
    "missing .img": (_missing_img, "missing image file mpr-1.nifti.img"),
    "missing .hdr": (_missing_hdr, "missing header mpr-1.nifti.hdr"),
    "truncated .nii": (_truncated_nii, "truncated"),
    "truncated .img": (_truncated_img, "truncated"),
    "truncated .nii.gz": (_truncated_gz, "truncated"),
    "longer .nii": (_oversized_nii, "size mismatch"),
    "longer .img": (_oversized_img, "size mismatch"),
    "4-D": (_four_d, "3 volumes"),
    "2-D": (_two_d, "2-D"),
    "one slice": (_single_slice, "2-D"),
    "unsupported": (_unsupported, "unsupported file type"),
    "absent": (_absent, "file not found"),
    "garbage": (_garbage, "unreadable image header"),
}


@pytest.mark.parametrize("case", HEADER_CASES)
@pytest.mark.parametrize("reader", [check_scan_file, load_scan])
def test_bad_files_raise_one_line_naming_file_and_cause(tmp_path: Path, case: str, reader) -> None:
    make, cause = HEADER_CASES[case]
    given, named = make(tmp_path)
    with pytest.raises(InputError) as info:
        reader(given)
    error = info.value
    assert error.path == str(named)
    assert cause in error.cause
    message = str(error)
    assert message.startswith(f"{named}: ") and "\n" not in message


@pytest.mark.parametrize(
    ("data", "cause"),
    [
        (np.full(SHAPE, np.nan, np.float32), "no finite voxel"),
        (np.full(SHAPE, 7.0, np.float32), "constant image (every voxel is 7)"),
    ],
    ids=["all-nan", "constant"],
)
def test_content_checks_happen_on_load_only(tmp_path: Path, data: np.ndarray, cause: str) -> None:
    path = write(tmp_path / "t1.nii.gz", data)
    check_scan_file(path)  # the cheap check reads the header only
    with pytest.raises(InputError) as info:
        load_scan(path)
    assert info.value.path == str(path)
    assert cause in info.value.cause
