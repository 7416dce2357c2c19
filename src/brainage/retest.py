"""How far a brain age can be trusted over repeat scans and visits: test–retest and longitudinal consistency.

Each figure is computed on what a predictions frame actually holds (the conventions of
:mod:`brainage.evaluation`: one row per scan, ``scan_id, subject_id, session_id, age, brain_age``,
optionally ``group`` and, on synthetic data, ``true_brain_age``):

- :func:`test_retest`: repeat scans of one session (same day, same scanner) should get the same
  brain age. Within-session SD in years, ICC(2,1) and ICC(3,1) with 95 % intervals (pingouin).
- :func:`gap_retest`: the same on the brain-age gap (``column − age``), the quantity people
  publish. Within a session the age is fixed, so the gap keeps the brain age's scan-to-scan noise
  but loses the spread of ages between people: a prediction that only follows age has a reliable
  brain age and an unreliable gap.
- :func:`longitudinal`: over a person's visits, predicted brain age should move with age. The
  per-subject slope of brain age on age (median and IQR, per clinical group) and the spread of the
  gap over visits; on synthetic data also the slope on the true brain age.

A figure that the data cannot give (no session with two scans, no subject with two visits) comes
back as a :class:`ReliabilityResult` with ``available=False`` and the reason, never as NaN.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from brainage.evaluation import aggregate_sessions, control_labels, fit_line, require_columns
from brainage.io.manifest import natural_key

__all__ = ["ReliabilityResult", "gap_retest", "longitudinal", "test_retest"]

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
    require_columns(predictions, ("scan_id", "subject_id", "session_id", column))
    frame = predictions.dropna(subset=[column])[["scan_id", "subject_id", "session_id", column]].copy()
    frame = in_scan_order(frame)
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
    ]  # fmt: skip  # keys grouped in rows
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


test_retest.__test__ = False  # type: ignore[attr-defined]  # a library function, not a test: pytest must not collect it where imported


def gap_retest(predictions: pd.DataFrame, column: str = "brain_age", repeats: int | str = "auto") -> ReliabilityResult:
    """:func:`test_retest` of the brain-age gap ``column − age`` (the figure ``test-retest of the gap``).

    Within a session the age is one value, so the within-session SD is that of ``column``; the ICC
    is not: the spread between sessions is that of the gaps, not of the ages. A brain age that is
    age plus scan noise has an ICC near 1 and a gap ICC near 0; a constant prediction's gap is
    ``−age`` plus a constant, exactly repeatable (ICC 1) and useless, which the accuracy shows.

    Example::

        print(gap_retest(predictions).values.get("icc2"), test_retest(predictions).values.get("icc2"))
    """
    require_columns(predictions, ("age", column))
    gaps = predictions.assign(gap=predictions[column].astype(float) - predictions["age"].astype(float))
    result = test_retest(gaps, "gap", repeats)
    return ReliabilityResult(f"test-retest of the gap ({column} − age)", result.available, result.reason, result.values, result.table, result.details)


def in_scan_order(frame: pd.DataFrame) -> pd.DataFrame:
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
    control_group: str | Sequence[str] | None = None,
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
    slopes, median ``gap_sd``. ``control_group`` names the controls (``--control-group``; default:
    :func:`brainage.evaluation.control_labels`, the one definition the correction uses; several
    control labels form one row); ``values`` holds the control group's figures (all subjects' when
    there are no groups) and ``details`` one row per subject.

    Example::

        result = longitudinal(predictions)          # sessions averaged for you
        print(result.table if result.available else result.reason)
        print(result.values["slope_median"], result.values["group"])
    """
    figure = "longitudinal"
    require_columns(predictions, ("subject_id", "session_id", "age", column))
    kept = [c for c in ("scan_id", "subject_id", "session_id", "age", column, by, true_column, delay_column) if c in predictions.columns]
    frame = predictions[kept].copy()
    if column != "brain_age":
        frame = frame.drop(columns=["brain_age"], errors="ignore")
    sessions = aggregate_sessions(frame.rename(columns={column: "brain_age"}) if column != "brain_age" else frame)
    sessions = sessions.dropna(subset=["age", "brain_age"])
    has_groups = by in sessions and sessions[by].notna().any()
    has_truth = bool(true_column in sessions and sessions[true_column].notna().any())
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
    wanted = [control_group] if isinstance(control_group, str) else control_group
    labels = control_labels(sessions[[by]].rename(columns={by: "group"}), wanted) if has_groups else []
    control = " or ".join(labels) if labels else None
    subjects.loc[subjects["group"].str.strip().isin(labels), "group"] = control
    groups = sorted(subjects["group"].unique(), key=str)
    if control in groups:
        groups.remove(control)
        groups.insert(0, control)
    short = [g for g in groups if subjects.loc[subjects["group"] == g, "slope"].isna().all()]
    groups = [g for g in groups if g not in short]  # no subject of theirs followed long enough
    order = groups + (["all"] if has_groups and len(groups) > 1 else [])
    table = pd.DataFrame([_longitudinal_row(name, subjects if name == "all" else subjects[subjects["group"] == name], has_truth) for name in order])
    headline = table.iloc[0] if control in groups or not has_groups or len(groups) == 1 else table.iloc[-1]
    values = {str(key): _native(value) for key, value in headline.items()}
    notes = [] if control in groups or not has_groups else ["no control group: values are those of all subjects"]
    if short:
        notes.append(f"left out, no subject followed {min_years:g} years or more: {', '.join(short)}")
    reason = "; ".join(notes)
    return ReliabilityResult(figure, True, reason, values, table, subjects)


def _slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of y on x (x must vary)."""
    return fit_line(x, y).slope


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
