"""Subject-level bootstrap intervals on cases whose answer is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from brainage.bootstrap import (
    at_level,
    bootstrap_fidelity_difference,
    bootstrap_gap_fidelity,
    bootstrap_group_difference,
    bootstrap_mae,
    bootstrap_mae_difference,
    cluster_bootstrap,
    compare_predictors,
    group_effects,
    paired_runs,
    person_gaps,
)
from brainage.evaluation import TRUE_BRAIN_AGE_LABEL


def _frame(people: int = 40, scans: int = 2, seed: int = 0) -> pd.DataFrame:
    """``scans`` scans (one session each pair) of ``people`` people, with a true brain age and a noisy brain age."""
    rng = np.random.default_rng(seed)
    rows = []
    for person in range(people):
        age = float(rng.integers(60, 90))
        truth = age + rng.normal(0, 3)
        for scan in range(scans):
            rows.append({
                "scan_id": f"s{person}-{scan}", "subject_id": f"p{person}", "session_id": f"p{person}-v{scan // 2}",
                "age": age, "true_brain_age": truth, "brain_age": truth + rng.normal(0, 2),
            })  # fmt: skip  # keys grouped in rows, brackets hugged
    return pd.DataFrame(rows)


@pytest.mark.parametrize("level", ["scan", "session"])
def test_identical_columns_differ_by_exactly_zero(level: str) -> None:
    frame = _frame().assign(copy=lambda f: f["brain_age"])
    difference = bootstrap_mae_difference(frame, "brain_age", "copy", level=level, resamples=200)
    assert (difference.value, difference.low, difference.high) == (0.0, 0.0, 0.0)
    assert not difference.excludes_zero()


@pytest.mark.parametrize("level", ["scan", "session"])
def test_a_prediction_one_year_off_for_everyone_has_mae_one(level: str) -> None:
    frame = _frame().assign(off=lambda f: f["age"] + np.where(np.arange(len(f)) % 4 < 2, 1.0, -1.0))
    mae = bootstrap_mae(frame, "off", level=level, resamples=200)
    assert mae.value == pytest.approx(1.0) and mae.low == pytest.approx(1.0) and mae.high == pytest.approx(1.0)


def test_mae_against_the_true_brain_age() -> None:
    frame = _frame().assign(off=lambda f: f["true_brain_age"] - 2.0)
    mae = bootstrap_mae(frame, "off", target="true_brain_age", resamples=200)
    assert mae.value == pytest.approx(2.0) and mae.low == pytest.approx(2.0) and mae.high == pytest.approx(2.0)


def test_a_large_true_difference_excludes_zero_and_a_null_one_does_not() -> None:
    frame = _frame(people=60)
    rng = np.random.default_rng(1)
    frame["worse"] = frame["age"] + rng.normal(0, 8, len(frame))
    frame["good"] = frame["age"] + rng.normal(0, 2, len(frame))
    frame["also_good"] = frame["age"] + rng.normal(0, 2, len(frame))
    ahead = bootstrap_mae_difference(frame, "good", "worse", resamples=500)
    assert ahead.value < 0 and ahead.high < 0 and ahead.excludes_zero()
    assert ahead.low <= ahead.value <= ahead.high
    same = bootstrap_mae_difference(frame, "good", "also_good", resamples=500)
    assert same.low < 0 < same.high


def test_resampling_is_by_subject_so_many_scans_of_one_person_do_not_narrow_the_interval() -> None:
    """40 people; one of them holds 100 scans. Resampled as independent scans the interval would be
    much narrower; by subject it stays about as wide as with one scan of each person."""
    rng = np.random.default_rng(2)
    errors = rng.normal(0, 4, 40)
    one_each = pd.DataFrame({"subject_id": [f"p{i}" for i in range(40)], "age": 70.0, "brain_age": 70.0 + errors})
    heavy = pd.concat([one_each, pd.DataFrame({"subject_id": ["p0"] * 99, "age": 70.0, "brain_age": 70.0 + errors[0]})], ignore_index=True)
    by_subject = bootstrap_mae(heavy, "brain_age", resamples=1000)
    as_scans = bootstrap_mae(heavy.assign(subject_id=[f"scan{i}" for i in range(len(heavy))]), "brain_age", resamples=1000)
    assert by_subject.high - by_subject.low > 3 * (as_scans.high - as_scans.low)


def test_the_interval_is_seeded() -> None:
    frame = _frame()
    assert bootstrap_mae(frame, "brain_age", resamples=300, seed=5) == bootstrap_mae(frame, "brain_age", resamples=300, seed=5)
    assert bootstrap_mae(frame, "brain_age", resamples=300, seed=5) != bootstrap_mae(frame, "brain_age", resamples=300, seed=6)


def test_gap_fidelity_of_the_truth_is_one_and_of_noise_is_about_zero() -> None:
    frame = _frame(people=80)
    frame["noise"] = frame["age"] + np.random.default_rng(3).normal(0, 3, len(frame))
    perfect = bootstrap_gap_fidelity(frame.assign(perfect=lambda f: f["true_brain_age"] + 5), "perfect", level="session", resamples=200)
    assert perfect.value == pytest.approx(1.0) and perfect.low == pytest.approx(1.0)
    noise = bootstrap_gap_fidelity(frame, "noise", resamples=500)
    assert noise.low < 0 < noise.high
    read = bootstrap_gap_fidelity(frame, "brain_age", resamples=500)
    assert 0 < read.low < read.value < read.high < 1


def test_session_level_averages_repeats() -> None:
    frame = _frame(people=3, scans=4)
    sessions = at_level(frame, ["brain_age"], "session")
    assert len(sessions) == 6 and set(sessions.columns) == {"subject_id", "age", "brain_age", "true_brain_age"}
    expected = frame.groupby("session_id")["brain_age"].mean().sort_index().to_numpy()
    assert np.allclose(sessions["brain_age"], expected)


def test_the_statistic_of_all_people_is_the_point_estimate() -> None:
    frame = _frame()
    estimate = cluster_bootstrap(at_level(frame, ["brain_age"]), lambda a: float(np.mean(a["brain_age"] - a["age"])), resamples=100)
    assert estimate.value == pytest.approx(float((frame["brain_age"] - frame["age"]).mean()))


def test_missing_columns_are_named() -> None:
    with pytest.raises(ValueError, match="true_brain_age"):
        bootstrap_gap_fidelity(_frame().drop(columns="true_brain_age"), "brain_age")
    with pytest.raises(ValueError, match="ridge"):
        bootstrap_mae(_frame(), "ridge")


def test_compare_predictors_ranks_the_baselines_and_says_whether_the_network_is_ahead() -> None:
    frame = _frame(people=60)
    rng = np.random.default_rng(4)
    frame["mean_age"] = frame["age"].mean()
    frame["ridge"] = frame["age"] + rng.normal(0, 12, len(frame))
    rows = compare_predictors(frame, {"brain_age": "network"}, {"mean_age": "mean age", "ridge": "ridge", "absent": "absent"}, "session", resamples=300)
    by_name = {row["predictor"]: row for row in rows}
    assert list(by_name) == ["network", "mean age", "ridge", TRUE_BRAIN_AGE_LABEL]
    network = by_name["network"]
    best = min(("mean age", "ridge"), key=lambda name: by_name[name]["mae"])
    assert network["best_baseline"] == best and network["ahead"] is True
    assert network["diff_high"] < 0 and network["diff"] == pytest.approx(network["mae"] - by_name[best]["mae"])
    assert by_name["mean age"]["gap_fidelity"] is None and "diff" not in by_name["mean age"]
    assert network["n"] == 60 and network["mae_low"] < network["mae"] < network["mae_high"]


def _grouped(people: int = 60, shift: float = 4.0, seed: int = 5) -> pd.DataFrame:
    """``_frame`` with the first third of the people Demented, their every scan's brain age ``shift`` years older."""
    frame = _frame(people=people, seed=seed)
    person = frame["subject_id"].str[1:].astype(int)
    frame["group"] = np.where(person < people // 3, "Demented", "Nondemented")
    frame["shifted"] = frame["age"] + np.where(frame["group"] == "Demented", shift, 0.0)
    return frame


def test_person_gaps_average_each_persons_scans_and_leave_other_groups_out() -> None:
    frame = _grouped(people=6)
    frame.loc[frame["subject_id"] == "p5", "group"] = "Converted"
    people = person_gaps(frame, ["shifted"])
    assert list(people["subject_id"]) == ["p0", "p1", "p2", "p3", "p4"]
    assert list(people["case"]) == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert people["shifted"].tolist() == pytest.approx([4.0, 4.0, 0.0, 0.0, 0.0])


def test_a_known_group_difference_is_found_with_its_interval() -> None:
    frame = _grouped(people=60)
    rng = np.random.default_rng(2)
    frame["shifted"] += rng.normal(0, 1, len(frame))
    effect = bootstrap_group_difference(frame, "shifted", resamples=400)
    assert (effect["n_case"], effect["n_control"]) == (20, 40)
    assert effect["difference_low"] < 4.0 < effect["difference_high"] and abs(effect["difference"] - 4.0) < 0.6
    assert effect["cohen_d_low"] > 2 and effect["p"] < 1e-6
    null = bootstrap_group_difference(frame.assign(shifted=frame["age"] + rng.normal(0, 1, len(frame))), "shifted", resamples=400)
    assert null["difference_low"] < 0 < null["difference_high"] and null["p"] > 0.01


def test_the_fidelity_difference_of_a_column_with_itself_is_zero_and_of_truth_against_noise_positive() -> None:
    frame = _frame(people=60)
    frame["noise"] = frame["age"] + np.random.default_rng(3).normal(0, 3, len(frame))
    same = bootstrap_fidelity_difference(frame.assign(copy=frame["brain_age"]), "brain_age", "copy", resamples=200)
    assert (same.value, same.low, same.high) == (0.0, 0.0, 0.0)
    better = bootstrap_fidelity_difference(frame, "brain_age", "noise", resamples=300)
    assert better.low > 0


def test_paired_runs_keep_the_scans_both_predicted_and_compare_them() -> None:
    frame = _grouped(people=30)
    second = frame.assign(brain_age=frame["age"] + 10.0).iloc[:-4]  # the second run is 10 years off and lacks two people's scans
    pair = paired_runs(frame, second, ["brain_age"])
    assert len(pair) == len(frame) - 4 and {"brain_age_a", "brain_age_b", "group", "true_brain_age"} <= set(pair)
    difference = bootstrap_mae_difference(pair, "brain_age_a", "brain_age_b", resamples=200)
    assert difference.high < 0


def test_compare_predictors_reports_controls_and_the_differences_on_every_measure() -> None:
    frame = _grouped(people=60)
    rng = np.random.default_rng(4)
    frame["ridge"] = frame["age"] + rng.normal(0, 6, len(frame))
    frame["shifted"] += rng.normal(0, 1, len(frame))
    rows = compare_predictors(frame, {"brain_age": "network"}, {"ridge": "ridge"}, "scan", resamples=300)
    network = rows[0]
    controls = frame[frame["group"] == "Nondemented"]
    assert network["mae_controls"] == pytest.approx(float(np.abs(controls["brain_age"] - controls["age"]).mean()))
    assert network["best_baseline_true"] == "ridge" and network["ahead_true"] is True and network["diff_true_high"] < 0
    assert network["best_baseline_fidelity"] == "ridge" and network["ahead_fidelity"] is True and network["diff_fidelity_low"] > 0
    effects = group_effects(frame, {"shifted": "shifted", "absent": "absent"}, resamples=200)
    assert [row["predictor"] for row in effects] == ["shifted", TRUE_BRAIN_AGE_LABEL]
