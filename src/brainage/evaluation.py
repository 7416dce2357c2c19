"""Brain-age metrics: accuracy, age-bias correction, session aggregation and group differences.

A predictions frame has one row per scan with at least ``scan_id, subject_id, session_id, age,
brain_age`` (ages in years) and optionally ``group, cdr, fold``. The brain-age gap is
``brain_age - age``.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import stats

METRIC_KEYS = ("n", "mae", "rmse", "r", "r2", "gap_age_r")
SESSION_KEYS = ("subject_id", "session_id")


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation, NaN when there are fewer than two points or either side is constant."""
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def _as_pair(age: ArrayLike, predicted: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    age = np.asarray(age, dtype=float).ravel()
    predicted = np.asarray(predicted, dtype=float).ravel()
    if age.shape != predicted.shape:
        raise ValueError(f"age and predicted differ in length: {age.size} vs {predicted.size}")
    return age, predicted


def regression_metrics(age: ArrayLike, predicted: ArrayLike) -> dict[str, float]:
    """Accuracy of predicted against true age, in years.

    Keys: ``n``; ``mae`` and ``rmse``; ``r`` (Pearson of predicted with true age); ``r2``
    (coefficient of determination, 1 − SS_res/SS_tot, negative when worse than the mean);
    ``gap_age_r`` (Pearson of the gap predicted − age with age: the age bias). Undefined values
    (no spread, fewer than two points) are NaN.
    """
    age, predicted = _as_pair(age, predicted)
    n = age.size
    if n == 0:
        return {"n": 0, **{key: float("nan") for key in METRIC_KEYS[1:]}}
    error = predicted - age
    ss_tot = float(np.sum((age - age.mean()) ** 2))
    return {
        "n": int(n),
        "mae": float(np.mean(np.abs(error))),
        "rmse": float(np.sqrt(np.mean(error**2))),
        "r": _pearson(age, predicted),
        "r2": 1.0 - float(np.sum(error**2)) / ss_tot if ss_tot > 0 else float("nan"),
        "gap_age_r": _pearson(age, error),
    }


class AgeBiasCorrector:
    """Linear age-bias correction of Cole et al. 2018 (Mol Psychiatry 23:1385).

    ``fit`` regresses predicted on true age, ``predicted ≈ slope_ · age + intercept_`` (on
    validation data only); ``transform`` inverts it, ``(predicted − intercept_) / slope_``, which
    needs no true age and so also applies to new scans. A model with little age signal has a
    slope near zero, where the inversion would explode; the slope is then held at ``min_slope``
    (with the intercept refitted so the corrected mean stays the true mean) and a warning given.
    """

    def __init__(self, min_slope: float = 0.1) -> None:
        self.min_slope = min_slope

    def fit(self, age: ArrayLike, predicted: ArrayLike) -> "AgeBiasCorrector":
        age, predicted = _as_pair(age, predicted)
        if age.size < 2 or np.ptp(age) == 0:
            raise ValueError("age-bias correction needs at least two different true ages")
        slope, intercept = np.polyfit(age, predicted, deg=1)
        if slope < self.min_slope:
            warnings.warn(
                f"age-bias slope {slope:.3f} is below {self.min_slope}: the model has little age signal; "
                f"holding the slope at {self.min_slope}",
                stacklevel=2,
            )
            slope = self.min_slope
            intercept = predicted.mean() - slope * age.mean()
        self.slope_ = float(slope)
        self.intercept_ = float(intercept)
        return self

    def transform(self, predicted: ArrayLike) -> np.ndarray:
        """Bias-corrected brain age for the given predictions."""
        if not hasattr(self, "slope_"):
            raise RuntimeError("AgeBiasCorrector is not fitted; call fit(age, predicted) first")
        return (np.asarray(predicted, dtype=float) - self.intercept_) / self.slope_

    def to_dict(self) -> dict[str, float]:
        """Hyper-parameter and fitted coefficients as plain floats (for YAML and checkpoints)."""
        return {"min_slope": self.min_slope, "slope": self.slope_, "intercept": self.intercept_}

    @classmethod
    def from_dict(cls, values: dict[str, float]) -> "AgeBiasCorrector":
        """The fitted corrector that :meth:`to_dict` described."""
        corrector = cls(min_slope=float(values.get("min_slope", 0.1)))
        corrector.slope_ = float(values["slope"])
        corrector.intercept_ = float(values["intercept"])
        return corrector


def _native(value: Any) -> Any:
    """A numpy scalar as the plain Python value (for YAML), anything else unchanged."""
    return value.item() if isinstance(value, np.generic) else value


def _require(predictions: pd.DataFrame, columns: tuple[str, ...]) -> None:
    missing = [column for column in columns if column not in predictions.columns]
    if missing:
        raise ValueError(f"predictions lack column(s): {', '.join(missing)}")


def aggregate_sessions(predictions: pd.DataFrame) -> pd.DataFrame:
    """One row per session: the mean over its repeat scans of ``age``, ``brain_age`` and every
    other floating-point column (other predictions; per-session values such as ``cdr`` stay as
    they are).

    Other columns (``group``, ``fold``, …) keep their first value; ``scan_id`` is dropped and
    ``n_scans`` counts the scans averaged.
    """
    _require(predictions, (*SESSION_KEYS, "age", "brain_age"))
    rest = [c for c in predictions.columns if c not in (*SESSION_KEYS, "scan_id")]
    averaged = [c for c in rest if c in ("age", "brain_age") or pd.api.types.is_float_dtype(predictions[c])]
    kept = [c for c in rest if c not in averaged]
    grouped = predictions.groupby(list(SESSION_KEYS), sort=True, dropna=False)
    sessions = grouped[averaged].mean()
    if kept:
        sessions = sessions.join(grouped[kept].first())
    sessions["n_scans"] = grouped.size()
    return sessions.reset_index()


def summarize_predictions(
    predictions: pd.DataFrame, corrector: AgeBiasCorrector | None = None
) -> pd.DataFrame:
    """Metrics at scan and session level, uncorrected and (with a fitted ``corrector``) corrected.

    Columns: ``level`` (scan/session), ``correction`` (none/linear), then ``n, mae, rmse, r, r2,
    gap_age_r``.
    """
    _require(predictions, (*SESSION_KEYS, "age", "brain_age"))
    frame = predictions[[*SESSION_KEYS, "age", "brain_age"]].copy()
    variants = {"none": "brain_age"}
    if corrector is not None:
        frame["brain_age_corrected"] = corrector.transform(frame["brain_age"])
        variants["linear"] = "brain_age_corrected"
    rows = []
    for level, table in (("scan", frame), ("session", aggregate_sessions(frame))):
        for correction, column in variants.items():
            rows.append({"level": level, "correction": correction, **regression_metrics(table["age"], table[column])})
    return pd.DataFrame(rows)


def gap_by_group(
    predictions: pd.DataFrame, by: str = "group", column: str = "brain_age"
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Brain-age gap (``column − age``) by clinical group, with a test of a difference.

    Repeat scans and visits are not independent, so each subject's gaps are first averaged
    within each group level; ``n`` counts those subjects, ``n_scans`` the scans. Two groups get
    Welch's t-test, more get a one-way ANOVA; levels with fewer than two subjects and rows with no
    group are left out of the test. Returns the per-group table (``by, n, n_scans, mean_gap,
    sd_gap``) and ``{"test", "statistic", "p_value", "groups"}``.
    """
    _require(predictions, ("subject_id", "age", column, by))
    frame = predictions.dropna(subset=[by]).assign(gap=lambda f: f[column] - f["age"])
    per_subject = frame.groupby([by, "subject_id"], sort=True)["gap"].agg(["mean", "size"]).reset_index()
    table = (
        per_subject.groupby(by, sort=True)
        .agg(n=("mean", "size"), n_scans=("size", "sum"), mean_gap=("mean", "mean"), sd_gap=("mean", "std"))
        .reset_index()
    )
    samples = {level: g["mean"].to_numpy() for level, g in per_subject.groupby(by, sort=True) if len(g) >= 2}
    result: dict[str, Any] = {"test": "none", "statistic": float("nan"), "p_value": float("nan"), "groups": [_native(level) for level in samples]}
    if len(samples) == 2:
        statistic, p_value = stats.ttest_ind(*samples.values(), equal_var=False)
        result.update(test="Welch t-test", statistic=float(statistic), p_value=float(p_value))
    elif len(samples) > 2:
        statistic, p_value = stats.f_oneway(*samples.values())
        result.update(test="one-way ANOVA", statistic=float(statistic), p_value=float(p_value))
    return table, result
