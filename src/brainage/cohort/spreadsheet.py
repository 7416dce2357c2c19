"""The synthetic spreadsheet: eTIV and nWBV measured as OASIS measured them, and how much they tell.

OASIS's eTIV is atlas scaling (ASF, the determinant of the affine registration to the atlas;
eTIV = 1755 / ASF) and its nWBV a tissue segmentation in atlas space over that eTIV. Here:

- eTIV = the template's intracranial volume × ``head_scale``³ × exp(ε), ε ~ N(0, ``etiv_sd``²) per
  session: the affine registration recovers the head's size, up to a small error;
- nWBV = the *atlas nWBV* of the session's brain age (the template, unwarped, aged by the ageing
  model and measured on the :data:`ATLAS_RESOLUTION` grid) + a per-subject error
  ~ N(0, ``nwbv_subject_sd``²) + a per-session error ~ N(0, ``nwbv_session_sd``²).

The error SDs live in :class:`brainage.cohort.people.Measurement`, the errors in the sampled records,
so the whole table follows from the records without rendering a voxel (:func:`demographics`), and
:func:`brainage.cohort.synthesize` writes exactly that table. The images are untouched: the true
brain age drives the anatomy as before, and ``ground_truth.csv`` keeps the exact tissue volumes.
:func:`spreadsheet_statistics` measures what the table tells about age, as :data:`REAL_OASIS2`
does for the real table.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import pandas as pd
from scipy.interpolate import PchipInterpolator
from scipy.stats import pearsonr
from sklearn.model_selection import GroupKFold, cross_val_predict

from brainage.baselines import mean_baseline, tabular_baseline
from brainage.cohort.ageing import AGEING, AgeingModel
from brainage.cohort.anatomy import load_anatomy
from brainage.cohort.people import SessionRecord, SubjectRecord, sample_cohort
from brainage.cohort.presets import Preset
from brainage.cohort.render import aged_tissues, measure, subject_anatomy

COLUMNS = ("Subject ID", "MRI ID", "Group", "Visit", "MR Delay", "M/F", "Hand", "Age", "EDUC", "SES", "MMSE", "CDR", "eTIV", "nWBV", "ASF")
#: Grid (mm) of the atlas in which the spreadsheet's segmentation is made, whatever the preset.
ATLAS_RESOLUTION = 3.0
#: Brain ages (years after the template's) at which the atlas nWBV is computed; between them it is
#: interpolated (PCHIP), beyond them clamped.
ATLAS_SPAN_YEARS, ATLAS_STEP_YEARS = 125.0, 5.0
#: Folds of the subject-grouped cross-validation of :func:`spreadsheet_statistics`.
FOLDS = 5

#: The real OASIS-2 table (``oasis_longitudinal``, 373 sessions), measured as
#: :func:`spreadsheet_statistics` measures the synthetic one (values from issue 10).
REAL_OASIS2: dict[str, object] = {
    "source": "oasis_longitudinal (373 sessions of 150 subjects), a public copy of the OASIS-2 table",
    "r_age_nwbv": -0.52,
    "r_age_nwbv_nondemented": -0.60,
    "r_etiv_male": 0.57,
    "r_age_etiv": 0.04,
    "ridge_mae": 5.23,
    "mean_age_mae": 6.22,
    "ridge_to_mean_mae": 0.84,
}


def demographics(preset: Preset, seed: int = 0, ageing: AgeingModel = AGEING) -> pd.DataFrame:
    """The spreadsheet :func:`brainage.cohort.synthesize` writes for ``preset`` and ``seed``,
    computed from the sampled records alone (seconds, no image rendered)."""
    return demographics_table(sample_cohort(preset, seed, ageing=ageing), ageing)


def demographics_table(subjects: tuple[SubjectRecord, ...], ageing: AgeingModel = AGEING) -> pd.DataFrame:
    """The OASIS-2 spreadsheet of ``subjects``: one row per session, its 15 columns, sorted by MRI
    ID; eTIV and nWBV measured as the module describes, ASF = 1755 / eTIV as in OASIS."""
    rows = []
    for subject in subjects:
        for session in subject.sessions:
            etiv, nwbv = measured_volumes(subject, session, ageing)
            etiv = round(etiv)
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
                    "nWBV": round(nwbv, 3),
                    "ASF": round(1755.0 / etiv, 3),
                }
            )
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    return frame.sort_values("MRI ID", ignore_index=True)


def measured_volumes(subject: SubjectRecord, session: SessionRecord, ageing: AgeingModel = AGEING) -> tuple[float, float]:
    """The spreadsheet's eTIV (cm³) and nWBV of one session, before rounding."""
    icv, curve, (low, high) = _atlas(ageing)
    etiv = icv * subject.head_scale**3 * math.exp(session.etiv_error)
    nwbv = float(curve(min(max(session.brain_age, low), high))) + subject.nwbv_error + session.nwbv_error
    return etiv, nwbv


@lru_cache(maxsize=2)
def _atlas(ageing: AgeingModel) -> tuple[float, PchipInterpolator, tuple[float, float]]:
    """The template's intracranial volume (cm³), its nWBV as a function of brain age, and the
    brain ages between which that function was computed."""
    anatomy = load_anatomy(ATLAS_RESOLUTION)
    space = subject_anatomy(_TEMPLATE, anatomy)
    ages = ageing.reference_age + np.arange(0.0, ATLAS_SPAN_YEARS + ATLAS_STEP_YEARS, ATLAS_STEP_YEARS)
    nwbv = [measure(space, aged_tissues(space, float(age), ageing)).nwbv for age in ages]
    icv = float(anatomy.icv.sum(dtype=np.float64)) * anatomy.voxel_cm3
    return icv, PchipInterpolator(ages, nwbv), (float(ages[0]), float(ages[-1]))


#: The template itself as a subject: no warp, head scale 1 (only its anatomy is used).
_TEMPLATE = SubjectRecord(
    subject_id="MNI152",
    sex="F",
    hand="R",
    group="Nondemented",
    educ=0,
    ses=None,
    brain_age_offset=0.0,
    onset_days=None,
    head_scale=1.0,
    deformation_mm=0.0,
    deformation_seed=0,
    skull_thickness=1.0,
    scalp_thickness=1.0,
    sessions=(),
    nwbv_error=0.0,
)


def spreadsheet_statistics(sheet: pd.DataFrame) -> dict[str, float]:
    """What an OASIS-2 spreadsheet tells about age, at session level: Pearson r of Age with nWBV
    (all and Nondemented), of eTIV with being male and with Age, and the MAE of a ridge on
    nWBV + eTIV + sex (:func:`brainage.baselines.tabular_baseline`) and of the mean age, both
    cross-validated over :data:`FOLDS` subject-grouped folds (:class:`sklearn.model_selection.GroupKFold`)."""
    healthy = sheet[sheet["Group"] == "Nondemented"]
    male = (sheet["M/F"] == "M").astype(float)
    features = pd.DataFrame({"nwbv": sheet["nWBV"], "etiv": sheet["eTIV"], "sex": sheet["M/F"]})
    age, groups = sheet["Age"].to_numpy(float), sheet["Subject ID"]
    folds = GroupKFold(n_splits=min(FOLDS, groups.nunique()))

    def mae(estimator: object) -> float:
        predicted = cross_val_predict(estimator, features, age, groups=groups, cv=folds)
        return float(np.abs(predicted - age).mean())

    ridge, mean = mae(tabular_baseline()), mae(mean_baseline())
    return {
        "r_age_nwbv": float(pearsonr(sheet["Age"], sheet["nWBV"]).statistic),
        "r_age_nwbv_nondemented": float(pearsonr(healthy["Age"], healthy["nWBV"]).statistic),
        "r_etiv_male": float(pearsonr(sheet["eTIV"], male).statistic),
        "r_age_etiv": float(pearsonr(sheet["Age"], sheet["eTIV"]).statistic),
        "ridge_mae": ridge,
        "mean_age_mae": mean,
        "ridge_to_mean_mae": ridge / mean,
    }
