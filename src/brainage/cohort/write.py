"""Generate a cohort and write it exactly like OASIS-2 raw, plus its hidden ground truth.

Layout::

    OUT/OAS2_RAW_PART1/OAS2_0001_MR1/RAW/mpr-1.nifti.hdr + .img   (NIfTI-1 pairs, int16, 4-D)
    OUT/OAS2_RAW_PART2/...
    OUT/oasis_longitudinal_demographics.xlsx                       (the 15 OASIS-2 columns)
    OUT/ground_truth.csv                                           (one row per scan, hidden truth)
    OUT/cohort.json                                                (preset, seed, models, counts, best MAE)

Every file is written atomically and is byte-identical for the same seed whatever the number of
worker processes.
"""

from __future__ import annotations

import datetime
import json
import math
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from openpyxl import Workbook
from openpyxl.writer.excel import ExcelWriter

from brainage import __version__
from brainage.cohort.ageing import AGEING, GROUPS, AgeingModel
from brainage.cohort.anatomy import load_anatomy
from brainage.cohort.people import ACQUISITION, DEMOGRAPHICS, ScanRecord, SessionRecord, SubjectRecord, sample_cohort
from brainage.cohort.presets import Preset
from brainage.cohort.render import Volumes, acquire, aged_tissues, bias_field, measure, scanner_affine, subject_anatomy, t1_signal
from brainage.errors import BrainAgeError, InputError, Problem
from brainage.utils import atomic_write, parallel_map

SPREADSHEET = "oasis_longitudinal_demographics.xlsx"
GROUND_TRUTH = "ground_truth.csv"
SUMMARY = "cohort.json"
COLUMNS = (
    "Subject ID", "MRI ID", "Group", "Visit", "MR Delay", "M/F", "Hand",
    "Age", "EDUC", "SES", "MMSE", "CDR", "eTIV", "nWBV", "ASF",
)  # fmt: skip
#: Time stamp written into the spreadsheet (document properties and zip entries) for reproducibility.
FIXED_TIME = datetime.datetime(2010, 1, 1)


@dataclass(frozen=True)
class SynthesisResult:
    """What :func:`synthesize` wrote: the tables, the ``cohort.json`` content and any failures."""

    root: Path
    demographics: pd.DataFrame
    ground_truth: pd.DataFrame
    summary: dict[str, object]
    problems: tuple[Problem, ...]


@dataclass(frozen=True)
class _Task:
    subject: SubjectRecord
    preset: Preset
    root: str
    ageing: AgeingModel


def synthesize(
    out: str | Path,
    preset: Preset,
    seed: int = 0,
    workers: int = 1,
    ageing: AgeingModel = AGEING,
) -> SynthesisResult:
    """Generate the ``preset`` cohort from ``seed`` into the new or empty folder ``out``.

    Subjects are rendered in ``workers`` processes with a progress bar; a subject that fails is
    listed in ``problems`` and left out of the tables, the others are written.
    """
    root = Path(out)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise InputError(root, "already exists and is not an empty folder; choose a new one")
    subjects = sample_cohort(preset, seed, ageing=ageing)
    tasks = [_Task(subject, preset, str(root), ageing) for subject in subjects]
    volumes: dict[str, Volumes] = {}
    problems = []
    for task, result in parallel_map(_render_subject, tasks, workers, description=f"synth {preset.name}"):
        if isinstance(result, BaseException):
            first = task.subject.sessions[0]
            problems.append(Problem(str(root / first.part / f"{task.subject.subject_id}_MR*"), str(result)))
        else:
            volumes.update(result)
    done = tuple(subject for subject in subjects if subject.sessions[0].mri_id in volumes)
    if not done:
        raise BrainAgeError(f"no subject could be written; first failure: {problems[0].path}: {problems[0].cause}")
    demographics = demographics_table(done, volumes)
    ground_truth = ground_truth_table(done, volumes, seed)
    summary = _summary(preset, seed, ageing, done, volumes, demographics)
    write_spreadsheet(demographics, root / SPREADSHEET)
    with atomic_write(root / GROUND_TRUTH) as tmp:
        ground_truth.to_csv(tmp, index=False, lineterminator="\n")
    with atomic_write(root / SUMMARY) as tmp:
        tmp.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return SynthesisResult(root, demographics, ground_truth, summary, tuple(sorted(problems, key=lambda p: p.path)))


def _render_subject(task: _Task) -> dict[str, Volumes]:
    """Render and write every scan of one subject; return each session's tissue volumes."""
    preset, subject = task.preset, task.subject
    space = subject_anatomy(subject, load_anatomy(preset.resolution))
    affine = scanner_affine(preset)
    volumes = {}
    for session in subject.sessions:
        tissues = aged_tissues(space, session.brain_age, task.ageing)
        volumes[session.mri_id] = measure(space, tissues)
        signal = t1_signal(space, tissues, session.brain_age, task.ageing)
        bias = bias_field(session, preset.shape)
        for scan in session.scans:
            write_scan(scan_path(task.root, session, scan), acquire(signal, space, session, scan, preset, bias), affine)
    return volumes


def scan_path(root: str | Path, session: SessionRecord, scan: ScanRecord) -> Path:
    """``root/OAS2_RAW_PARTn/<MRI ID>/RAW/mpr-N.nifti.hdr``."""
    return Path(root) / session.part / session.mri_id / "RAW" / f"{scan.scan}.nifti.hdr"


def write_scan(path: str | Path, data: np.ndarray, affine: np.ndarray) -> None:
    """Write a 3-D volume as OASIS-2 stores it: a NIfTI-1 ``.hdr``/``.img`` pair, 4-D with a last
    axis of 1, the geometry in the qform (code 1) and no sform (code 0)."""
    header_path = Path(path)
    image = nib.Nifti1Pair(data[..., np.newaxis], None)
    image.header.set_qform(affine, code=1)
    image.header.set_sform(None, code=0)
    image.header.set_xyzt_units("mm", "sec")
    with atomic_write(header_path) as tmp_header, atomic_write(header_path.with_suffix(".img")) as tmp_image:
        image.to_file_map(nib.Nifti1Pair.make_file_map({"header": str(tmp_header), "image": str(tmp_image)}))


def demographics_table(subjects: tuple[SubjectRecord, ...], volumes: dict[str, Volumes]) -> pd.DataFrame:
    """The OASIS-2 spreadsheet: one row per session, its 15 columns, sorted by MRI ID.

    eTIV is the intracranial volume (cm³) of the synthetic head, nWBV its brain share and
    ASF = 1755 / eTIV, as in OASIS.
    """
    rows = []
    for subject in subjects:
        for session in subject.sessions:
            measured = volumes[session.mri_id]
            etiv = round(measured.icv)
            rows.append(
                {
                    "Subject ID": subject.subject_id,
                    "MRI ID": session.mri_id,
                    "Group": subject.group,
                    "Visit": session.visit,
                    "MR Delay": session.mr_delay,
                    "M/F": subject.sex,
                    "Hand": subject.hand,
                    "Age": session.age_years,
                    "EDUC": subject.educ,
                    "SES": subject.ses,
                    "MMSE": session.mmse,
                    "CDR": session.cdr,
                    "eTIV": etiv,
                    "nWBV": round(measured.nwbv, 3),
                    "ASF": round(1755.0 / etiv, 3),
                }
            )
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    return frame.sort_values("MRI ID", ignore_index=True)


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
                        "seed": seed,
                    }
                )
    return pd.DataFrame(rows).sort_values(["MRI ID", "scan"], ignore_index=True)


def write_spreadsheet(frame: pd.DataFrame, path: str | Path) -> None:
    """Write ``frame`` as an .xlsx whose bytes depend on its content only (fixed time stamps)."""
    workbook = Workbook()
    sheet = workbook.active
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

    def writestr(self, zinfo_or_arcname, data, compress_type=None, compresslevel=None):  # type: ignore[no-untyped-def, override]
        if isinstance(zinfo_or_arcname, str):
            zinfo_or_arcname = zipfile.ZipInfo(zinfo_or_arcname, date_time=FIXED_TIME.timetuple()[:6])
            zinfo_or_arcname.compress_type = self.compression
            zinfo_or_arcname.external_attr = 0o600 << 16
        super().writestr(zinfo_or_arcname, data, compress_type, compresslevel)

    def write(self, filename, arcname=None, compress_type=None, compresslevel=None):  # type: ignore[no-untyped-def, override]
        self.writestr(arcname or Path(filename).name, Path(filename).read_bytes(), compress_type, compresslevel)


def summary_table(result: SynthesisResult) -> pd.DataFrame:
    """One row per group and one for everyone: counts and mean spreadsheet values."""
    sheet = result.demographics
    scans = result.ground_truth.groupby("MRI ID").size()
    rows = []
    for group in (*GROUPS, "all"):
        part = sheet if group == "all" else sheet[sheet["Group"] == group]
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


def best_possible_mae(subjects: tuple[SubjectRecord, ...]) -> dict[str, float]:
    """Mean |brain age − spreadsheet Age| over scans and over sessions: the error of a perfect model."""
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
    nwbv_slope, nwbv_60 = _line(brain_ages, nwbv, 60.0)
    log_slope, log_60 = _line(brain_ages, ventricles, 60.0)
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
        "best_possible_mae": {k: round(v, 4) for k, v in best_possible_mae(subjects).items()},
        "measured_ageing": {
            "nwbv_at_brain_age_60": round(nwbv_60, 4),
            "nwbv_change_per_year": round(nwbv_slope, 5),
            "ventricles_cm3_at_brain_age_60": round(math.exp(log_60), 2),
            "ventricles_cm3_at_brain_age_90": round(math.exp(log_60 + 30.0 * log_slope), 2),
        },
    }


def _line(x: np.ndarray, y: np.ndarray, at: float) -> tuple[float, float]:
    """Least-squares line through (x, y): its slope and its value at ``at``."""
    dx = x - x.mean()
    slope = float((dx * (y - y.mean())).sum() / max((dx * dx).sum(), 1e-12))
    return slope, float(y.mean()) + slope * (at - float(x.mean()))


def _xyz(name: str, values: tuple[float, float, float]) -> dict[str, float]:
    stem, unit = name.rsplit("_", 1)
    return {f"{stem}_{axis}_{unit}": value for axis, value in zip("xyz", values)}


def _cell(value: object) -> object:
    """A spreadsheet cell: Python scalars, blanks for missing values."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if isinstance(value, np.generic) else value
