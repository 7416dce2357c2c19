"""What ``predict`` reads: the scans to predict from files, folders, tables and data sets, and the
caches a model was trained on."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from brainage.errors import BrainAgeError, InputError, Problem
from brainage.io import IMAGE_SUFFIXES, discover, scan_stem
from brainage.io.bids import looks_like_bids
from brainage.io.dicom import dicom_rows, looks_like_dicom
from brainage.io.images import header_of, image_suffix
from brainage.io.manifest import is_missing, natural_key
from brainage.io.oasis import find_demographics, layout_identity, looks_like_oasis
from brainage.io.oasis1 import find_cross_sectional, looks_like_oasis1
from brainage.io.table import TABLE_SUFFIXES, read_scan_list

#: Input columns carried into the predictions when the source has them.
CARRIED_COLUMNS = ("scan_id", "subject_id", "session_id", "path", "age", "sex", "group", "cdr")


def find_inputs(inputs: str | Path | Iterable[str | Path] | pd.DataFrame) -> tuple[pd.DataFrame, list[Problem]]:
    """The scans to predict, one row per scan (columns of ``CARRIED_COLUMNS``), and what was left out.

    An input is an image file (``.nii``, ``.nii.gz``, ``.hdr``/``.img``, ``.mgz``), a folder of
    them (searched recursively), a table of scans (``prepare``'s formats: :func:`~brainage.io.table.read_scan_list`),
    a BIDS, OASIS-1 or OASIS-2 folder (ages from their spreadsheets; without its spreadsheet, a
    plain folder), or a manifest DataFrame with a ``path`` column. A file in an OASIS layout keeps
    the ids it gives (:func:`~brainage.io.oasis.layout_identity`); a scan given twice is predicted
    once; scans without a known subject or session form their own.
    """
    if isinstance(inputs, pd.DataFrame):
        if "path" not in inputs.columns:
            raise BrainAgeError("the table of scans to predict needs a 'path' column")
        return _complete(inputs.copy()), []
    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    frames: list[pd.DataFrame] = []
    problems: list[Problem] = []
    for item in (Path(os.path.abspath(Path(value).expanduser())) for value in items):
        try:
            rows, found = _rows_of(item)
        except InputError as error:
            problems.append(Problem.from_error(error))
            continue
        frames.append(rows)
        problems.extend(found)
    frames = [frame for frame in frames if not frame.empty]
    if not frames:
        return _complete(pd.DataFrame(columns=["path"])), problems
    rows = pd.concat(frames, ignore_index=True).drop_duplicates("path").reset_index(drop=True)
    return _complete(rows), problems


def _rows_of(item: Path) -> tuple[pd.DataFrame, list[Problem]]:
    """The rows one input stands for, and its problems."""
    if item.is_dir():
        if (
            looks_like_bids(item)
            or (looks_like_oasis(item) and _finds(find_demographics, item))
            or (looks_like_oasis1(item) and _finds(find_cross_sectional, item))
        ):
            found = discover(item)
            return found.manifest, list(found.problems)
        files = _image_files(item)
        if not files and looks_like_dicom(item):
            return dicom_rows(item)  # its T1 series, converted by dcm2niix; without PatientAge, no age
        if not files:
            raise InputError(item, f"no scans in this folder (looked for {', '.join(IMAGE_SUFFIXES)})")
        return pd.DataFrame({"path": [str(path) for path in files]}), []
    if not item.exists():
        raise InputError(item, "no such file or folder")
    if item.suffix.lower() in TABLE_SUFFIXES:
        return read_scan_list(item, CARRIED_COLUMNS)
    if image_suffix(item) is not None:
        return pd.DataFrame({"path": [str(header_of(item))]}), []
    raise InputError(item, f"not a scan ({', '.join(IMAGE_SUFFIXES)}), a folder, nor a table of scans ({', '.join(TABLE_SUFFIXES)})")


def _finds(finder: Callable[[Path], Path], folder: Path) -> bool:
    """Whether ``finder`` finds an OASIS spreadsheet for ``folder`` (without one, a plain folder of scans)."""
    try:
        return bool(finder(folder))
    except InputError:
        return False


def _image_files(folder: Path) -> list[Path]:
    """Every scan below ``folder``, an Analyze/NIfTI pair once (by its header, or its image if alone)."""
    files = {header_of(path) for path in folder.rglob("*") if image_suffix(path) and path.is_file()}
    return sorted(files, key=lambda path: natural_key(str(path)))


def _complete(rows: pd.DataFrame) -> pd.DataFrame:
    """Every ``CARRIED_COLUMNS`` column present; missing ids filled (a scan alone is its own session)."""
    rows = rows.reset_index(drop=True)
    for column in CARRIED_COLUMNS:
        if column not in rows.columns:
            rows[column] = np.nan
    rows["path"] = rows["path"].astype(str)
    for column in ("scan_id", "session_id", "subject_id"):  # the ids a file's OASIS layout gives, where none are given
        rows[column] = [
            layout_identity(path).get(column, value) if is_missing(value) else value for path, value in zip(rows["path"], rows[column], strict=False)
        ]
    stems = [scan_stem(path) for path in rows["path"]]
    duplicated = pd.Series(stems).duplicated(keep=False).to_numpy()
    default_ids = [str(Path(path).with_name(stem)) if twice else stem for path, stem, twice in zip(rows["path"], stems, duplicated, strict=False)]
    rows["scan_id"] = [default if is_missing(value) else str(value) for value, default in zip(rows["scan_id"], default_ids, strict=False)]
    rows["session_id"] = [
        (subject if not is_missing(subject) else scan) if is_missing(session) else str(session)
        for session, subject, scan in zip(rows["session_id"], rows["subject_id"], rows["scan_id"], strict=False)
    ]
    rows["subject_id"] = [session if is_missing(value) else str(value) for value, session in zip(rows["subject_id"], rows["session_id"], strict=False)]
    rows["age"] = pd.to_numeric(rows["age"], errors="coerce").astype(float)
    return rows[list(CARRIED_COLUMNS)]


def training_caches(checkpoints: Iterable[str | Path]) -> list[Path]:
    """The caches the checkpoints were trained on, as recorded in their run's ``config.yaml``
    (``run/fold_K/model.ckpt`` → ``run/config.yaml``), where that cache still exists."""
    found = []
    for checkpoint in map(Path, checkpoints):
        config = checkpoint.resolve().parent.parent / "config.yaml"
        try:
            cache = (yaml.safe_load(config.read_text()) or {}).get("cache")
        except (OSError, yaml.YAMLError, AttributeError):
            continue
        if cache and (Path(cache) / "cache.json").is_file():
            found.append(Path(cache))
    return list(dict.fromkeys(found))
