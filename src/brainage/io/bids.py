"""BIDS: ``sub-*/[ses-*/]anat/*_T1w.nii[.gz]``, ages from ``participants.tsv``, overridden per session
by ``sub-*/sub-*_sessions.tsv`` where that file gives one."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from brainage.errors import InputError, Problem
from brainage.io.images import image_suffix, scan_stem
from brainage.io.manifest import Discovery, finish, is_missing, natural_key, parse_age, snake_case
from brainage.io.table import read_spreadsheet

T1W_PATTERNS = ("sub-*/anat/*_T1w.nii*", "sub-*/ses-*/anat/*_T1w.nii*")
Row = dict[str, object]


def looks_like_bids(root: Path) -> bool:
    """True for a folder with ``dataset_description.json`` or ``sub-*/[ses-*/]anat`` folders."""
    return (root / "dataset_description.json").is_file() or any(
        path.is_dir() for pattern in ("sub-*/anat", "sub-*/ses-*/anat") for path in root.glob(pattern)
    )


def find_t1w(root: Path) -> list[Path]:
    """Every T1-weighted NIfTI of the dataset, in natural order."""
    found = {
        Path(os.path.abspath(path))
        for pattern in T1W_PATTERNS
        for path in root.glob(pattern)
        if image_suffix(path) in (".nii", ".nii.gz") and path.is_file()
    }
    return sorted(found, key=lambda path: natural_key(str(path)))


def discover_bids(root: Path) -> Discovery:
    """One manifest row per T1w image; see :func:`brainage.io.discover`."""
    participants_file = root / "participants.tsv"
    session_files = sorted(root.glob("sub-*/sub-*_sessions.tsv"))
    participants, problems = _participants(participants_file, needs_age=not session_files)
    sessions: dict[str, dict[str, Row | None] | None] = {}
    for path in session_files:
        try:
            sessions[path.parent.name], found = _by_id(_read_tsv(path, "session_id", "ses-"), path, "session_id")
        except InputError as error:
            sessions[path.parent.name], found = None, [Problem.from_error(error)]
        problems += found
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
        if not is_missing(visit.get("age")):
            age, cause = parse_age(visit["age"])
            where = str(root / subject / f"{subject}_sessions.tsv")
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
    if needs_age and "age" not in frame.columns:
        raise InputError(path, "missing column(s): age")
    return _by_id(frame, path, "participant_id")


def _read_tsv(path: Path, id_column: str, prefix: str) -> pd.DataFrame:
    """A BIDS table with snake_case columns and ids carrying their ``sub-``/``ses-`` prefix."""
    frame = read_spreadsheet(path)
    frame.columns = [snake_case(column) for column in frame.columns]
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
        key = record.pop(id_column)
        if key in rows:
            if rows[key] is not None:
                problems.append(Problem(str(path), f"duplicate {id_column} {key}: left out"))
            rows[key] = None
        else:
            rows[key] = record
    return rows, problems
