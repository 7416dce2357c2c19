"""OASIS-1 (cross-sectional): raw scans ``<root>/disc<k>/<ID>/RAW/<ID>_mpr-<n>_anon.hdr|img`` and
``oasis_cross-sectional.csv`` (``ID, M/F, Hand, Age, Educ, SES, MMSE, CDR, eTIV, nWBV, ASF, Delay``).

One row per session (``ID`` = ``OAS1_0001_MR1``); the person is the ID without its ``_MR<k>``. Rows
with a ``Delay`` are the reliability re-scans of 20 people (``..._MR2``): a second session of the same
person that many days after the first. OASIS-1 has no ``Group`` column; it is derived from the CDR:
0 → ``Nondemented``, above 0 → ``Demented``, missing (everyone under 60, and most re-scan rows) →
unknown. A re-scan row without CDR, age or other fields takes them from the person's first session
(the age plus ``Delay`` / 365.25 years).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pandas as pd

from brainage.errors import InputError, Problem
from brainage.io.images import scan_stem
from brainage.io.manifest import Discovery, finish, is_missing, parse_age
from brainage.io.oasis import find_sessions, find_spreadsheet, raw_folders

#: The spreadsheet's columns as OASIS publishes them, in order.
CROSS_SECTIONAL_COLUMNS = ("ID", "M/F", "Hand", "Age", "Educ", "SES", "MMSE", "CDR", "eTIV", "nWBV", "ASF", "Delay")
REQUIRED_COLUMNS = ("ID", "Age")
NUMERIC_COLUMNS = ("Age", "Educ", "SES", "MMSE", "CDR", "eTIV", "nWBV", "ASF", "Delay")
#: Spreadsheet column → manifest column.
MANIFEST_NAMES = {
    "M/F": "sex", "Hand": "hand", "Age": "age", "Educ": "educ", "SES": "ses", "MMSE": "mmse", "CDR": "cdr",
    "eTIV": "etiv", "nWBV": "nwbv", "ASF": "asf", "Delay": "mr_delay",
}  # fmt: skip  # keys grouped in rows
#: Filled from the person's first session when a re-scan row leaves them empty.
INHERITED = ("sex", "hand", "educ", "ses", "mmse", "cdr", "etiv", "nwbv", "asf")
SESSION_ID = re.compile(r"^(OAS1_\d+)_MR(\d+)$", re.IGNORECASE)
DAYS_PER_YEAR = 365.25


def group_from_cdr(cdr: object) -> str | None:
    """OASIS-1's diagnosis from the Clinical Dementia Rating: 0 → Nondemented, > 0 → Demented, else None."""
    if is_missing(cdr):
        return None
    try:
        value = float(str(cdr).strip())
    except ValueError:
        return None
    return "Nondemented" if value == 0 else "Demented" if value > 0 else None


def find_cross_sectional(root: str | Path) -> Path:
    """The ``oasis_cross-sectional*.csv|xlsx`` in ``root`` or else its parent (a .csv beside an .xlsx is refused as several)."""
    return find_spreadsheet(root, lambda name: "cross" in name and "oasis" in name, ((".csv", ".xlsx"),), "OASIS-1 spreadsheets", "oasis_cross-sectional.csv")


def looks_like_oasis1(root: Path) -> bool:
    """True when an ``OAS1_<n>_MR<k>/RAW`` folder sits within reach below ``root``."""
    return any(SESSION_ID.match(folder.parent.name) for folder in raw_folders(root))


def read_cross_sectional(path: str | Path) -> pd.DataFrame:
    """The OASIS-1 spreadsheet under its 12 canonical column names (matched ignoring case and
    punctuation; absent optional columns added empty), as text."""
    from brainage.io.table import read_spreadsheet

    path = Path(path)
    if path.suffix.lower() not in (".xlsx", ".csv"):
        raise InputError(path, "the OASIS-1 spreadsheet must be an .xlsx or .csv file")
    frame = read_spreadsheet(path)
    canonical = {_squash(name): name for name in CROSS_SECTIONAL_COLUMNS}
    frame = frame.rename(columns=lambda column: canonical.get(_squash(column), column))
    missing = [column for column in REQUIRED_COLUMNS if column not in frame.columns]
    if missing:
        raise InputError(path, f"missing column(s): {', '.join(missing)}")
    for column in CROSS_SECTIONAL_COLUMNS:
        if column not in frame.columns:
            frame[column] = pd.Series(pd.NA, index=frame.index, dtype="str")
    return frame[list(CROSS_SECTIONAL_COLUMNS)]


def discover_oasis1(root: Path, demographics: str | Path | None = None) -> Discovery:
    """Match every raw scan to its spreadsheet row by ID; see :func:`brainage.io.discover`."""
    sheet = Path(demographics) if demographics is not None else find_cross_sectional(root)
    rows, problems, bad = _usable_rows(sheet)
    records: list[dict[str, object]] = []
    scans_without_rows: list[str] = []
    sessions = find_sessions(root)
    for session, files in sessions.items():
        for file in files:
            if session in rows:
                stem = re.sub(r"_anon$", "", scan_stem(file))
                scan_id = stem if stem.startswith(session) else f"{session}_{stem}"
                records.append({**rows[session], "scan_id": scan_id, "path": str(file)})
            elif session not in bad:
                problems.append(Problem(str(file), f"no row for ID {session} in {sheet.name}"))
                scans_without_rows.append(str(file))
    rows_without_scans = [session for session in rows if not sessions.get(session)]
    return finish(
        root, "oasis1", pd.DataFrame.from_records(records), problems,
        rows_without_scans=rows_without_scans, scans_without_rows=scans_without_rows, demographics=sheet,
    )  # fmt: skip  # arguments grouped by meaning


def _usable_rows(sheet: Path) -> tuple[dict[str, dict[str, object]], list[Problem], set[str]]:
    """Session ID → manifest row; the problems of the rows left out, and their IDs."""
    frame = read_cross_sectional(sheet)
    problems: list[Problem] = []
    bad: set[str] = set()
    parsed: dict[str, dict[str, Any]] = {}
    for index, row in zip(frame.index, frame.to_dict("records"), strict=False):
        label = f"row {index + 2}"
        session = None if is_missing(row["ID"]) else str(row["ID"]).strip()
        match = SESSION_ID.match(session or "")
        if match is None or session is None:
            problems.append(Problem(str(sheet), f"{label}: ID {session!r} is not OAS1_<number>_MR<k>"))
            continue
        label += f" ({session})"
        if session in parsed or session in bad:
            problems.append(Problem(str(sheet), f"{label}: duplicate ID, left out"))
            parsed.pop(session, None)
            bad.add(session)
            continue
        record: dict[str, object] = {"subject_id": match[1], "session_id": session, "visit": int(match[2])}
        cause = None
        for column, name in MANIFEST_NAMES.items():
            value = row[column]
            if is_missing(value):
                record[name] = None
            elif column in NUMERIC_COLUMNS:
                try:
                    record[name] = float(str(value).strip())
                except ValueError:
                    cause = f"non-numeric {column} {str(value).strip()!r}"
                    break
            else:
                record[name] = str(value).strip()
        if cause is None and record["age"] is not None:
            cause = parse_age(record["age"])[1]
        if cause:
            problems.append(Problem(str(sheet), f"{label}: {cause}"))
            bad.add(session)
            continue
        parsed[session] = record
    _inherit_from_first_session(parsed)
    usable: dict[str, dict[str, object]] = {}
    for session, record in parsed.items():
        if record["age"] is None:
            problems.append(Problem(str(sheet), f"{session}: missing age"))
            bad.add(session)
            continue
        record["group"] = group_from_cdr(record["cdr"])
        usable[session] = record
    return usable, problems, bad


def _inherit_from_first_session(rows: dict[str, dict[str, Any]]) -> None:
    """Re-scan rows (``_MR2``…) take the person's missing fields from ``_MR1``; the age from its age + Delay."""
    first = {record["subject_id"]: record for record in rows.values() if record["visit"] == 1}
    for record in rows.values():
        base = first.get(record["subject_id"])
        if base is None or base is record:
            if record["visit"] == 1 and record["mr_delay"] is None:
                record["mr_delay"] = 0.0
            continue
        for name in INHERITED:
            if record[name] is None:
                record[name] = base[name]
        if record["age"] is None and base["age"] is not None:
            record["age"] = float(base["age"]) + float(record["mr_delay"] or 0.0) / DAYS_PER_YEAR


def _squash(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", str(name).lower())
