"""Write a synthetic cohort in the OASIS-1 (cross-sectional) layout: ``brainage synth --out OUT --layout oasis1``.

Layout::

    OUT/disc1/OAS1_0001_MR1/RAW/OAS1_0001_MR1_mpr-1_anon.hdr + .img   (the same NIfTI-1 pairs as OASIS-2)
    OUT/disc2/...                                                     (40 people a disc)
    OUT/oasis_cross-sectional.csv   ID, M/F, Hand, Age, Educ, SES, MMSE, CDR, eTIV, nWBV, ASF, Delay
    OUT/ground_truth.csv, OUT/cohort.json                             (as for OASIS-2, in OASIS-1 names)

Any preset can be written so; the ``oasis1`` preset is sized like OASIS-1 itself. The cohort is
synthesised exactly as :func:`brainage.cohort.synthesize` does (same people, same voxels for the
same seed) into a hidden staging folder, then moved into place. A person's first session is
``_MR1``; any later one keeps its visit number and gets ``Delay`` = days since the first (the
``oasis1`` preset's 20 second sessions are days later, like OASIS-1's reliability re-scans). As in
OASIS-1, ``Educ`` is the 1–5 level (from the years of education: < 12, 12, 13–15, 16, > 16), and
the clinical columns (Educ, SES, MMSE, CDR) are blank for people under 60 and on re-scan rows.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pandas as pd

from brainage.cohort.presets import Preset
from brainage.cohort.write import GROUND_TRUTH, SUMMARY, SynthesisResult, synthesize
from brainage.errors import InputError
from brainage.utils import atomic_write

CROSS_SECTIONAL = "oasis_cross-sectional.csv"
COLUMNS = ("ID", "M/F", "Hand", "Age", "Educ", "SES", "MMSE", "CDR", "eTIV", "nWBV", "ASF", "Delay")
PEOPLE_PER_DISC = 40
STAGING = ".oasis1-staging"
#: Clinical columns OASIS-1 leaves blank for people under this age (and on re-scan rows).
CLINICAL = ("Educ", "SES", "MMSE", "CDR")
CLINICAL_MIN_AGE = 60


def education_level(years: float | None) -> float:
    """OASIS-1's 1–5 education level from years of education (NaN if unknown)."""
    if years is None or (isinstance(years, float) and math.isnan(years)):
        return math.nan
    years = float(years)
    return 1.0 if years < 12 else 2.0 if years == 12 else 3.0 if years < 16 else 4.0 if years == 16 else 5.0


def oasis1_id(oasis2_id: str) -> str:
    """``OAS2_0001_MR1`` → ``OAS1_0001_MR1`` (and ``OAS2_0001`` → ``OAS1_0001``)."""
    return "OAS1_" + oasis2_id.split("_", 1)[1]


def synthesize_oasis1(out: str | Path, preset: Preset, seed: int = 0, workers: int = 1) -> SynthesisResult:
    """Synthesize ``preset`` from ``seed`` and write it in the OASIS-1 layout into the new or empty ``out``."""
    root = Path(out)
    staging = root / STAGING
    if root.exists() and (not root.is_dir() or any(path.name != STAGING for path in root.iterdir())):
        raise InputError(root, "already exists and is not an empty folder; choose a new one")
    result = synthesize(staging, preset, seed=seed, workers=workers)  # resumes an interrupted staging run
    if result.problems:
        return result
    sheet = result.demographics
    people = list(dict.fromkeys(sheet["Subject ID"]))
    disc_of = {person: f"disc{k // PEOPLE_PER_DISC + 1}" for k, person in enumerate(people)}
    first_visit = sheet.groupby("Subject ID")["Visit"].transform("min")
    truth = result.ground_truth.copy()
    paths = []
    for mri_id, scan, subject, path in truth[["MRI ID", "scan", "Subject ID", "path"]].itertuples(index=False, name=None):
        session = oasis1_id(str(mri_id))
        target = root / disc_of[subject] / session / "RAW" / f"{session}_{scan}_anon.hdr"
        source = staging / str(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
        os.replace(source.with_suffix(".img"), target.with_suffix(".img"))
        paths.append(target.relative_to(root).as_posix())
    truth["path"] = paths
    truth["MRI ID"] = truth["MRI ID"].map(oasis1_id)
    truth["Subject ID"] = truth["Subject ID"].map(oasis1_id)
    rescan = sheet["Visit"] > first_visit
    table = pd.DataFrame(
        {
            "ID": sheet["MRI ID"].map(oasis1_id),
            "M/F": sheet["M/F"],
            "Hand": sheet["Hand"],
            "Age": sheet["Age"],
            "Educ": sheet["EDUC"].map(education_level),
            "SES": sheet["SES"],
            "MMSE": sheet["MMSE"],
            "CDR": sheet["CDR"],
            "eTIV": sheet["eTIV"],
            "nWBV": sheet["nWBV"],
            "ASF": sheet["ASF"],
            "Delay": sheet["MR Delay"].where(rescan),
        }
    )
    blank = rescan | (sheet["Age"] < CLINICAL_MIN_AGE)
    for column in CLINICAL:
        table[column] = table[column].astype(float).where(~blank)
    for column in ("Educ", "SES", "MMSE", "Delay"):
        table[column] = table[column].round().astype("Int64")  # whole numbers, as OASIS-1 writes them
    with atomic_write(root / CROSS_SECTIONAL) as tmp:
        table.to_csv(tmp, index=False, lineterminator="\n")
    with atomic_write(root / GROUND_TRUTH) as tmp:
        truth.to_csv(tmp, index=False, lineterminator="\n")
    summary = {**result.summary, "layout": "oasis1", "spreadsheet_file": CROSS_SECTIONAL}
    with atomic_write(root / SUMMARY) as tmp:
        tmp.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(staging)
    renamed = sheet.assign(**{"MRI ID": sheet["MRI ID"].map(oasis1_id), "Subject ID": sheet["Subject ID"].map(oasis1_id)})
    return SynthesisResult(root, renamed, truth, summary, result.problems)  # demographics keep OASIS-2's column names
