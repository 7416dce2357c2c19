"""Generate a cohort and write it exactly like OASIS-2 raw, plus its hidden ground truth.

Layout::

    OUT/OAS2_RAW_PART1/OAS2_0001_MR1/RAW/mpr-1.nifti.hdr + .img   (NIfTI-1 pairs, int16, 4-D)
    OUT/OAS2_RAW_PART2/...
    OUT/oasis_longitudinal_demographics.xlsx                       (the 15 OASIS-2 columns)
    OUT/ground_truth.csv                                           (one row per scan, hidden truth)
    OUT/cohort.json                                                (preset, seed, models, counts, MAEs)

Every file is byte-identical for the same seed whatever the number of worker processes, and
nothing half-written is ever visible: a session's ``RAW`` folder is filled under a hidden name and
renamed into place whole (so a ``.hdr``/``.img`` pair appears as a pair or not at all), the tables
are written atomically. Until it finishes, the synthesis keeps its request and one done-marker per
subject (the checksums of its files and its tissue volumes) in ``OUT/.synth``; a killed synthesis
run again with the same request keeps every subject whose files match their marker, writes the
rest and gives the same bytes as an uninterrupted run.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import nibabel as nib
import numpy as np
import pandas as pd
from openpyxl import Workbook
from openpyxl.worksheet.worksheet import Worksheet
from openpyxl.writer.excel import ExcelWriter

from brainage import __version__
from brainage.cohort.ageing import AGEING, GROUPS, AgeingModel
from brainage.cohort.anatomy import load_anatomy
from brainage.cohort.people import (
    ACQUISITION,
    DEMOGRAPHICS,
    MEASUREMENT,
    ScanRecord,
    SessionRecord,
    SubjectRecord,
    sample_cohort,
)
from brainage.cohort.presets import Preset
from brainage.cohort.render import Volumes, acquire, aged_tissues, bias_field, measure, scanner_affine, subject_anatomy, t1_signal
from brainage.cohort.spreadsheet import REAL_OASIS2, demographics_table, spreadsheet_statistics
from brainage.errors import BrainAgeError, InputError, Problem
from brainage.evaluation import fit_line
from brainage.utils import atomic_write, parallel_map, stale_temporaries

if TYPE_CHECKING:
    from _typeshed import SizedBuffer, StrPath

SPREADSHEET = "oasis_longitudinal_demographics.xlsx"
GROUND_TRUTH = "ground_truth.csv"
SUMMARY = "cohort.json"
#: Hidden folder of an unfinished synthesis: its request and one done-marker per subject.
PROGRESS = ".synth"
_REQUEST = "request.json"
#: Time stamp written into the spreadsheet (document properties and zip entries) for reproducibility.
FIXED_TIME = datetime.datetime(2010, 1, 1)


@dataclass(frozen=True)
class SynthesisResult:
    """What :func:`synthesize` wrote: the tables, the ``cohort.json`` content and any failures."""

    root: Path
    demographics: pd.DataFrame
    ground_truth: pd.DataFrame
    summary: dict[str, Any]  # the cohort.json content, nested JSON values
    problems: tuple[Problem, ...]


@dataclass(frozen=True)
class _Task:
    subject: SubjectRecord
    preset: Preset
    root: str
    ageing: AgeingModel


class _SubjectTask(Protocol):
    """What :func:`_render_all` needs of a task: the subject it renders."""

    @property
    def subject(self) -> SubjectRecord: ...


_T = TypeVar("_T", bound=_SubjectTask)


@dataclass(frozen=True)
class _Written:
    """One subject on disk: each session's tissue volumes and the SHA-256 of each of its files."""

    volumes: dict[str, Volumes]
    files: dict[str, str]


def synthesize(
    out: str | Path,
    preset: Preset,
    seed: int = 0,
    workers: int = 1,
    ageing: AgeingModel = AGEING,
) -> SynthesisResult:
    """Generate the ``preset`` cohort from ``seed`` into the new or empty folder ``out``, or finish
    the unfinished synthesis of the same request there (see the module doc).

    Subjects are rendered in ``workers`` processes with a progress bar; a subject that fails is
    listed in ``problems`` and left out of the tables, the others are written (and a rerun retries
    the failed ones).
    """
    root = Path(out)
    request = {"brainage_version": __version__, "preset": preset.to_dict(), "seed": seed, "ageing_model": ageing.to_dict()}
    subjects = sample_cohort(preset, seed, ageing=ageing)
    written = _resume(root, request, subjects)
    tasks = [_Task(subject, preset, str(root), ageing) for subject in subjects if subject.subject_id not in written]
    problems = _render_all(root, tasks, _render_subject, workers, f"synth {preset.name}", written)
    done = tuple(subject for subject in subjects if subject.subject_id in written)
    volumes = {mri_id: v for subject in done for mri_id, v in written[subject.subject_id].volumes.items()}
    demographics = demographics_table(done, ageing)
    ground_truth = ground_truth_table(done, volumes, seed)
    return _finish(root, demographics, ground_truth, _summary(preset, seed, ageing, done, volumes, demographics), problems)


def _render_all(root: Path, tasks: list[_T], render: Callable[[_T], _Written], workers: int, description: str, written: dict[str, _Written]) -> list[Problem]:
    """Render the subject of each task in ``workers`` processes into ``written``, its marker written as
    soon as it is done; the subjects that failed as problems. Raises :class:`BrainAgeError` when no
    subject is written at all."""
    problems = []
    for task, result in parallel_map(render, tasks, workers, description=description):
        if isinstance(result, BaseException):
            first = task.subject.sessions[0]
            problems.append(Problem(str(root / first.part / f"{task.subject.subject_id}_MR*"), str(result)))
        else:
            _write_marker(root, task.subject, result)
            written[task.subject.subject_id] = result
    if not written:
        raise BrainAgeError(f"no subject could be written; first failure: {problems[0].path}: {problems[0].cause}")
    return problems


def _finish(root: Path, demographics: pd.DataFrame, ground_truth: pd.DataFrame, summary: dict[str, Any], problems: list[Problem]) -> SynthesisResult:
    """Write the tables and ``cohort.json`` atomically; with no failures, remove the progress folder."""
    write_spreadsheet(demographics, root / SPREADSHEET)
    with atomic_write(root / GROUND_TRUTH) as tmp:
        ground_truth.to_csv(tmp, index=False, lineterminator="\n")
    with atomic_write(root / SUMMARY) as tmp:
        tmp.write_text(json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")
    if not problems:
        (root / PROGRESS / _REQUEST).unlink()
        shutil.rmtree(root / PROGRESS)
    return SynthesisResult(root, demographics, ground_truth, summary, tuple(sorted(problems, key=lambda p: p.path)))


def unfinished(root: str | Path) -> bool:
    """True when ``root`` holds a synthesis that was stopped before it finished (or had failures):
    :func:`synthesize` with the same request finishes it."""
    return (Path(root) / PROGRESS / _REQUEST).is_file()


def _resume(root: Path, request: dict[str, object], subjects: tuple[SubjectRecord, ...]) -> dict[str, _Written]:
    """Start a synthesis in ``root``, or pick an unfinished one up: the subjects already written
    whose files match their markers; every other subject's session folders and every temporary
    file of a killed run are removed."""
    progress = root / PROGRESS
    if unfinished(root):
        made = json.loads((progress / _REQUEST).read_text())
        if made != json.loads(json.dumps(request)):  # as JSON reads it back: tuples become lists
            raise InputError(
                root,
                f"holds an unfinished synthesis of another cohort (preset {made['preset']['name']}, seed {made['seed']}, "
                f"brainage {made['brainage_version']}); run that one again to finish it, or choose another folder",
            )
    elif root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise InputError(root, "already exists and is not an empty folder; choose a new one")
    else:
        progress.mkdir(parents=True, exist_ok=True)
        with atomic_write(progress / _REQUEST) as tmp:
            tmp.write_text(json.dumps(request, indent=2, sort_keys=True) + "\n")
    for name in (SPREADSHEET, GROUND_TRUTH, SUMMARY):
        for stale in stale_temporaries(root / name):
            stale.unlink()
    written = {}
    for subject in subjects:
        marker = progress / f"{subject.subject_id}.json"
        for stale in stale_temporaries(marker):
            stale.unlink()
        found = _check_marker(root, subject, marker)
        if found is None:
            _remove_sessions(root, subject)
            marker.unlink(missing_ok=True)
        else:
            written[subject.subject_id] = found
    return written


def _check_marker(root: Path, subject: SubjectRecord, marker: Path) -> _Written | None:
    """The subject's marker when every file it lists is there with its checksum, else None."""
    if not marker.is_file():
        return None
    stored = json.loads(marker.read_text())
    expected = {path for session in subject.sessions for scan in session.scans for path in _scan_files("", session, scan)}
    files: dict[str, str] = stored["files"]
    if set(files) != expected or any(not (root / path).is_file() or _sha256(root / path) != digest for path, digest in files.items()):
        return None
    return _Written({mri_id: Volumes(**values) for mri_id, values in stored["volumes"].items()}, files)


def _write_marker(root: Path, subject: SubjectRecord, written: _Written) -> None:
    content = {"volumes": {mri_id: asdict(v) for mri_id, v in written.volumes.items()}, "files": written.files}
    with atomic_write(root / PROGRESS / f"{subject.subject_id}.json") as tmp:
        tmp.write_text(json.dumps(content, indent=1, sort_keys=True) + "\n")


def _remove_sessions(root: Path, subject: SubjectRecord) -> None:
    for session in subject.sessions:
        shutil.rmtree(root / session.part / session.mri_id, ignore_errors=True)


def _render_subject(task: _Task) -> _Written:
    """Render and write every scan of one subject, one session folder at a time; on failure remove
    what was written of the subject."""
    preset, subject, root = task.preset, task.subject, Path(task.root)
    try:
        space = subject_anatomy(subject, load_anatomy(preset.resolution))
        affine = scanner_affine(preset)
        volumes, files = {}, {}
        for session in subject.sessions:
            tissues = aged_tissues(space, session.brain_age, task.ageing)
            volumes[session.mri_id] = measure(space, tissues)
            signal = t1_signal(space, tissues, session.brain_age, task.ageing)
            bias = bias_field(session, preset.shape)
            files.update(write_session(root, session, (acquire(signal, space, session, scan, preset, bias) for scan in session.scans), affine))
    except BaseException:
        _remove_sessions(root, subject)
        raise
    return _Written(volumes, files)


def write_session(root: Path, session: SessionRecord, images: Iterable[np.ndarray], affine: np.ndarray) -> dict[str, str]:
    """Write one image per scan of ``session`` into a hidden folder renamed into place as its ``RAW``
    folder whole; the SHA-256 of each file written, by path under ``root``."""
    folder = root / session.part / session.mri_id
    folder.mkdir(parents=True, exist_ok=True)
    hidden = Path(tempfile.mkdtemp(prefix=".RAW.", dir=folder))
    for scan, image in zip(session.scans, images, strict=True):
        write_scan(hidden / f"{scan.scan}.nifti.hdr", image, affine)
    hidden.chmod(folder.stat().st_mode & 0o777)  # mkdtemp makes 0700 folders
    hidden.rename(folder / "RAW")
    return {path: _sha256(root / path) for scan in session.scans for path in _scan_files("", session, scan)}


def scan_path(root: str | Path, session: SessionRecord, scan: ScanRecord) -> Path:
    """``root/OAS2_RAW_PARTn/<MRI ID>/RAW/mpr-N.nifti.hdr``."""
    return Path(root) / session.part / session.mri_id / "RAW" / f"{scan.scan}.nifti.hdr"


def _scan_files(root: str | Path, session: SessionRecord, scan: ScanRecord) -> tuple[str, str]:
    """The ``.hdr`` and ``.img`` of a scan, as POSIX paths under ``root``."""
    header = scan_path(root, session, scan)
    return header.as_posix(), header.with_suffix(".img").as_posix()


def _sha256(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    with path.open("rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


def write_scan(path: str | Path, data: np.ndarray, affine: np.ndarray) -> None:
    """Write a 3-D volume as OASIS-2 stores it: a NIfTI-1 ``.hdr``/``.img`` pair at ``path`` (the
    ``.hdr``), 4-D with a last axis of 1, the geometry in the qform (code 1) and no sform (code 0).
    Not atomic: :func:`synthesize` writes into a hidden folder that it renames into place."""
    image = nib.Nifti1Pair(data[..., np.newaxis], None)
    image.header.set_qform(affine, code=1)
    image.header.set_sform(None, code=0)
    image.header.set_xyzt_units("mm", "sec")
    header = Path(path)
    image.to_file_map(nib.Nifti1Pair.make_file_map({"header": str(header), "image": str(header.with_suffix(".img"))}))


def ground_truth_table(subjects: tuple[SubjectRecord, ...], volumes: dict[str, Volumes], seed: int) -> pd.DataFrame:
    """Hidden truth, one row per scan (joins the spreadsheet on ``MRI ID``; ``scan`` is ``mpr-N``)."""
    rows = []
    for subject in subjects:
        for session in subject.sessions:
            measured = volumes[session.mri_id]
            for scan in session.scans:
                rows.append(
                    {
                        "MRI ID": session.mri_id,
                        "scan": scan.scan,
                        "Subject ID": subject.subject_id,
                        "path": scan_path("", session, scan).as_posix(),
                        "Age": session.age_years,
                        "age": session.age,
                        "brain_age": session.brain_age,
                        "brain_age_offset": subject.brain_age_offset,
                        "dementia_onset_days": subject.onset_days,
                        "head_scale": subject.head_scale,
                        "deformation_mm": subject.deformation_mm,
                        "deformation_seed": subject.deformation_seed,
                        "skull_thickness": subject.skull_thickness,
                        "scalp_thickness": subject.scalp_thickness,
                        **_xyz("pose_rotation_deg", session.pose_rotation_deg),
                        **_xyz("pose_shift_mm", session.pose_shift_mm),
                        **_xyz("motion_rotation_deg", scan.motion_rotation_deg),
                        **_xyz("motion_shift_mm", scan.motion_shift_mm),
                        "bias_sd": session.bias_sd,
                        "bias_seed": session.bias_seed,
                        "noise_sd": session.noise_sd,
                        "noise_seed": scan.noise_seed,
                        "intensity_scale": session.intensity_scale,
                        "gm_cm3": measured.gm,
                        "wm_cm3": measured.wm,
                        "csf_cm3": measured.csf,
                        "ventricles_cm3": measured.ventricles,
                        "icv_cm3": measured.icv,
                        "nwbv": measured.nwbv,
                        "etiv_error": session.etiv_error,
                        "nwbv_error_subject": subject.nwbv_error,
                        "nwbv_error_session": session.nwbv_error,
                        "seed": seed,
                    }
                )
    return pd.DataFrame(rows).sort_values(["MRI ID", "scan"], ignore_index=True)


def write_spreadsheet(frame: pd.DataFrame, path: str | Path) -> None:
    """Write ``frame`` as an .xlsx whose bytes depend on its content only (fixed time stamps)."""
    workbook = Workbook()
    sheet = workbook.active
    assert isinstance(sheet, Worksheet)  # a new Workbook opens on one empty worksheet
    sheet.append(list(frame.columns))
    for row in frame.itertuples(index=False):
        sheet.append([_cell(value) for value in row])
    workbook.properties.creator = "brainage"
    workbook.properties.created = workbook.properties.modified = FIXED_TIME
    with atomic_write(path) as tmp, _FixedTimeZip(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        ExcelWriter(workbook, archive).save()


class _FixedTimeZip(zipfile.ZipFile):
    """A zip archive whose entries all carry :data:`FIXED_TIME` instead of the current time or a
    file's modification time."""

    def writestr(
        self, zinfo_or_arcname: str | zipfile.ZipInfo, data: SizedBuffer | str, compress_type: int | None = None, compresslevel: int | None = None
    ) -> None:
        if isinstance(zinfo_or_arcname, str):
            zinfo_or_arcname = zipfile.ZipInfo(zinfo_or_arcname, date_time=FIXED_TIME.timetuple()[:6])
            zinfo_or_arcname.compress_type = self.compression
            zinfo_or_arcname.external_attr = 0o600 << 16
        super().writestr(zinfo_or_arcname, data, compress_type, compresslevel)

    def write(self, filename: StrPath, arcname: StrPath | None = None, compress_type: int | None = None, compresslevel: int | None = None) -> None:
        self.writestr(str(arcname or Path(filename).name), Path(filename).read_bytes(), compress_type, compresslevel)


def summary_table(result: SynthesisResult) -> pd.DataFrame:
    """One row per group the cohort has and one for everyone: counts and mean spreadsheet values."""
    sheet = result.demographics
    scans = result.ground_truth.groupby("MRI ID").size()
    rows = []
    for group in (*GROUPS, "all"):
        part = sheet if group == "all" else sheet[sheet["Group"] == group]
        if part.empty and group != "all":
            continue
        first = part.drop_duplicates("Subject ID")
        rows.append(
            {
                "group": group,
                "subjects": len(first),
                "women": int((first["M/F"] == "F").sum()),
                "sessions": len(part),
                "scans": int(scans.reindex(part["MRI ID"]).sum()),
                "age": f"{part['Age'].min()}–{part['Age'].max()}" if len(part) else "–",
                "MMSE": float(part["MMSE"].mean()),
                "eTIV": round(float(part["eTIV"].mean())),
                "nWBV": float(part["nWBV"].mean()),
            }
        )
    return pd.DataFrame(rows)


def true_brain_age_mae(subjects: tuple[SubjectRecord, ...]) -> dict[str, float]:
    """Mean |true brain age − spreadsheet Age| over scans and over sessions: the MAE of the true
    brain age used as a prediction (a perfect brain reader). Not a floor: a prediction pulled
    towards the mean age can score below it."""
    sessions = [session for subject in subjects for session in subject.sessions]
    errors = np.array([abs(s.brain_age - s.age_years) for s in sessions])
    weights = np.array([len(s.scans) for s in sessions])
    return {"scan": float((errors * weights).sum() / weights.sum()), "session": float(errors.mean())}


def _summary(
    preset: Preset,
    seed: int,
    ageing: AgeingModel,
    subjects: tuple[SubjectRecord, ...],
    volumes: dict[str, Volumes],
    demographics: pd.DataFrame,
) -> dict[str, object]:
    sessions = [(subject, session) for subject in subjects for session in subject.sessions]
    brain_ages = np.array([session.brain_age for _, session in sessions])
    nwbv = np.array([volumes[session.mri_id].nwbv for _, session in sessions])
    ventricles = np.log([volumes[session.mri_id].ventricles for _, session in sessions])
    nwbv_line, log_line = fit_line(brain_ages, nwbv), fit_line(brain_ages, ventricles)
    nwbv_slope, nwbv_60 = nwbv_line.slope, nwbv_line.intercept + 60.0 * nwbv_line.slope
    log_slope, log_60 = log_line.slope, log_line.intercept + 60.0 * log_line.slope
    return {
        "brainage_version": __version__,
        "preset": preset.to_dict(),
        "seed": seed,
        "ageing_model": ageing.to_dict(),
        "demographics_model": asdict(DEMOGRAPHICS),
        "acquisition_model": asdict(ACQUISITION),
        "counts": {
            "subjects": len(subjects),
            "sessions": len(sessions),
            "scans": sum(len(session.scans) for _, session in sessions),
            "women": sum(subject.sex == "F" for subject in subjects),
            "subjects_by_group": {g: sum(s.group == g for s in subjects) for g in GROUPS},
            "sessions_by_group": {g: sum(s.group == g for s, _ in sessions) for g in GROUPS},
        },
        "age_range": [int(demographics["Age"].min()), int(demographics["Age"].max())],
        "true_brain_age_mae": {k: round(v, 4) for k, v in true_brain_age_mae(subjects).items()},
        "true_brain_age_mae_description": (
            "MAE of the true brain age against Age (a perfect brain reader); not a floor: a prediction regressed towards the mean age can score below it"
        ),
        "measurement_model": asdict(MEASUREMENT),
        "spreadsheet": {
            "description": (
                "what the spreadsheet tells about Age (brainage.cohort.spreadsheet_statistics): Pearson r, and the "
                "session-level MAE of a ridge on nWBV + eTIV + sex and of the mean age, subject-grouped 5-fold"
            ),
            "real_oasis2": REAL_OASIS2,
            "synthetic": {k: round(v, 3) for k, v in spreadsheet_statistics(demographics).items()},
        },
        "measured_ageing": {
            "nwbv_at_brain_age_60": round(nwbv_60, 4),
            "nwbv_change_per_year": round(nwbv_slope, 5),
            "ventricles_cm3_at_brain_age_60": round(math.exp(log_60), 2),
            "ventricles_cm3_at_brain_age_90": round(math.exp(log_60 + 30.0 * log_slope), 2),
        },
    }


def _xyz(name: str, values: tuple[float, float, float]) -> dict[str, float]:
    stem, unit = name.rsplit("_", 1)
    return {f"{stem}_{axis}_{unit}": value for axis, value in zip("xyz", values, strict=False)}


def _cell(value: object) -> object:
    """A spreadsheet cell: Python scalars, blanks for missing values."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if isinstance(value, np.generic) else value
