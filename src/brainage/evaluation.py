"""Brain-age metrics: accuracy, age-bias correction, session aggregation and group differences.

A predictions frame has one row per scan with at least ``scan_id, subject_id, session_id, age,
brain_age`` (ages in years) and optionally ``group, cdr, fold, true_brain_age``. The brain-age gap
is ``brain_age - age``. ``true_brain_age`` is known on synthetic cohorts only; where it is there,
the metrics say how well a predicted gap follows the true gap (gap fidelity).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import stats
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.metrics import mean_absolute_error, r2_score, root_mean_squared_error

METRIC_KEYS = ("n", "mae", "rmse", "r", "r2", "gap_age_r", "mae_true", "gap_fidelity")
SESSION_KEYS = ("subject_id", "session_id")
#: Group labels read as healthy controls when no ``--control-group`` is given (case-insensitive).
CONTROL_LABELS = ("nondemented", "control", "controls", "hc", "healthy", "healthy control", "cn", "normal")
#: What the true brain age of a synthetic cohort is called in every table: it is a reference, not a floor.
TRUE_BRAIN_AGE_LABEL = "true brain age (a perfect brain reader)"


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation (scipy), NaN when there are fewer than two points or either side is constant."""
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(stats.pearsonr(a, b).statistic)


def _as_pair(age: ArrayLike, predicted: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    age = np.asarray(age, dtype=float).ravel()
    predicted = np.asarray(predicted, dtype=float).ravel()
    if age.shape != predicted.shape:
        raise ValueError(f"age and predicted differ in length: {age.size} vs {predicted.size}")
    return age, predicted


@dataclass(frozen=True)
class Line:
    """A fitted straight line ``y = slope·x + intercept`` and the standard error of its slope."""

    slope: float
    intercept: float
    stderr: float

    def __call__(self, x: ArrayLike) -> np.ndarray:
        """The line's values at ``x``."""
        return self.slope * np.asarray(x, dtype=float) + self.intercept


def fit_line(x: ArrayLike, y: ArrayLike) -> Line:
    """The least-squares line of ``y`` on ``x`` (``scipy.stats.linregress``): the one straight-line
    fit of the package (bias correction, gap fidelity, visit slopes, re-calibration). ``x`` must vary."""
    fit = stats.linregress(np.asarray(x, dtype=float), np.asarray(y, dtype=float))
    return Line(float(fit.slope), float(fit.intercept), float(fit.stderr))


def _residual(values: np.ndarray, age: np.ndarray) -> np.ndarray:
    """What is left of ``values`` after a least-squares line on ``age``."""
    return values - fit_line(age, values)(age)


def gap_fidelity(age: ArrayLike, predicted: ArrayLike, true_brain_age: ArrayLike) -> float:
    """Partial correlation of predicted with true brain age given chronological age: the Pearson r of
    the two gaps after each is regressed on age. NaN where either has no variation left (a constant
    prediction, such as the mean-age baseline, has none).

    The same value as ``pingouin.partial_corr(x=predicted, y=true_brain_age, covar=age)`` (a test
    pins it), computed here without a DataFrame because the subject bootstrap calls it thousands of times."""
    age, predicted = _as_pair(age, predicted)
    _, true_brain_age = _as_pair(age, true_brain_age)
    keep = np.isfinite(age) & np.isfinite(predicted) & np.isfinite(true_brain_age)
    age, predicted, true_brain_age = age[keep], predicted[keep], true_brain_age[keep]
    if age.size < 3 or np.ptp(age) == 0:
        return float("nan")
    a, b = _residual(predicted, age), _residual(true_brain_age, age)
    tiny = 1e-9 * max(1.0, float(np.abs(predicted).max()))
    if np.ptp(a) < tiny or np.ptp(b) < tiny:
        return float("nan")
    return _pearson(a, b)


def regression_metrics(age: ArrayLike, predicted: ArrayLike, true_brain_age: ArrayLike | None = None) -> dict[str, float]:
    """Accuracy of predicted against true age, in years.

    Keys: ``n``; ``mae`` and ``rmse``; ``r`` (Pearson of predicted with true age); ``r2``
    (coefficient of determination, 1 − SS_res/SS_tot, negative when worse than the mean);
    ``gap_age_r`` (Pearson of the gap predicted − age with age: the age bias); with
    ``true_brain_age``, ``mae_true`` (MAE against the true brain age) and ``gap_fidelity`` (see
    :func:`gap_fidelity`), else NaN. Rows with a NaN prediction are left out. Undefined values (no
    spread, fewer than two points) are NaN.
    """
    age, predicted = _as_pair(age, predicted)
    truth = np.full(age.shape, np.nan) if true_brain_age is None else _as_pair(age, true_brain_age)[1]
    keep = np.isfinite(age) & np.isfinite(predicted)
    age, predicted, truth = age[keep], predicted[keep], truth[keep]
    n = age.size
    if n == 0:
        return {"n": 0, **{key: float("nan") for key in METRIC_KEYS[1:]}}
    known = np.isfinite(truth)
    return {
        "n": int(n),
        "mae": float(mean_absolute_error(age, predicted)),
        "rmse": float(root_mean_squared_error(age, predicted)),
        "r": _pearson(age, predicted),
        "r2": float(r2_score(age, predicted)) if np.ptp(age) > 0 else float("nan"),  # sklearn gives 0 or 1 for constant ages
        "gap_age_r": _pearson(age, predicted - age),
        "mae_true": float(mean_absolute_error(truth[known], predicted[known])) if known.any() else float("nan"),
        "gap_fidelity": gap_fidelity(age[known], predicted[known], truth[known]) if known.sum() >= 3 else float("nan"),
    }


# --- age-bias correction -------------------------------------------------------------------------


class AgeBiasCorrector(RegressorMixin, BaseEstimator):
    """Age-bias correction of the brain-age gap, fitted on controls at session level.

    ``method="residual"`` (default; Beheshti et al. 2019, Smith et al. 2019; de Lange & Cole 2020
    show it equivalent to Cole's up to a scale): fit ``gap = α·age + β``, then
    ``gap_corrected = gap − (α·age + β)``, ``brain_age_corrected = age + gap_corrected``. It never
    divides, so a noisy fit cannot blow the values up. ``method="cole"`` (Cole et al. 2018): fit
    ``predicted = a·age + b``, then ``brain_age_corrected = (predicted − b)/a``.

    ``fit`` refuses (``refused_`` holds the one-line reason, ``transform`` gives NaN, a warning is
    issued) when fewer than ``min_subjects`` distinct subjects are given or the fitted slope's
    ``confidence`` interval covers zero: such a correction would add noise, not remove a bias.
    ``transform`` needs the chronological age (NaN where it is unknown) for both methods, so a
    corrected value exists only where the uncorrected gap does.

    A scikit-learn regressor of brain age on age (``clone``, ``get_params``, ``check_is_fitted``
    work): ``fit(age, predicted)`` is ``fit(X, y)``, :meth:`predict` gives the fitted brain age
    expected at an age, everything learned ends in ``_``. The correction is the same for one model
    and for the mean of K fold models that ``predict`` serves: averaging removes noise that does not
    depend on age, not the slope, so the line fitted on single-model out-of-fold predictions holds
    for their mean (tests/test_calibration.py checks this on a synthetic case).
    """

    METHODS = ("residual", "cole")

    def __init__(self, method: str = "residual", min_subjects: int = 20, confidence: float = 0.95) -> None:
        if method not in self.METHODS:
            raise ValueError(f"unknown bias-correction method {method!r}; choose from {', '.join(self.METHODS)}")
        self.method = method
        self.min_subjects = min_subjects
        self.confidence = confidence

    def fit(self, age: ArrayLike, predicted: ArrayLike, subjects: ArrayLike | None = None) -> AgeBiasCorrector:
        """Fit on session-level ``age`` and ``predicted`` brain age of controls; ``subjects`` (one id
        per row) counts the people behind them (default: every row its own)."""
        age, predicted = _as_pair(age, predicted)
        keep = np.isfinite(age) & np.isfinite(predicted)
        age, predicted = age[keep], predicted[keep]
        ids = np.arange(age.size) if subjects is None else np.asarray(subjects, dtype=object).ravel()[keep]
        self.n_sessions_ = int(age.size)
        self.n_subjects_ = len(set(ids.tolist()))
        self.slope_ = self.intercept_ = math.nan
        self.slope_ci_ = (math.nan, math.nan)
        self.refused_: str | None = None
        if self.n_subjects_ < self.min_subjects or age.size < 3 or np.ptp(age) == 0:
            self.refused_ = f"bias correction refused: {self.n_subjects_} control subjects, at least {self.min_subjects} needed"
        else:
            target = predicted - age if self.method == "residual" else predicted
            fit = fit_line(age, target)
            half = stats.t.ppf(0.5 + self.confidence / 2, age.size - 2) * fit.stderr
            self.slope_, self.intercept_ = fit.slope, fit.intercept
            self.slope_ci_ = (self.slope_ - half, self.slope_ + half)
            if self.slope_ci_[0] <= 0 <= self.slope_ci_[1]:
                self.refused_ = (
                    f"bias correction refused: the {'gap' if self.method == 'residual' else 'prediction'}'s slope on age, "
                    f"{self.slope_:.3f} ({self.confidence:.0%} CI {self.slope_ci_[0]:.3f} to {self.slope_ci_[1]:.3f}), could be zero"
                )
        if self.refused_:
            warnings.warn(self.refused_, stacklevel=2)
        return self

    @property
    def applicable(self) -> bool:
        """Fitted and not refused."""
        return hasattr(self, "refused_") and self.refused_ is None

    def predict(self, age: ArrayLike) -> np.ndarray:
        """The brain age the fitted line expects at ``age`` (``age`` may be ``(n, 1)``, as ``X``): the
        bias that :meth:`transform` removes (NaN where none was fitted)."""
        if not hasattr(self, "refused_"):
            raise RuntimeError("AgeBiasCorrector is not fitted; call fit(age, predicted) first")
        age = np.asarray(age, dtype=float).ravel()
        line = self.slope_ * age + self.intercept_
        return age + line if self.method == "residual" else line

    def transform(self, predicted: ArrayLike, age: ArrayLike) -> np.ndarray:
        """Bias-corrected brain age; NaN where ``age`` is unknown or the correction was refused."""
        if not hasattr(self, "refused_"):
            raise RuntimeError("AgeBiasCorrector is not fitted; call fit(age, predicted) first")
        predicted, age = np.broadcast_arrays(np.asarray(predicted, dtype=float), np.asarray(age, dtype=float))
        if not self.applicable:
            return np.full(predicted.shape, np.nan)
        if self.method == "residual":
            return predicted - (self.slope_ * age + self.intercept_)
        return np.where(np.isfinite(age), (predicted - self.intercept_) / self.slope_, np.nan)

    def describe(self) -> str:
        """One line: the method, the fit and its confidence interval, or why it was refused."""
        if not hasattr(self, "refused_"):
            return "bias correction not fitted"
        if self.refused_:
            return self.refused_
        what = "gap = {:.3f}·age {:+.2f}" if self.method == "residual" else "predicted = {:.3f}·age {:+.2f}"
        return (
            f"{self.method} bias correction on {self.n_subjects_} control subjects ({self.n_sessions_} sessions): "
            f"{what.format(self.slope_, self.intercept_)}, slope {self.confidence:.0%} CI {self.slope_ci_[0]:.3f} to {self.slope_ci_[1]:.3f}"
        )

    def to_dict(self) -> dict[str, Any]:
        """Settings and fitted values as plain Python values (for YAML and checkpoints)."""
        return {
            "method": self.method, "min_subjects": self.min_subjects, "confidence": self.confidence,
            "slope": self.slope_, "intercept": self.intercept_, "slope_ci": [float(v) for v in self.slope_ci_],
            "n_subjects": self.n_subjects_, "n_sessions": self.n_sessions_, "refused": self.refused_,
        }  # fmt: skip  # keys grouped in rows

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> AgeBiasCorrector:
        """The fitted corrector that :meth:`to_dict` described."""
        corrector = cls(str(values.get("method", "residual")), int(values.get("min_subjects", 20)), float(values.get("confidence", 0.95)))
        corrector.slope_ = float(values["slope"])
        corrector.intercept_ = float(values["intercept"])
        low, high = (float(v) for v in values.get("slope_ci", (math.nan, math.nan)))
        corrector.slope_ci_ = (low, high)
        corrector.n_subjects_ = int(values.get("n_subjects", 0))
        corrector.n_sessions_ = int(values.get("n_sessions", 0))
        corrector.refused_ = values.get("refused")
        return corrector


def _groups(frame: pd.DataFrame) -> pd.Series:
    return frame["group"].astype("string").str.strip() if "group" in frame else pd.Series(pd.NA, index=frame.index, dtype="string")


def check_control_group(groups: Sequence[Any], control_group: Sequence[str] | None) -> None:
    """A ``ValueError`` (one line, listing the groups present) when a name of ``control_group`` is
    not among ``groups`` (case-insensitive): a typo must not silently pick other controls."""
    if not control_group:
        return
    present = sorted({str(g).strip() for g in groups if not pd.isna(g)})
    missing = [name for name in control_group if str(name).strip().lower() not in {g.lower() for g in present}]
    if missing:
        raise ValueError(f"no scans in control group(s) {', '.join(missing)}; groups present: {', '.join(present) or 'none'}")


def control_mask(frame: pd.DataFrame, control_group: Sequence[str] | None = None) -> tuple[np.ndarray, str]:
    """Which rows are healthy controls, and a phrase saying how that was decided: the one definition
    of controls used by the bias correction, the visit slopes and the report.

    ``control_group`` names the group values that count (``--control-group``, case-insensitive;
    a name absent from the data is refused, see :func:`check_control_group`); without it, a
    ``group`` value among :data:`CONTROL_LABELS` (``Nondemented``, ``control``, ``HC`` …), else
    ``cdr == 0``, else everyone (a cohort with no clinical information).
    """
    groups = _groups(frame)
    if control_group:
        check_control_group(groups.dropna().tolist(), control_group)
        wanted = {str(g).strip().lower() for g in control_group}
        return groups.str.lower().isin(wanted).fillna(False).to_numpy(dtype=bool), f"group {' or '.join(control_group)}"
    mask = groups.str.lower().isin(CONTROL_LABELS).fillna(False).to_numpy(dtype=bool)
    if mask.any():
        return mask, f"group {' or '.join(sorted(groups[mask].unique()))}"
    if "cdr" in frame and pd.to_numeric(frame["cdr"], errors="coerce").notna().any():
        return (pd.to_numeric(frame["cdr"], errors="coerce") == 0).to_numpy(), "CDR 0"
    return np.ones(len(frame), dtype=bool), "everyone (no clinical group in the data)"


def control_labels(frame: pd.DataFrame, control_group: Sequence[str] | None = None) -> list[str]:
    """The ``group`` values of ``frame`` that :func:`control_mask` counts as controls (sorted; empty
    where controls are decided by CDR or the data has no groups)."""
    groups = _groups(frame)
    if not groups.notna().any():
        return []
    mask, how = control_mask(frame, control_group)
    return sorted(groups[mask].dropna().unique()) if how.startswith("group") else []


def fit_bias_correction(
    predictions: pd.DataFrame, control_group: Sequence[str] | None = None, method: str = "residual", column: str = "brain_age"
) -> AgeBiasCorrector:
    """An :class:`AgeBiasCorrector` fitted on the control sessions of ``predictions`` (repeat scans
    averaged first); the caller passes only predictions of people the corrected scans do not include.
    No predictions at all give a refused corrector."""
    if predictions.empty:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return AgeBiasCorrector(method).fit([], [])
    sessions = aggregate_sessions(
        predictions[[*SESSION_KEYS, "age", column, *[c for c in ("group", "cdr") if c in predictions]]].rename(columns={column: "brain_age"})
    )
    mask, _ = control_mask(sessions, control_group)
    controls = sessions[mask]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        corrector = AgeBiasCorrector(method).fit(controls["age"], controls["brain_age"], controls["subject_id"])
    return corrector


def _native(value: Any) -> Any:
    """A numpy scalar as the plain Python value (for YAML), anything else unchanged."""
    return value.item() if isinstance(value, np.generic) else value


def require_columns(predictions: pd.DataFrame, columns: Sequence[str]) -> None:
    """A ``ValueError`` naming the columns ``predictions`` lacks."""
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
    require_columns(predictions, (*SESSION_KEYS, "age", "brain_age"))
    rest = [c for c in predictions.columns if c not in (*SESSION_KEYS, "scan_id")]
    averaged = [c for c in rest if c in ("age", "brain_age") or pd.api.types.is_float_dtype(predictions[c])]
    kept = [c for c in rest if c not in averaged]
    grouped = predictions.groupby(list(SESSION_KEYS), sort=True, dropna=False)
    sessions = grouped[averaged].mean()
    if kept:
        sessions = sessions.join(grouped[kept].first())
    sessions["n_scans"] = grouped.size()
    return sessions.reset_index()


def summarize_predictions(predictions: pd.DataFrame, column: str = "brain_age") -> pd.DataFrame:
    """Metrics of ``column`` at scan and session level (one row each: ``level``, then
    :data:`METRIC_KEYS`); against ``true_brain_age`` too where the frame has it."""
    require_columns(predictions, (*SESSION_KEYS, "age", column))
    frame = predictions[[*SESSION_KEYS, "age"]].assign(brain_age=predictions[column])
    if "true_brain_age" in predictions:
        frame["true_brain_age"] = predictions["true_brain_age"]
    rows = []
    for level, table in (("scan", frame), ("session", aggregate_sessions(frame))):
        truth = table.get("true_brain_age", None)
        rows.append({"level": level, **regression_metrics(table["age"], table["brain_age"], truth)})
    return pd.DataFrame(rows)


def gap_by_group(predictions: pd.DataFrame, by: str = "group", column: str = "brain_age") -> tuple[pd.DataFrame, dict[str, Any]]:
    """Brain-age gap (``column − age``) by clinical group, with a test of a difference.

    Repeat scans and visits are not independent, so each subject's gaps are first averaged
    within each group level; ``n`` counts those subjects, ``n_scans`` the scans. Two groups get
    Welch's t-test, more get a one-way ANOVA; levels with fewer than two subjects and rows with no
    group or no gap are left out of the test. Returns the per-group table (``by, n, n_scans,
    mean_gap, sd_gap``) and ``{"test", "statistic", "p_value", "groups", "difference"}``;
    ``difference`` is Demented minus Nondemented mean gap where both groups are there, else NaN.
    """
    require_columns(predictions, ("subject_id", "age", column, by))
    frame = predictions.dropna(subset=[by]).assign(gap=lambda f: f[column] - f["age"]).dropna(subset=["gap"])
    per_subject = frame.groupby([by, "subject_id"], sort=True)["gap"].agg(["mean", "size"]).reset_index()
    table = per_subject.groupby(by, sort=True).agg(n=("mean", "size"), n_scans=("size", "sum"), mean_gap=("mean", "mean"), sd_gap=("mean", "std")).reset_index()
    samples = {level: g["mean"].to_numpy() for level, g in per_subject.groupby(by, sort=True) if len(g) >= 2}
    means = dict(zip(table[by].astype(str), table["mean_gap"], strict=False))
    difference = means["Demented"] - means["Nondemented"] if {"Demented", "Nondemented"} <= set(means) else float("nan")
    result: dict[str, Any] = {
        "test": "none", "statistic": float("nan"), "p_value": float("nan"),
        "groups": [_native(level) for level in samples], "difference": float(difference),
    }  # fmt: skip  # keys grouped in rows
    if len(samples) == 2:
        statistic, p_value = stats.ttest_ind(*samples.values(), equal_var=False)
        result.update(test="Welch t-test", statistic=float(statistic), p_value=float(p_value))
    elif len(samples) > 2:
        statistic, p_value = stats.f_oneway(*samples.values())
        result.update(test="one-way ANOVA", statistic=float(statistic), p_value=float(p_value))
    return table, result


def demented_vs_nondemented(predictions: pd.DataFrame, column: str = "brain_age") -> dict[str, float]:
    """Demented minus Nondemented mean gap per subject and Welch's p value (NaN where either is missing)."""
    if "group" not in predictions:
        return {"difference": float("nan"), "p_value": float("nan")}
    pair = predictions[predictions["group"].astype(str).isin(["Demented", "Nondemented"])]
    if pair.empty:
        return {"difference": float("nan"), "p_value": float("nan")}
    _, test = gap_by_group(pair, by="group", column=column)
    return {"difference": test["difference"], "p_value": test["p_value"]}
