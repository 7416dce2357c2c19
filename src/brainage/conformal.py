"""Per-scan intervals for brain age: split-conformal calibration on out-of-fold residuals.

- :func:`session_residuals`: one calibration residual per session (repeat scans are not independent);
- :class:`ConformalInterval`: intervals with a finite-sample coverage guarantee, optionally
  normalized or widened by the ensemble members' disagreement;
- :func:`covered`, :func:`coverage`: whether, and how often, held-out ages fall inside.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from brainage.evaluation import require_columns
from brainage.retest import in_scan_order

__all__ = ["ConformalInterval", "coverage", "covered", "session_residuals"]

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
    require_columns(predictions, ("scan_id", "subject_id", "session_id", "age", column, *([sd_column] if sd_column else [])))
    frame = predictions.dropna(subset=["age", column]).copy()
    frame["residual"] = frame[column].astype(float) - frame["age"].astype(float)
    if sd_column:
        frame["member_sd"] = frame[sd_column].astype(float)
    carried = ["residual", *(["member_sd"] if sd_column else [])]
    if level == "session":
        out = frame.groupby(["subject_id", "session_id"], sort=True)[carried].mean()
    else:
        frame = in_scan_order(frame)
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
