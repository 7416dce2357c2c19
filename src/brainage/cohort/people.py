"""Sample the cohort into plain records: who the people are, when they were scanned, and how.

Randomness lives here only. Every subject gets its own generator, spawned from the cohort seed by
:class:`numpy.random.SeedSequence`, so a subject's record (and through the integer seeds it holds,
its images) does not depend on how many processes render the cohort. The renderer is deterministic
given a record.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from brainage.cohort.ageing import AGEING, GROUPS, AgeingModel
from brainage.cohort.presets import Preset

PARTS = ("OAS2_RAW_PART1", "OAS2_RAW_PART2")


@dataclass(frozen=True)
class Demographics:
    """Who is in an OASIS-2-like cohort and when they come back (defaults follow OASIS-2)."""

    #: Share of women (88 of 150 in OASIS-2).
    women_share: float = 0.587
    #: Age at the first visit ~ N(mean, sd²), truncated so every visit falls in [min_age, max_age).
    baseline_age_mean: float = 75.0
    baseline_age_sd: float = 7.5
    min_age: float = 60.0
    max_age: float = 97.0
    #: Youngest first visit of a Demented or Converted subject (OASIS-1: dementia is rated from 60).
    dementia_min_age: float = 60.0
    #: Days between visits: ``min_gap_days + Gamma(gap_shape, gap_scale_days)``.
    min_gap_days: int = 365
    gap_shape: float = 2.0
    gap_scale_days: float = 170.0
    #: Chance that a return visit's number is skipped (a session left out, as MR2 missing in OASIS-2).
    skipped_visit_share: float = 0.06
    #: Subject numbers are drawn from 1..round(id_span · subjects) (OASIS-2: 150 subjects up to 0186).
    id_span: float = 186 / 150
    #: Years of education and their shares.
    education: tuple[tuple[int, float], ...] = (
        (6, 0.01), (8, 0.03), (11, 0.04), (12, 0.30), (13, 0.06), (14, 0.10),
        (15, 0.05), (16, 0.20), (17, 0.03), (18, 0.15), (20, 0.02), (23, 0.01),
    )  # fmt: skip  # a table in two rows of (years, share) pairs rather than twelve lines
    #: Hollingshead SES (1 high … 5 low) ≈ 5 − (EDUC − 6)/4 + N(0, ses_sd²), rounded into 1..5.
    ses_sd: float = 0.7
    #: Shares of subjects without SES and of sessions without MMSE (OASIS-2: 8 of 150, 2 of 373).
    ses_missing_share: float = 0.053
    mmse_missing_share: float = 0.0054
    #: CDR of Demented subjects at their first visit, and the yearly chance of a step up (0.5→1→2).
    demented_cdr: tuple[tuple[float, float], ...] = ((0.5, 0.75), (1.0, 0.23), (2.0, 0.02))
    cdr_step_per_year: float = 0.07
    #: MMSE ~ N(mean, sd²) by CDR, rounded into 4..30.
    mmse_by_cdr: tuple[tuple[float, float, float], ...] = ((0.0, 29.0, 1.0), (0.5, 25.5, 2.8), (1.0, 21.0, 3.8), (2.0, 15.0, 4.5))


@dataclass(frozen=True)
class Acquisition:
    """Individual anatomy and scanner realism: ranges the per-subject/session/scan draws come from."""

    #: Isotropic head scale ~ N(mean, sd²) by sex; with the template's 1.93 l this gives eTIV
    #: ≈ 1400 ± 130 cm³ for women and 1590 ± 140 cm³ for men.
    head_scale_women: tuple[float, float] = (0.905, 0.028)
    head_scale_men: tuple[float, float] = (0.945, 0.028)
    #: SD (mm) of the per-subject smooth random deformation ~ U(low, high).
    deformation_mm: tuple[float, float] = (1.5, 3.0)
    #: SD of the skull and scalp thickness factors around 1.
    skull_sd: float = 0.10
    scalp_sd: float = 0.15
    #: Head pose ~ U(±limit) about/along the left–right, anterior–posterior and inferior–superior
    #: axes; the head coil keeps heads upright and centred left–right, so those limits are smaller.
    rotation_deg: tuple[float, float, float] = (15.0, 8.0, 8.0)
    shift_mm: tuple[float, float, float] = (5.0, 15.0, 15.0)
    #: Motion between repeat scans ~ N(0, sd²) per axis, clipped at 3 sd.
    motion_rotation_sd_deg: float = 0.5
    motion_shift_sd_mm: float = 0.5
    #: SD of the log bias field ~ U(low, high).
    bias_sd: tuple[float, float] = (0.05, 0.15)
    #: Rician noise σ relative to white matter ~ U(low, high).
    noise_sd: tuple[float, float] = (0.02, 0.045)
    #: Stored value of young white matter ~ U(low, high).
    intensity_scale: tuple[float, float] = (600.0, 1400.0)


@dataclass(frozen=True)
class Measurement:
    """Errors of the spreadsheet's eTIV and nWBV, measured as OASIS measured them (see
    :mod:`brainage.cohort.spreadsheet`).

    The synthetic anatomy changes with brain age alone, so its exact nWBV is a near-perfect brain
    age reading (r ≈ −0.99); a real nWBV also carries the person's brain size and the segmentation's
    bias for their head, which brain age does not explain. These SDs were chosen so that the
    ``oasis2`` preset's spreadsheet matches the real OASIS-2 table (targets and measured values in
    ``cohort.json``, ``spreadsheet``).
    """

    #: Per-session error of the atlas-scaling eTIV: eTIV × exp(N(0, etiv_sd²)).
    etiv_sd: float = 0.01
    #: Per-subject nWBV error ~ N(0, nwbv_subject_sd²): brain size and segmentation bias.
    nwbv_subject_sd: float = 0.031
    #: Per-session nWBV error ~ N(0, nwbv_session_sd²): segmentation noise between visits.
    nwbv_session_sd: float = 0.005


DEMOGRAPHICS = Demographics()
ACQUISITION = Acquisition()
MEASUREMENT = Measurement()


@dataclass(frozen=True)
class ScanRecord:
    """One repeat scan ``mpr-N``: small motion relative to the session pose, and its noise seed."""

    scan: str
    motion_rotation_deg: tuple[float, float, float]
    motion_shift_mm: tuple[float, float, float]
    noise_seed: int


@dataclass(frozen=True)
class SessionRecord:
    """One visit: clinical values, exact and brain age, and the scanner state shared by its scans."""

    mri_id: str
    part: str
    visit: int
    mr_delay: int
    age: float
    brain_age: float
    cdr: float
    mmse: float | None
    pose_rotation_deg: tuple[float, float, float]
    pose_shift_mm: tuple[float, float, float]
    bias_sd: float
    bias_seed: int
    noise_sd: float
    intensity_scale: float
    scans: tuple[ScanRecord, ...]
    #: Measurement errors of this session's spreadsheet values (see :class:`Measurement`).
    etiv_error: float
    nwbv_error: float

    @property
    def age_years(self) -> int:
        """Age in completed years, as the spreadsheet's ``Age``."""
        return math.floor(self.age)


@dataclass(frozen=True)
class SubjectRecord:
    """One person: demographics, hidden brain-age offset, individual anatomy and their sessions."""

    subject_id: str
    sex: str
    hand: str
    group: str
    educ: int
    ses: float | None
    brain_age_offset: float
    onset_days: float | None
    head_scale: float
    deformation_mm: float
    deformation_seed: int
    skull_thickness: float
    scalp_thickness: float
    sessions: tuple[SessionRecord, ...]
    #: Per-subject error of the spreadsheet's nWBV (see :class:`Measurement`).
    nwbv_error: float

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def sample_cohort(
    preset: Preset,
    seed: int,
    demographics: Demographics = DEMOGRAPHICS,
    acquisition: Acquisition = ACQUISITION,
    ageing: AgeingModel = AGEING,
    measurement: Measurement = MEASUREMENT,
) -> tuple[SubjectRecord, ...]:
    """Draw every subject, session and scan of ``preset`` from ``seed``.

    Cohort-level allocations (subject numbers, groups, sexes, visit and repeat counts, missing
    values, PART1/PART2) use the first spawned generator so their totals are exact; everything
    about one person uses that person's own spawned generator.
    """
    overrides: dict[str, Any] = dict(preset.demographics)  # the preset's own (oasis1: ages 18–96), fields named at run time
    demographics = replace(demographics, **overrides)
    n = preset.n_subjects
    cohort_seq, *subject_seqs = np.random.SeedSequence(seed).spawn(n + 1)
    rng = np.random.default_rng(cohort_seq)
    span = max(n, round(demographics.id_span * n))
    numbers = [1, *sorted(int(k) for k in rng.choice(np.arange(2, span + 1), n - 1, replace=False))]
    counts = (preset.nondemented, preset.demented, preset.converted)
    groups = rng.permutation(np.repeat(np.arange(3), counts))
    women = round(demographics.women_share * n)
    sexes = rng.permutation(np.array(["F"] * women + ["M"] * (n - women)))
    visits = _allocate_visits(rng, preset, groups)
    sessions_total = int(visits.sum())
    repeats = rng.permutation(np.repeat([r for r, _ in preset.repeats], [k for _, k in preset.repeats]))
    ses_missing = set(rng.choice(n, round(demographics.ses_missing_share * n) or 1, replace=False).tolist())
    mmse_count = round(demographics.mmse_missing_share * sessions_total) or 1
    mmse_missing = set(rng.choice(sessions_total, mmse_count, replace=False).tolist())

    subjects = []
    first = 0
    for i in range(n):
        k = int(visits[i])
        subjects.append(
            _sample_subject(
                np.random.default_rng(subject_seqs[i]),
                subject_id=f"OAS2_{numbers[i]:04d}",
                group=GROUPS[groups[i]],
                sex=str(sexes[i]),
                part=PARTS[0] if first < sessions_total / 2 else PARTS[1],
                repeats=[int(r) for r in repeats[first : first + k]],
                ses_missing=i in ses_missing,
                mmse_missing=[first + j in mmse_missing for j in range(k)],
                demographics=demographics,
                acquisition=acquisition,
                ageing=ageing,
                measurement=measurement,
            )
        )
        first += k
    return tuple(subjects)


def _allocate_visits(rng: np.random.Generator, preset: Preset, groups: np.ndarray) -> np.ndarray:
    """Visit counts per subject, shuffled, with every Converted subject given at least two visits."""
    visits = rng.permutation(np.repeat([v for v, _ in preset.visits], [k for _, k in preset.visits]))
    converted = groups == GROUPS.index("Converted")
    for i in np.flatnonzero(converted & (visits < 2)):
        donors = np.flatnonzero(~converted & (visits >= 2))
        j = int(rng.choice(donors))
        visits[i], visits[j] = visits[j], visits[i]
    return visits


def _sample_subject(
    rng: np.random.Generator,
    *,
    subject_id: str,
    group: str,
    sex: str,
    part: str,
    repeats: list[int],
    ses_missing: bool,
    mmse_missing: list[bool],
    demographics: Demographics,
    acquisition: Acquisition,
    ageing: AgeingModel,
    measurement: Measurement,
) -> SubjectRecord:
    d, a = demographics, acquisition
    visit_numbers, delays = [1], [0]
    for _ in range(len(repeats) - 1):
        step = 2 if rng.random() < d.skipped_visit_share else 1
        gaps = [d.min_gap_days + rng.gamma(d.gap_shape, d.gap_scale_days) for _ in range(step)]
        visit_numbers.append(visit_numbers[-1] + step)
        delays.append(delays[-1] + round(sum(gaps)))
    span_years = delays[-1] / 365.25
    youngest = d.min_age if group == "Nondemented" else max(d.min_age, d.dementia_min_age)
    baseline = _truncated_normal(rng, d.baseline_age_mean, d.baseline_age_sd, youngest, d.max_age - span_years)
    offset = float(rng.normal(0.0, ageing.offset_sd))
    onset = _onset_days(rng, group, delays)
    educ_values, educ_shares = zip(*d.education, strict=False)
    educ = int(rng.choice(educ_values, p=np.asarray(educ_shares) / sum(educ_shares)))
    ses = float(np.clip(round(5 - (educ - 6) / 4 + rng.normal(0, d.ses_sd)), 1, 5))
    cdrs = _cdr_course(rng, group, delays, onset, d)
    scale_mean, scale_sd = a.head_scale_women if sex == "F" else a.head_scale_men

    sessions = []
    for visit, delay, cdr, n_scans, no_mmse in zip(visit_numbers, delays, cdrs, repeats, mmse_missing, strict=False):
        age = baseline + delay / 365.25
        since_onset = None if onset is None else (delay - onset) / 365.25
        mmse = _mmse(rng, cdr, d)
        sessions.append(
            SessionRecord(
                mri_id=f"{subject_id}_MR{visit}",
                part=part,
                visit=visit,
                mr_delay=delay,
                age=age,
                brain_age=ageing.brain_age(age, offset, group, since_onset),
                cdr=cdr,
                mmse=None if no_mmse else mmse,
                pose_rotation_deg=_uniform3(rng, a.rotation_deg),
                pose_shift_mm=_uniform3(rng, a.shift_mm),
                bias_sd=float(rng.uniform(*a.bias_sd)),
                bias_seed=int(rng.integers(2**31)),
                noise_sd=float(rng.uniform(*a.noise_sd)),
                intensity_scale=float(rng.uniform(*a.intensity_scale)),
                scans=tuple(
                    ScanRecord(
                        scan=f"mpr-{j + 1}",
                        motion_rotation_deg=_clipped_normal3(rng, a.motion_rotation_sd_deg),
                        motion_shift_mm=_clipped_normal3(rng, a.motion_shift_sd_mm),
                        noise_seed=int(rng.integers(2**31)),
                    )
                    for j in range(n_scans)
                ),
                etiv_error=0.0,
                nwbv_error=0.0,
            )
        )
    head_scale = float(rng.normal(scale_mean, scale_sd))
    deformation_mm = float(rng.uniform(*a.deformation_mm))
    deformation_seed = int(rng.integers(2**31))
    skull_thickness = float(np.clip(rng.normal(1.0, a.skull_sd), 0.6, 1.4))
    scalp_thickness = float(np.clip(rng.normal(1.0, a.scalp_sd), 0.5, 1.5))
    # measurement errors last, so that everything the images depend on is drawn as before
    nwbv_error = float(rng.normal(0.0, measurement.nwbv_subject_sd))
    sessions = [
        replace(
            session,
            etiv_error=float(rng.normal(0.0, measurement.etiv_sd)),
            nwbv_error=float(rng.normal(0.0, measurement.nwbv_session_sd)),
        )
        for session in sessions
    ]
    return SubjectRecord(
        subject_id=subject_id,
        sex=sex,
        hand="R",
        group=group,
        educ=educ,
        ses=None if ses_missing else ses,
        brain_age_offset=offset,
        onset_days=onset,
        head_scale=head_scale,
        deformation_mm=deformation_mm,
        deformation_seed=deformation_seed,
        skull_thickness=skull_thickness,
        scalp_thickness=scalp_thickness,
        sessions=tuple(sessions),
        nwbv_error=nwbv_error,
    )


def _onset_days(rng: np.random.Generator, group: str, delays: list[int]) -> float | None:
    """Day of dementia onset after the first visit: 0 for Demented, between visits for Converted."""
    if group == "Demented":
        return 0.0
    if group == "Converted":
        return float(rng.uniform(delays[0] + 1, delays[-1]))
    return None


def _cdr_course(rng: np.random.Generator, group: str, delays: list[int], onset: float | None, d: Demographics) -> list[float]:
    """CDR at each visit: 0 when healthy, 0.5 from conversion on, progressing stages when Demented."""
    if group == "Nondemented":
        return [0.0] * len(delays)
    if group == "Converted":
        assert onset is not None  # _onset_days gives every Converted subject an onset
        return [0.5 if delay >= onset else 0.0 for delay in delays]
    stages, shares = zip(*d.demented_cdr, strict=False)
    cdr = float(rng.choice(stages, p=np.asarray(shares) / sum(shares)))
    course = [cdr]
    for previous, delay in itertools.pairwise(delays):
        years = (delay - previous) / 365.25
        if cdr < 2.0 and rng.random() < 1.0 - math.exp(-d.cdr_step_per_year * years):
            cdr = 1.0 if cdr == 0.5 else 2.0
        course.append(cdr)
    return course


def _mmse(rng: np.random.Generator, cdr: float, d: Demographics) -> float:
    mean, sd = next((m, s) for c, m, s in d.mmse_by_cdr if c == cdr)
    return float(np.clip(round(rng.normal(mean, sd)), 4, 30))


def _truncated_normal(rng: np.random.Generator, mean: float, sd: float, low: float, high: float) -> float:
    """Rejection sampling from N(mean, sd²) on [low, high); kept instead of ``scipy.stats.truncnorm``,
    which draws other numbers from the same generator and so would change every synthetic cohort."""
    for _ in range(1000):
        value = rng.normal(mean, sd)
        if low <= value < high:
            return float(value)
    return float(rng.uniform(low, high))


def _uniform3(rng: np.random.Generator, limits: tuple[float, float, float]) -> tuple[float, float, float]:
    x, y, z = (float(rng.uniform(-limit, limit)) for limit in limits)
    return x, y, z


def _clipped_normal3(rng: np.random.Generator, sd: float) -> tuple[float, float, float]:
    x, y, z = (float(np.clip(rng.normal(0.0, sd), -3 * sd, 3 * sd)) for _ in range(3))
    return x, y, z
