"""Property-based tests: whatever bytes, headers or cells the readers meet, they return valid output
or raise the project's one-line :class:`InputError`, never another exception."""

from __future__ import annotations

import gzip
import math
import tempfile
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from brainage.errors import InputError
from brainage.io import DEMOGRAPHICS_COLUMNS, check_scan_file, load_scan, read_demographics
from brainage.io.manifest import AGE_RANGE, is_missing, normalise_sex, parse_age
from brainage.io.table import discover_table, read_spreadsheet

#: Few examples and no deadline (the machine is shared); derandomized so CI sees the same examples
#: every run, no example database written into the repository.
FAST = settings(max_examples=60, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
SHAPE = (6, 5, 4)


def _valid_nifti(name: str) -> bytes:
    """The bytes of a small valid image (for a pair, header and data concatenated)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        data = np.arange(math.prod(SHAPE), dtype=np.int16).reshape(SHAPE)
        kind = nib.Nifti1Pair if name.endswith(".hdr") else nib.Nifti1Image
        nib.save(kind(data, np.eye(4)), path)
        return path.read_bytes()


VALID_NII = _valid_nifti("t1.nii")


def _one_line_input_error_or(result: Callable[[], object]) -> object | None:
    """``result()``, or None when it raised an InputError of one line; any other exception fails."""
    try:
        return result()
    except InputError as error:
        assert "\n" not in str(error) and error.cause
        return None


def _check_image_file(path: Path) -> None:
    checked = _one_line_input_error_or(lambda: check_scan_file(path) or True)
    scan = _one_line_input_error_or(lambda: load_scan(path))
    if scan is not None:
        assert scan.data.ndim == 3 and scan.data.dtype == np.float32 and np.isfinite(scan.data).all()
        assert scan.affine.shape == (4, 4) and len(scan.zooms) == 3
    if checked is None:  # what the header check refuses, the full load refuses too
        assert scan is None


@FAST
@given(content=st.binary(max_size=1024), suffix=st.sampled_from([".nii", ".nii.gz", ".mgz", ".img"]))
def test_random_bytes_are_an_image_or_an_input_error(content: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"scan{suffix}"
        path.write_bytes(content)
        if suffix == ".img":
            (Path(folder) / "scan.hdr").write_bytes(content[:348])
        _check_image_file(path)


@FAST
@given(
    edits=st.lists(st.tuples(st.integers(0, 351), st.binary(min_size=1, max_size=8)), min_size=1, max_size=6),
    gzipped=st.booleans(),
)
def test_a_valid_header_with_random_bytes_written_into_it_never_crashes(edits: list[tuple[int, bytes]], gzipped: bool) -> None:
    """Dimensions, data type, offset, scaling and orientation fields overwritten at random."""
    content = bytearray(VALID_NII)
    for offset, patch in edits:
        content[offset : offset + len(patch)] = patch
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / ("t1.nii.gz" if gzipped else "t1.nii")
        if gzipped:
            path.write_bytes(gzip.compress(bytes(content)))
        else:
            path.write_bytes(bytes(content))
        _check_image_file(path)


@FAST
@given(
    dims=st.lists(st.integers(-2, 40), min_size=1, max_size=7),
    dtype=st.sampled_from([np.uint8, np.int16, np.int32, np.float32, np.float64, np.complex64, np.int64]),
    slope=st.sampled_from([1.0, 0.0, -2.5, math.inf, math.nan, 1e30]),
    pad=st.integers(-64, 64),
)
def test_any_header_fields_with_any_amount_of_data(dims: list[int], dtype: type, slope: float, pad: int) -> None:
    """A well-formed NIfTI header with arbitrary dimensions, type and scaling, and data a little too
    short or long."""
    header = nib.Nifti1Header()
    header["dim"][0] = len(dims)
    header["dim"][1 : len(dims) + 1] = dims
    header.set_data_dtype(dtype)
    header["vox_offset"] = 352
    header["scl_slope"] = slope
    size = max(0, math.prod(max(n, 0) for n in dims) * np.dtype(dtype).itemsize + pad)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "t1.nii"
        path.write_bytes(header.binaryblock + b"\0" * 4 + np.random.default_rng(0).bytes(min(size, 1 << 20)))
        _check_image_file(path)


CELL = st.one_of(
    st.none(),
    st.text(max_size=12),
    st.integers(-1000, 1000).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["M", "F", "male", "Female", "n/a", "", " ", "NaN", "inf", "-0", "1e308", "75", "60.5"]),
)


@FAST
@given(text=st.text(max_size=300))
def test_random_text_as_a_csv_is_a_table_or_an_input_error(text: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "table.csv"
        path.write_text(text, encoding="utf-8")
        frame = _one_line_input_error_or(lambda: read_spreadsheet(path))
        if frame is not None:
            assert isinstance(frame, pd.DataFrame) and not frame.empty


@FAST
@given(rows=st.lists(st.fixed_dictionaries({column: CELL for column in DEMOGRAPHICS_COLUMNS}), min_size=1, max_size=4))
def test_random_demographics_cells_are_read_or_refused(rows: list[dict[str, str | None]]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "demographics.csv"
        pd.DataFrame(rows).to_csv(path, index=False)
        frame = _one_line_input_error_or(lambda: read_demographics(path))
        if frame is not None:
            assert list(frame.columns) == list(DEMOGRAPHICS_COLUMNS)
            assert all(frame[column].dtype == "float64" for column in ("Age", "MMSE", "eTIV"))


@FAST
@given(headings=st.lists(st.text(min_size=1, max_size=10), min_size=1, max_size=6, unique=True))
def test_random_column_headings_are_read_or_refused(headings: list[str]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "demographics.csv"
        pd.DataFrame([["1"] * len(headings)], columns=headings).to_csv(path, index=False)
        frame = _one_line_input_error_or(lambda: read_demographics(path))
        if frame is not None:
            assert list(frame.columns) == list(DEMOGRAPHICS_COLUMNS)


@FAST
@given(rows=st.lists(st.fixed_dictionaries({"path": CELL, "subject_id": CELL, "age": CELL, "sex": CELL}), min_size=1, max_size=4))
def test_random_scan_tables_give_a_manifest_problems_or_an_input_error(rows: list[dict[str, str | None]]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "scans.csv"
        pd.DataFrame(rows).to_csv(path, index=False)
        found = _one_line_input_error_or(lambda: discover_table(path))
        if found is not None:
            assert found.manifest.empty  # no path names a real scan
            assert all("\n" not in problem.cause for problem in found.problems)


@FAST
@given(value=st.one_of(CELL, st.floats(allow_nan=True, allow_infinity=True), st.integers(), st.booleans()))
def test_parse_age_gives_an_age_in_range_or_a_cause(value: object) -> None:
    age, cause = parse_age(value)
    assert (age is None) != (cause is None)
    if age is not None:
        assert AGE_RANGE[0] <= age <= AGE_RANGE[1]


@FAST
@given(value=st.one_of(CELL, st.floats(allow_nan=True), st.integers(), st.booleans()))
def test_normalise_sex_gives_m_f_or_missing(value: object) -> None:
    sex = normalise_sex(value)
    assert sex in ("M", "F") or (isinstance(sex, float) and math.isnan(sex))
    assert is_missing(value) is False or not isinstance(sex, str)
