"""The summary of a run's out-of-fold predictions: accuracy at session and scan level, the
Demented-minus-Nondemented gap, test–retest of brain age and of its gap, visit slopes and interval
coverage, for the network, the baselines and (synthetic cohorts) the true brain age.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from brainage.baselines import BASELINES
from brainage.conformal import coverage
from brainage.evaluation import TRUE_BRAIN_AGE_LABEL, demented_vs_nondemented, summarize_predictions
from brainage.retest import ReliabilityResult, gap_retest, longitudinal, test_retest

SUMMARY_COLUMNS = (
    "model", "level", "correction", "n", "mae", "rmse", "r", "r2", "gap_age_r", "mae_true", "gap_fidelity", "dementia_gap", "dementia_p",
    "retest_sd", "icc2", "icc2_low", "icc2_high", "icc2_gap", "icc2_gap_low", "icc2_gap_high", "visit_slope", "visit_slope_true", "coverage",
)  # fmt: skip  # names grouped in rows


def summarize_run(
    predictions: pd.DataFrame,
    model_name: str,
    correction: str = "residual",
    control_group: Sequence[str] | None = None,
    baselines: dict[str, str] | None = None,
) -> pd.DataFrame:
    """Session- and scan-level metrics of the network (uncorrected, and corrected where a correction
    was fitted), of every baseline (``baselines``: column → name, default :data:`BASELINES`) and, on
    synthetic cohorts, of the true brain age used as a prediction; each row with the
    Demented-minus-Nondemented gap per subject and its p value, the test–retest SD and ICC(2,1)
    over repeat scans of the prediction (``icc2``) and of its gap, prediction − age (``icc2_gap``:
    on the corrected row, of the corrected gap), the median per-subject slope of brain age on age
    over visits of the controls (``control_group``, else read from the data; and on the true brain
    age), and, for the network, the share of ages inside the out-of-fold conformal intervals. A
    figure the data cannot give is NaN here; the printed summary says why."""
    baselines = BASELINES if baselines is None else baselines
    candidates: list[tuple[str, str, str]] = [(model_name, "none", "brain_age")]
    if "brain_age_corrected" in predictions and predictions["brain_age_corrected"].notna().any():
        candidates.append((model_name, correction, "brain_age_corrected"))
    candidates += [(name, "none", column) for column, name in baselines.items() if column in predictions and predictions[column].notna().any()]
    if "true_brain_age" in predictions and predictions["true_brain_age"].notna().any():
        candidates.append((TRUE_BRAIN_AGE_LABEL, "none", "true_brain_age"))
    rows = []
    for name, how, column in candidates:
        dementia = demented_vs_nondemented(predictions, column)
        table = summarize_predictions(predictions, column)
        retest, visits, gap = reliability(predictions, column, control_group)
        inside = (
            coverage(predictions["brain_age_lower"], predictions["brain_age_upper"], predictions["age"])
            if column == "brain_age" and "brain_age_lower" in predictions and predictions["brain_age_lower"].notna().any()
            else np.nan
        )
        rows.append(
            table.assign(
                model=name,
                correction=how,
                dementia_gap=dementia["difference"],
                dementia_p=dementia["p_value"],
                retest_sd=retest.values.get("within_sd", np.nan),
                icc2=retest.values.get("icc2", np.nan),
                icc2_low=retest.values.get("icc2_low", np.nan),
                icc2_high=retest.values.get("icc2_high", np.nan),
                icc2_gap=gap.values.get("icc2", np.nan),
                icc2_gap_low=gap.values.get("icc2_low", np.nan),
                icc2_gap_high=gap.values.get("icc2_high", np.nan),
                visit_slope=visits.values.get("slope_median", np.nan),
                visit_slope_true=visits.values.get("slope_true_median", np.nan),
                coverage=inside,
            )
        )
    summary = pd.concat(rows, ignore_index=True)
    order = {"session": 0, "scan": 1}
    summary = summary.sort_values("level", key=lambda s: s.map(order), kind="stable")
    return summary[list(SUMMARY_COLUMNS)].reset_index(drop=True)


def reliability(
    predictions: pd.DataFrame, column: str = "brain_age", control_group: Sequence[str] | None = None
) -> tuple[ReliabilityResult, ReliabilityResult, ReliabilityResult]:
    """Test–retest over repeat scans, consistency over the visits (controls first) and test–retest
    of the gap (``column − age``) of ``column``; each says why when the data cannot give it."""

    def computed(figure: str, compute: Callable[[], ReliabilityResult]) -> ReliabilityResult:
        try:
            return compute()
        except ValueError as error:
            return ReliabilityResult.unavailable(figure, f"not available: {error}")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pingouin and pandas warnings on small designs; the results say what is missing
        retest = computed("test–retest", lambda: test_retest(predictions, column))
        true_column = "true_brain_age" if column != "true_brain_age" else ""
        visits = computed("longitudinal", lambda: longitudinal(predictions, column, control_group=control_group, true_column=true_column))
        gap = computed("test–retest of the gap", lambda: gap_retest(predictions, column))
    return retest, visits, gap
