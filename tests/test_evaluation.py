"""Brain-age metrics, age-bias correction, session aggregation and group tests."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from brainage.evaluation import (
    AgeBiasCorrector,
    aggregate_sessions,
    gap_by_group,
    regression_metrics,
    summarize_predictions,
)


def test_regression_metrics_match_hand_computed_values() -> None:
    metrics = regression_metrics([60, 70, 80], [62, 68, 83])
    # errors 2, -2, 3; age deviations -10, 0, 10; predicted deviations -9, -3, 12; gap deviations 1, -3, 2
    assert metrics == {
        "n": 3,
        "mae": pytest.approx(7 / 3),
        "rmse": pytest.approx(math.sqrt(17 / 3)),
        "r": pytest.approx(210 / math.sqrt(200 * 234)),
        "r2": pytest.approx(1 - 17 / 200),
        "gap_age_r": pytest.approx(10 / math.sqrt(200 * 14)),
    }


def test_mean_predictor_has_zero_r2_undefined_r_and_full_negative_gap_correlation() -> None:
    age = np.array([60.0, 65.0, 80.0, 95.0])
    metrics = regression_metrics(age, np.full(4, age.mean()))
    assert metrics["r2"] == pytest.approx(0.0)
    assert math.isnan(metrics["r"])
    assert metrics["gap_age_r"] == pytest.approx(-1.0)


def test_regression_metrics_edge_cases() -> None:
    empty = regression_metrics([], [])
    assert empty["n"] == 0 and math.isnan(empty["mae"])
    with pytest.raises(ValueError, match="differ in length"):
        regression_metrics([1, 2, 3], [1, 2])


def biased_predictions(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Predictions regressed towards the mean: predicted = 0.6·age + 30 + noise."""
    rng = np.random.default_rng(seed)
    age = rng.uniform(60, 95, n)
    return age, 0.6 * age + 30 + rng.normal(0, 1.0, n)


def test_bias_corrector_learns_and_removes_a_planted_linear_bias() -> None:
    age, predicted = biased_predictions()
    corrector = AgeBiasCorrector().fit(age, predicted)
    assert corrector.slope_ == pytest.approx(0.6, abs=0.02)
    assert corrector.intercept_ == pytest.approx(30, abs=1.5)
    before = regression_metrics(age, predicted)
    after = regression_metrics(age, corrector.transform(predicted))
    assert before["gap_age_r"] < -0.9
    assert abs(after["gap_age_r"]) < 0.1
    assert after["mae"] < before["mae"]


def test_bias_corrector_applies_to_new_predictions_and_round_trips_through_a_dict() -> None:
    age, predicted = biased_predictions(seed=1)
    corrector = AgeBiasCorrector().fit(age, predicted)
    new_age, new_predicted = biased_predictions(n=50, seed=2)
    values = corrector.to_dict()
    assert all(type(v) is float for v in values.values())
    restored = AgeBiasCorrector.from_dict(values)
    assert np.array_equal(restored.transform(new_predicted), corrector.transform(new_predicted))
    assert np.abs(corrector.transform(new_predicted) - new_age).mean() < 2.5


def test_bias_corrector_holds_a_vanishing_slope_and_refuses_bad_input() -> None:
    age = np.array([60.0, 70.0, 80.0, 90.0])
    with pytest.warns(UserWarning, match="little age signal"):
        corrector = AgeBiasCorrector(min_slope=0.2).fit(age, np.full(4, 75.0))
    assert corrector.slope_ == 0.2
    assert corrector.transform([75.0]) == pytest.approx([age.mean()])
    with pytest.raises(ValueError, match="two different true ages"):
        AgeBiasCorrector().fit([70, 70], [71, 69])
    with pytest.raises(RuntimeError, match="not fitted"):
        AgeBiasCorrector().transform([70.0])


def predictions_frame() -> pd.DataFrame:
    """Two subjects; session S1_MR1 has three repeat scans, S1_MR2 and S2_MR1 have two."""
    return pd.DataFrame(
        {
            "scan_id": ["a1", "a2", "a3", "b1", "b2", "c1", "c2"],
            "subject_id": ["S1", "S1", "S1", "S1", "S1", "S2", "S2"],
            "session_id": ["S1_MR1", "S1_MR1", "S1_MR1", "S1_MR2", "S1_MR2", "S2_MR1", "S2_MR1"],
            "age": [70.0, 70.0, 70.0, 72.0, 72.0, 80.0, 80.0],
            "brain_age": [71.0, 73.0, 75.0, 70.0, 74.0, 77.0, 79.0],
            "group": ["Demented"] * 5 + ["Nondemented"] * 2,
            "cdr": [0.5] * 5 + [0.0] * 2,
            "fold": [0, 0, 0, 0, 0, 1, 1],
            "ridge_voxels": [68.0, 70.0, 72.0, 75.0, 75.0, 76.0, 80.0],
        }
    )


def test_aggregate_sessions_averages_repeat_scans() -> None:
    sessions = aggregate_sessions(predictions_frame())
    assert sessions["session_id"].tolist() == ["S1_MR1", "S1_MR2", "S2_MR1"]
    assert sessions["brain_age"].tolist() == [73.0, 72.0, 78.0]
    assert sessions["age"].tolist() == [70.0, 72.0, 80.0]
    assert sessions["n_scans"].tolist() == [3, 2, 2]
    assert sessions["group"].tolist() == ["Demented", "Demented", "Nondemented"]
    assert sessions["fold"].tolist() == [0, 0, 1]
    assert sessions["cdr"].tolist() == [0.5, 0.5, 0.0]
    assert sessions["ridge_voxels"].tolist() == [70.0, 75.0, 78.0]
    assert "scan_id" not in sessions.columns


def test_summarize_predictions_reports_scan_and_session_levels_with_and_without_correction() -> None:
    frame = predictions_frame()
    plain = summarize_predictions(frame)
    assert plain[["level", "correction"]].values.tolist() == [["scan", "none"], ["session", "none"]]
    assert plain["n"].tolist() == [7, 3]
    assert plain.loc[1, "mae"] == pytest.approx((3 + 0 + 2) / 3)

    corrector = AgeBiasCorrector.from_dict({"slope": 0.5, "intercept": 36.0})
    summary = summarize_predictions(frame, corrector)
    assert summary[["level", "correction"]].values.tolist() == [
        ["scan", "none"], ["scan", "linear"], ["session", "none"], ["session", "linear"]
    ]
    corrected_sessions = (np.array([73.0, 72.0, 78.0]) - 36.0) / 0.5
    expected = regression_metrics([70.0, 72.0, 80.0], corrected_sessions)
    assert summary.iloc[3][list(expected)].to_dict() == pytest.approx(expected)
    assert list(summary.columns) == ["level", "correction", "n", "mae", "rmse", "r", "r2", "gap_age_r"]


def group_frame(shift: float, seed: int) -> pd.DataFrame:
    """40 subjects per group, two scans each; the 'Demented' gap is shifted by ``shift`` years."""
    rng = np.random.default_rng(seed)
    rows = []
    for group, offset in (("Nondemented", 0.0), ("Demented", shift)):
        for subject in range(40):
            age = rng.uniform(60, 90)
            subject_gap = offset + rng.normal(0, 3)
            for scan in range(2):
                rows.append({"subject_id": f"{group}{subject}", "age": age, "group": group,
                             "brain_age": age + subject_gap + rng.normal(0, 1)})
    return pd.DataFrame(rows)


def test_gap_by_group_detects_a_planted_difference() -> None:
    table, test = gap_by_group(group_frame(shift=4.0, seed=0))
    assert table["group"].tolist() == ["Demented", "Nondemented"]
    assert table["n"].tolist() == [40, 40]  # subjects, not scans
    assert table["n_scans"].tolist() == [80, 80]
    assert table["mean_gap"].iloc[0] - table["mean_gap"].iloc[1] == pytest.approx(4.0, abs=1.5)
    assert test["test"] == "Welch t-test"
    assert test["p_value"] < 1e-3 and test["statistic"] > 0


def test_gap_by_group_finds_no_difference_where_there_is_none() -> None:
    _, test = gap_by_group(group_frame(shift=0.0, seed=0))
    assert test["p_value"] > 0.05


def test_gap_by_group_uses_anova_for_several_levels_and_skips_tiny_ones() -> None:
    frame = group_frame(shift=4.0, seed=3)
    frame["cdr"] = np.where(frame["group"] == "Demented", 1.0, 0.0)
    frame.loc[frame["subject_id"] == "Nondemented0", "cdr"] = 0.5
    frame.loc[frame["subject_id"].isin(["Demented1", "Demented2"]), "cdr"] = 0.5
    frame.loc[frame["subject_id"] == "Demented3", "cdr"] = 2.0
    frame.loc[frame["subject_id"] == "Demented4", "cdr"] = np.nan
    table, test = gap_by_group(frame, by="cdr")
    assert table["cdr"].tolist() == [0.0, 0.5, 1.0, 2.0]
    assert table["n"].tolist() == [39, 3, 36, 1]
    assert test["test"] == "one-way ANOVA" and test["groups"] == [0.0, 0.5, 1.0]
    assert test["p_value"] < 1e-3


def test_gap_by_group_can_use_corrected_brain_age() -> None:
    frame = group_frame(shift=0.0, seed=0).assign(brain_age_corrected=lambda f: f["brain_age"] + 10.0)
    plain, _ = gap_by_group(frame)
    corrected, _ = gap_by_group(frame, column="brain_age_corrected")
    assert (corrected["mean_gap"] - plain["mean_gap"]).tolist() == pytest.approx([10.0, 10.0])
