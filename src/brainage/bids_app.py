"""A BIDS App: ``brainage bids BIDS_DIR OUTPUT_DIR participant|group --model RUN [--participant-label 01 02]``.

The output is a BIDS derivatives dataset (it passes the BIDS validators on PyPI)::

    OUTPUT_DIR/
      dataset_description.json                  DatasetType "derivative", GeneratedBy brainage
      sub-01/ses-1/sub-01_ses-1_scans.tsv       participant level: one row per T1w scan of the session
      sub-01/ses-1/sub-01_ses-1_scans.json      its columns, the model and its preprocessing
      sub-02/sub-02_scans.tsv                   (a dataset without sessions)
      phenotype/brainage.tsv, brainage.json     group level: one row per session, repeat scans averaged

Each session's TSV is a BIDS ``scans`` file: ``filename`` (the T1w image relative to the session
folder of the input dataset), ``age`` where the dataset gives one, and the columns that
:meth:`brainage.predict.BrainAgeModel.predict` returns — ``brain_age``, ``brain_age_corrected``,
the gaps, ``brain_age_lower``/``brain_age_upper`` when the model gives an interval, ``qc_score``,
``qc_flagged``, ``warnings``. Missing values are ``n/a``.

``participant`` jobs for different labels write only their own ``sub-<label>/`` folders (and
``dataset_description.json`` if it does not exist yet, never overwritten), so they can run in
parallel, one per cluster task; ``group`` reads every session's TSV and writes ``phenotype/``.
Scans without an age are predicted too (no gap). Input: a raw BIDS dataset or fMRIPrep derivatives
(their brain masks are used).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from brainage import __version__
from brainage.errors import BrainAgeError, InputError, Problem
from brainage.io.manifest import natural_key
from brainage.utils import atomic_write

ANALYSIS_LEVELS = ("participant", "group")
#: Columns of ``predict`` copied into the session TSVs, in this order (those present).
RESULT_COLUMNS = (
    "age",
    "brain_age",
    "brain_age_corrected",
    "brain_age_gap",
    "brain_age_gap_corrected",
    "brain_age_lower",
    "brain_age_upper",
    "brain_age_sd",
    "bias_correction",
    "qc_score",
    "qc_flagged",
    "warnings",
)
#: Averaged over a session's scans at group level.
AVERAGED = ("age", "brain_age", "brain_age_corrected", "brain_age_gap", "brain_age_gap_corrected", "brain_age_lower", "brain_age_upper")
DESCRIPTIONS = {
    "filename": ("The T1-weighted image, relative to the session folder of the input dataset.", None),
    "age": ("Chronological age at the scan, from the input dataset.", "year"),
    "brain_age": ("Predicted brain age.", "year"),
    "brain_age_corrected": ("Brain age after the model's age-bias correction (n/a where none applies).", "year"),
    "brain_age_gap": ("brain_age - age.", "year"),
    "brain_age_gap_corrected": ("brain_age_corrected - age.", "year"),
    "brain_age_lower": ("Lower bound of the model's prediction interval.", "year"),
    "brain_age_upper": ("Upper bound of the model's prediction interval.", "year"),
    "brain_age_sd": ("Standard deviation of the ensemble members' brain ages.", "year"),
    "bias_correction": ("Which age-bias correction brain_age_corrected applies, or why none.", None),
    "qc_score": ("Registration score: correlation with the MNI152 template inside the brain.", None),
    "qc_flagged": ("True when qc_score is below the model's QC threshold.", None),
    "warnings": ("Reasons for caution (age outside the training range, poor registration).", None),
    "participant_id": ("The participant.", None),
    "session_id": ("The session (n/a in a dataset without sessions).", None),
    "n_scans": ("T1-weighted scans averaged.", None),
}


@dataclass
class BidsAppResult:
    """What a ``bids`` run wrote, and the inputs it skipped."""

    level: str
    files: list[Path] = field(default_factory=list)
    sessions: int = 0
    scans: int = 0
    problems: list[Problem] = field(default_factory=list)


def run_bids_app(
    bids_dir: str | Path,
    output_dir: str | Path,
    level: str,
    model: str | Path | Sequence[str | Path] | None = None,
    participant_labels: Iterable[str] = (),
    workers: int = 1,
    device: str = "auto",
    cache: str | Path | None = "auto",
) -> BidsAppResult:
    """Run the ``participant`` or ``group`` level; see the module docstring."""
    bids_dir, output_dir = Path(os.path.abspath(bids_dir)), Path(os.path.abspath(output_dir))
    if level not in ANALYSIS_LEVELS:
        raise BrainAgeError(f"analysis level {level!r}: choose participant or group")
    if not bids_dir.is_dir():
        raise InputError(bids_dir, "no such BIDS folder")
    if output_dir == bids_dir:
        raise InputError(output_dir, "the output folder must not be the input dataset")
    labels = [label.removeprefix("sub-") for label in participant_labels]
    if level == "participant":
        if model is None:
            raise BrainAgeError("the participant level needs --model RUN (a run folder or model.ckpt)")
        return run_participants(bids_dir, output_dir, model, labels, workers=workers, device=device, cache=cache)
    return run_group(bids_dir, output_dir, labels)


def input_scans(bids_dir: Path, labels: Sequence[str] = ()) -> tuple[pd.DataFrame, list[Problem]]:
    """Every T1w scan of the dataset (of ``labels`` if given) with ages where the dataset has them,
    and the problems discovery met. Scans without an age are kept (age NaN)."""
    from brainage.io import discover
    from brainage.io.bids import find_t1w
    from brainage.io.fmriprep import find_preproc, looks_like_fmriprep
    from brainage.io.images import scan_stem
    from brainage.preprocess.external_mask import mask_beside

    fmriprep = looks_like_fmriprep(bids_dir)
    # fMRIPrep: only images with their brain mask, as discovery (which lists the others as problems)
    paths = [path for path in find_preproc(bids_dir) if mask_beside(path)] if fmriprep else find_t1w(bids_dir)
    try:
        found = discover(bids_dir)
        known, problems = found.manifest, list(found.problems)
    except InputError as error:  # e.g. no participants.tsv: predict without ages
        known, problems = pd.DataFrame(columns=["path", "age"]), [Problem.from_error(error)]
    ages = dict(zip(known["path"].astype(str), known["age"], strict=False))
    rows = []
    for path in paths:
        above = path.parent.parent
        session = above.name if above.name.startswith("ses-") else None
        subject = above.parent.name if session else above.name
        if labels and subject.removeprefix("sub-") not in labels:
            continue
        rows.append(
            {
                "path": str(path),
                "scan_id": scan_stem(path),
                "subject_id": subject,
                "session_id": f"{subject}_{session}" if session else subject,
                "participant": subject,
                "session": session,
                "filename": str(path.relative_to(above)),
                "age": ages.get(str(path), math.nan),
            }
        )
    if labels:
        present = {row["participant"].removeprefix("sub-") for row in rows}
        problems += [Problem(str(bids_dir / f"sub-{label}"), "no T1w scan for this participant label") for label in labels if label not in present]
        problems = [problem for problem in problems if _about(problem, labels)]
    frame = pd.DataFrame(rows, columns=["path", "scan_id", "subject_id", "session_id", "participant", "session", "filename", "age"])
    return frame, problems


def run_participants(
    bids_dir: Path,
    output_dir: Path,
    model: str | Path | Sequence[str | Path],
    labels: Sequence[str] = (),
    workers: int = 1,
    device: str = "auto",
    cache: str | Path | None = "auto",
) -> BidsAppResult:
    """Predict every T1w scan of the chosen participants and write one scans TSV + JSON per session."""
    from brainage.predict import BrainAgeModel

    scans, problems = input_scans(bids_dir, labels)
    if scans.empty:
        raise InputError(bids_dir, "no T1w scan to predict" + (f" for participant(s) {', '.join(labels)}" if labels else ""))
    brain_age_model = BrainAgeModel.load(model, device=device)
    predictions = brain_age_model.predict(scans[["path", "scan_id", "subject_id", "session_id", "age"]], cache=cache, workers=workers)
    problems += brain_age_model.problems_
    merged = scans.merge(predictions.drop(columns=["scan_id", "subject_id", "session_id", "age"]), on="path", how="inner")
    sidecar = _sidecar(brain_age_model, bids_dir)
    unique = list(dict.fromkeys(problems))  # discovery and preprocessing may both name a broken scan
    result = BidsAppResult("participant", problems=sorted(unique, key=lambda problem: natural_key(problem.path)))
    write_description(output_dir, bids_dir)
    for (participant, session), rows in merged.groupby(["participant", merged["session"].fillna("")], sort=True):
        folder = output_dir / str(participant) / str(session) if session else output_dir / str(participant)
        stem = f"{participant}_{session}" if session else participant
        known = [column for column in RESULT_COLUMNS if column in rows]
        extra = [str(column) for column in rows if str(column).startswith("brain_age") and column not in known]  # e.g. a new interval's columns
        columns = ["filename", *known, *extra]
        table = rows.sort_values("filename", key=lambda values: values.map(natural_key))[columns]
        result.files.append(_write_tsv(table, folder / f"{stem}_scans.tsv"))
        result.files.append(_write_json({**_column_descriptions(columns), **sidecar}, folder / f"{stem}_scans.json"))
        result.sessions += 1
        result.scans += len(table)
    return result


def run_group(bids_dir: Path, output_dir: Path, labels: Sequence[str] = ()) -> BidsAppResult:
    """Gather every session's TSV into ``phenotype/brainage.tsv`` (one row per session)."""
    files = sorted(
        [*output_dir.glob("sub-*/sub-*_scans.tsv"), *output_dir.glob("sub-*/ses-*/sub-*_scans.tsv")],
        key=lambda path: natural_key(str(path)),
    )
    files = [path for path in files if not labels or path.name.split("_")[0].removeprefix("sub-") in labels]
    if not files:
        raise InputError(output_dir, "no participant results (sub-*/[ses-*/]*_scans.tsv): run the participant level first")
    frames = []
    problems = []
    for path in files:
        try:
            frame = pd.read_csv(path, sep="\t", na_values="n/a", keep_default_na=False)
        except (OSError, ValueError, pd.errors.ParserError) as error:
            problems.append(Problem(str(path), f"cannot read ({' '.join(str(error).split())})"))
            continue
        parts = path.name.removesuffix("_scans.tsv").split("_")
        frame.insert(0, "participant_id", parts[0])
        frame.insert(1, "session_id", parts[1] if len(parts) > 1 else math.nan)
        frames.append(frame)
    if not frames:
        raise InputError(output_dir, "no readable participant results")
    scans = pd.concat(frames, ignore_index=True)
    keys = ["participant_id", "session_id"]
    grouped = scans.groupby(keys, sort=False, dropna=False)
    averaged = [*(c for c in AVERAGED if c in scans), *(str(c) for c in scans if str(c).startswith("brain_age") and c not in AVERAGED)]
    table = grouped[averaged].mean(numeric_only=True)
    if "qc_score" in scans:
        table["qc_score"] = grouped["qc_score"].min()
    if "qc_flagged" in scans:
        table["qc_flagged"] = grouped["qc_flagged"].agg(lambda values: bool(pd.Series(values).astype(str).str.lower().eq("true").any()))
    if "warnings" in scans:
        table["warnings"] = grouped["warnings"].agg(lambda values: "; ".join(dict.fromkeys(str(v) for v in values if isinstance(v, str) and v)))
    table["n_scans"] = grouped.size()
    table = table.reset_index()
    table = table.iloc[
        sorted(range(len(table)), key=lambda i: (natural_key(str(table["participant_id"].iat[i])), natural_key(str(table["session_id"].iat[i]))))
    ]
    write_description(output_dir, bids_dir)
    model = _first_sidecar(files)
    result = BidsAppResult("group", problems=problems, sessions=len(table), scans=len(scans))
    result.files.append(_write_tsv(table, output_dir / "phenotype" / "brainage.tsv"))
    description: dict[str, object] = {
        "MeasurementToolMetadata": {"Description": f"brainage {__version__}: brain age from T1-weighted MRI, one row per session, repeat scans averaged"},
        **_column_descriptions(table.columns),
        **{key: model[key] for key in ("Model", "Preprocessing") if key in model},
    }
    result.files.append(_write_json(description, output_dir / "phenotype" / "brainage.json"))
    return result


def write_description(output_dir: Path, bids_dir: Path) -> Path:
    """``dataset_description.json`` of the derivatives dataset, written once (never overwritten: parallel
    participant jobs may all try, the first one wins and the others find it)."""
    path = output_dir / "dataset_description.json"
    if path.is_file():
        return path
    description = {
        "Name": f"brainage predictions for {bids_dir.name}",
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "brainage", "Version": __version__, "Description": "Brain age from T1-weighted MRI with a 3D CNN"}],
        "SourceDatasets": [{"URL": bids_dir.as_uri()}],
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".dataset_description.", suffix=".tmp", dir=output_dir)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(description, indent=2) + "\n")
        os.chmod(tmp, 0o644)
        with contextlib.suppress(FileExistsError):  # another job was first
            os.link(tmp, path)  # atomic and exclusive
    finally:
        os.unlink(tmp)
    return path


def validate_derivatives(output_dir: str | Path) -> list[str]:
    """Files of ``output_dir`` that the BIDS validators on PyPI refuse (``bids-validator``'s path rules,
    then ``bidsschematools``' schema when installed); empty when the dataset is valid."""
    from bids_validator import BIDSValidator

    root = Path(output_dir)
    validator = BIDSValidator()
    files = [path for path in root.rglob("*") if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts)]
    refused = [str(path) for path in files if not validator.is_bids("/" + path.relative_to(root).as_posix())]
    try:
        from bidsschematools import validator as schema_validator
    except ImportError:
        return refused
    import logging

    logging.getLogger("bidsschematools").setLevel(logging.ERROR)
    report = schema_validator.validate_bids(str(root), suppress_errors=True)
    return sorted(set(refused) | {str(path) for path in report.get("path_tracking", [])})


def _sidecar(model: object, bids_dir: Path) -> dict[str, object]:
    """The model and its preprocessing, for the JSON sidecars."""
    checkpoints = getattr(model, "checkpoints", [])
    names = sorted({str(getattr(checkpoint, "model_name", "")) for checkpoint in checkpoints} - {""})
    described = {
        "Model": {
            "Name": "/".join(names) or "brainage",
            "Checkpoints": [str(path) for path in getattr(model, "paths", [])],
            "EnsembleMembers": len(checkpoints),
            "TrainingAgeRange": list(model.train_age_range) if hasattr(model, "train_age_range") else None,
            "Software": f"brainage {__version__}",
        },
        "Preprocessing": model.config.to_dict() if hasattr(model, "config") else {},
        "SourceDataset": str(bids_dir),
    }
    correction = getattr(model, "correction", None)
    if isinstance(correction, str):
        described["Model"]["BiasCorrection"] = correction
    return json.loads(json.dumps(described, default=_jsonable))


def _first_sidecar(tsvs: Sequence[Path]) -> dict[str, object]:
    for tsv in tsvs:
        try:
            return json.loads(tsv.with_suffix(".json").read_text())
        except (OSError, ValueError):
            continue
    return {}


def _column_descriptions(columns: Iterable[str]) -> dict[str, dict[str, str]]:
    described = {}
    for column in columns:
        text, units = DESCRIPTIONS.get(column, (column.replace("_", " "), None))
        described[column] = {"Description": text, **({"Units": units} if units else {})}
    return described


def _write_tsv(frame: pd.DataFrame, path: Path) -> Path:
    with atomic_write(path) as tmp:
        frame.to_csv(tmp, sep="\t", index=False, na_rep="n/a", float_format="%.4f")
    return path


def _write_json(values: dict[str, object], path: Path) -> Path:
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(values, indent=2, default=_jsonable) + "\n")
    return path


def _jsonable(value: object) -> object:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (tuple, set)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    return str(value)


def _about(problem: Problem, labels: Sequence[str]) -> bool:
    """Whether a discovery problem concerns one of ``labels`` (or the dataset as a whole)."""
    text = f"{problem.path} {problem.cause}"
    if "sub-" not in text:
        return True
    return any(f"sub-{label}" in text for label in labels)
