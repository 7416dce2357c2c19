"""Calibration of what ``predict`` serves (issue 26, point 4) and the calibrators as scikit-learn
estimators (issue 27, point 5): CV+ over a run's fold networks, the bias correction of their mean,
``clone``/``check_is_fitted``, and checkpoints with and without fold data."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

from brainage.checkpoint import load_checkpoint, save_checkpoint
from brainage.conformal import ConformalInterval, coverage, served_interval, served_scale
from brainage.evaluation import AgeBiasCorrector
from brainage.training import EvaluationSettings, calibrate_intervals, correct_bias

K = 4


def _cohort(rng: np.random.Generator, n: int, network_sd: float, start: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """``n`` people, one scan each, and K fold networks' brain ages ``(n, K)``: shrinkage towards 75 y,
    the person's own offset (shared by every network) and each network's own error."""
    age = rng.uniform(60, 90, n)
    shared = 75 + 0.8 * (age - 75) + rng.normal(0, 3.0, n)
    networks = shared[:, None] + rng.normal(0, network_sd, (n, K))
    ids = [f"S{start + i:06d}" for i in range(n)]
    return pd.DataFrame({"scan_id": ids, "subject_id": ids, "session_id": ids, "age": age, "group": "Nondemented"}), networks


def _calibrated(rng: np.random.Generator, network_sd: float) -> tuple[AgeBiasCorrector, ConformalInterval]:
    """The final correction and interval as ``brainage evaluate`` fits them on a K-fold run's out-of-fold predictions."""
    known, networks = _cohort(rng, 4000, network_sd)
    known["fold"] = np.arange(len(known)) % K
    known["brain_age"] = networks[np.arange(len(known)), known["fold"]]  # the person's own fold's network
    settings = EvaluationSettings(interval=0.9, progress=False)
    _, corrector = correct_bias(known, pd.DataFrame(), settings, None)
    _, interval = calibrate_intervals(known, pd.DataFrame(), settings)
    assert corrector is not None and interval is not None
    return corrector, interval


def test_cv_plus_covers_the_served_mean_as_calibrated_on_fresh_people() -> None:
    """Fold networks whose own errors are small beside the person's offset: CV+ over them covers the
    nominal share of fresh people within 2 points, and the correction fitted on single-network
    out-of-fold predictions leaves the served mean's corrected gap at zero at every age."""
    rng = np.random.default_rng(0)
    corrector, interval = _calibrated(rng, network_sd=0.75)
    assert interval.folds == tuple(range(K))
    new, networks = _cohort(rng, 20000, 0.75, start=10**6)
    for method in ("cv+", "split"):  # both stay within 2 points of nominal, CV+ the wider
        lower, upper = served_interval(interval, networks, list(range(K)), method=method)
        assert abs(coverage(lower, upper, new["age"]) - 0.9) <= 0.02, method
        assert np.all(lower <= networks.mean(axis=1)) and np.all(networks.mean(axis=1) <= upper)
    split, cv_plus = (served_interval(interval, networks, list(range(K)), method=method) for method in ("split", "cv+"))
    assert coverage(*cv_plus, new["age"]) >= coverage(*split, new["age"])
    gap = corrector.transform(networks.mean(axis=1), new["age"]) - new["age"]
    by_age = gap.groupby(pd.cut(new["age"], [60, 70, 80, 90])).mean()
    assert (by_age.abs() < 0.2).all(), by_age
    assert abs(float(np.polyfit(new["age"], gap, 1)[0])) < 0.02


def test_the_served_mean_is_calibrated_from_scans_two_networks_never_trained_on() -> None:
    """Fold networks whose own errors are as large as the person's offset: split conformal on
    single-network residuals over-covers their served mean on fresh people; scaled by the networks'
    disagreement on validation scans (each also another fold's test scan) it covers the nominal
    share within 2 points, and predict's call (served_interval) applies the scale only to the K-fold mean."""
    rng = np.random.default_rng(4)
    known, networks = _cohort(rng, 4000, network_sd=3.0)
    known["fold"] = np.arange(len(known)) % K
    known["brain_age"] = networks[np.arange(len(known)), known["fold"]]
    other = (known["fold"] + rng.integers(1, K, len(known))) % K  # a fold whose network only stopped early on the scan
    validation = known.assign(fold=other, brain_age=networks[np.arange(len(known)), other]).sample(frac=0.45, random_state=0)
    _, interval = calibrate_intervals(known, validation, EvaluationSettings(interval=0.9, progress=False))
    assert interval is not None and interval.served_pairs_ == len(validation) and 0.5 < interval.served_scale_ < 0.95
    new, fresh = _cohort(rng, 20000, 3.0, start=10**6)
    served = fresh.mean(axis=1)
    scaled = served_interval(interval, fresh, list(range(K)), method="split")
    assert abs(coverage(*scaled, new["age"]) - 0.9) <= 0.02
    assert coverage(*interval.interval(served), new["age"]) > 0.93  # not scaled: conservative by more than 3 points
    assert served_scale(interval, list(range(K))) == interval.served_scale_
    assert served_scale(interval, [0]) == served_scale(interval, [None] * K) == 1.0  # one fold's network, or other runs' members
    again = ConformalInterval.from_dict(interval.to_dict())
    assert again.served_scale_ == interval.served_scale_ and again.served_pairs_ == interval.served_pairs_


def test_served_scale_by_hand() -> None:
    # residuals of mean square 10; pair differences of mean square 4 → σ² = 2, E[D] = (K − 1)/K · σ² = 1.5
    residuals, folds = np.array([np.sqrt(10.0), -np.sqrt(10.0)] * K), np.repeat(np.arange(K), 2)
    interval = ConformalInterval(0.5).fit(residuals, folds=folds, pair_differences=[2.0, -2.0, 2.0])
    assert interval.served_scale_ == pytest.approx(np.sqrt(1 - 1.5 / 10)) and interval.served_pairs_ == 3
    lower, upper = interval.interval([70.0], scale=interval.served_scale_)
    assert 70 - lower[0] == upper[0] - 70 == pytest.approx(np.sqrt(10.0) * np.sqrt(0.85))
    assert ConformalInterval(0.5).fit(residuals, folds=folds, pair_differences=[50.0]).served_scale_ == pytest.approx(
        np.sqrt(1 / K)
    )  # at most K-fold averaging
    assert ConformalInterval(0.5).fit(residuals, folds=folds, pair_differences=[]).served_scale_ == 1.0
    assert ConformalInterval(0.5).fit(residuals, folds=folds).served_scale_ == 1.0
    with pytest.raises(ValueError, match="needs the folds"):
        ConformalInterval(0.5).fit(residuals, pair_differences=[1.0])
    old = {key: value for key, value in interval.to_dict().items() if not key.startswith("served_")}
    assert ConformalInterval.from_dict(old).served_scale_ == 1.0  # a checkpoint from before: not scaled


def test_cv_plus_follows_the_fold_networks_disagreement() -> None:
    """Where the fold networks disagree at a scan, the CV+ interval is wider than where they agree,
    and it is never narrower than the spread of their predictions."""
    rng = np.random.default_rng(1)
    interval = ConformalInterval(0.9).fit(rng.normal(0, 3, 400), folds=np.arange(400) % K)
    agree = np.full((1, K), 70.0)
    disagree = np.array([[64.0, 68.0, 72.0, 76.0]])
    (low_a,), (high_a,) = interval.cv_plus(agree)
    (low_d,), (high_d,) = interval.cv_plus(disagree)
    assert high_a - low_a == pytest.approx(2 * interval.half_width())  # all agree: split conformal around them
    assert high_d - low_d > high_a - low_a and low_d < 64 + interval.half_width() and high_d > 76 - interval.half_width()
    lower, upper = interval.cv_plus(np.array([[70.0, np.nan, 70.0, 70.0]]))
    assert np.isnan(lower[0]) and np.isnan(upper[0])
    with pytest.raises(ValueError, match="one column per fold"):
        interval.cv_plus(np.full((2, 3), 70.0))


def test_cv_plus_by_hand() -> None:
    # two folds, residuals 1, 2, 3 (fold 0) and 4, 5, 6 (fold 1); a new scan predicted 70 by fold 0's
    # network and 80 by fold 1's: upper values 71 72 73 84 85 86, lower values 69 68 67 76 75 74.
    # n = 6, coverage 0.5: rank ⌈7 · 0.5⌉ = 4 → upper the 4th smallest (84), lower the 4th largest (69)
    interval = ConformalInterval(0.5).fit([1, -2, 3, -4, 5, -6], folds=[0, 0, 0, 1, 1, 1])
    lower, upper = interval.cv_plus([[70.0, 80.0]])
    assert (lower[0], upper[0]) == (69.0, 84.0)
    lower, upper = interval.cv_plus([[70.0, 80.0]], coverage=0.9)  # rank 7 > 6: no finite bound
    assert math.isinf(lower[0]) and math.isinf(upper[0])


def test_served_interval_falls_back_where_the_calibration_has_no_folds() -> None:
    rng = np.random.default_rng(2)
    residuals = rng.normal(0, 3, 200)
    old = ConformalInterval.from_dict(
        {k: v for k, v in ConformalInterval(0.9).fit(residuals, folds=np.arange(200) % K).to_dict().items() if not k.startswith("cv_")}
    )
    members = rng.normal(70, 1, (5, K))
    lower, upper = served_interval(old, members, list(range(K)), method="cv+")
    expected = old.interval(members.mean(axis=1), members.std(axis=1))  # what predict served before CV+
    np.testing.assert_array_equal(lower, expected[0])
    np.testing.assert_array_equal(upper, expected[1])
    with_folds = ConformalInterval(0.9).fit(residuals, folds=np.arange(200) % K)
    # members of other folds (or of other runs) than the calibration's: split conformal as before
    np.testing.assert_array_equal(served_interval(with_folds, members, [None] * K, method="cv+")[1], expected[1])
    np.testing.assert_array_equal(served_interval(with_folds, members, list(range(K)), method="additive")[1], expected[1])
    np.testing.assert_array_equal(served_interval(with_folds, members, list(range(K)), method="split")[0], with_folds.interval(members.mean(axis=1))[0])
    with pytest.raises(ValueError, match="served-interval method"):
        served_interval(with_folds, members, list(range(K)), method="jackknife")
    # two members per fold are averaged into their fold's network
    doubled = np.repeat(members, 2, axis=1)
    np.testing.assert_allclose(served_interval(with_folds, doubled, [k for k in range(K) for _ in (0, 1)], method="cv+"), with_folds.cv_plus(members))


def test_the_calibrators_are_scikit_learn_estimators() -> None:
    rng = np.random.default_rng(3)
    age = rng.uniform(60, 90, 200)
    predicted = 75 + 0.7 * (age - 75) + rng.normal(0, 2, 200)
    for estimator in (AgeBiasCorrector("cole", min_subjects=10), ConformalInterval(0.8, epsilon=0.5)):
        copy = clone(estimator)
        assert copy is not estimator and copy.get_params() == estimator.get_params()
        with pytest.raises(NotFittedError):
            check_is_fitted(copy)
    corrector = AgeBiasCorrector(min_subjects=10).fit(age[:, None], predicted)  # X as scikit-learn passes it
    check_is_fitted(corrector)
    assert clone(corrector).get_params() == {"method": "residual", "min_subjects": 10, "confidence": 0.95}
    assert not hasattr(clone(corrector), "slope_")
    np.testing.assert_allclose(corrector.predict([60.0, 90.0]), [64.5, 85.5], atol=1.0)  # the fitted line: 75 + 0.7 · (age − 75)
    np.testing.assert_allclose(corrector.transform(corrector.predict(age), age), age)  # the expected brain age corrects to the age
    assert corrector.score(age, predicted) > 0.5
    interval = ConformalInterval(0.9).fit(predicted - age, folds=np.arange(200) % K)
    check_is_fitted(interval)
    bounds = interval.predict(np.full((3, K), 70.0))
    assert bounds.shape == (3, 2) and np.all(bounds[:, 0] < 70) and np.all(bounds[:, 1] > 70)
    np.testing.assert_array_equal(interval.predict(predicted)[:, 1], interval.interval(predicted)[1])
    assert 0.8 <= interval.score(predicted, age) <= 1.0


def test_checkpoints_keep_the_folds_and_old_ones_still_load(tiny_run: Path, tmp_path: Path) -> None:
    checkpoint = load_checkpoint(tiny_run / "fold_0" / "model.ckpt")
    assert checkpoint.fold == 0 and load_checkpoint(tiny_run / "fold_1" / "model.ckpt").fold == 1
    assert checkpoint.interval is not None and checkpoint.interval.folds == (0, 1)  # train's evaluate kept each residual's fold
    rng = np.random.default_rng(4)
    checkpoint.interval = ConformalInterval(0.9).fit(rng.normal(0, 3, 60), folds=np.arange(60) % 2)
    again = load_checkpoint(save_checkpoint(checkpoint, tmp_path / "new.ckpt"))
    assert again.interval is not None and again.interval.folds == (0, 1)
    np.testing.assert_array_equal(again.interval.cv_plus([[70.0, 72.0]]), checkpoint.interval.cv_plus([[70.0, 72.0]]))
    checkpoint.interval = ConformalInterval.from_dict({"coverage": 0.9, "normalized": False, "scores": [1.0, 2.0, 3.0] * 10})  # as written before CV+
    old = load_checkpoint(save_checkpoint(checkpoint, tmp_path / "old.ckpt"))
    assert old.interval is not None and old.interval.folds == () and old.interval.half_width() == 3.0
    lower, upper = served_interval(old.interval, np.array([[70.0, 72.0]]), [0, 1], method="cv+")
    assert upper[0] - lower[0] == pytest.approx(2 * math.sqrt(9 + 1))  # split conformal widened by the members' SD, as before
