"""BIDS: ``sub-*/[ses-*/]anat/*_T1w.nii[.gz]``, ages from ``participants.tsv``, overridden per session
by ``sub-*/sub-*_sessions.tsv`` where that file gives one.

OASIS-3 in BIDS names its sessions by the days since the person's entry (``ses-d0129``); where
``participants.tsv`` gives ``age_at_entry`` (OASIS-3's ``AgeatEntry``) and no other age applies,
a session's age is that plus its days / 365.25. Entities beyond ``ses`` (``acq``, ``run``, ``rec``)
make repeat scans of one session: distinct ``scan_id``, shared ``session_id``, and an ``acq`` /
``run`` / ``rec`` column where the dataset uses them."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd

from brainage.errors import InputError, Problem
from brainage.io.images import image_suffix, scan_stem
from brainage.io.manifest import Discovery, finish, is_missing, natural_key, parse_age, rename_sex_alias, snake_case
from brainage.io.table import read_spreadsheet

T1W_PATTERNS = ("sub-*/anat/*_T1w.nii*", "sub-*/ses-*/anat/*_T1w.nii*")
Row = dict[str, object]
#: Filename entities kept as manifest columns (repeat scans of one session).
REPEAT_ENTITIES = ("acq", "rec", "run")
#: Participant columns giving the age at entry, for sessions named by days since entry (OASIS-3).
ENTRY_AGE_COLUMNS = ("age_at_entry", "ageatentry")
_DAYS_SESSION = re.compile(r"^ses-d(\d+)$")
DAYS_PER_YEAR = 365.25


def looks_like_bids(root: Path) -> bool:
    """True for a folder with ``dataset_description.json`` or ``sub-*/[ses-*/]anat`` folders."""
    return (root / "dataset_description.json").is_file() or any(path.is_dir() for pattern in ("sub-*/anat", "sub-*/ses-*/anat") for path in root.glob(pattern))


def find_t1w(root: Path) -> list[Path]:
    """Every T1-weighted NIfTI of the dataset, in natural order."""
    found = {
        Path(os.path.abspath(path)) for pattern in T1W_PATTERNS for path in root.glob(pattern) if image_suffix(path) in (".nii", ".nii.gz") and path.is_file()
    }
    return sorted(found, key=lambda path: natural_key(str(path)))


def read_participants_and_sessions(root: Path) -> tuple[dict[str, Row | None], dict[str, dict[str, Row | None] | None], list[Problem]]:
    """``participants.tsv`` by participant and every ``sub-*/sub-*_sessions.tsv`` by subject folder
    (None for a sessions file that cannot be read, or for an id given twice), with the problems found; the participants' ages are
    required only when no sessions file gives them."""
    session_files = sorted(root.glob("sub-*/sub-*_sessions.tsv"))
    participants, problems = _participants(root / "participants.tsv", needs_age=not session_files)
    sessions: dict[str, dict[str, Row | None] | None] = {}
    for path in session_files:
        try:
            sessions[path.parent.name], found = _by_id(_read_tsv(path, "session_id", "ses-"), path, "session_id")
        except InputError as error:
            sessions[path.parent.name], found = None, [Problem.from_error(error)]
        problems += found
    return participants, sessions, problems


def discover_bids(root: Path) -> Discovery:
    """One manifest row per T1w image; see :func:`brainage.io.discover`."""
    participants_file = root / "participants.tsv"
    participants, sessions, problems = read_participants_and_sessions(root)
    records: list[Row] = []
    scans_without_rows: list[str] = []
    seen_subjects: set[str] = set()
    for path in find_t1w(root):
        above = path.parent.parent  # the folder holding anat/: a session or the subject
        session = above.name if above.name.startswith("ses-") else None
        subject = above.parent.name if session else above.name
        seen_subjects.add(subject)
        subject_sessions = sessions.get(subject, {})
        if subject_sessions is None or (subject in participants and participants[subject] is None):
            continue  # its sessions.tsv or participants row is bad: already a problem
        person = participants.get(subject)
        visit = (subject_sessions.get(session, {}) if session else {}) or {}
        entry = _entry_age(person, session)
        if not is_missing(visit.get("age")):
            age, cause = parse_age(visit["age"])
            where = str(root / subject / f"{subject}_sessions.tsv")
        elif person is not None and is_missing(person.get("age")) and entry is not None:
            age, cause = parse_age(entry)
            where = str(participants_file)
        elif person is not None:
            age, cause = parse_age(person.get("age"))
            where = str(participants_file)
        else:
            problems.append(Problem(str(path), f"no age: {subject} has no row in participants.tsv"))
            scans_without_rows.append(str(path))
            continue
        if cause:
            problems.append(Problem(where, f"{subject}{' ' + session if session else ''}: {cause}"))
            continue
        records.append(
            {
                **(person or {}),
                **visit,
                "subject_id": subject,
                "session_id": f"{subject}_{session}" if session else subject,
                "scan_id": scan_stem(path),
                "path": str(path),
                "age": age,
                **_entities(path),
            }
        )
    rows_without_scans = [subject for subject in participants if subject not in seen_subjects]
    return finish(root, "bids", pd.DataFrame.from_records(records), problems, rows_without_scans, scans_without_rows)


def _participants(path: Path, needs_age: bool) -> tuple[dict[str, Row | None], list[Problem]]:
    """``participants.tsv`` as participant → row (snake_case keys, without the id)."""
    if not path.is_file():
        if needs_age:
            raise InputError(path, "file not found: BIDS ages come from participants.tsv or sub-*_sessions.tsv")
        return {}, []
    frame = _read_tsv(path, "participant_id", "sub-")
    if needs_age and "age" not in frame.columns and not any(column in frame.columns for column in ENTRY_AGE_COLUMNS):
        raise InputError(path, "missing column(s): age")
    return _by_id(frame, path, "participant_id")


def _read_tsv(path: Path, id_column: str, prefix: str) -> pd.DataFrame:
    """A BIDS table with snake_case columns and ids carrying their ``sub-``/``ses-`` prefix."""
    frame = read_spreadsheet(path)
    frame.columns = [snake_case(column) for column in frame.columns]
    frame = rename_sex_alias(frame, path)
    if id_column not in frame.columns:
        raise InputError(path, f"missing column(s): {id_column}")
    ids = [None if is_missing(value) else str(value).strip() for value in frame[id_column]]
    frame[id_column] = [value if value is None or value.startswith(prefix) else prefix + value for value in ids]
    return frame[frame[id_column].notna()]


def _by_id(frame: pd.DataFrame, path: Path, id_column: str) -> tuple[dict[str, Row | None], list[Problem]]:
    """Rows by id without the id column; an id given twice maps to None and is a problem."""
    rows: dict[str, Row | None] = {}
    problems = []
    for record in frame.to_dict("records"):
        key = str(record.pop(id_column))
        if key in rows:
            if rows[key] is not None:
                problems.append(Problem(str(path), f"duplicate {id_column} {key}: left out"))
            rows[key] = None
        else:
            rows[key] = {str(name): value for name, value in record.items()}
    return rows, problems


def _entities(path: Path) -> Row:
    """The ``acq``/``rec``/``run`` entities of a BIDS file name, as columns."""
    found: Row = {}
    for part in scan_stem(path).split("_"):
        key, _, value = part.partition("-")
        if key in REPEAT_ENTITIES and value:
            found[key] = value
    return found


def _entry_age(person: Row | None, session: str | None) -> float | None:
    """OASIS-3: age at entry plus the days in the session label ``ses-dNNNN``, or None."""
    match = _DAYS_SESSION.match(session or "")
    if person is None or match is None:
        return None
    for column in ENTRY_AGE_COLUMNS:
        entry, cause = parse_age(person.get(column))
        if cause is None and entry is not None:
            return entry + int(match[1]) / DAYS_PER_YEAR
    return None
