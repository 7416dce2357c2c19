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

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pingouin
from scipy import stats

from brainage.evaluation import TRUE_BRAIN_AGE_LABEL, aggregate_sessions, control_mask, gap_fidelity

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


def bootstrap_fidelity_difference(
    predictions: pd.DataFrame, column: str, reference: str, level: str = "scan", resamples: int = RESAMPLES, seed: int = SEED
) -> Estimate:
    """Gap fidelity of ``column`` minus that of ``reference``, paired as in :func:`bootstrap_mae_difference`;
    an interval above zero means ``column``'s gap follows the true one more closely."""
    frame = at_level(predictions, [column, reference], level)
    if "true_brain_age" not in frame:
        raise ValueError("predictions lack column(s): true_brain_age")
    frame = frame.dropna(subset=[column, reference, "true_brain_age"]).reset_index(drop=True)
    return cluster_bootstrap(
        frame, lambda a: gap_fidelity(a["age"], a[column], a["true_brain_age"]) - gap_fidelity(a["age"], a[reference], a["true_brain_age"]), resamples, seed
    )


def controls_of(predictions: pd.DataFrame, control_group: Sequence[str] | None = None) -> pd.DataFrame:
    """The rows of the healthy controls (:func:`brainage.evaluation.control_mask`)."""
    mask, _ = control_mask(predictions, control_group)
    return predictions[mask]


def person_gaps(predictions: pd.DataFrame, columns: Sequence[str], case: str = "Demented", control: str = "Nondemented") -> pd.DataFrame:
    """One row per person of group ``case`` or ``control``: ``subject_id``, ``case`` (1.0 or 0.0) and,
    per column, the person's mean gap (``column − age``) over all their scans, so that a group test
    counts people, not their repeats and visits."""
    missing = [column for column in ("subject_id", "age", "group", *columns) if column not in predictions]
    if missing:
        raise ValueError(f"predictions lack column(s): {', '.join(missing)}")
    groups = predictions["group"].astype("string").str.strip()
    rows = predictions[groups.isin([case, control]).fillna(False).to_numpy(dtype=bool)]
    gaps = rows[list(columns)].astype(float).sub(rows["age"].astype(float), axis=0).assign(subject_id=rows["subject_id"].astype(str))
    people = gaps.groupby("subject_id", sort=True).mean()
    people["case"] = (rows.groupby(rows["subject_id"].astype(str), sort=True)["group"].first().astype(str).str.strip() == case).astype(float)
    return people.reset_index()


def _group_difference(column: str, effect: str = "difference") -> Statistic:
    """Case minus control mean gap (``effect="difference"``) or Cohen's d (``"d"``, pingouin)."""

    def statistic(arrays: Mapping[str, np.ndarray]) -> float:
        case = arrays["case"] == 1
        x, y = arrays[column][case], arrays[column][~case]
        x, y = x[np.isfinite(x)], y[np.isfinite(y)]
        if x.size < 2 or y.size < 2:
            return float("nan")
        return float(x.mean() - y.mean()) if effect == "difference" else float(pingouin.compute_effsize(x, y, eftype="cohen"))

    return statistic


def bootstrap_group_difference(
    predictions: pd.DataFrame, column: str, case: str = "Demented", control: str = "Nondemented", resamples: int = RESAMPLES, seed: int = SEED
) -> dict[str, object]:
    """``case`` minus ``control`` mean gap per person of ``column`` (e.g. Demented − Nondemented) and
    Cohen's d (pingouin), each with a subject-level CI, Welch's p and the numbers of people."""
    people = person_gaps(predictions, [column], case, control)
    x, y = (people.loc[people["case"] == flag, column].dropna().to_numpy() for flag in (1.0, 0.0))
    p = float(stats.ttest_ind(x, y, equal_var=False).pvalue) if min(x.size, y.size) >= 2 else float("nan")
    return {
        "n_case": int(x.size),
        "n_control": int(y.size),
        **_ci("difference", cluster_bootstrap(people[["subject_id", "case", column]], _group_difference(column), resamples, seed)),
        **_ci("cohen_d", cluster_bootstrap(people[["subject_id", "case", column]], _group_difference(column, "d"), resamples, seed)),
        "p": p,
    }


def paired_runs(first: pd.DataFrame, second: pd.DataFrame, columns: Sequence[str], suffixes: tuple[str, str] = ("_a", "_b")) -> pd.DataFrame:
    """Two prediction tables of the same scans (two runs on the same folds) side by side, one row per
    scan present in both: the identity, age, group and true brain age once, each of ``columns`` twice
    (``suffixes``), ready for the paired bootstraps above (e.g. ``brain_age_a`` against ``brain_age_b``)."""
    keep = [column for column in ("scan_id", "subject_id", "session_id", "age", "group", "cdr", "true_brain_age") if column in first]
    left = first[keep + list(columns)].rename(columns={column: column + suffixes[0] for column in columns})
    right = second[["scan_id", *columns]].rename(columns={column: column + suffixes[1] for column in columns})
    return left.merge(right, on="scan_id", how="inner", validate="one_to_one")


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
    control_group: Sequence[str] | None = None,
) -> list[dict[str, object]]:
    """One record per predictor column (``networks`` then ``baselines``, each ``{column: name}``,
    those with no prediction left out) at ``level``: ``n`` rows, ``mae`` against age, ``mae_true``
    against the true brain age, ``gap_fidelity`` and ``mae_controls`` (against age, on the controls
    of :func:`brainage.evaluation.control_mask`), each with ``_low``/``_high`` (subject-level 95 % CI).
    For the networks also the paired differences against the best baseline on each measure, with
    CIs: ``diff`` (MAE; best = lowest MAE, ``best_baseline``; ``ahead`` when the CI lies below
    zero), ``diff_true`` (MAE against the true brain age; ``ahead_true``) and ``diff_fidelity``
    (gap fidelity; ``ahead_fidelity`` when the CI lies above zero). Where the true brain age is known
    it closes the table as a predictor of age."""
    truth = "true_brain_age" in predictions and predictions["true_brain_age"].notna().any()
    present = {column: name for column, name in {**networks, **baselines}.items() if column in predictions and predictions[column].notna().any()}
    controls = controls_of(predictions, control_group) if "group" in predictions or "cdr" in predictions else predictions.iloc[:0]
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
            **_ci("mae_controls", bootstrap_mae(controls, column, level, resamples=resamples, seed=seed) if len(controls) else None),
        }

    def best(key: str, lowest: bool = True) -> str | None:
        values = {column: float(str(records[column][key])) for column in baselines if column in records and records[column].get(key) is not None}
        return (min if lowest else max)(values, key=values.__getitem__) if values else None

    for column in networks:
        if column not in records:
            continue
        if (reference := best("mae")) is not None:
            difference = bootstrap_mae_difference(predictions, column, reference, level, resamples=resamples, seed=seed)
            records[column].update(_ci("diff", difference), best_baseline=baselines[reference], ahead=bool(difference.high < 0))
        if truth and (reference := best("mae_true")) is not None:
            difference = bootstrap_mae_difference(predictions, column, reference, level, "true_brain_age", resamples, seed)
            records[column].update(_ci("diff_true", difference), best_baseline_true=baselines[reference], ahead_true=bool(difference.high < 0))
        if records[column].get("gap_fidelity") is not None and (reference := best("gap_fidelity", lowest=False)) is not None:
            difference = bootstrap_fidelity_difference(predictions, column, reference, level, resamples, seed)
            records[column].update(_ci("diff_fidelity", difference), best_baseline_fidelity=baselines[reference], ahead_fidelity=bool(difference.low > 0))
    rows = list(records.values())
    if truth:
        rows.append(
            {
                "predictor": TRUE_BRAIN_AGE_LABEL,
                "n": int(at_level(predictions, [], level)["true_brain_age"].notna().sum()),
                **_ci("mae", bootstrap_mae(predictions, "true_brain_age", level, resamples=resamples, seed=seed)),
                "mae_true": 0.0,
                "gap_fidelity": 1.0,
                **_ci("mae_controls", bootstrap_mae(controls, "true_brain_age", level, resamples=resamples, seed=seed) if len(controls) else None),
            }
        )
    return rows


def group_effects(
    predictions: pd.DataFrame, predictors: Mapping[str, str], case: str = "Demented", control: str = "Nondemented", resamples: int = RESAMPLES, seed: int = SEED
) -> list[dict[str, object]]:
    """One record per predictor column (``{column: name}``, those absent left out, the true brain age
    added where known): :func:`bootstrap_group_difference` of its gap, per person."""
    columns = {**predictors, **({"true_brain_age": TRUE_BRAIN_AGE_LABEL} if "true_brain_age" in predictions else {})}
    return [
        {"predictor": name, **bootstrap_group_difference(predictions, column, case, control, resamples, seed)}
        for column, name in columns.items()
        if column in predictions and predictions[column].notna().any()
    ]
