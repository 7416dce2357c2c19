"""How far a brain age can be trusted: test–retest, longitudinal consistency, per-scan intervals, pose.

Four figures, each computed on what a predictions frame actually holds (the conventions of
:mod:`brainage.evaluation`: one row per scan, ``scan_id, subject_id, session_id, age, brain_age``,
optionally ``group`` and, on synthetic data, ``true_brain_age``):

- :func:`test_retest`: repeat scans of one session (same day, same scanner) should get the same
  brain age. Within-session SD in years, ICC(2,1) and ICC(3,1) with 95 % intervals (pingouin).
- :func:`longitudinal`: over a person's visits, predicted brain age should move with age. The
  per-subject slope of brain age on age (median and IQR, per clinical group) and the spread of the
  gap over visits; on synthetic data also the slope on the true brain age.
- :class:`ConformalInterval`: split-conformal intervals per scan, calibrated on out-of-fold residuals
  (one per session, :func:`session_residuals`); :func:`coverage` checks them on held-out people.
- :class:`Pose`, :func:`repose_header`, :func:`repose_voxels`, :func:`write_poses`: re-posed copies of a
  scan for checking pose invariance (``bench/pose.py``).

A figure that the data cannot give (no session with two scans, no subject with two visits) comes
back as a :class:`ReliabilityResult` with ``available=False`` and the reason, never as NaN.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import ndimage
from scipy.spatial.transform import Rotation

from brainage.evaluation import aggregate_sessions
from brainage.io.images import scan_stem
from brainage.io.manifest import natural_key

__all__ = [
    "CONTROL_GROUPS",
    "ConformalInterval",
    "Pose",
    "ReliabilityResult",
    "coverage",
    "covered",
    "grid_centre",
    "longitudinal",
    "random_poses",
    "repose_header",
    "repose_voxels",
    "session_residuals",
    "test_retest",
    "write_poses",
]

#: Group names taken as healthy controls when ``longitudinal`` is not told which (the first present wins).
CONTROL_GROUPS = ("Nondemented", "control", "Control", "CN", "HC", "healthy")
NO_REPEATS = "not available: no session has two or more scans"
NO_VISITS = "not available: no subject has two or more visits"


@dataclass(frozen=True)
class ReliabilityResult:
    """One reliability figure, or why the data cannot give it.

    ``available`` is False when the predictions hold nothing to compute it from; ``reason`` then
    says why (and may carry a note when it is available). ``values`` holds the headline numbers as
    plain floats and ints (for ``summary.csv`` and YAML), ``table`` the table to print, ``details``
    the rows it was computed from (one per session or per subject).

    Example::

        result = test_retest(predictions)
        print(result.values["within_sd"] if result.available else result.reason)
    """

    figure: str
    available: bool
    reason: str = ""
    values: dict[str, Any] = field(default_factory=dict)
    table: pd.DataFrame = field(default_factory=pd.DataFrame)
    details: pd.DataFrame = field(default_factory=pd.DataFrame)

    @classmethod
    def unavailable(cls, figure: str, reason: str) -> ReliabilityResult:
        """A figure the data cannot give, with the reason."""
        return cls(figure=figure, available=False, reason=reason)

    def __str__(self) -> str:
        if not self.available:
            return f"{self.figure}: {self.reason}"
        shown = ", ".join(f"{key} {_short(value)}" for key, value in self.values.items())
        return f"{self.figure}: {shown}" + (f" ({self.reason})" if self.reason else "")


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _require(frame: pd.DataFrame, columns: Iterable[str]) -> None:
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise ValueError(f"predictions lack column(s): {', '.join(missing)}")


# --- test–retest ---------------------------------------------------------------------------------


def test_retest(predictions: pd.DataFrame, column: str = "brain_age", repeats: int | str = "auto") -> ReliabilityResult:
    """Test–retest reliability of ``column`` over the repeat scans of each session.

    ``within_sd`` (years) is the pooled within-session SD, √(Σ (nᵢ − 1) sᵢ² / Σ (nᵢ − 1)) over every
    session with two or more scans (all their scans); ``repeatability`` = 2.77 · ``within_sd`` is
    the difference two scans of one session stay within for 95 % of pairs (Bland & Altman 1996).
    ``icc2`` is ICC(2,1) (two-way random effects, absolute agreement, single scan) and ``icc3``
    ICC(3,1) (two-way mixed, consistency), both from :func:`pingouin.intraclass_corr` with the
    session as target and the repeat's position (1st, 2nd … scan by natural ``scan_id`` order) as
    rater, each with its 95 % interval (``icc2_low``, ``icc2_high`` …).

    ICC needs a balanced design, so it uses the first ``k`` scans of every session with at least
    ``k``; ``repeats="auto"`` picks the ``k`` ≥ 2 that uses the most scans (k times the number of
    such sessions; the smaller k on a tie), an int fixes it. ICC(·,1) is the reliability of one
    scan whatever ``k``: ``k`` changes its precision, not what it estimates. When repeats agree
    exactly, the ICC is 1 and its interval [1, 1] (pingouin's F statistic is infinite there).

    Example::

        result = test_retest(predictions)           # one row per scan
        if result.available:
            print(result.values["within_sd"], result.values["icc2"], result.values["k"])
        print(result.table)                         # measure, value, ci_low, ci_high, n_sessions, n_scans
    """
    figure = "test-retest"
    _require(predictions, ("scan_id", "subject_id", "session_id", column))
    frame = predictions.dropna(subset=[column])[["scan_id", "subject_id", "session_id", column]].copy()
    frame = _in_scan_order(frame)
    frame["repeat"] = frame.groupby(["subject_id", "session_id"], sort=False).cumcount() + 1
    grouped = frame.groupby(["subject_id", "session_id"], sort=True)[column]
    sessions = pd.DataFrame({"n_scans": grouped.size(), "mean": grouped.mean(), "sd": grouped.std(ddof=1)}).reset_index()
    repeated = sessions[sessions["n_scans"] >= 2]
    if repeated.empty:
        return ReliabilityResult.unavailable(figure, NO_REPEATS)
    dof = repeated["n_scans"] - 1
    within_sd = float(np.sqrt(np.sum(dof * repeated["sd"] ** 2) / np.sum(dof)))
    k = _choose_repeats(repeated["n_scans"].to_numpy(), repeats)
    complete = repeated.loc[repeated["n_scans"] >= k, ["subject_id", "session_id"]]
    values: dict[str, Any] = {
        "n_sessions": len(repeated),
        "n_scans": int(repeated["n_scans"].sum()),
        "within_sd": within_sd,
        "repeatability": 2.77 * within_sd,
        "k": int(k),
        "n_icc_sessions": len(complete),
    }
    rows = [
        {"measure": "within-session SD (years)", "value": within_sd, "ci_low": math.nan, "ci_high": math.nan,
         "n_sessions": len(repeated), "n_scans": int(repeated["n_scans"].sum())},
        {"measure": "repeatability 2.77·SD (years)", "value": 2.77 * within_sd, "ci_low": math.nan, "ci_high": math.nan,
         "n_sessions": len(repeated), "n_scans": int(repeated["n_scans"].sum())},
    ]  # fmt: skip
    reason = ""
    if len(complete) >= 2:
        used = frame.merge(complete, on=["subject_id", "session_id"])
        used = used[used["repeat"] <= k]
        iccs = _pingouin_icc(used, column)
        for key, label in (("icc2", "ICC(2,1) absolute agreement"), ("icc3", "ICC(3,1) consistency")):
            value, low, high = iccs[key]
            values.update({key: value, f"{key}_low": low, f"{key}_high": high})
            rows.append({"measure": label, "value": value, "ci_low": low, "ci_high": high, "n_sessions": len(complete), "n_scans": len(used)})
    else:
        reason = f"ICC not available: fewer than two sessions have {k} or more scans"
    details = sessions.rename(columns={"mean": f"mean_{column}", "sd": f"sd_{column}"})
    return ReliabilityResult(figure, True, reason, values, pd.DataFrame(rows), details)


test_retest.__test__ = False  # a library function, not a test: pytest must not collect it where imported


def _in_scan_order(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows sorted by subject, session, then natural ``scan_id`` order (mpr-2 before mpr-10)."""
    keys = [
        (str(subject), str(session), natural_key(str(scan)))
        for subject, session, scan in zip(frame["subject_id"], frame["session_id"], frame["scan_id"], strict=False)
    ]
    order = sorted(range(len(keys)), key=keys.__getitem__)
    return frame.iloc[order]


def _choose_repeats(counts: np.ndarray, repeats: int | str) -> int:
    if repeats == "auto":
        options = range(2, int(counts.max()) + 1)
        return max(options, key=lambda k: (k * int(np.sum(counts >= k)), -k))
    if isinstance(repeats, (int, np.integer)) and not isinstance(repeats, bool) and repeats >= 2:
        return int(repeats)
    raise ValueError(f"repeats must be 'auto' or an integer of at least 2, not {repeats!r}")


def _pingouin_icc(used: pd.DataFrame, column: str) -> dict[str, tuple[float, float, float]]:
    """ICC(2,1) and ICC(3,1) with their 95 % intervals, unrounded, from pingouin."""
    import pingouin

    exact = bool(used.groupby(["subject_id", "session_id"])[column].agg(np.ptp).max() == 0)
    data = used.assign(target=used["subject_id"].astype(str) + "\x1f" + used["session_id"].astype(str))
    rounding = pingouin.options.get("round.column.CI95")
    pingouin.options["round.column.CI95"] = None  # pingouin rounds the interval to 2 decimals by default
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # divide-by-zero when repeats agree exactly; pandas deprecations
            table = pingouin.intraclass_corr(data=data, targets="target", raters="repeat", ratings=column, nan_policy="raise")
    finally:
        pingouin.options["round.column.CI95"] = rounding
    table = table.set_index("Type")
    names = {"icc2": ("ICC(A,1)", "ICC2"), "icc3": ("ICC(C,1)", "ICC3")}  # pingouin ≥ 0.7, and before
    found = {}
    for key, candidates in names.items():
        row = table.loc[next(name for name in candidates if name in table.index)]
        value = float(row["ICC"])
        low, high = (float(bound) for bound in row["CI95"])
        if exact:
            value, low, high = 1.0, 1.0, 1.0
        found[key] = (value, low, high)
    return found


# --- longitudinal consistency --------------------------------------------------------------------


def longitudinal(
    predictions: pd.DataFrame,
    column: str = "brain_age",
    control_group: str | None = None,
    by: str = "group",
    true_column: str = "true_brain_age",
    min_years: float = 0.5,
    delay_column: str = "mr_delay",
) -> ReliabilityResult:
    """Whether predicted brain age follows a person's ageing over their visits.

    Repeat scans are first averaged per session (:func:`brainage.evaluation.aggregate_sessions`).
    For each subject with two or more visits spanning at least ``min_years`` years of age, the
    slope is the least-squares slope of the session brain ages on the session ages (with two
    visits: Δ brain age / Δ age; 1 when brain age follows age, 0 when it ignores it) and
    ``gap_sd`` the SD over the visits of the gap ``column − age``. Where ``true_column`` is present
    (synthetic cohorts' hidden brain age) ``slope_true`` is the slope on it instead of on age (1 for
    a perfect model, also for people whose brain ages faster).

    Ages in whole years (OASIS-2's spreadsheet) make a one-year follow-up anything from 0 to 2
    years; where ``delay_column`` (days since the first visit, OASIS-2's ``MR Delay``) is known for
    every visit of a subject, the ages used are the first visit's age plus the delay in years.

    ``table`` has one row per group (``by``; the control group first, then the others, then
    ``all``): subjects, visits, median years followed, median and IQR (``q1``, ``q3``) of the
    slopes, median ``gap_sd``. ``control_group`` names the controls (default: the first of
    ``CONTROL_GROUPS`` present); ``values`` holds the control group's figures (all subjects' when
    there are no groups) and ``details`` one row per subject.

    Example::

        result = longitudinal(predictions)          # sessions averaged for you
        print(result.table if result.available else result.reason)
        print(result.values["slope_median"], result.values["group"])
    """
    figure = "longitudinal"
    _require(predictions, ("subject_id", "session_id", "age", column))
    kept = [c for c in ("scan_id", "subject_id", "session_id", "age", column, by, true_column, delay_column) if c in predictions.columns]
    frame = predictions[kept].copy()
    if column != "brain_age":
        frame = frame.drop(columns=["brain_age"], errors="ignore")
    sessions = aggregate_sessions(frame.rename(columns={column: "brain_age"}) if column != "brain_age" else frame)
    sessions = sessions.dropna(subset=["age", "brain_age"])
    has_groups = by in sessions and sessions[by].notna().any()
    has_truth = true_column in sessions and sessions[true_column].notna().any()
    visits = sessions.groupby("subject_id")["session_id"].transform("size")
    if not (visits >= 2).any():
        return ReliabilityResult.unavailable(figure, NO_VISITS)
    rows = []
    for subject, rows_of in sessions[visits >= 2].groupby("subject_id", sort=True):
        age = rows_of["age"].to_numpy(dtype=float)
        delay = rows_of[delay_column].to_numpy(dtype=float) if delay_column in rows_of else np.full(len(age), np.nan)
        timed = bool(np.isfinite(delay).all())
        if timed:
            first = int(np.argmin(delay))
            age = age[first] + (delay - delay[first]) / 365.25
        brain = rows_of["brain_age"].to_numpy(dtype=float)
        span = float(np.ptp(age))
        record = {
            "subject_id": subject,
            "group": rows_of[by].iloc[0] if has_groups else "all",
            "n_visits": len(rows_of),
            "ages_from": delay_column if timed else "age",
            "years": span,
            "slope": _slope(age, brain) if span >= min_years else math.nan,
            "gap_sd": float(np.std(brain - age, ddof=1)),
        }
        if has_truth:
            truth = rows_of[true_column].to_numpy(dtype=float)
            record["slope_true"] = _slope(truth, brain) if np.isfinite(truth).all() and np.ptp(truth) > 0 and span >= min_years else math.nan
        rows.append(record)
    subjects = pd.DataFrame(rows)
    subjects["group"] = subjects["group"].fillna("unknown").astype(str)
    usable = subjects[subjects["slope"].notna()]
    if usable.empty:
        return ReliabilityResult.unavailable(figure, f"not available: no subject's visits span {min_years:g} years or more of age")
    groups = sorted(subjects["group"].unique(), key=str)
    control = control_group if control_group is not None else next((g for g in CONTROL_GROUPS if g in groups), None)
    if control in groups:
        groups.remove(control)
        groups.insert(0, control)
    short = [g for g in groups if subjects.loc[subjects["group"] == g, "slope"].isna().all()]
    groups = [g for g in groups if g not in short]  # no subject of theirs followed long enough
    order = groups + (["all"] if has_groups and len(groups) > 1 else [])
    table = pd.DataFrame([_longitudinal_row(name, subjects if name == "all" else subjects[subjects["group"] == name], has_truth) for name in order])
    headline = table.iloc[0] if control in groups or not has_groups or len(groups) == 1 else table.iloc[-1]
    values = {key: _native(value) for key, value in headline.items()}
    notes = [] if control in groups or not has_groups else ["no control group: values are those of all subjects"]
    if short:
        notes.append(f"left out, no subject followed {min_years:g} years or more: {', '.join(short)}")
    reason = "; ".join(notes)
    return ReliabilityResult(figure, True, reason, values, table, subjects)


def _slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of y on x (x must vary)."""
    x = x - x.mean()
    return float(np.dot(x, y - y.mean()) / np.dot(x, x))


def _longitudinal_row(name: str, subjects: pd.DataFrame, has_truth: bool) -> dict[str, Any]:
    slopes = subjects["slope"].dropna()
    row: dict[str, Any] = {
        "group": name,
        "n_subjects": len(slopes),
        "n_visits": int(subjects.loc[slopes.index, "n_visits"].sum()),
        "years_median": float(subjects.loc[slopes.index, "years"].median()) if len(slopes) else math.nan,
        "slope_median": float(slopes.median()) if len(slopes) else math.nan,
        "slope_q1": float(slopes.quantile(0.25)) if len(slopes) else math.nan,
        "slope_q3": float(slopes.quantile(0.75)) if len(slopes) else math.nan,
        "gap_sd_median": float(subjects["gap_sd"].median()),
    }
    if has_truth:
        true = subjects["slope_true"].dropna()
        row.update(
            slope_true_median=float(true.median()) if len(true) else math.nan,
            slope_true_q1=float(true.quantile(0.25)) if len(true) else math.nan,
            slope_true_q3=float(true.quantile(0.75)) if len(true) else math.nan,
        )
    return row


def _native(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


# --- per-scan intervals ---------------------------------------------------------------------------


def session_residuals(predictions: pd.DataFrame, column: str = "brain_age", level: str = "scan", sd_column: str | None = None) -> pd.DataFrame:
    """One calibration residual (``column − age``) per session, for :class:`ConformalInterval`.

    ``predictions`` must be out of fold (each scan predicted by a model that never trained on its
    subject). Repeat scans of a session are not independent, so each session gives one residual:
    ``level="scan"`` takes its first scan (natural ``scan_id`` order), the error of a single scan,
    for per-scan intervals; ``level="session"`` the error of the session mean, for intervals on
    session means (``predict --sessions``). ``sd_column`` (e.g. the SD over ensemble members) is
    carried along as ``member_sd`` the same way. Rows without age are left out.

    Example::

        calibration = session_residuals(result.predictions)        # subject_id, session_id, residual
        interval = ConformalInterval(0.9).fit(calibration["residual"])
    """
    if level not in ("scan", "session"):
        raise ValueError(f"level must be 'scan' or 'session', not {level!r}")
    _require(predictions, ("scan_id", "subject_id", "session_id", "age", column, *([sd_column] if sd_column else [])))
    frame = predictions.dropna(subset=["age", column]).copy()
    frame["residual"] = frame[column].astype(float) - frame["age"].astype(float)
    if sd_column:
        frame["member_sd"] = frame[sd_column].astype(float)
    carried = ["residual", *(["member_sd"] if sd_column else [])]
    if level == "session":
        out = frame.groupby(["subject_id", "session_id"], sort=True)[carried].mean()
    else:
        frame = _in_scan_order(frame)
        out = frame.groupby(["subject_id", "session_id"], sort=True)[carried].first()
    return out.reset_index()


class ConformalInterval:
    """Split-conformal prediction intervals for brain age, calibrated on out-of-fold residuals.

    ``fit(residuals)`` keeps the nonconformity scores ``|residual|`` (one per calibration session,
    from :func:`session_residuals`); ``interval(brain_age)`` is ``brain_age ± q`` where ``q`` is the
    ⌈(n + 1) · coverage⌉-th smallest of the n scores: for a new scan exchangeable with the
    calibration sessions it covers the true age with probability at least ``coverage`` (and at
    most ``coverage + 1/(n + 1)``). With too few sessions (⌈(n + 1) · coverage⌉ > n) the interval
    is infinite, honestly. The quantile is computed here (a few lines, tested) rather than through
    MAPIE or crepes: both would have to be refitted from the stored residuals on every load.

    Ensemble disagreement, two ways (``member_sd``: the SD of the members' predictions of a scan):

    - **normalized** (``fit(residuals, member_sd=...)``): scores ``|residual| / (member_sd + ε)``,
      intervals ``brain_age ± q · (member_sd + ε)``: wider where members disagree, with the same
      guarantee, but the calibration residuals need a member SD computed the same way as at
      prediction (``ε``: ``epsilon``, default the median calibration SD). Then ``interval`` needs
      ``member_sd`` too.
    - **additive** (fitted without ``member_sd``, ``interval(..., member_sd=...)``): the half-width
      ``q`` is widened to ``√(q² + member_sd²)``, the members' disagreement taken as an extra,
      independent error. It never narrows the interval, so the coverage stays at least nominal
      (more, when the calibration residuals came from single fold models and the prediction from
      their mean).

    ``to_dict``/``from_dict`` store it as plain floats (for a checkpoint); the coverage can be
    changed at prediction time (``interval(..., coverage=0.8)``) as the scores are kept.

    Example::

        interval = ConformalInterval(coverage=0.9).fit(calibration["residual"])
        lower, upper = interval.interval(new["brain_age"])             # arrays, years
        print(interval.half_width(), coverage(lower, upper, new["age"]))
        same = ConformalInterval.from_dict(interval.to_dict())
    """

    def __init__(self, coverage: float = 0.9, epsilon: float | None = None) -> None:
        if not 0 < coverage < 1:
            raise ValueError(f"coverage must be between 0 and 1, not {coverage!r}")
        self.coverage = float(coverage)
        self.epsilon = epsilon

    def fit(self, residuals: ArrayLike, member_sd: ArrayLike | None = None) -> ConformalInterval:
        """Calibrate on out-of-fold residuals (brain age − age, one per session); with ``member_sd``
        (one per residual) the intervals are normalized by the ensemble members' disagreement."""
        residuals = np.asarray(residuals, dtype=float).ravel()
        if residuals.size == 0 or not np.isfinite(residuals).all():
            raise ValueError("conformal calibration needs at least one residual, all finite")
        if member_sd is None:
            self.normalized_ = False
            self.epsilon_ = 0.0
            scores = np.abs(residuals)
        else:
            sd = self._check_sd(member_sd, residuals.size)
            self.normalized_ = True
            self.epsilon_ = float(self.epsilon) if self.epsilon is not None else float(np.median(sd))
            if self.epsilon_ <= 0:
                raise ValueError("normalized conformal needs epsilon > 0 (the member SDs are all 0: fit without member_sd)")
            scores = np.abs(residuals) / (sd + self.epsilon_)
        self.scores_ = np.sort(scores)
        return self

    @staticmethod
    def _check_sd(member_sd: ArrayLike, size: int) -> np.ndarray:
        sd = np.asarray(member_sd, dtype=float).ravel()
        if sd.size == 1 and size != 1:
            sd = np.full(size, float(sd[0]))
        if sd.size != size:
            raise ValueError(f"member_sd has {sd.size} values for {size} predictions")
        if not np.isfinite(sd).all() or (sd < 0).any():
            raise ValueError("member_sd must be finite and non-negative")
        return sd

    @property
    def n_(self) -> int:
        """The number of calibration residuals."""
        self._check_fitted()
        return int(self.scores_.size)

    def _check_fitted(self) -> None:
        if not hasattr(self, "scores_"):
            raise RuntimeError("ConformalInterval is not fitted; call fit(residuals) first")

    def quantile(self, coverage: float | None = None) -> float:
        """The conformal quantile of the scores: the ⌈(n + 1) · coverage⌉-th smallest, inf if that exceeds n."""
        self._check_fitted()
        coverage = self.coverage if coverage is None else float(coverage)
        if not 0 < coverage < 1:
            raise ValueError(f"coverage must be between 0 and 1, not {coverage!r}")
        rank = math.ceil((self.scores_.size + 1) * coverage - 1e-9)
        return math.inf if rank > self.scores_.size else float(self.scores_[rank - 1])

    def half_width(self, member_sd: ArrayLike | None = None, coverage: float | None = None) -> np.ndarray | float:
        """Half the interval's width in years (an array when ``member_sd`` is given)."""
        q = self.quantile(coverage)
        if member_sd is None:
            if self.normalized_:
                raise ValueError("this interval was calibrated with member_sd (normalized); pass member_sd")
            return q
        sd = np.asarray(member_sd, dtype=float)
        if not np.isfinite(sd).all() or (sd < 0).any():
            raise ValueError("member_sd must be finite and non-negative")
        return q * (sd + self.epsilon_) if self.normalized_ else np.sqrt(q**2 + sd**2)

    def interval(self, brain_age: ArrayLike, member_sd: ArrayLike | None = None, coverage: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(lower, upper)`` arrays around the predicted ``brain_age`` (years) at ``coverage``
        (default: the fitted one)."""
        centre = np.asarray(brain_age, dtype=float)
        if member_sd is not None:
            member_sd = np.broadcast_to(np.asarray(member_sd, dtype=float), centre.shape)
        half = np.broadcast_to(self.half_width(member_sd, coverage), centre.shape)
        return centre - half, centre + half

    def to_dict(self) -> dict[str, Any]:
        """Settings and calibration scores as plain floats (for YAML and checkpoints)."""
        self._check_fitted()
        return {
            "coverage": self.coverage,
            "epsilon": None if self.epsilon is None else float(self.epsilon),
            "normalized": bool(self.normalized_),
            "fitted_epsilon": float(self.epsilon_),
            "scores": [float(score) for score in self.scores_],
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ConformalInterval:
        """The fitted interval that :meth:`to_dict` described."""
        interval = cls(coverage=float(values.get("coverage", 0.9)), epsilon=values.get("epsilon"))
        interval.normalized_ = bool(values["normalized"])
        interval.epsilon_ = float(values.get("fitted_epsilon", 0.0))
        interval.scores_ = np.sort(np.asarray(values["scores"], dtype=float))
        return interval

    def __repr__(self) -> str:
        fitted = f", n={self.scores_.size}, normalized={self.normalized_}" if hasattr(self, "scores_") else ""
        return f"ConformalInterval(coverage={self.coverage}{fitted})"


def covered(lower: ArrayLike, upper: ArrayLike, truth: ArrayLike) -> np.ndarray:
    """Per value, whether ``truth`` lies inside ``[lower, upper]`` (False where any of the three is NaN).

    Example::

        print(covered([70, 70], [80, 80], [75, 85]))   # [ True False]
    """
    lower, upper, truth = (np.asarray(values, dtype=float).ravel() for values in (lower, upper, truth))
    if not lower.shape == upper.shape == truth.shape:
        raise ValueError(f"lower, upper and truth differ in length: {lower.size}, {upper.size}, {truth.size}")
    return (lower <= truth) & (truth <= upper)


def coverage(lower: ArrayLike, upper: ArrayLike, truth: ArrayLike) -> float:
    """The share of ``truth`` values inside ``[lower, upper]`` (:func:`covered`), over those that are
    known (not NaN); NaN when none is.

    Example::

        lower, upper = interval.interval(heldout["brain_age"])
        print(f"{coverage(lower, upper, heldout['age']):.1%} of held-out scans covered")
    """
    inside = covered(lower, upper, truth)
    known = np.isfinite(np.asarray(truth, dtype=float).ravel())
    return float(np.mean(inside[known])) if known.any() else math.nan


# --- pose ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pose:
    """A rigid head movement in world (RAS, mm) coordinates: rotations about the x, y and z axes
    (degrees, applied in that order, about the centre of the image grid) then a shift (mm).

    ``matrix(centre)`` is the 4 × 4 world transform ``x → R (x − centre) + centre + shift``;
    ``inverse()`` undoes it.

    Example::

        pose = Pose(rotation_deg=(10, 0, -5), shift_mm=(3, 0, 12))
        print(pose.label, np.allclose(pose.matrix(np.zeros(3)) @ pose.inverse().matrix(np.zeros(3)), np.eye(4)))
    """

    rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def rotation(self) -> Rotation:
        return Rotation.from_euler("xyz", self.rotation_deg, degrees=True)

    def matrix(self, centre: ArrayLike) -> np.ndarray:
        """The 4 × 4 world transform of this pose, rotating about ``centre`` (mm)."""
        centre = np.asarray(centre, dtype=float).reshape(3)
        rotation = self.rotation().as_matrix()
        transform = np.eye(4)
        transform[:3, :3] = rotation
        transform[:3, 3] = centre - rotation @ centre + np.asarray(self.shift_mm, dtype=float)
        return transform

    def inverse(self) -> Pose:
        """The pose that undoes this one (about the same centre)."""
        inverse = self.rotation().inv()
        shift = -inverse.apply(np.asarray(self.shift_mm, dtype=float))
        return Pose(tuple(float(a) for a in inverse.as_euler("xyz", degrees=True)), tuple(float(s) for s in shift))

    @property
    def is_identity(self) -> bool:
        return not any(self.rotation_deg) and not any(self.shift_mm)

    @property
    def label(self) -> str:
        rotation = ",".join(f"{a:+.1f}" for a in self.rotation_deg)
        shift = ",".join(f"{s:+.1f}" for s in self.shift_mm)
        return f"rot({rotation})° shift({shift})mm"


def random_poses(count: int, max_rotation_deg: float = 15.0, max_shift_mm: float = 15.0, seed: int = 0, identity: bool = True) -> list[Pose]:
    """``count`` poses, each angle uniform in ±``max_rotation_deg`` and each shift in ±``max_shift_mm``
    (the first is the identity when ``identity``).

    Example::

        poses = random_poses(5, seed=0)               # identity + 4 random poses
    """
    rng = np.random.default_rng(seed)
    poses = [Pose()] if identity and count > 0 else []
    while len(poses) < count:
        angles = rng.uniform(-max_rotation_deg, max_rotation_deg, 3)
        shifts = rng.uniform(-max_shift_mm, max_shift_mm, 3)
        poses.append(Pose(tuple(float(a) for a in angles), tuple(float(s) for s in shifts)))
    return poses


def _volume(image: nib.spatialimages.SpatialImage) -> np.ndarray:
    """The image's 3-D voxels as stored (scaling applied, dtype kept when there is none)."""
    data = np.asanyarray(image.dataobj)
    shape = tuple(int(n) for n in data.shape)
    if len(shape) > 3:
        if any(n != 1 for n in shape[3:]):
            raise ValueError(f"re-posing needs a 3-D image, not {shape}")
        data = data.reshape(shape[:3])
    return data


def grid_centre(shape: Sequence[int], affine: np.ndarray) -> np.ndarray:
    """World position (mm) of the centre of a voxel grid: what :func:`repose_header` and
    :func:`repose_voxels` rotate about by default."""
    return (affine @ np.append((np.asarray(shape[:3], dtype=float) - 1) / 2, 1.0))[:3]


def _nifti(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    image = nib.Nifti1Image(data, affine)
    image.set_qform(affine, code=1)  # scanner coordinates, in both forms (the seed pipeline reads the qform)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm")
    return image


def repose_header(image: nib.spatialimages.SpatialImage | str | Path, pose: Pose, centre: ArrayLike | None = None) -> nib.Nifti1Image:
    """The same voxels with the head moved by ``pose`` in world space through the affine only:
    ``new affine = pose.matrix(centre) @ affine``, ``centre`` (mm) by default the world position of
    the grid's centre. What a scan of the same head in another position would be, if the scanner
    had followed the head. The grid's centre moves with the image, so undo a pose about the same
    centre: ``repose_header(moved, pose.inverse(), centre=the first centre)``.

    Example::

        moved = repose_header("scan.nii.gz", Pose((0, 10, 0), (0, 0, 5)))
        moved.to_filename("scan_moved.nii.gz")       # voxels untouched, affine changed
    """
    image = nib.load(image) if isinstance(image, (str, Path)) else image
    data = _volume(image)
    affine = np.asarray(image.affine, dtype=float)
    centre = grid_centre(data.shape, affine) if centre is None else centre
    return _nifti(data, pose.matrix(centre) @ affine)


def repose_voxels(image: nib.spatialimages.SpatialImage | str | Path, pose: Pose, order: int = 1, centre: ArrayLike | None = None) -> nib.Nifti1Image:
    """The head moved by ``pose`` in world space by resampling the voxels into the original grid
    (affine unchanged; ``order`` of the spline interpolation, outside the field of view is 0, as a
    scanner would miss what moved out). Integer images stay integer (rounded, clipped). ``centre``
    as for :func:`repose_header` (the grid does not move here, so ``pose.inverse()`` undoes it).

    It is ``repose_header``'s image resampled back onto the original grid.

    Example::

        moved = repose_voxels("scan.nii.gz", Pose((0, 10, 0), (0, 0, 5)))   # same grid, new voxels
    """
    image = nib.load(image) if isinstance(image, (str, Path)) else image
    data = _volume(image)
    affine = np.asarray(image.affine, dtype=float)
    world = pose.matrix(grid_centre(data.shape, affine) if centre is None else centre)
    to_source = np.linalg.inv(affine) @ np.linalg.inv(world) @ affine  # output voxel → input voxel
    moved = ndimage.affine_transform(
        np.asarray(data, dtype=np.float64), to_source[:3, :3], offset=to_source[:3, 3], output_shape=data.shape,
        order=order, mode="constant", cval=0.0,
    )  # fmt: skip
    if np.issubdtype(data.dtype, np.integer):
        limits = np.iinfo(data.dtype)
        moved = np.clip(np.rint(moved), limits.min, limits.max)
    return _nifti(moved.astype(data.dtype), affine)


def write_poses(path: str | Path, poses: Sequence[Pose], out_dir: str | Path, mode: str = "header", order: int = 1) -> list[Path]:
    """Write one NIfTI per pose of the scan ``path`` (any format nibabel reads: NIfTI, Analyze
    pairs, MGZ) into ``out_dir`` as ``<stem>_<mode>_pose<k>.nii.gz``; ``mode`` is ``"header"``
    (:func:`repose_header`) or ``"voxels"`` (:func:`repose_voxels`). Returns the paths in pose order.

    Example::

        files = write_poses(manifest.path[0], random_poses(4), "posed", mode="voxels")
        table = BrainAgeModel.load("run").predict(files)    # brain_age and qc_score per pose
    """
    if mode not in ("header", "voxels"):
        raise ValueError(f"mode must be 'header' or 'voxels', not {mode!r}")
    image = nib.load(str(path))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for k, pose in enumerate(poses):
        moved = repose_header(image, pose) if mode == "header" else repose_voxels(image, pose, order)
        target = out / f"{scan_stem(path)}_{mode}_pose{k:02d}.nii.gz"
        moved.to_filename(str(target))
        written.append(target)
    return written
