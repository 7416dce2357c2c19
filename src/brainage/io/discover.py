"""One entry point for every source: find the scans and ages, say what was found and what was not."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from brainage.errors import InputError, Problem
from brainage.io.bids import discover_bids, looks_like_bids
from brainage.io.dicom import discover_dicom, looks_like_dicom
from brainage.io.fmriprep import discover_fmriprep, looks_like_fmriprep
from brainage.io.images import load_scan
from brainage.io.manifest import Discovery, natural_key
from brainage.io.oasis import discover_oasis, looks_like_oasis
from brainage.io.oasis1 import discover_oasis1, looks_like_oasis1
from brainage.io.table import discover_table
from brainage.utils import parallel_map

SOURCE_LAYOUTS = (
    "an OASIS-2 folder (OAS2_RAW_PART1/<MRI ID>/RAW/mpr-1.nifti.hdr), "
    "an OASIS-1 folder (disc1/OAS1_0001_MR1/RAW/*.hdr + oasis_cross-sectional.csv), "
    "a BIDS folder (sub-*/[ses-*/]anat/*_T1w.nii[.gz]), fMRIPrep derivatives, a folder of DICOM series or a CSV of path,subject_id,age"
)


def discover(source: str | Path, demographics: str | Path | None = None) -> Discovery:
    """Build the manifest of ``source``: an OASIS-2 root, a BIDS root, or a CSV/TSV table of scans.

    The kind is detected from the layout. Every scan's header is checked against its file size;
    bad items (unreadable scans, scans without a spreadsheet row, unusable rows) are left out and
    listed in ``problems``. Raises :class:`InputError` when the source itself cannot be used (its
    kind cannot be told, the spreadsheet or table is unreadable or misses a required column).
    ``demographics`` (OASIS-2 only) overrides the spreadsheet found beside the scans.
    """
    source = Path(os.path.abspath(Path(source).expanduser()))
    if not source.exists():
        raise InputError(source, "no such file or folder")
    if source.is_file():
        if source.suffix.lower() not in (".csv", ".tsv"):
            raise InputError(source, f"not a folder nor a .csv/.tsv table: expected {SOURCE_LAYOUTS}")
        _refuse_demographics(source, demographics, "a table of scans")
        return discover_table(source)
    if looks_like_fmriprep(source):  # a BIDS derivatives folder: before BIDS, whose *_T1w pattern it matches
        _refuse_demographics(source, demographics, "an fMRIPrep folder")
        return discover_fmriprep(source)
    if looks_like_bids(source):
        _refuse_demographics(source, demographics, "a BIDS folder")
        return discover_bids(source)
    if looks_like_oasis1(source):
        return discover_oasis1(source, demographics)
    if looks_like_oasis(source):
        return discover_oasis(source, demographics)
    archives = sorted([*source.glob("OAS2_RAW_PART*.tar*"), *source.glob("oasis_cross-sectional_disc*.tar*")])
    if archives:
        raise InputError(archives[0], f"an archive, not scans: extract it first (tar -xzf {archives[0].name})")
    if looks_like_dicom(source):
        _refuse_demographics(source, demographics, "a folder of DICOM series")
        return discover_dicom(source)
    raise InputError(source, f"cannot tell what this folder holds: expected {SOURCE_LAYOUTS}")


def summarize(discovery: Discovery, load_problems: Sequence[Problem] | None = None) -> pd.DataFrame:
    """What a discovery found, as ``item``/``value`` rows of text (the table ``brainage inspect`` prints).

    ``load_problems``, the result of :func:`check_scans` when it was run, adds their count.
    """
    manifest = discovery.manifest
    ages = manifest["age"]
    groups = manifest.drop_duplicates(["subject_id", "session_id"])["group"].value_counts()
    rows = [
        ("source", f"{discovery.source} ({discovery.kind})"),
        ("subjects", manifest["subject_id"].nunique()),
        ("sessions", len(manifest.drop_duplicates(["subject_id", "session_id"]))),
        ("scans", len(manifest)),
        ("age range (years)", f"{ages.min():.1f}–{ages.max():.1f} (mean {ages.mean():.1f})" if len(ages) else "–"),
        ("sessions per group", ", ".join(f"{name} {count}" for name, count in sorted(groups.items())) or "–"),
        ("scans without a spreadsheet row", len(discovery.scans_without_rows)),
        ("rows without scans", _count_and_names(discovery.rows_without_scans)),
        ("problems", len(discovery.problems)),
    ]
    if load_problems is not None:
        rows.append(("scans that fail to load", len(load_problems)))
    if discovery.demographics is not None:
        rows.insert(1, ("demographics", str(discovery.demographics)))
    return pd.DataFrame({"item": [item for item, _ in rows], "value": [str(value) for _, value in rows]})


def check_scans(paths: Iterable[str | Path], workers: int = 1) -> list[Problem]:
    """Load every scan (in ``workers`` processes) and return the problems of those that fail."""
    problems = [
        result if isinstance(result, Problem) else Problem(str(path), f"cannot load ({result})")
        for path, result in parallel_map(_check_one, [str(path) for path in paths], workers, "checking scans")
        if result is not None
    ]
    return sorted(problems, key=lambda problem: natural_key(problem.path))


def _check_one(path: str) -> Problem | None:
    """Load one scan; its problem if it fails (returned, not raised, so it crosses processes intact)."""
    try:
        load_scan(path)
    except InputError as error:
        return Problem.from_error(error)
    return None


def _refuse_demographics(source: Path, demographics: str | Path | None, kind: str) -> None:
    if demographics is not None:
        raise InputError(demographics, f"--demographics applies to OASIS-1/OASIS-2 folders only, and {source.name} is {kind}")


def _count_and_names(names: Sequence[str], shown: int = 5) -> str:
    """``"7 (a, b, c, d, e, …)"``: a count and the first few names."""
    if not names:
        return "0"
    more = ", …" if len(names) > shown else ""
    return f"{len(names)} ({', '.join(names[:shown])}{more})"
