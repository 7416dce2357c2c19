"""Brain-age metrics, age-bias correction, session aggregation and group tests."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from brainage.evaluation import (
    AgeBiasCorrector,
    aggregate_sessions,
    check_control_group,
    control_labels,
    control_mask,
    fit_bias_correction,
    fit_line,
    gap_by_group,
    gap_fidelity,
    regression_metrics,
    summarize_predictions,
)


def test_regression_metrics_match_hand_computed_values() -> None:
    metrics = regression_metrics([60, 70, 80], [62, 68, 83])
    # errors 2, -2, 3; age deviations -10, 0, 10; predicted deviations -9, -3, 12; gap deviations 1, -3, 2
    assert {key: metrics[key] for key in ("n", "mae", "rmse", "r", "r2", "gap_age_r")} == {
        "n": 3,
        "mae": pytest.approx(7 / 3),
        "rmse": pytest.approx(math.sqrt(17 / 3)),
        "r": pytest.approx(210 / math.sqrt(200 * 234)),
        "r2": pytest.approx(1 - 17 / 200),
        "gap_age_r": pytest.approx(10 / math.sqrt(200 * 14)),
    }
    assert math.isnan(metrics["mae_true"]) and math.isnan(metrics["gap_fidelity"])  # no true brain age given


def test_mean_predictor_has_zero_r2_undefined_r_and_full_negative_gap_correlation() -> None:
    age = np.array([60.0, 65.0, 80.0, 95.0])
    metrics = regression_metrics(age, np.full(4, age.mean()), true_brain_age=age + np.array([3.0, -2.0, 1.0, 0.0]))
    assert metrics["r2"] == pytest.approx(0.0)
    assert math.isnan(metrics["r"])
    assert metrics["gap_age_r"] == pytest.approx(-1.0)
    assert math.isnan(metrics["gap_fidelity"])  # a constant prediction's gap is all age: nothing left to follow the true gap


def test_regression_metrics_edge_cases() -> None:
    empty = regression_metrics([], [])
    assert empty["n"] == 0 and math.isnan(empty["mae"])
    with pytest.raises(ValueError, match="differ in length"):
        regression_metrics([1, 2, 3], [1, 2])
    assert regression_metrics([60, 70, 80], [61, np.nan, 79])["n"] == 2  # a missing prediction is left out, not counted as 0


def test_gap_fidelity_is_the_partial_correlation_given_age_not_the_raw_gap_correlation() -> None:
    rng = np.random.default_rng(0)
    age = rng.uniform(60, 95, 500)
    own = rng.normal(0, 3, 500)  # each person's brain-age offset
    truth = age - 0.3 * (age - 77.5) + own  # true gaps that also fall with age
    shrunk = 0.5 * age + 38.75  # regression to the mean, no brain information
    assert np.corrcoef(shrunk - age, truth - age)[0, 1] > 0.6  # the raw r of the gaps rewards it
    assert math.isnan(gap_fidelity(age, shrunk, truth))  # the partial r does not
    reader = shrunk + 0.8 * own + rng.normal(0, 2, 500)  # shrunk, but reading the offsets
    assert 0.7 < gap_fidelity(age, reader, truth) < 0.85  # 2.4 / sqrt(2.4² + 2²) ≈ 0.77
    metrics = regression_metrics(age, truth, truth)
    assert metrics["mae_true"] == 0 and metrics["gap_fidelity"] == pytest.approx(1.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gap_fidelity_is_pingouins_partial_correlation(seed: int) -> None:
    """Ours is kept (the bootstrap calls it thousands of times; pingouin builds a DataFrame each time), pinned to pingouin."""
    import pingouin

    rng = np.random.default_rng(seed)
    age = rng.uniform(55, 95, 60)
    truth = age + rng.normal(0, 4, 60)
    predicted = 0.6 * age + 30 + 0.5 * (truth - age) + rng.normal(0, 3, 60)
    frame = pd.DataFrame({"age": age, "predicted": predicted, "truth": truth})
    expected = pingouin.partial_corr(frame, x="predicted", y="truth", covar="age")["r"].iloc[0]
    assert gap_fidelity(age, predicted, truth) == pytest.approx(expected, rel=1e-9)


def test_regression_metrics_are_scikit_learns_and_r2_is_undefined_without_age_spread() -> None:
    from sklearn.metrics import mean_absolute_error, r2_score, root_mean_squared_error

    rng = np.random.default_rng(4)
    age = rng.uniform(60, 90, 50)
    predicted = age + rng.normal(1, 5, 50)
    metrics = regression_metrics(age, predicted)
    assert metrics["mae"] == pytest.approx(mean_absolute_error(age, predicted))
    assert metrics["rmse"] == pytest.approx(root_mean_squared_error(age, predicted))
    assert metrics["r2"] == pytest.approx(r2_score(age, predicted))
    assert math.isnan(regression_metrics([70.0, 70.0], [71.0, 69.0])["r2"])  # scikit-learn would say 0.0
    assert math.isnan(regression_metrics([70.0], [70.0])["r2"])


def test_fit_line_is_the_least_squares_line_with_the_slopes_standard_error() -> None:
    rng = np.random.default_rng(6)
    x = rng.uniform(0, 10, 40)
    y = 2.0 * x - 3.0 + rng.normal(0, 1, 40)
    line = fit_line(x, y)
    slope, intercept = np.polyfit(x, y, deg=1)
    assert (line.slope, line.intercept) == pytest.approx((slope, intercept))
    residual = y - (slope * x + intercept)
    assert line.stderr == pytest.approx(math.sqrt(residual @ residual / (40 - 2) / np.sum((x - x.mean()) ** 2)))
    np.testing.assert_allclose(line([0.0, 1.0]), [intercept, intercept + slope])


def simulated_controls(n_subjects: int, seed: int, slope: float = 0.5, noise: float = 4.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One session per control subject: predicted = mean + slope·(age − mean) + noise (the network's
    regression to the mean), ages 60–95."""
    rng = np.random.default_rng(seed)
    age = rng.uniform(60, 95, n_subjects)
    return age, 77.5 + slope * (age - 77.5) + rng.normal(0, noise, n_subjects), np.arange(n_subjects)


@pytest.mark.parametrize("n_subjects", [7, 20, 200])
def test_residual_correction_never_makes_the_gap_worse_and_refuses_too_few_controls(n_subjects: int) -> None:
    age, predicted, subjects = simulated_controls(n_subjects, seed=n_subjects)
    new_age, new_predicted, _ = simulated_controls(400, seed=1000 + n_subjects)  # other people, corrected with the fit
    if n_subjects < 20:
        with pytest.warns(UserWarning, match="refused: 7 control subjects, at least 20"):
            corrector = AgeBiasCorrector().fit(age, predicted, subjects)
        assert not corrector.applicable and np.isnan(corrector.transform(new_predicted, new_age)).all()
        return
    corrector = AgeBiasCorrector().fit(age, predicted, subjects)
    assert corrector.applicable and corrector.slope_ci_[0] < corrector.slope_ < corrector.slope_ci_[1] < 0
    corrected = corrector.transform(new_predicted, new_age)
    before = np.abs(new_predicted - new_age).mean()
    after = np.abs(corrected - new_age).mean()
    assert after <= 1.2 * before
    assert abs(regression_metrics(new_age, corrected)["gap_age_r"]) < abs(regression_metrics(new_age, new_predicted)["gap_age_r"])


def test_cole_inversion_stays_an_option_and_both_round_trip_through_a_dict() -> None:
    age, predicted, subjects = simulated_controls(300, seed=3, noise=1.0)
    for method in ("residual", "cole"):
        corrector = AgeBiasCorrector(method).fit(age, predicted, subjects)
        restored = AgeBiasCorrector.from_dict(corrector.to_dict())
        np.testing.assert_array_equal(restored.transform(predicted, age), corrector.transform(predicted, age))
        assert "CI" in corrector.describe() and method in corrector.describe()
    cole = AgeBiasCorrector("cole").fit(age, predicted, subjects)
    assert cole.slope_ == pytest.approx(0.5, abs=0.05)
    np.testing.assert_allclose(cole.transform(predicted, age), (predicted - cole.intercept_) / cole.slope_)
    assert np.isnan(cole.transform([80.0], [np.nan])).all()  # no age, no corrected value


def test_a_slope_that_could_be_zero_is_refused() -> None:
    rng = np.random.default_rng(5)
    age = rng.uniform(60, 95, 100)
    with pytest.warns(UserWarning, match="could be zero"):
        corrector = AgeBiasCorrector().fit(age, age + rng.normal(0, 4, 100))  # no age bias to remove
    assert not corrector.applicable
    with pytest.raises(RuntimeError, match="not fitted"):
        AgeBiasCorrector().transform([70.0], [70.0])
    with pytest.raises(ValueError, match="unknown bias-correction method"):
        AgeBiasCorrector("median")


def test_controls_come_from_the_data_or_the_command_line() -> None:
    frame = pd.DataFrame({"group": ["Nondemented", "Demented", "Converted", None], "cdr": [0.0, 1.0, 0.5, 0.0]})
    assert control_mask(frame)[0].tolist() == [True, False, False, False]
    bids = pd.DataFrame({"group": ["HC", "patient", "hc"]})
    assert control_mask(bids)[0].tolist() == [True, False, True]
    assert control_mask(pd.DataFrame({"cdr": [0.0, 0.5, np.nan]}))[0].tolist() == [True, False, False]
    assert control_mask(pd.DataFrame({"age": [70.0, 80.0]}))[0].tolist() == [True, True]
    assert control_mask(frame, ["Converted"])[0].tolist() == [False, False, True, False]
    with pytest.raises(ValueError, match=r"no scans in control group.*Nondemented"):
        control_mask(frame, ["healthy volunteers"])
    # One typo among right names is refused too, in one line naming the groups present.
    with pytest.raises(ValueError, match=r"^no scans in control group\(s\) Nondementd; groups present: Converted, Demented, Nondemented$"):
        control_mask(frame, ["Demented", "Nondementd"])
    check_control_group(frame["group"], ["nondemented"])  # case-insensitive, as the mask
    assert control_labels(frame) == ["Nondemented"] and control_labels(bids) == ["HC", "hc"]
    assert control_labels(frame, ["converted", "Demented"]) == ["Converted", "Demented"]
    assert control_labels(pd.DataFrame({"cdr": [0.0, 0.5]})) == []  # controls by CDR: no group label


def test_the_correction_is_fitted_at_session_level_on_controls_only() -> None:
    rows = []
    rng = np.random.default_rng(2)
    for subject in range(30):
        age = 60 + subject
        for group in ("Nondemented", "Demented"):
            for _scan in range(3):
                rows.append(
                    {
                        "subject_id": f"{group}{subject}",
                        "session_id": f"{group}{subject}_MR1",
                        "group": group,
                        "age": float(age),
                        "brain_age": 77.0 + 0.5 * (age - 77) + (8.0 if group == "Demented" else 0.0) + rng.normal(0, 1),
                    }
                )
    corrector = fit_bias_correction(pd.DataFrame(rows))
    assert corrector.n_subjects_ == 30 and corrector.n_sessions_ == 30  # three repeats are one session; patients left out
    assert corrector.intercept_ + corrector.slope_ * 77 == pytest.approx(0.0, abs=0.5)  # the patients' +8 y did not pull it


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


def test_summarize_predictions_reports_scan_and_session_levels() -> None:
    frame = predictions_frame()
    plain = summarize_predictions(frame)
    assert plain["level"].tolist() == ["scan", "session"]
    assert plain["n"].tolist() == [7, 3]
    assert plain.loc[1, "mae"] == pytest.approx((3 + 0 + 2) / 3)
    voxels = summarize_predictions(frame, "ridge_voxels")
    expected = regression_metrics([70.0, 72.0, 80.0], [70.0, 75.0, 78.0])
    assert voxels.iloc[1][list(expected)].to_dict() == pytest.approx(expected, nan_ok=True)
    assert list(plain.columns) == ["level", "n", "mae", "rmse", "r", "r2", "gap_age_r", "mae_true", "gap_fidelity"]
    truth = summarize_predictions(frame.assign(true_brain_age=frame["brain_age"] + 1.0))
    assert truth["mae_true"].tolist() == pytest.approx([1.0, 1.0])


def group_frame(shift: float, seed: int) -> pd.DataFrame:
    """40 subjects per group, two scans each; the 'Demented' gap is shifted by ``shift`` years."""
    rng = np.random.default_rng(seed)
    rows = []
    for group, offset in (("Nondemented", 0.0), ("Demented", shift)):
        for subject in range(40):
            age = rng.uniform(60, 90)
            subject_gap = offset + rng.normal(0, 3)
            for _scan in range(2):
                rows.append({"subject_id": f"{group}{subject}", "age": age, "group": group, "brain_age": age + subject_gap + rng.normal(0, 1)})
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
