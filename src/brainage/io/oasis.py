"""OASIS-2: raw scans ``<root>/OAS2_RAW_PART1|2/<MRI ID>/RAW/mpr-<n>.nifti.hdr|img`` and the
longitudinal demographics spreadsheet (``.xlsx`` or a ``.csv`` export of it)."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd

from brainage.errors import InputError, Problem
from brainage.io.images import image_suffix, pair_partner, scan_stem
from brainage.io.manifest import Discovery, check_sex_column, finish, is_missing, natural_key, parse_age
from brainage.io.table import read_spreadsheet

#: The spreadsheet's columns as OASIS publishes them, in order.
DEMOGRAPHICS_COLUMNS = (
    "Subject ID", "MRI ID", "Group", "Visit", "MR Delay", "M/F", "Hand",
    "Age", "EDUC", "SES", "MMSE", "CDR", "eTIV", "nWBV", "ASF",
)  # fmt: skip  # names grouped in rows
#: Columns without which a spreadsheet is refused; the others are filled with missing values.
REQUIRED_DEMOGRAPHICS = ("Subject ID", "MRI ID", "Age")
NUMERIC_DEMOGRAPHICS = ("Visit", "MR Delay", "Age", "EDUC", "SES", "MMSE", "CDR", "eTIV", "nWBV", "ASF")
#: Spreadsheet column → manifest column.
MANIFEST_NAMES = {
    "Subject ID": "subject_id", "MRI ID": "session_id", "Group": "group", "Visit": "visit",
    "MR Delay": "mr_delay", "M/F": "sex", "Hand": "hand", "Age": "age", "EDUC": "educ", "SES": "ses",
    "MMSE": "mmse", "CDR": "cdr", "eTIV": "etiv", "nWBV": "nwbv", "ASF": "asf",
}  # fmt: skip  # keys grouped in rows
#: Other headings of a column, as exports of the table spell them (matched like the names above).
COLUMN_ALIASES = {"sex": "M/F", "gender": "M/F"}
SCAN_FOLDER = "RAW"
#: How deep below the root a session folder may sit: ``<root>/<MRI ID>``, ``<root>/<part>/<MRI ID>``,
#: or all of it one level down (``<root>/<untarred>/<part>/<MRI ID>``).
MAX_SESSION_DEPTH = 3
#: An OASIS session folder (MRI ID): the person (``OAS2_0001``, ``OAS1_0001``), then the visit.
SESSION_NAME = re.compile(r"^(OAS[12]_\d+)_MR\d+$", re.IGNORECASE)


def layout_identity(path: str | Path) -> dict[str, str]:
    """The ids a file's place in an OASIS layout gives it, as discovery names it in a cache:
    ``OAS2_0001_MR1/RAW/mpr-1.nifti.hdr`` → scan ``OAS2_0001_MR1_mpr-1``, session ``OAS2_0001_MR1``,
    subject ``OAS2_0001`` (an OASIS-1 file name that starts with its session is its scan id). Empty
    for a file that is not in a ``<MRI ID>/RAW`` folder."""
    path = Path(path)
    session = path.parent.parent.name
    match = SESSION_NAME.match(session)
    if path.parent.name != SCAN_FOLDER or match is None:
        return {}
    stem = scan_stem(path)
    return {"scan_id": stem if stem.startswith(session) else f"{session}_{stem}", "session_id": session, "subject_id": match[1]}


def read_demographics(path: str | Path) -> pd.DataFrame:
    """Read the OASIS-2 demographics spreadsheet (.xlsx or .csv) into its 15 named columns.

    Column names are matched ignoring case, spaces and punctuation; absent optional columns are
    added empty; numbers are parsed (a cell that is not a number becomes missing: discovery lists
    such rows as problems). Raises :class:`InputError` if the file cannot be read or lacks one of
    ``Subject ID``, ``MRI ID``, ``Age``.
    """
    frame = _read_text(Path(path))
    for column in NUMERIC_DEMOGRAPHICS:
        frame[column] = pd.to_numeric(frame[column].map(_none_if_missing), errors="coerce").astype("float64")
    return frame


def find_demographics(root: str | Path) -> Path:
    """The ``*demographics*.xlsx|csv`` file in ``root`` or else its parent (an .xlsx before a .csv)."""
    return find_spreadsheet(root, lambda name: "demographics" in name, ((".xlsx",), (".csv",)), "demographics spreadsheets", "*demographics*.xlsx or .csv")


def find_spreadsheet(root: str | Path, wanted: Callable[[str], bool], suffix_groups: tuple[tuple[str, ...], ...], several: str, missing: str) -> Path:
    """The one file in ``root``, or else its parent, whose lower-case name is ``wanted`` (lock files
    ``~$…`` and hidden files aside), the suffixes of each of ``suffix_groups`` tried in turn; an
    :class:`InputError` when a group holds ``several`` such files or ``root`` and its parent hold none
    (``missing``), both saying to pass ``--demographics FILE``. OASIS-1 and OASIS-2 find theirs so."""
    root = Path(root)
    for folder in (root, root.parent):
        found = [path for path in sorted(folder.glob("*")) if path.is_file() and wanted(path.name.lower()) and not path.name.startswith(("~$", "."))]
        for suffixes in suffix_groups:
            candidates = [path for path in found if path.suffix.lower() in suffixes]
            if len(candidates) == 1:
                return candidates[0]
            if candidates:
                names = ", ".join(path.name for path in candidates)
                raise InputError(folder, f"several {several} ({names}): pass --demographics FILE")
    raise InputError(root, f"no {missing} in this folder or its parent: pass --demographics FILE")


def raw_folders(root: Path) -> Iterator[Path]:
    """Every ``<session>/RAW`` folder within :data:`MAX_SESSION_DEPTH` below ``root``, the shallowest
    first and each depth in name order (OASIS-1 and OASIS-2 lay their sessions out so)."""
    for depth in range(1, MAX_SESSION_DEPTH + 1):
        for folder in sorted(root.glob("/".join(["*"] * depth + [SCAN_FOLDER]))):
            if folder.is_dir():
                yield folder


def find_sessions(root: str | Path) -> dict[str, list[Path]]:
    """Session folder name (the MRI ID) → its scan files (the ``.hdr`` of a pair), every location listed."""
    sessions: dict[str, list[Path]] = defaultdict(list)
    for folder in raw_folders(Path(root)):
        sessions[folder.parent.name].extend(_scan_files(folder))
    return dict(sessions)


def looks_like_oasis(root: Path) -> bool:
    """True when a ``<MRI ID>/RAW`` folder holding an image sits within reach below ``root``."""
    return any(any(image_suffix(path) for path in folder.iterdir()) for folder in raw_folders(root))


def discover_oasis(root: Path, demographics: str | Path | None = None) -> Discovery:
    """Match every raw scan to its spreadsheet row by MRI ID; see :func:`brainage.io.discover`."""
    sheet = Path(demographics) if demographics is not None else find_demographics(root)
    rows, problems, bad_sessions = _usable_rows(sheet)
    by_session = {str(row["session_id"]): row for row in rows}
    records: list[dict[str, object]] = []
    scans_without_rows: list[str] = []
    sessions = find_sessions(root)
    for session, files in sessions.items():
        for file in files:
            if session in by_session:
                records.append({**by_session[session], "scan_id": f"{session}_{scan_stem(file)}", "path": str(file)})
            elif session not in bad_sessions:
                problems.append(Problem(str(file), f"no row for MRI ID {session} in {sheet.name}"))
                scans_without_rows.append(str(file))
    rows_without_scans = [session for session in by_session if not sessions.get(session)]
    return finish(
        root,
        "oasis2",
        pd.DataFrame.from_records(records),
        problems,
        rows_without_scans=rows_without_scans,
        scans_without_rows=scans_without_rows,
        demographics=sheet,
    )


def _read_text(path: Path) -> pd.DataFrame:
    """The spreadsheet as text under the canonical 15 column names."""
    if path.suffix.lower() not in (".xlsx", ".csv"):
        raise InputError(path, "the demographics spreadsheet must be an .xlsx or .csv file")
    frame = read_spreadsheet(path)
    canonical = {_squash(name): name for name in DEMOGRAPHICS_COLUMNS} | COLUMN_ALIASES
    headings: dict[str, list[str]] = defaultdict(list)
    for column in frame.columns:
        headings[canonical.get(_squash(column), column)].append(column)
    for name, given in headings.items():
        if len(given) > 1:
            raise InputError(path, f"columns {', '.join(given)} all hold {name}: keep one")
    frame.columns = [canonical.get(_squash(column), column) for column in frame.columns]
    missing = [column for column in REQUIRED_DEMOGRAPHICS if column not in frame.columns]
    if missing:
        raise InputError(path, f"missing column(s): {', '.join(missing)}")
    if "M/F" in frame.columns:
        check_sex_column(frame["M/F"], path, headings["M/F"][0])
    for column in DEMOGRAPHICS_COLUMNS:
        if column not in frame.columns:
            frame[column] = pd.Series(pd.NA, index=frame.index, dtype="str")
    return frame[list(DEMOGRAPHICS_COLUMNS)]


def _usable_rows(sheet: Path) -> tuple[list[dict[str, object]], list[Problem], set[str]]:
    """Spreadsheet rows in manifest names, the problems of the rows left out, and those rows' MRI IDs."""
    frame = _read_text(sheet)
    problems: list[Problem] = []
    bad_sessions: set[str] = set()
    ids = pd.Series([None if is_missing(value) else str(value).strip() for value in frame["MRI ID"]], index=frame.index)
    for session, group in frame[ids.duplicated(keep=False) & ids.notna()].groupby(ids, sort=False):
        numbers = ", ".join(str(index + 2) for index in group.index)
        problems.append(Problem(str(sheet), f"duplicate MRI ID {session} (rows {numbers}): left out"))
        bad_sessions.add(session)
    rows: list[dict[str, object]] = []
    for index, row in zip(frame.index, frame.to_dict("records"), strict=False):
        session = ids[index]
        if session in bad_sessions:
            continue
        cause = _row_cause({str(key): value for key, value in row.items()})
        if cause is not None:
            label = f"row {index + 2}" + (f" ({session})" if session else "")
            problems.append(Problem(str(sheet), f"{label}: {cause}"))
            if session:
                bad_sessions.add(session)
            continue
        record = {MANIFEST_NAMES[column]: _none_if_missing(row[column]) for column in DEMOGRAPHICS_COLUMNS}
        record["session_id"] = session
        record["age"] = parse_age(row["Age"])[0]
        rows.append(record)
    return rows, problems, bad_sessions


def _row_cause(row: dict[str, object]) -> str | None:
    """Why a spreadsheet row cannot be used, or None."""
    empty = [column for column in ("Subject ID", "MRI ID") if is_missing(row[column])]
    if empty:
        return f"missing {' and '.join(empty)}"
    cause = parse_age(row["Age"])[1]
    if cause:
        return cause
    for column in NUMERIC_DEMOGRAPHICS:
        value = row[column]
        if not is_missing(value):
            try:
                float(str(value).strip())
            except ValueError:
                return f"non-numeric {column} {str(value).strip()!r}"
    return None


def _scan_files(folder: Path) -> list[Path]:
    """The images in one RAW folder, a pair counted once (by its header, or its image if alone)."""
    files = []
    for path in sorted(folder.iterdir(), key=lambda path: natural_key(path.name)):
        suffix = image_suffix(path)
        if suffix is None or not path.is_file() or (suffix == ".img" and pair_partner(path).is_file()):
            continue
        files.append(path)
    return files


def _none_if_missing(value: object) -> object:
    return None if is_missing(value) else value


def _squash(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", str(name).lower())
