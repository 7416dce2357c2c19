"""The manifest: one row per scan, the same schema whatever the source (OASIS-2, BIDS, a table).

Column names and dtypes live here and only here; every source ends in :func:`validate_manifest`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from brainage.errors import InputError, Problem
from brainage.io.images import check_scan_file
from brainage.utils import atomic_write

#: A manifest column's dtype: pandas' string dtype (missing = NaN) or float64.
ColumnDtype = Literal["str", "float64"]
#: Required columns, in order, with their dtypes.
CORE_COLUMNS: dict[str, ColumnDtype] = {
    "scan_id": "str",
    "subject_id": "str",
    "session_id": "str",
    "path": "str",
    "age": "float64",
    "sex": "str",
    "group": "str",
    "cdr": "float64",
}
#: The remaining OASIS-2 columns, kept (in this order, after the core) when the source has them.
OASIS_EXTRA_COLUMNS: dict[str, ColumnDtype] = {
    "visit": "float64",
    "mr_delay": "float64",
    "hand": "str",
    "educ": "float64",
    "ses": "float64",
    "mmse": "float64",
    "etiv": "float64",
    "nwbv": "float64",
    "asf": "float64",
}
COLUMN_DTYPES: dict[str, ColumnDtype] = {**CORE_COLUMNS, **OASIS_EXTRA_COLUMNS}
#: Columns that may never be missing.
NON_MISSING = ("scan_id", "subject_id", "session_id", "path", "age")
AGE_RANGE = (0.0, 130.0)

_SEX = {"m": "M", "male": "M", "man": "M", "f": "F", "female": "F", "woman": "F"}
#: Other snake_case headings of the sex column (OASIS's ``M/F`` is ``m_f``), renamed to ``sex``.
SEX_ALIASES = ("gender", "m_f")
_MISSING_TEXT = {"", "n/a", "na", "nan", "none", "null"}


@dataclass(frozen=True)
class Discovery:
    """What :func:`brainage.io.discover` found in a source.

    ``problems`` lists the items left out of ``manifest`` and why; ``rows_without_scans`` names the
    spreadsheet rows (OASIS ``MRI ID``, BIDS participant) for which no scan exists, and
    ``scans_without_rows`` the scans that had no spreadsheet row (they are also in ``problems``).
    """

    source: Path
    kind: str
    manifest: pd.DataFrame
    problems: list[Problem]
    rows_without_scans: list[str]
    scans_without_rows: list[str] = field(default_factory=list)
    demographics: Path | None = None


def validate_manifest(frame: pd.DataFrame, source: str | Path) -> pd.DataFrame:
    """Return ``frame`` as a checked manifest: required columns, coerced dtypes, unique ``scan_id``,
    finite ages; core columns first, then OASIS columns, then the rest; sorted by subject, session, scan.

    Raises :class:`InputError` naming ``source`` when the frame cannot be a manifest.
    """
    missing = [column for column in CORE_COLUMNS if column not in frame.columns]
    if missing:
        raise InputError(source, f"missing column(s): {', '.join(missing)}")
    frame = frame.copy()
    for column, dtype in COLUMN_DTYPES.items():
        if column in frame.columns:
            frame[column] = _coerce(frame[column], dtype, column, source)
    check_sex_column(frame["sex"], source, "sex")
    frame["sex"] = frame["sex"].map(normalise_sex, na_action="ignore").astype("str")
    for column in NON_MISSING:
        if frame[column].isna().any():
            raise InputError(source, f"missing {column} in {int(frame[column].isna().sum())} row(s)")
    duplicated = frame.loc[frame["scan_id"].duplicated(), "scan_id"].unique().tolist()
    if duplicated:
        raise InputError(source, f"duplicate scan_id: {', '.join(duplicated[:5])}")
    if not np.isfinite(frame["age"].to_numpy()).all():
        raise InputError(source, "age must be finite in every row")
    ordered = [*CORE_COLUMNS, *(c for c in OASIS_EXTRA_COLUMNS if c in frame.columns)]
    frame = frame[ordered + [c for c in frame.columns if c not in ordered]]
    return sort_manifest(frame)


def sort_manifest(frame: pd.DataFrame) -> pd.DataFrame:
    """Sort rows by subject, session and scan in natural order (``mpr-2`` before ``mpr-10``)."""
    keys = [
        (natural_key(subject), natural_key(session), natural_key(scan))
        for subject, session, scan in zip(frame["subject_id"], frame["session_id"], frame["scan_id"], strict=False)
    ]
    order = sorted(range(len(keys)), key=keys.__getitem__)
    return frame.iloc[order].reset_index(drop=True)


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read a manifest written by :func:`write_manifest` (or any CSV with the core columns)."""
    path = Path(path)
    try:
        frame = pd.read_csv(path, dtype=str)
    except (OSError, ValueError, pd.errors.ParserError) as error:
        raise InputError(path, f"cannot read the manifest ({error})") from None
    return validate_manifest(frame, path)


def write_manifest(frame: pd.DataFrame, path: str | Path) -> None:
    """Write ``frame`` (validated first) to a CSV file atomically; a failed write leaves no file."""
    frame = validate_manifest(frame, path)
    try:
        with atomic_write(path) as tmp:
            frame.to_csv(tmp, index=False)
    except OSError as error:
        raise InputError(path, f"cannot write the manifest ({error.strerror or error})") from None


def parse_age(value: object) -> tuple[float | None, str | None]:
    """``(age, None)`` for a usable age in years, else ``(None, cause)``."""
    if is_missing(value):
        return None, "missing age"
    try:
        age = float(str(value).strip())
    except ValueError:
        return None, f"non-numeric age {str(value).strip()!r}"
    if not math.isfinite(age):
        return None, f"age {age} is not finite"
    if not AGE_RANGE[0] <= age <= AGE_RANGE[1]:
        return None, f"age {age:g} is outside {AGE_RANGE[0]:g}–{AGE_RANGE[1]:g} years"
    return age, None


def is_missing(value: object) -> bool:
    """True for None, NaN, pandas NA and empty/``n/a`` text."""
    if value is None or value is pd.NA:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return isinstance(value, str) and value.strip().lower() in _MISSING_TEXT


def normalise_sex(value: object) -> str | float:
    """'M' or 'F' from the usual spellings; anything else is missing (NaN)."""
    if is_missing(value):
        return math.nan
    return _SEX.get(str(value).strip().lower(), math.nan)


def check_sex_column(values: pd.Series, source: str | Path, column: str) -> None:
    """Raise :class:`InputError` when ``values`` has entries but none that :func:`normalise_sex` reads:
    the column would silently become missing."""
    given = [str(value).strip() for value in values if not is_missing(value)]
    if given and all(value.lower() not in _SEX for value in given):
        found = ", ".join(repr(value) for value in dict.fromkeys(given[:50]))
        raise InputError(source, f"column {column}: no value reads as M or F (found {found}); recode it as M/F")


def rename_sex_alias(frame: pd.DataFrame, source: str | Path) -> pd.DataFrame:
    """``frame`` (snake_case columns) with a ``gender`` or ``m_f`` column renamed to ``sex``; several
    sex columns are refused."""
    present = [column for column in ("sex", *SEX_ALIASES) if column in frame.columns]
    if len(present) > 1:
        raise InputError(source, f"several sex columns ({', '.join(present)}): keep one")
    return frame.rename(columns={present[0]: "sex"}) if present else frame


def snake_case(name: str) -> str:
    """``'MR Delay'`` → ``'mr_delay'``, ``'M/F'`` → ``'m_f'``, ``'eTIV'`` → ``'etiv'``."""
    return re.sub(r"[^0-9a-z]+", "_", name.strip().lower()).strip("_")


def natural_key(text: str) -> tuple[object, ...]:
    """Sort key that orders embedded numbers numerically."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(text)))


def finish(
    source: Path,
    kind: str,
    rows: pd.DataFrame,
    problems: Iterable[Problem],
    rows_without_scans: Iterable[str] = (),
    scans_without_rows: Iterable[str] = (),
    demographics: Path | None = None,
) -> Discovery:
    """Common last step of every source: leave out duplicate scan ids and unreadable files
    (as problems), validate the rest into a manifest."""
    problems = list(problems)
    if rows.empty:
        rows = pd.DataFrame(columns=list(CORE_COLUMNS))
    for column in CORE_COLUMNS:
        if column not in rows.columns:
            rows[column] = math.nan
    duplicated = rows["scan_id"].duplicated(keep=False)
    for scan_id, path in rows.loc[duplicated, ["scan_id", "path"]].itertuples(index=False):
        problems.append(Problem(str(path), f"duplicate scan_id {scan_id}: left out with every copy"))
    rows = rows.loc[~duplicated]
    readable = []
    for path in rows["path"]:
        try:
            check_scan_file(path)
        except InputError as error:
            problems.append(Problem.from_error(error))
            readable.append(False)
        else:
            readable.append(True)
    manifest = validate_manifest(rows.loc[readable], source)
    return Discovery(
        source=source,
        kind=kind,
        manifest=manifest,
        problems=sorted(dict.fromkeys(problems), key=lambda problem: (natural_key(problem.path), problem.cause)),
        rows_without_scans=sorted(set(rows_without_scans), key=natural_key),
        scans_without_rows=sorted(set(scans_without_rows), key=natural_key),
        demographics=demographics,
    )


def _coerce(series: pd.Series, dtype: ColumnDtype, column: str, source: str | Path) -> pd.Series:
    if dtype == "str":
        return series.map(lambda value: math.nan if is_missing(value) else str(value).strip()).astype("str")
    cleaned = series.map(lambda value: math.nan if is_missing(value) else str(value).strip())
    numeric = pd.to_numeric(cleaned, errors="coerce")
    bad = numeric.isna() & cleaned.notna()
    if bad.any():
        raise InputError(source, f"non-numeric {column} value {cleaned[bad].iloc[0]!r}")
    return numeric.astype(dtype)
