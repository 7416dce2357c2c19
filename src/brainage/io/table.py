"""Spreadsheets as text, and the simplest source: a CSV/TSV listing ``path, subject_id, age`` per scan."""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path

import pandas as pd

from brainage.errors import InputError, Problem
from brainage.io.images import header_of, scan_stem
from brainage.io.manifest import Discovery, finish, is_missing, parse_age, rename_sex_alias, snake_case

TABLE_SUFFIXES = (".csv", ".tsv", ".xlsx")
REQUIRED_TABLE_COLUMNS = ("path", "subject_id", "age")


def read_spreadsheet(path: str | Path) -> pd.DataFrame:
    """Read a .csv, .tsv or .xlsx file with every cell as text (missing cells NaN), blank rows dropped.

    The index is kept from the file: ``index + 2`` is a row's number as a spreadsheet shows it.

    Raises :class:`InputError` when the file is missing, unreadable or has no data row.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise InputError(path, f"unsupported table type (expected {', '.join(TABLE_SUFFIXES)})")
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        frame = pd.read_excel(path, dtype=str) if suffix == ".xlsx" else pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype=str)
    except OSError as error:
        raise InputError(path, f"cannot read the table ({error.strerror or error})") from None
    except (ValueError, zipfile.BadZipFile, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise InputError(path, f"cannot read the table ({' '.join(str(error).split())})") from None
    frame = frame.dropna(how="all")
    if frame.empty:
        raise InputError(path, "no data rows")
    frame.columns = [str(column).strip() for column in frame.columns]
    return frame


def discover_table(path: Path) -> Discovery:
    """Build the manifest from a table of scans; relative paths are resolved against its folder."""
    frame = read_spreadsheet(path)
    frame.columns = [snake_case(column) for column in frame.columns]
    frame = rename_sex_alias(frame, path)
    missing = [column for column in REQUIRED_TABLE_COLUMNS if column not in frame.columns]
    if missing:
        raise InputError(path, f"missing column(s): {', '.join(missing)} (a scan table needs path, subject_id, age)")
    problems: list[Problem] = []
    keep: list[bool] = []
    for number, row in zip(frame.index + 2, frame.to_dict("records"), strict=False):
        empty = [column for column in ("path", "subject_id") if is_missing(row[column])]
        age, cause = parse_age(row["age"])
        if empty:
            problems.append(Problem(str(path), f"row {number}: missing {', '.join(empty)}"))
        elif cause:
            problems.append(Problem(str(path), f"row {number} ({' '.join(str(row['path']).split())}): {cause}"))
        keep.append(not empty and age is not None)
    rows = frame.loc[keep].copy()
    rows["path"] = [str(_resolve(path.parent, value)) for value in rows["path"]]
    rows["session_id"] = _fill(rows, "session_id", rows["subject_id"].tolist())
    rows["scan_id"] = _fill(rows, "scan_id", _default_scan_ids(rows))
    return finish(path, "table", rows, problems)


def read_scan_list(path: Path, columns: tuple[str, ...]) -> tuple[pd.DataFrame, list[Problem]]:
    """A table of scans to predict (any of :data:`TABLE_SUFFIXES`): ``path`` required, the other
    ``columns`` kept where present; a row with no path or an unusable age is left out and listed.
    Relative paths are relative to the table; a pair's ``.img`` is replaced by its ``.hdr``."""
    frame = read_spreadsheet(path)
    frame.columns = [snake_case(column) for column in frame.columns]
    if "path" not in frame.columns:
        raise InputError(path, "missing column: path (a table of scans needs path, and may give age, subject_id)")
    frame = frame[[column for column in columns if column in frame.columns]].copy()
    problems: list[Problem] = []
    keep: list[bool] = []
    ages: list[float] = []
    for number, row in zip(frame.index + 2, frame.to_dict("records"), strict=False):
        age, cause = (math.nan, None) if is_missing(row.get("age")) else parse_age(row["age"])
        if is_missing(row["path"]):
            problems.append(Problem(str(path), f"row {number}: missing path"))
        elif cause:
            problems.append(Problem(str(path), f"row {number} ({row['path']}): {cause}"))
        keep.append(not is_missing(row["path"]) and cause is None)
        ages.append(math.nan if age is None else age)
    frame["age"] = ages
    frame = frame.loc[keep]
    frame["path"] = [str(header_of(_resolve(path.parent, value))) for value in frame["path"]]
    return frame, problems


def _resolve(folder: Path, value: str) -> Path:
    candidate = Path(str(value).strip()).expanduser()
    return Path(os.path.abspath(candidate if candidate.is_absolute() else folder / candidate))


def _fill(rows: pd.DataFrame, column: str, defaults: list[str]) -> list[str]:
    """The column's values, with ``defaults`` where the column is absent or a cell is empty."""
    if column not in rows.columns:
        return defaults
    return [default if is_missing(value) else value for value, default in zip(rows[column], defaults, strict=False)]


def _default_scan_ids(rows: pd.DataFrame) -> list[str]:
    """File stems when they are unique, else ``<session_id>_<stem>``."""
    stems = [scan_stem(path) for path in rows["path"]]
    if len(set(stems)) == len(stems):
        return stems
    return [f"{session}_{stem}" for session, stem in zip(rows["session_id"], stems, strict=False)]
