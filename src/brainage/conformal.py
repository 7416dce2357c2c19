"""Per-scan intervals for brain age: split-conformal and CV+ calibration on out-of-fold residuals.

- :func:`session_residuals`: one calibration residual per session (repeat scans are not independent);
- :class:`ConformalInterval`: intervals with a finite-sample coverage guarantee, optionally
  normalized or widened by the ensemble members' disagreement, or CV+ over the fold models;
- :func:`served_interval`, :func:`served_scale`: the interval of what ``brainage predict`` serves, from
  its members' ages and folds;
- :func:`covered`, :func:`coverage`: whether, and how often, held-out ages fall inside.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator, RegressorMixin

from brainage.evaluation import require_columns
from brainage.retest import in_scan_order

__all__ = ["ConformalInterval", "coverage", "covered", "served_interval", "served_scale", "session_residuals"]

# --- per-scan intervals ---------------------------------------------------------------------------


def session_residuals(predictions: pd.DataFrame, column: str = "brain_age", level: str = "scan", sd_column: str | None = None) -> pd.DataFrame:
    """One calibration residual (``column − age``) per session, for :class:`ConformalInterval`.

    ``predictions`` must be out of fold (each scan predicted by a model that never trained on its
    subject). Repeat scans of a session are not independent, so each session gives one residual:
    ``level="scan"`` takes its first scan (natural ``scan_id`` order), the error of a single scan,
    for per-scan intervals; ``level="session"`` the error of the session mean, for intervals on
    session means (``predict --sessions``). ``sd_column`` (e.g. the SD over ensemble members) is
    carried along as ``member_sd`` the same way, and a ``fold`` column (the fold model that
    predicted the session, for CV+) as it is. Rows without age are left out.

    Example::

        calibration = session_residuals(result.predictions)        # subject_id, session_id, residual
        interval = ConformalInterval(0.9).fit(calibration["residual"])
    """
    if level not in ("scan", "session"):
        raise ValueError(f"level must be 'scan' or 'session', not {level!r}")
    require_columns(predictions, ("scan_id", "subject_id", "session_id", "age", column, *([sd_column] if sd_column else [])))
    frame = predictions.dropna(subset=["age", column]).copy()
    frame["residual"] = frame[column].astype(float) - frame["age"].astype(float)
    if sd_column:
        frame["member_sd"] = frame[sd_column].astype(float)
    carried = ["residual", *(["member_sd"] if sd_column else [])]
    how = {column: "mean" if level == "session" else "first" for column in carried} | ({"fold": "first"} if "fold" in frame else {})
    if level == "scan":
        frame = in_scan_order(frame)
    out = frame.groupby(["subject_id", "session_id"], sort=True).agg(how)
    return out.reset_index()


class ConformalInterval(RegressorMixin, BaseEstimator):
    """Split-conformal and CV+ prediction intervals for brain age, calibrated on out-of-fold residuals.

    A scikit-learn estimator (``clone``, ``get_params``, ``check_is_fitted`` work): ``coverage`` and
    ``epsilon`` are its parameters, everything learned ends in ``_``. ``fit(residuals)`` keeps the
    nonconformity scores ``|residual|`` (one per calibration session, from :func:`session_residuals`);
    ``interval(brain_age)`` is ``brain_age ± q`` where ``q`` is the ⌈(n + 1) · coverage⌉-th smallest
    of the n scores: for a new scan exchangeable with the calibration sessions it covers the true
    age with probability at least ``coverage`` (and at most ``coverage + 1/(n + 1)``). With too few
    sessions (⌈(n + 1) · coverage⌉ > n) the interval is infinite, honestly. The quantile is computed
    here (a few lines, tested) rather than through MAPIE or crepes: both would have to be refitted
    from the stored residuals on every load.

    **CV+** (Barber, Candès, Ramdas & Tibshirani 2021, the K-fold variant of the jackknife+), for the
    mean of K fold models that ``brainage predict`` serves: ``fit(residuals, folds=...)`` also keeps
    which fold model made each out-of-fold residual, and :meth:`cv_plus` (or ``predict`` of an
    ``(n, K)`` matrix) takes each fold model's own prediction of a new scan, ``μ_k(x)``, and returns
    ``[q⁻_α(μ_k(i)(x) − |R_i|), q⁺_{1−α}(μ_k(i)(x) + |R_i|)]`` over the calibration residuals ``R_i``
    (``α = 1 − coverage``). Each residual is paired with the model that never saw its person, so the
    disagreement of the fold models at ``x`` enters the interval instead of being ignored.

    Ensemble disagreement in split conformal, two ways (``member_sd``: the SD of the members'
    predictions of a scan):

    - **normalized** (``fit(residuals, member_sd=...)``): scores ``|residual| / (member_sd + ε)``,
      intervals ``brain_age ± q · (member_sd + ε)``: wider where members disagree, with the same
      guarantee, but the calibration residuals need a member SD computed the same way as at
      prediction (``ε``: ``epsilon``, default the median calibration SD). Then ``interval`` needs
      ``member_sd`` too.
    - **additive** (fitted without ``member_sd``, ``interval(..., member_sd=...)``): the half-width
      ``q`` is widened to ``√(q² + member_sd²)``, the members' disagreement taken as an extra,
      independent error. It never narrows the interval, so the coverage stays at least nominal.

    **The served mean** (``fit(residuals, folds=..., pair_differences=...)``): the out-of-fold residuals
    are single fold networks' errors, but ``predict`` serves the mean of the K fold networks, which
    errs less. Per scan, the mean of the networks' squared errors is the mean's squared error plus
    the networks' spread around their mean (their variance, ``D``), exactly; so on people that no
    network trained on, ``MSE(mean) = MSE(network) − E[D]``. ``E[D]`` needs people that at least two
    networks never trained on: a fold's validation people (they only stopped its training early) are
    another fold's test people, so each such scan gives the difference ``d`` of two untrained
    networks, ``E[d²] = 2σ²`` and ``E[D] = (K − 1)/K · σ²``. The served half-width is ``q`` times
    ``served_scale_ = √(1 − E[D] / mean(residual²))`` (kept between ``√(1/K)`` and 1; 1 without
    pairs); :func:`served_scale` applies it where the K fold networks are the ones served. This scales
    a quantile by a ratio of root-mean-square errors, which is exact for errors of one shape (e.g.
    normal) and approximate otherwise, so ``bench/served_calibration.py`` measures the coverage on
    fresh people.

    ``to_dict``/``from_dict`` store it as plain floats (for a checkpoint; a dict written before CV+
    existed loads without fold data, and :func:`served_interval` then falls back to split conformal);
    the coverage can be changed at prediction time (``interval(..., coverage=0.8)``) as the scores are kept.

    Example::

        interval = ConformalInterval(coverage=0.9).fit(calibration["residual"], folds=calibration["fold"])
        lower, upper = interval.interval(new["brain_age"])             # split conformal around one prediction
        lower, upper = interval.cv_plus(fold_ages)                     # CV+: (n_scans, K) fold models' ages
        print(interval.half_width(), coverage(lower, upper, new["age"]))
        same = ConformalInterval.from_dict(interval.to_dict())
    """

    def __init__(self, coverage: float = 0.9, epsilon: float | None = None) -> None:
        _check_coverage(coverage)
        self.coverage = coverage
        self.epsilon = epsilon

    def fit(
        self, residuals: ArrayLike, member_sd: ArrayLike | None = None, folds: ArrayLike | None = None, pair_differences: ArrayLike | None = None
    ) -> ConformalInterval:
        """Calibrate on out-of-fold residuals (brain age − age, one per session); with ``member_sd``
        (one per residual) the intervals are normalized by the ensemble members' disagreement; with
        ``folds`` (one fold label per residual: the fold model that predicted it) :meth:`cv_plus` works,
        and with ``pair_differences`` too (two fold networks' brain ages of a scan neither trained on,
        subtracted) ``served_scale_`` is fitted for the mean of the fold networks."""
        _check_coverage(self.coverage)
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
        self.cv_folds_: np.ndarray | None = None
        self.cv_scores_: np.ndarray | None = None
        if folds is not None:
            labels = np.asarray(folds).ravel()
            if labels.size != residuals.size:
                raise ValueError(f"folds has {labels.size} labels for {residuals.size} residuals")
            if self.normalized_:
                raise ValueError("CV+ intervals take absolute residuals; fit with folds or with member_sd, not both")
            self.cv_folds_ = np.array([int(label) for label in labels], dtype=int)
            self.cv_scores_ = np.abs(residuals)
        self.served_scale_ = 1.0
        self.served_pairs_ = 0
        if pair_differences is not None:
            if self.cv_folds_ is None:
                raise ValueError("the served scale needs the folds of the residuals (fit with folds=...)")
            differences = np.asarray(pair_differences, dtype=float).ravel()
            differences = differences[np.isfinite(differences)]
            self.served_pairs_ = int(differences.size)
            if differences.size:
                k = len(np.unique(self.cv_folds_))
                disagreement = (k - 1) / k * float(np.mean(differences**2)) / 2
                self.served_scale_ = float(np.sqrt(np.clip(1 - disagreement / float(np.mean(residuals**2)), 1 / k, 1)))
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

    @property
    def folds(self) -> tuple[int, ...]:
        """The fold labels of a CV+ calibration, in the column order :meth:`cv_plus` expects (empty without one)."""
        self._check_fitted()
        return () if self.cv_folds_ is None else tuple(int(fold) for fold in np.unique(self.cv_folds_))

    def _check_fitted(self) -> None:
        if not hasattr(self, "scores_"):
            raise RuntimeError("ConformalInterval is not fitted; call fit(residuals) first")

    def quantile(self, coverage: float | None = None) -> float:
        """The conformal quantile of the scores: the ⌈(n + 1) · coverage⌉-th smallest, inf if that exceeds n."""
        self._check_fitted()
        return _upper_rank_value(self.scores_, self.coverage if coverage is None else coverage)

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

    def interval(
        self, brain_age: ArrayLike, member_sd: ArrayLike | None = None, coverage: float | None = None, scale: float = 1.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(lower, upper)`` arrays around the predicted ``brain_age`` (years) at ``coverage``
        (default: the fitted one), the half-width times ``scale`` (:func:`served_scale` for the served mean)."""
        centre = np.asarray(brain_age, dtype=float)
        if member_sd is not None:
            member_sd = np.broadcast_to(np.asarray(member_sd, dtype=float), centre.shape)
        half = np.broadcast_to(scale * np.asarray(self.half_width(member_sd, coverage)), centre.shape)
        return centre - half, centre + half

    def cv_plus(self, fold_ages: ArrayLike, coverage: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """CV+ ``(lower, upper)`` of new scans from ``fold_ages`` ``(n_scans, K)``: column ``j`` is the
        brain age by the model of fold ``self.folds[j]`` (the mean of its ensemble members). NaN rows
        give NaN; with too few residuals a bound is infinite."""
        self._check_fitted()
        if self.cv_folds_ is None or self.cv_scores_ is None:
            raise ValueError("this interval was calibrated without folds; fit(residuals, folds=...) for CV+")
        ages = np.asarray(fold_ages, dtype=float)
        ages = ages[None, :] if ages.ndim == 1 else ages
        folds = self.folds
        if ages.ndim != 2 or ages.shape[1] != len(folds):
            raise ValueError(f"CV+ needs one column per fold ({len(folds)}: folds {list(folds)}), got shape {ages.shape}")
        coverage = self.coverage if coverage is None else coverage
        column = np.searchsorted(np.asarray(folds), self.cv_folds_)
        paired = ages[:, column]  # (n_scans, n_residuals): μ_k(i)(x)
        upper = np.array(_upper_rank_value(paired + self.cv_scores_, coverage, axis=1), dtype=float)
        lower = -np.array(_upper_rank_value(self.cv_scores_ - paired, coverage, axis=1), dtype=float)
        unknown = ~np.isfinite(ages).all(axis=1)
        lower[unknown] = upper[unknown] = np.nan
        return lower, upper

    def predict(self, X: ArrayLike) -> np.ndarray:
        """``(n, 2)`` lower and upper bounds at the fitted coverage: split conformal around ``X`` of
        shape ``(n,)`` or ``(n, 1)`` (brain ages), CV+ for ``(n, K)`` fold models' brain ages."""
        ages = np.asarray(X, dtype=float)
        if ages.ndim == 2 and ages.shape[1] > 1:
            lower, upper = self.cv_plus(ages)
        else:
            lower, upper = self.interval(ages.ravel())
        return np.column_stack([lower, upper])

    def score(self, X: ArrayLike, y: ArrayLike, sample_weight: ArrayLike | None = None) -> float:
        """The share of ages ``y`` inside the intervals of ``X`` (:meth:`predict`), not R²: an interval's quality is its coverage."""
        bounds = self.predict(X)
        return coverage(bounds[:, 0], bounds[:, 1], y)

    def to_dict(self) -> dict[str, Any]:
        """Settings and calibration scores as plain floats (for YAML and checkpoints)."""
        self._check_fitted()
        values: dict[str, Any] = {
            "coverage": float(self.coverage),
            "epsilon": None if self.epsilon is None else float(self.epsilon),
            "normalized": bool(self.normalized_),
            "fitted_epsilon": float(self.epsilon_),
            "scores": [float(score) for score in self.scores_],
        }
        if self.cv_folds_ is not None and self.cv_scores_ is not None:
            values["cv_folds"] = [int(fold) for fold in self.cv_folds_]
            values["cv_scores"] = [float(score) for score in self.cv_scores_]
        values["served_scale"] = float(self.served_scale_)
        values["served_pairs"] = int(self.served_pairs_)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ConformalInterval:
        """The fitted interval that :meth:`to_dict` described (without fold data where it was written without)."""
        interval = cls(coverage=float(values.get("coverage", 0.9)), epsilon=values.get("epsilon"))
        interval.normalized_ = bool(values["normalized"])
        interval.epsilon_ = float(values.get("fitted_epsilon", 0.0))
        interval.scores_ = np.sort(np.asarray(values["scores"], dtype=float))
        folds, scores = values.get("cv_folds"), values.get("cv_scores")
        interval.cv_folds_ = np.asarray(folds, dtype=int) if folds is not None and scores is not None else None
        interval.cv_scores_ = np.asarray(scores, dtype=float) if folds is not None and scores is not None else None
        interval.served_scale_ = float(values.get("served_scale", 1.0))  # written before it existed: not scaled
        interval.served_pairs_ = int(values.get("served_pairs", 0))
        return interval

    def __repr__(self) -> str:
        fitted = f", n={self.scores_.size}, normalized={self.normalized_}, cv_plus={self.cv_folds_ is not None}" if hasattr(self, "scores_") else ""
        return f"ConformalInterval(coverage={self.coverage}{fitted})"


#: How :func:`served_interval` bounds the served mean: CV+ over the fold models, split conformal around
#: the mean (scaled by :func:`served_scale`), or split conformal widened by the members' SD (what
#: ``predict`` served before CV+).
SERVED_METHODS = ("cv+", "split", "additive")


def served_scale(interval: ConformalInterval, member_folds: Sequence[int | None]) -> float:
    """The factor on ``interval``'s split-conformal half-width for the mean of networks of the folds
    ``member_folds``: its ``served_scale_`` where they are the fold networks it was fitted for (every
    fold of its calibration, more than one), else 1 (a single network, members of other runs)."""
    folds = interval.folds
    labels = {None if fold is None else int(fold) for fold in member_folds}
    return interval.served_scale_ if len(folds) > 1 and labels == set(folds) else 1.0


def served_interval(
    interval: ConformalInterval, member_ages: ArrayLike, member_folds: Sequence[int | None], coverage: float | None = None, method: str = "split"
) -> tuple[np.ndarray, np.ndarray]:
    """``(lower, upper)`` of the brain age that ``brainage predict`` serves, the mean of ``member_ages``
    ``(n_scans, members)``, each member of the fold ``member_folds[j]`` (a checkpoint's ``extra["fold"]``).

    ``method="cv+"``: CV+ (:meth:`ConformalInterval.cv_plus`) where the calibration kept its folds and
    every one of them has a member here (the members of a fold averaged: that fold's model); where
    it cannot (an old checkpoint, a single model, members of other runs), and for
    ``method="additive"``, split conformal around the members' mean widened by their SD, as before
    CV+ existed. ``method="split"`` (default, what ``predict`` serves): split conformal around the
    mean, its half-width scaled by :func:`served_scale` for the mean's smaller errors. The
    calibration residuals are single fold models'; the mean of K models errs less where their
    errors are partly their own, so CV+ and the widened one over-cover; ``bench/served_calibration.py``
    measures all of them on fresh people.
    """
    if method not in SERVED_METHODS:
        raise ValueError(f"unknown served-interval method {method!r}; choose from {', '.join(SERVED_METHODS)}")
    ages = np.asarray(member_ages, dtype=float)
    ages = ages[:, None] if ages.ndim == 1 else ages
    if ages.shape[1] != len(member_folds):
        raise ValueError(f"{ages.shape[1]} members' ages but {len(member_folds)} fold labels")
    folds = interval.folds
    labels = [None if fold is None else int(fold) for fold in member_folds]
    if method == "cv+" and len(folds) > 1 and set(labels) == set(folds):
        fold_ages = np.column_stack([ages[:, [j for j, label in enumerate(labels) if label == fold]].mean(axis=1) for fold in folds])
        return interval.cv_plus(fold_ages, coverage)
    if method == "split":
        return interval.interval(ages.mean(axis=1), None, coverage, scale=served_scale(interval, labels))
    return interval.interval(ages.mean(axis=1), ages.std(axis=1) if ages.shape[1] > 1 else None, coverage)


def _check_coverage(coverage: float) -> None:
    if not 0 < coverage < 1:
        raise ValueError(f"coverage must be between 0 and 1, not {coverage!r}")


def _upper_rank_value(values: np.ndarray, coverage: float, axis: int = -1) -> Any:
    """The ⌈(n + 1) · coverage⌉-th smallest of ``values`` along ``axis`` (n of them), inf if that exceeds n."""
    _check_coverage(coverage)
    size = values.shape[axis]
    rank = math.ceil((size + 1) * float(coverage) - 1e-9)
    if rank > size:
        shape = list(values.shape)
        del shape[axis]
        return math.inf if not shape else np.full(shape, math.inf)
    found = np.partition(values, rank - 1, axis=axis)
    return float(found[rank - 1]) if values.ndim == 1 else np.take(found, rank - 1, axis=axis)


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
