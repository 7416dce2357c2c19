"""Subject-level (cluster) bootstrap confidence intervals for brain-age metrics.

Scans of one person are not independent: repeats of a session share the anatomy, and visits share
the person's brain-age gap. A bootstrap that resamples scans (or sessions) treats them as
independent and gives intervals that are too narrow. Here each resample draws PEOPLE with
replacement (``subject_id``), and every scan (or session) of a drawn person comes along, as many
times as the person is drawn. ``scipy.stats.bootstrap`` resamples observations and cannot keep a
cluster together, hence this module on numpy's :class:`~numpy.random.Generator`.

Every statistic is computed at scan level (one row per scan) or at session level (repeats
averaged per ``session_id`` by :func:`brainage.evaluation.aggregate_sessions`, as the summary
tables do). Intervals are percentile intervals over ``resamples`` resamples (seeded, so a rerun
gives the same interval). The paired difference resamples the same people for both predictions in
each draw, so what both share (a hard person, a noisy session) cancels out of the difference.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from brainage.evaluation import TRUE_BRAIN_AGE_LABEL, aggregate_sessions, gap_fidelity

LEVELS = ("scan", "session")
#: Default number of resamples and seed.
RESAMPLES = 2000
SEED = 0


@dataclass(frozen=True)
class Estimate:
    """A point estimate on all the people and its percentile confidence interval."""

    value: float
    low: float
    high: float
    confidence: float = 0.95
    resamples: int = RESAMPLES

    def excludes_zero(self) -> bool:
        """The interval lies wholly on one side of zero."""
        return bool(self.low > 0 or self.high < 0)

    def to_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}


def at_level(predictions: pd.DataFrame, columns: list[str], level: str = "scan") -> pd.DataFrame:
    """``subject_id``, ``age`` and ``columns`` (plus ``true_brain_age`` where present) as floats,
    one row per scan, or per session with repeats averaged by
    :func:`~brainage.evaluation.aggregate_sessions` (``level="session"``)."""
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; choose from {', '.join(LEVELS)}")
    keys = ["subject_id", "session_id"] if level == "session" else ["subject_id"]
    values = list(dict.fromkeys(["age", *columns, *(["true_brain_age"] if "true_brain_age" in predictions else [])]))
    missing = [column for column in (*keys, *values) if column not in predictions]
    if missing:
        raise ValueError(f"predictions lack column(s): {', '.join(missing)}")
    frame = predictions[keys].astype(str).join(predictions[values].astype(float))
    if level == "session":
        placeholder = "brain_age" not in frame  # aggregate_sessions averages brain_age; it may not be among the columns
        frame = aggregate_sessions(frame.assign(brain_age=np.nan) if placeholder else frame)
        frame = frame.drop(columns=["session_id", "n_scans", *(["brain_age"] if placeholder else [])])
    return frame.reset_index(drop=True)


def _clusters(subjects: pd.Series) -> list[np.ndarray]:
    """Row indices of each subject, subjects in sorted order."""
    codes, _ = pd.factorize(subjects.astype(str), sort=True)
    order = np.argsort(codes, kind="stable")
    return np.split(order, np.cumsum(np.bincount(codes))[:-1])


Statistic = Callable[[Mapping[str, np.ndarray]], float]


def cluster_bootstrap(frame: pd.DataFrame, statistic: Statistic, resamples: int = RESAMPLES, seed: int = SEED, confidence: float = 0.95) -> Estimate:
    """``statistic`` of ``frame`` and its percentile interval over resamples of whole subjects.

    ``statistic`` gets the frame's columns as arrays (``subject_id`` left out). Each resample
    draws as many subjects as ``frame`` has, with replacement, and takes every row of each drawn
    subject; resamples where the statistic is undefined (NaN) are left out of the interval.
    """
    if "subject_id" not in frame:
        raise ValueError("predictions lack column(s): subject_id")
    arrays = {str(column): frame[column].to_numpy(dtype=float) for column in frame if column != "subject_id"}
    value = float(statistic(arrays))
    clusters = _clusters(frame["subject_id"])
    draws = np.random.default_rng(seed).integers(0, len(clusters), size=(resamples, len(clusters)))
    values = np.empty(resamples)
    for index, draw in enumerate(draws):
        rows = np.concatenate([clusters[i] for i in draw])
        values[index] = statistic({column: array[rows] for column, array in arrays.items()})
    values = values[np.isfinite(values)]
    if values.size == 0:
        return Estimate(value, float("nan"), float("nan"), confidence, resamples)
    tail = 50 * (1 - confidence)
    low, high = np.percentile(values, [tail, 100 - tail])
    return Estimate(value, float(low), float(high), confidence, resamples)


def _mae(column: str, target: str) -> Statistic:
    """Mean absolute difference of two columns over the rows where both are known."""

    def statistic(arrays: Mapping[str, np.ndarray]) -> float:
        error = np.abs(arrays[column] - arrays[target])
        error = error[np.isfinite(error)]
        return float(error.mean()) if error.size else float("nan")

    return statistic


def bootstrap_mae(predictions: pd.DataFrame, column: str, level: str = "scan", target: str = "age", resamples: int = RESAMPLES, seed: int = SEED) -> Estimate:
    """MAE of ``column`` against ``target`` (``age``, or ``true_brain_age``) with a subject-level CI."""
    frame = at_level(predictions, [column], level)
    if target not in frame:
        raise ValueError(f"predictions lack column(s): {target}")
    return cluster_bootstrap(frame, _mae(column, target), resamples, seed)


def bootstrap_gap_fidelity(predictions: pd.DataFrame, column: str, level: str = "scan", resamples: int = RESAMPLES, seed: int = SEED) -> Estimate:
    """Gap fidelity (:func:`brainage.evaluation.gap_fidelity`) of ``column`` with a subject-level CI."""
    frame = at_level(predictions, [column], level)
    if "true_brain_age" not in frame:
        raise ValueError("predictions lack column(s): true_brain_age")
    return cluster_bootstrap(frame, lambda a: gap_fidelity(a["age"], a[column], a["true_brain_age"]), resamples, seed)


def bootstrap_mae_difference(
    predictions: pd.DataFrame, column: str, reference: str, level: str = "scan", target: str = "age", resamples: int = RESAMPLES, seed: int = SEED
) -> Estimate:
    """MAE of ``column`` minus MAE of ``reference`` (e.g. network − baseline), both on the same
    resampled people in every draw (a paired bootstrap) and on the same rows (those where both and
    ``target`` are known). An interval below zero means ``column`` is ahead."""
    frame = at_level(predictions, [column, reference], level)
    if target not in frame:
        raise ValueError(f"predictions lack column(s): {target}")
    frame = frame.dropna(subset=list(dict.fromkeys([column, reference, target]))).reset_index(drop=True)
    first, second = _mae(column, target), _mae(reference, target)
    return cluster_bootstrap(frame, lambda a: first(a) - second(a), resamples, seed)


def _ci(prefix: str, estimate: Estimate | None) -> dict[str, float | None]:
    if estimate is None:
        return {prefix: None, f"{prefix}_low": None, f"{prefix}_high": None}
    return {prefix: estimate.value, f"{prefix}_low": estimate.low, f"{prefix}_high": estimate.high}


def compare_predictors(
    predictions: pd.DataFrame,
    networks: Mapping[str, str],
    baselines: Mapping[str, str],
    level: str = "scan",
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> list[dict[str, object]]:
    """One record per predictor column (``networks`` then ``baselines``, each ``{column: name}``,
    those with no prediction left out) at ``level``: ``n`` rows, ``mae`` against age, ``mae_true``
    against the true brain age and ``gap_fidelity``, each with ``_low``/``_high`` (subject-level
    95 % CI); for the networks also ``diff``, the paired MAE difference against the best baseline
    (the lowest MAE here) with its CI, ``best_baseline``, and ``ahead`` (the CI lies below zero).
    Where the true brain age is known it closes the table as a predictor of age."""
    truth = "true_brain_age" in predictions and predictions["true_brain_age"].notna().any()
    present = {column: name for column, name in {**networks, **baselines}.items() if column in predictions and predictions[column].notna().any()}
    records: dict[str, dict[str, object]] = {}
    for column, name in present.items():
        frame = at_level(predictions, [column], level)
        known = bool(truth) and frame[column].nunique() > 1  # a constant predictor has no gap to follow
        records[column] = {
            "predictor": name,
            "n": int(frame[column].notna().sum()),
            **_ci("mae", bootstrap_mae(predictions, column, level, resamples=resamples, seed=seed)),
            **_ci("mae_true", bootstrap_mae(predictions, column, level, "true_brain_age", resamples, seed) if truth else None),
            **_ci("gap_fidelity", bootstrap_gap_fidelity(predictions, column, level, resamples, seed) if known else None),
        }
    maes = {column: float(str(records[column]["mae"])) for column in baselines if column in records}
    best = min(maes, key=maes.__getitem__) if maes else None
    for column in networks:
        if column in records and best is not None:
            difference = bootstrap_mae_difference(predictions, column, best, level, resamples=resamples, seed=seed)
            records[column].update(_ci("diff", difference), best_baseline=baselines[best], ahead=bool(difference.high < 0))
    rows = list(records.values())
    if truth:
        rows.append(
            {
                "predictor": TRUE_BRAIN_AGE_LABEL,
                "n": int(at_level(predictions, [], level)["true_brain_age"].notna().sum()),
                **_ci("mae", bootstrap_mae(predictions, "true_brain_age", level, resamples=resamples, seed=seed)),
                "mae_true": 0.0,
                "gap_fidelity": 1.0,
            }
        )
    return rows
