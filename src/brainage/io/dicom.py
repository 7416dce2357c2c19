"""DICOM: a folder of DICOM series (any depth, any file names), converted to NIfTI by dcm2niix.

Every file is read header-only (pydicom) and grouped by ``SeriesInstanceUID``. A series is taken as
T1-weighted when its ``SeriesDescription`` or ``ProtocolName`` names a T1 sequence (MPRAGE, T1,
SPGR, …) and it is not a localizer; the others are listed as problems, one line each, and the
batch goes on. Each T1 series is converted once with ``dcm2niix`` (the binary shipped by the PyPI
package of that name) into ``<convert dir>/<content hash>/``: the hash of the series' bytes, so a
second discovery reuses the NIfTI and a changed series is converted again. The convert dir is
``$BRAINAGE_DICOM_DIR`` or else ``<temp>/brainage-dicom``. A prepared cache keeps the volumes keyed
by the NIfTI's content, so the converted files may be deleted: a later run converts again to the
same bytes and finds them cached.

Ages come from ``PatientAge`` (``071Y``, ``006M``, ``010W``, ``003D``), sex from ``PatientSex``;
the subject is ``PatientID``, the session ``<PatientID>_<StudyDate>`` (or the study UID).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from brainage.errors import InputError, Problem
from brainage.io.manifest import Discovery, finish, natural_key

#: Words in SeriesDescription / ProtocolName that mark a T1-weighted structural series.
T1_WORDS = ("mprage", "mp-rage", "mp_rage", "mp2rage", "t1", "spgr", "bravo", "tfl3d", "tfe", "ir-fspgr")
#: Words (or ImageType values) that mark a series to leave out even when it says T1.
EXCLUDE_WORDS = ("localizer", "localiser", "scout", "survey", "aahead", "calibration")
MIN_SLICES = 8
_AGE = re.compile(r"^\s*(\d{1,3})\s*([YMWD])?\s*$", re.IGNORECASE)
_UNITS = {"Y": 1.0, "M": 1 / 12, "W": 7 / 365.25, "D": 1 / 365.25}


@dataclass
class Series:
    """One DICOM series: its files and the header fields that describe it."""

    uid: str
    files: list[Path] = field(default_factory=list)
    description: str = ""
    protocol: str = ""
    image_type: str = ""
    patient_id: str = ""
    patient_age: str = ""
    patient_sex: str = ""
    study: str = ""
    number: str = ""

    @property
    def label(self) -> str:
        return self.description or self.protocol or f"series {self.number or self.uid[-8:]}"


def dicom_age(value: object) -> float | None:
    """Years from a DICOM age string (``071Y`` → 71.0, ``006M`` → 0.5); None if absent or malformed."""
    match = _AGE.match(str(value or ""))
    if not match:
        return None
    return int(match[1]) * _UNITS[(match[2] or "Y").upper()]


def is_dicom_file(path: Path) -> bool:
    """A file with the DICOM preamble (``DICM`` at byte 128), or a ``.dcm`` file."""
    if path.suffix.lower() in (".dcm", ".ima"):
        return True
    try:
        with path.open("rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def looks_like_dicom(root: Path, limit: int = 200) -> bool:
    """True for a folder with a DICOM file among the first ``limit`` files below it."""
    for count, path in enumerate(p for p in root.rglob("*") if p.is_file()):
        if count >= limit:
            return False
        if is_dicom_file(path):
            return True
    return False


def is_t1_series(series: Series) -> str | None:
    """None for a T1-weighted structural series, else why it is not one."""
    text = f"{series.description} {series.protocol}".lower()
    kind = series.image_type.lower()
    if any(word in text or word in kind for word in EXCLUDE_WORDS):
        return f"a localizer, not a T1-weighted scan ({series.label!r})"
    if not any(word in text for word in T1_WORDS):
        return f"not a T1-weighted series by its SeriesDescription/ProtocolName ({series.label!r})"
    if len(series.files) < MIN_SLICES and len(series.files) > 1:
        return f"only {len(series.files)} slices ({series.label!r})"
    return None


def find_series(root: Path) -> tuple[list[Series], list[Problem]]:
    """Every series below ``root`` (files grouped by SeriesInstanceUID) and the files that are not readable DICOM."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    series: dict[str, Series] = {}
    problems: list[Problem] = []
    for path in sorted((p for p in root.rglob("*") if p.is_file()), key=lambda p: natural_key(str(p))):
        if path.name.startswith(".") or path.suffix.lower() in (".json", ".txt", ".csv", ".tsv", ".nii", ".gz"):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # pydicom's notes on odd files; bad ones raise below
                header = pydicom.dcmread(path, stop_before_pixels=True, force=is_dicom_file(path))
            uid = str(header.SeriesInstanceUID)
        except AttributeError:
            if is_dicom_file(path):
                problems.append(Problem(str(path), "unreadable DICOM file (no SeriesInstanceUID: truncated, or not an image)"))
            continue
        except (InvalidDicomError, OSError, ValueError, EOFError, KeyError) as error:
            if is_dicom_file(path):
                problems.append(Problem(str(path), f"unreadable DICOM file ({_one_line(error)})"))
            continue
        found = series.setdefault(
            uid,
            Series(
                uid=uid,
                description=str(header.get("SeriesDescription", "") or ""),
                protocol=str(header.get("ProtocolName", "") or ""),
                image_type="\\".join(str(value) for value in (header.get("ImageType") or [])),
                patient_id=str(header.get("PatientID", "") or ""),
                patient_age=str(header.get("PatientAge", "") or ""),
                patient_sex=str(header.get("PatientSex", "") or ""),
                study=str(header.get("StudyDate", "") or header.get("StudyInstanceUID", "") or ""),
                number=str(header.get("SeriesNumber", "") or ""),
            ),
        )
        found.files.append(path)
    return list(series.values()), problems


def series_hash(series: Series) -> str:
    """BLAKE2b of the series' files (names and bytes), the key of its converted NIfTI."""
    digest = hashlib.blake2b(digest_size=12)
    for path in sorted(series.files, key=lambda p: p.name):
        digest.update(path.name.encode())
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()


def default_convert_dir() -> Path:
    return Path(os.environ.get("BRAINAGE_DICOM_DIR") or Path(tempfile.gettempdir()) / "brainage-dicom")


def convert_series(series: Series, convert_dir: Path) -> Path:
    """The series as one 3-D NIfTI (``<convert_dir>/<hash>/series.nii``), converted by dcm2niix unless done before.

    Raises :class:`InputError` naming the series' first file when dcm2niix fails or gives no single volume.
    """
    first = series.files[0]
    target = convert_dir / series_hash(series)
    done = target / "series.nii"
    if done.is_file():
        return done
    dcm2niix_bin = _dcm2niix(first)
    work = Path(tempfile.mkdtemp(prefix="convert-", dir=_mkdir(convert_dir)))
    try:
        inputs = _mkdir(work / "in")
        for k, path in enumerate(series.files):
            (inputs / f"{k:05d}.dcm").symlink_to(path.resolve())
        output = _mkdir(work / "out")
        command = [dcm2niix_bin, "-g", "i", "-b", "y", "-ba", "y", "-z", "n", "-f", "series", "-o", str(output), str(inputs)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        volumes = sorted(output.glob("*.nii"))
        if result.returncode != 0 or not volumes:
            said = " ".join((result.stdout + " " + result.stderr).split())[-200:]
            raise InputError(first, f"dcm2niix could not convert {series.label!r} (exit {result.returncode}: {said})")
        if len(volumes) > 1:
            names = ", ".join(path.name for path in volumes)
            raise InputError(first, f"dcm2niix made {len(volumes)} volumes of {series.label!r} ({names}), expected one")
        sidecar = volumes[0].with_suffix(".json")
        _mkdir(target)
        if sidecar.is_file():
            os.replace(sidecar, target / "series.json")
        os.replace(volumes[0], done)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return done


def dicom_rows(root: Path, convert_dir: Path | None = None) -> tuple[pd.DataFrame, list[Problem]]:
    """One row per converted T1 series (ages may be missing), and the problems of the rest."""
    convert_dir = Path(convert_dir) if convert_dir is not None else default_convert_dir()
    all_series, problems = find_series(root)
    records: list[dict[str, object]] = []
    for series in all_series:
        cause = is_t1_series(series)
        if cause is not None:
            problems.append(Problem(str(series.files[0]), f"skipped: {cause}"))
            continue
        try:
            path = convert_series(series, convert_dir)
        except InputError as error:
            problems.append(Problem.from_error(error))
            continue
        subject = _safe(series.patient_id) or _safe(root.name) or "dicom"
        session = f"{subject}_{_safe(series.study)}" if series.study else subject
        records.append(
            {
                "subject_id": subject,
                "session_id": session,
                "scan_id": f"{session}_{_safe(series.number or series.uid[-8:])}_{_safe(series.label)}",
                "path": str(path),
                "age": dicom_age(series.patient_age),
                "sex": series.patient_sex or None,
                "dicom_series": str(series.files[0].parent),
                "series_description": series.label,
                **_sidecar_fields(path.with_suffix(".json")),
            }
        )
    return pd.DataFrame.from_records(records), problems


def discover_dicom(root: Path, convert_dir: Path | None = None) -> Discovery:
    """Manifest of the T1 series below ``root``; series without ``PatientAge`` are problems here
    (``predict`` takes them without an age)."""
    rows, problems = dicom_rows(root, convert_dir)
    if not rows.empty:
        ageless = rows["age"].isna()
        for _path, first in rows.loc[ageless, ["path", "dicom_series"]].itertuples(index=False):
            problems.append(Problem(first, "no age: the series has no PatientAge"))
        rows = rows.loc[~ageless]
    return finish(root, "dicom", rows, problems)


def _dcm2niix(first: Path) -> str:
    """The dcm2niix binary: the PyPI package's, else one on PATH."""
    try:
        from dcm2niix import bin as found
    except ImportError:
        found = shutil.which("dcm2niix")
    if not found:
        raise InputError(first, "DICOM input needs dcm2niix: pip install dcm2niix")
    return str(found)


def _sidecar_fields(path: Path) -> dict[str, object]:
    """A few fields of dcm2niix's BIDS sidecar, when it wrote one."""
    try:
        sidecar = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    keys = {"MagneticFieldStrength": "field_strength", "Manufacturer": "manufacturer"}
    return {name: sidecar[key] for key, name in keys.items() if key in sidecar}


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _safe(text: str) -> str:
    return re.sub(r"[^0-9A-Za-z.-]+", "-", str(text)).strip("-")


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
