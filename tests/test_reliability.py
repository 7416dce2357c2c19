"""Reliability figures against hand-made cases whose answer is known: test–retest, longitudinal
consistency, split-conformal intervals and re-posed scans."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from nibabel.processing import resample_from_to

from brainage import conformal, reliability, retest
from brainage.conformal import ConformalInterval, coverage, session_residuals
from brainage.retest import NO_REPEATS, NO_VISITS, gap_retest, longitudinal, test_retest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from pose_resample import Pose, random_poses, repose_header, repose_voxels, write_poses  # noqa: E402 - bench/ is a folder of scripts, on the path only from here


def _cohort(
    subjects: int = 30,
    visits: int = 3,
    repeats: int | list[int] = 3,
    scan_sd: float = 1.0,
    seed: int = 0,
    slope: float = 1.0,
) -> pd.DataFrame:
    """Predictions of ``subjects`` people, ``visits`` visits 2 years apart, ``repeats`` scans each
    (a list cycles over sessions): brain age = first age + offset + slope · Δage + scan noise."""
    rng = np.random.default_rng(seed)
    counts = repeats if isinstance(repeats, list) else [repeats]
    rows, k = [], 0
    for s in range(subjects):
        start, offset = rng.uniform(60, 85), rng.normal(0, 5)
        for v in range(visits):
            age = start + 2.0 * v
            true = start + offset + slope * 2.0 * v
            for r in range(counts[k % len(counts)]):
                rows.append({
                    "scan_id": f"OAS_{s}_MR{v + 1}_mpr-{r + 1}", "subject_id": f"S{s:03d}", "session_id": f"S{s:03d}_MR{v + 1}",
                    "age": age, "brain_age": true + rng.normal(0, scan_sd), "true_brain_age": true,
                    "group": "Nondemented" if s % 2 == 0 else "Demented",
                })  # fmt: skip  # keys grouped in rows
            k += 1
    return pd.DataFrame(rows)


# --- test–retest ---------------------------------------------------------------------------------


def test_identical_repeats_give_icc_one_and_sd_zero() -> None:
    predictions = _cohort(subjects=10, repeats=3, scan_sd=0.0)
    result = test_retest(predictions)
    assert result.available
    assert result.values["within_sd"] == 0.0
    for key in ("icc2", "icc3"):
        assert result.values[key] == pytest.approx(1.0)
        assert result.values[f"{key}_low"] == pytest.approx(1.0) and result.values[f"{key}_high"] == pytest.approx(1.0)


def test_within_session_sd_and_icc_recover_the_simulated_noise() -> None:
    # between-session SD ≈ 9 y (ages 60–85 and offsets), scan noise 2 y: ICC ≈ 81 / (81 + 4) ≈ 0.95
    predictions = _cohort(subjects=200, visits=1, repeats=3, scan_sd=2.0, seed=1)
    result = test_retest(predictions)
    assert result.values["within_sd"] == pytest.approx(2.0, rel=0.08)
    session_sd = predictions.groupby("session_id")["true_brain_age"].first().std()
    expected = session_sd**2 / (session_sd**2 + 4.0)
    for key in ("icc2", "icc3"):
        assert result.values[f"{key}_low"] < result.values[key] < result.values[f"{key}_high"]
        assert result.values[f"{key}_low"] - 0.01 <= expected <= result.values[f"{key}_high"] + 0.01
    # noise as large as the spread between sessions halves the ICC
    noisy = test_retest(_cohort(subjects=200, visits=1, repeats=3, scan_sd=float(session_sd), seed=1))
    assert noisy.values["icc2"] == pytest.approx(0.5, abs=0.1)


def test_icc_matches_a_hand_computed_two_way_anova() -> None:
    # 4 sessions × 2 repeats: ICC(3,1) = (MSR − MSE) / (MSR + MSE) for k = 2
    values = np.array([[70.0, 71.0], [80.0, 79.0], [65.0, 66.5], [90.0, 90.0]])
    rows = [
        {"scan_id": f"mpr-{r + 1}", "subject_id": f"S{i}", "session_id": f"S{i}_MR1", "brain_age": values[i, r], "age": 70.0}
        for i in range(4) for r in range(2)
    ]  # fmt: skip  # the record, then its loops
    result = test_retest(pd.DataFrame(rows))
    n, k = values.shape
    grand = values.mean()
    ms_rows = k * np.sum((values.mean(axis=1) - grand) ** 2) / (n - 1)
    ms_cols = n * np.sum((values.mean(axis=0) - grand) ** 2) / (k - 1)
    residual = values - values.mean(axis=1, keepdims=True) - values.mean(axis=0, keepdims=True) + grand
    ms_error = np.sum(residual**2) / ((n - 1) * (k - 1))
    assert result.values["icc3"] == pytest.approx((ms_rows - ms_error) / (ms_rows + (k - 1) * ms_error))
    assert result.values["icc2"] == pytest.approx((ms_rows - ms_error) / (ms_rows + (k - 1) * ms_error + k * (ms_cols - ms_error) / n))
    assert result.values["within_sd"] == pytest.approx(np.sqrt(np.mean(np.var(values, axis=1, ddof=1))))


def test_icc_uses_the_first_k_repeats_in_natural_scan_order() -> None:
    # sessions of 1–4 scans: k = 3 uses the most scans (3 × 3 sessions with ≥ 3 against 2 × 4, 4 × 1)
    predictions = _cohort(subjects=3, visits=3, repeats=[1, 2, 3, 4], seed=2)
    counts = predictions.groupby("session_id").size()
    result = test_retest(predictions)
    assert result.values["k"] == max(range(2, 5), key=lambda k: (k * int((counts >= k).sum()), -k))
    assert result.values["n_sessions"] == int((counts >= 2).sum())
    assert result.values["n_icc_sessions"] == int((counts >= result.values["k"]).sum())
    assert test_retest(predictions, repeats=2).values["n_icc_sessions"] == int((counts >= 2).sum())
    with pytest.raises(ValueError, match="repeats"):
        test_retest(predictions, repeats=1)
    # mpr-10 is the tenth scan, not the second: only the first two (mpr-2, mpr-9) agree
    rows = [
        {"scan_id": f"mpr-{r}", "subject_id": f"S{i}", "session_id": f"S{i}", "brain_age": 60.0 + 10 * i + (5.0 if r == 10 else 0.0)}
        for i in range(4) for r in (10, 2, 9)
    ]  # fmt: skip  # the record, then its loops
    first_two = test_retest(pd.DataFrame(rows), repeats=2)
    assert first_two.values["icc3"] == pytest.approx(1.0) and first_two.values["within_sd"] > 0


def test_test_retest_without_repeats_says_so() -> None:
    single = _cohort(subjects=5, repeats=1)
    result = test_retest(single)
    assert not result.available and result.reason == NO_REPEATS and result.values == {}
    assert "no session has two or more scans" in str(result)
    one_pair = _cohort(subjects=1, visits=1, repeats=2)
    partial = test_retest(one_pair)
    assert partial.available and "ICC not available" in partial.reason and "icc2" not in partial.values


def test_gap_icc_fails_where_brain_age_icc_cannot() -> None:
    # Brain age = age + scan noise: the ages' spread makes brain age look reliable, the gap is pure noise.
    predictions = _cohort(subjects=200, visits=1, repeats=3, scan_sd=0.0, seed=3)
    predictions["brain_age"] = predictions["age"] + np.random.default_rng(4).normal(0, 3.0, len(predictions))
    assert test_retest(predictions).values["icc2"] > 0.8
    gap = gap_retest(predictions)
    assert gap.available and "gap" in gap.figure
    assert abs(gap.values["icc2"]) < 0.15 and gap.values["icc2_low"] < 0 < gap.values["icc2_high"]
    assert gap.values["within_sd"] == pytest.approx(test_retest(predictions).values["within_sd"])  # age is fixed within a session
    # A gap that carries each person's offset (SD 5 y) beside the same noise is reliable again: about 25 / (25 + 9).
    predictions["brain_age"] = predictions["true_brain_age"] + np.random.default_rng(4).normal(0, 3.0, len(predictions))
    assert gap_retest(predictions).values["icc2"] == pytest.approx(25 / 34, abs=0.1)


# --- longitudinal --------------------------------------------------------------------------------


def test_brain_age_that_moves_with_age_has_slope_one() -> None:
    predictions = _cohort(subjects=20, visits=4, repeats=2, scan_sd=0.0)
    result = longitudinal(predictions)
    assert result.available and result.values["group"] == "Nondemented"
    table = result.table.set_index("group")
    assert list(table.index) == ["Nondemented", "Demented", "all"]
    for name in table.index:
        assert table.loc[name, "slope_median"] == pytest.approx(1.0)
        assert table.loc[name, "slope_q1"] == pytest.approx(1.0) and table.loc[name, "slope_q3"] == pytest.approx(1.0)
        assert table.loc[name, "gap_sd_median"] == pytest.approx(0.0, abs=1e-9)
        assert table.loc[name, "slope_true_median"] == pytest.approx(1.0)
    assert table.loc["all", "n_subjects"] == 20 and table.loc["Demented", "n_visits"] == 40


def test_groups_are_kept_apart_and_true_brain_age_is_used() -> None:
    # the demented half ages twice as fast: slope 2 on age, 1 on the true brain age
    fast = _cohort(subjects=20, visits=3, repeats=1, scan_sd=0.0, slope=2.0)
    normal = _cohort(subjects=20, visits=3, repeats=1, scan_sd=0.0, slope=1.0)
    predictions = pd.concat([normal[normal["group"] == "Nondemented"], fast[fast["group"] == "Demented"]])
    table = longitudinal(predictions).table.set_index("group")
    assert table.loc["Nondemented", "slope_median"] == pytest.approx(1.0)
    assert table.loc["Demented", "slope_median"] == pytest.approx(2.0)
    assert table.loc["Demented", "slope_true_median"] == pytest.approx(1.0)
    assert table.loc["Demented", "gap_sd_median"] == pytest.approx(2.0)  # gaps 0, 2, 4 over visits
    named = longitudinal(predictions, control_group="Demented")
    assert named.table["group"].iloc[0] == "Demented" and named.values["slope_median"] == pytest.approx(2.0)
    # The controls are those of the bias correction (evaluation.control_mask): labels it reads as controls form one row.
    relabelled = predictions.assign(group=predictions["group"].replace({"Nondemented": "HC"}))
    relabelled.loc[relabelled["subject_id"] == relabelled["subject_id"].iloc[0], "group"] = "control"
    mixed = longitudinal(relabelled)
    assert mixed.values["group"] == "HC or control" and mixed.values["slope_median"] == pytest.approx(1.0)
    assert longitudinal(relabelled, control_group=["demented"]).values["group"] == "Demented"
    with pytest.raises(ValueError, match="groups present: Demented, HC, control"):
        longitudinal(relabelled, control_group=["Dementd"])


def test_shuffled_ages_give_a_slope_near_zero() -> None:
    predictions = _cohort(subjects=300, visits=5, repeats=1, scan_sd=1.0, seed=3)
    rng = np.random.default_rng(4)
    shuffled = predictions.copy()
    for _, index in shuffled.groupby("subject_id").groups.items():
        shuffled.loc[index, "age"] = rng.permutation(shuffled.loc[index, "age"].to_numpy())
    table = longitudinal(shuffled).table.set_index("group")
    assert abs(table.loc["all", "slope_median"]) < 0.1
    assert table.loc["all", "slope_q1"] < -0.3 and table.loc["all", "slope_q3"] > 0.3  # each person's slope is ±, not 0
    assert longitudinal(predictions).table.set_index("group").loc["all", "slope_median"] == pytest.approx(1.0, abs=0.1)


def test_visit_delays_replace_whole_year_ages() -> None:
    # ages rounded to whole years (as in OASIS-2's spreadsheet) blur 1.4-year follow-ups; the delay in
    # days since the first visit restores the exact slope
    rows = []
    for s in range(6):
        start = 70.3 + s
        for v, days in enumerate((0, 511, 1022)):
            exact = start + days / 365.25
            rows.append({"scan_id": "mpr-1", "subject_id": f"S{s}", "session_id": f"S{s}_{v}", "age": float(np.floor(exact)),
                         "brain_age": exact + 3.0, "mr_delay": float(days)})  # fmt: skip  # keys grouped in rows
    predictions = pd.DataFrame(rows)
    rounded = longitudinal(predictions.drop(columns=["mr_delay"]))
    assert abs(rounded.values["slope_median"] - 1.0) > 0.05 or rounded.values["slope_q3"] - rounded.values["slope_q1"] > 0.05
    timed = longitudinal(predictions)
    assert timed.values["slope_median"] == pytest.approx(1.0) and timed.values["gap_sd_median"] == pytest.approx(0.0, abs=1e-9)
    assert (timed.details["ages_from"] == "mr_delay").all()


def test_longitudinal_on_one_visit_says_so_and_works_without_groups() -> None:
    one_visit = _cohort(subjects=5, visits=1)
    result = longitudinal(one_visit)
    assert not result.available and result.reason == NO_VISITS
    plain = longitudinal(_cohort(subjects=4, visits=2, scan_sd=0.0).drop(columns=["group", "true_brain_age"]))
    assert list(plain.table["group"]) == ["all"] and plain.values["slope_median"] == pytest.approx(1.0)
    assert "slope_true_median" not in plain.values
    quick = _cohort(subjects=4, visits=2, scan_sd=0.0)
    quick.loc[quick["group"] == "Demented", "age"] = 70.0  # their visits on one birthday: no slope
    partial = longitudinal(quick)
    assert list(partial.table["group"]) == ["Nondemented"] and "Demented" in partial.reason
    assert not partial.table.isna().any().any()
    same_day = _cohort(subjects=3, visits=2).assign(age=70.0)
    assert not longitudinal(same_day).available and "span" in longitudinal(same_day).reason


# --- conformal intervals -------------------------------------------------------------------------


def test_conformal_intervals_reach_their_nominal_coverage() -> None:
    rng = np.random.default_rng(0)
    calibration = rng.normal(0.5, 4.0, 2000)  # 2000 sessions' out-of-fold residuals
    heldout_truth = rng.uniform(60, 90, 2000)
    heldout_predicted = heldout_truth + rng.normal(0.5, 4.0, 2000)
    for nominal in (0.8, 0.9, 0.95):
        interval = ConformalInterval(coverage=nominal).fit(calibration)
        lower, upper = interval.interval(heldout_predicted)
        assert abs(coverage(lower, upper, heldout_truth) - nominal) < 0.03
        # the half-width is the normal quantile of |N(0.5, 4)| within sampling error
        assert interval.half_width() == pytest.approx(np.quantile(np.abs(rng.normal(0.5, 4.0, 200_000)), nominal), rel=0.06)


def test_the_finite_sample_correction_gives_exact_expected_coverage() -> None:
    # n = 19, 90 %: rank ⌈20 · 0.9⌉ = 18 of 19, expected coverage exactly 18/20 = 0.9; an uncorrected
    # empirical 90 % quantile (np.quantile) covers only about 0.86 on average
    rng = np.random.default_rng(1)
    hits, naive_hits = [], []
    for _ in range(4000):
        residuals = rng.normal(0, 1, 20)
        interval = ConformalInterval(0.9).fit(residuals[:19])
        hits.append(abs(residuals[19]) <= interval.half_width())
        naive_hits.append(abs(residuals[19]) <= np.quantile(np.abs(residuals[:19]), 0.9))
    assert np.mean(hits) == pytest.approx(0.9, abs=0.015)
    assert np.mean(naive_hits) < 0.88
    # the rank itself, by hand
    scores = np.arange(1.0, 20.0)
    assert ConformalInterval(0.9).fit(scores).half_width() == 18.0
    assert ConformalInterval(0.9).fit(scores[:9]).half_width() == 9.0  # ⌈10 · 0.9⌉ = 9 of 9
    assert math.isinf(ConformalInterval(0.9).fit(scores[:8]).half_width())  # too few sessions: no finite interval


def test_normalized_intervals_follow_the_members_disagreement() -> None:
    # errors proportional to the members' SD (so a small ε): normalized intervals cover 90 % in the
    # calm and the noisy half alike; absolute ones over-cover the calm half, under-cover the noisy one
    rng = np.random.default_rng(2)
    sd = rng.choice([0.5, 3.0], 4000)
    residuals = rng.normal(0, 1, 4000) * 2 * sd
    normalized = ConformalInterval(0.9, epsilon=0.01).fit(residuals[:2000], member_sd=sd[:2000])
    absolute = ConformalInterval(0.9).fit(residuals[:2000])
    truth = np.full(2000, 70.0)
    predicted = truth + residuals[2000:]
    low, high = normalized.interval(predicted, member_sd=sd[2000:])
    alow, ahigh = absolute.interval(predicted)
    for value in (0.5, 3.0):
        rows = sd[2000:] == value
        assert abs(coverage(low[rows], high[rows], truth[rows]) - 0.9) < 0.04
    assert coverage(alow[sd[2000:] == 3.0], ahigh[sd[2000:] == 3.0], truth[sd[2000:] == 3.0]) < 0.85
    with pytest.raises(ValueError, match="member_sd"):
        normalized.interval(predicted)
    # the default ε (the median calibration SD) keeps a constant part: marginal coverage still holds
    default = ConformalInterval(0.9).fit(residuals[:2000], member_sd=sd[:2000])
    assert default.to_dict()["fitted_epsilon"] == np.median(sd[:2000])
    assert abs(coverage(*default.interval(predicted, member_sd=sd[2000:]), truth) - 0.9) < 0.03


def test_additive_widening_never_narrows_and_keeps_coverage() -> None:
    rng = np.random.default_rng(3)
    interval = ConformalInterval(0.9).fit(rng.normal(0, 3, 1000))
    truth = rng.uniform(60, 90, 1000)
    predicted = truth + rng.normal(0, 3, 1000)
    sd = rng.uniform(0, 2, 1000)
    low, high = interval.interval(predicted)
    wide_low, wide_high = interval.interval(predicted, member_sd=sd)
    assert np.all(wide_low <= low) and np.all(wide_high >= high)
    np.testing.assert_allclose((wide_high - wide_low) / 2, np.sqrt(interval.half_width() ** 2 + sd**2))
    assert coverage(wide_low, wide_high, truth) >= coverage(low, high, truth) >= 0.87
    np.testing.assert_array_equal(interval.interval(predicted, member_sd=0.0)[0], low)


def test_conformal_round_trips_through_plain_floats_and_changes_coverage() -> None:
    import yaml

    rng = np.random.default_rng(4)
    interval = ConformalInterval(0.9).fit(rng.normal(0, 3, 100), member_sd=rng.uniform(0.5, 1.5, 100))
    stored = yaml.safe_load(yaml.safe_dump(interval.to_dict()))  # plain YAML: floats and a bool
    again = ConformalInterval.from_dict(stored)
    sd = np.array([0.2, 1.0, 3.0])
    for level in (0.8, 0.9):
        np.testing.assert_array_equal(again.interval([70.0, 75.0, 80.0], sd, coverage=level)[1], interval.interval([70.0, 75.0, 80.0], sd, coverage=level)[1])
    assert again.half_width(sd, coverage=0.8)[1] < again.half_width(sd)[1]
    with pytest.raises(RuntimeError, match="not fitted"):
        ConformalInterval().interval([70.0])
    with pytest.raises(ValueError, match="coverage"):
        ConformalInterval(coverage=1.5)


def test_session_residuals_take_one_residual_per_session() -> None:
    predictions = _cohort(subjects=4, visits=2, repeats=3, seed=5)
    scan = session_residuals(predictions)
    session = session_residuals(predictions, level="session")
    assert len(scan) == len(session) == predictions["session_id"].nunique() == 8
    first = predictions[predictions["scan_id"].str.endswith("mpr-1")].set_index("session_id")
    np.testing.assert_allclose(scan.set_index("session_id")["residual"], (first["brain_age"] - first["age"]).loc[scan["session_id"]])
    means = predictions.assign(r=predictions["brain_age"] - predictions["age"]).groupby("session_id")["r"].mean()
    np.testing.assert_allclose(session.set_index("session_id")["residual"], means.loc[session["session_id"]])
    with_sd = session_residuals(predictions.assign(sd=1.5), sd_column="sd")
    assert (with_sd["member_sd"] == 1.5).all()


def test_coverage_counts_only_known_truth() -> None:
    assert coverage([0, 0, 0, 0], [1, 1, 1, 1], [0.5, 1.0, 2.0, np.nan]) == pytest.approx(2 / 3)
    assert math.isnan(coverage([0.0], [1.0], [np.nan]))
    with pytest.raises(ValueError, match="length"):
        coverage([0, 0], [1], [0])


# --- pose ----------------------------------------------------------------------------------------


def _head(shape: tuple[int, int, int] = (40, 44, 36), zooms: tuple[float, float, float] = (2.0, 2.0, 2.5)) -> nib.Nifti1Image:
    """A smooth, off-centre, asymmetric int16 'head' on an anisotropic LAS grid with an offset origin."""
    grid = np.stack(np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij"))
    blob = np.exp(-((grid[0] - 0.1) ** 2 / 0.06 + (grid[1] + 0.05) ** 2 / 0.09 + (grid[2] - 0.1) ** 2 / 0.05))
    blob += 0.5 * np.exp(-((grid[0] + 0.2) ** 2 + (grid[1] - 0.2) ** 2 + grid[2] ** 2) / 0.02)
    affine = np.diag([-zooms[0], zooms[1], zooms[2], 1.0])
    affine[:3, 3] = (40.0, -50.0, -30.0)
    return nib.Nifti1Image(np.rint(1000 * blob).astype(np.int16), affine)


def test_pose_matrix_and_inverse() -> None:
    pose = Pose((10.0, -5.0, 15.0), (3.0, -15.0, 7.0))
    centre = np.array([5.0, -20.0, 10.0])
    np.testing.assert_allclose(pose.matrix(centre) @ pose.inverse().matrix(centre), np.eye(4), atol=1e-12)
    np.testing.assert_allclose(pose.matrix(centre) @ np.append(centre, 1), np.append(centre + np.array([3.0, -15.0, 7.0]), 1))
    rotation = pose.matrix(centre)[:3, :3]
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(rotation) == pytest.approx(1.0)
    poses = random_poses(20, 15, 15, seed=0)
    assert poses[0].is_identity and not any(p.is_identity for p in poses[1:])
    assert max(max(map(abs, p.rotation_deg)) for p in poses) <= 15 and max(max(map(abs, p.shift_mm)) for p in poses) <= 15
    assert max(max(map(abs, p.rotation_deg)) for p in poses) > 10  # the range is used, not just its middle


def test_repose_header_changes_the_affine_not_the_voxels(tmp_path: Path) -> None:
    image = _head()
    pose = Pose((12.0, -8.0, 5.0), (10.0, -4.0, 15.0))
    moved = repose_header(image, pose)
    np.testing.assert_array_equal(np.asanyarray(moved.dataobj), np.asanyarray(image.dataobj))
    assert np.asanyarray(moved.dataobj).dtype == np.int16
    assert not np.allclose(moved.affine, image.affine)
    np.testing.assert_allclose(np.linalg.svd(moved.affine[:3, :3])[1], sorted((2.0, 2.0, 2.5), reverse=True))  # zooms kept
    centre = (image.affine @ np.append((np.array(image.shape) - 1) / 2, 1))[:3]
    back = repose_header(moved, pose.inverse(), centre=centre)  # the grid's centre moved with the head
    np.testing.assert_allclose(back.affine, image.affine, atol=1e-4)  # the qform is stored in float32
    # written and read back, both forms carry the new affine (the seed pipeline reads the qform)
    written = write_poses(_save(image, tmp_path / "head.nii.gz"), [Pose(), pose], tmp_path / "posed", mode="header")
    assert [p.name for p in written] == ["head_header_pose00.nii.gz", "head_header_pose01.nii.gz"]
    loaded = nib.load(written[1])
    np.testing.assert_allclose(loaded.get_qform(), moved.affine, atol=1e-4)
    np.testing.assert_allclose(loaded.get_sform(), moved.affine, atol=1e-4)
    np.testing.assert_array_equal(np.asanyarray(loaded.dataobj), np.asanyarray(image.dataobj))
    np.testing.assert_allclose(nib.load(written[0]).affine, image.affine, atol=1e-4)


def test_repose_voxels_keeps_the_grid_and_inverts(tmp_path: Path) -> None:
    image = _head()
    data = np.asanyarray(image.dataobj).astype(float)
    pose = Pose((10.0, -6.0, 8.0), (6.0, -5.0, 4.0))
    moved = repose_voxels(image, pose, order=3)
    np.testing.assert_array_equal(moved.affine, image.affine)
    assert moved.shape == image.shape and np.asanyarray(moved.dataobj).dtype == np.int16
    assert np.abs(np.asanyarray(moved.dataobj) - data).max() > 200  # it moved
    back = np.asanyarray(repose_voxels(moved, pose.inverse(), order=3).dataobj).astype(float)
    inner = (slice(8, -8),) * 3
    assert np.abs(back - data)[inner].max() < 0.02 * data.max()
    identity = repose_voxels(image, Pose())
    np.testing.assert_array_equal(np.asanyarray(identity.dataobj), np.asanyarray(image.dataobj))


def test_both_ways_of_reposing_put_the_head_in_the_same_place() -> None:
    # the header-moved image resampled onto the original grid is the voxel-moved image
    image = _head()
    pose = Pose((0.0, 14.0, -9.0), (-12.0, 8.0, 3.0))
    by_voxels = np.asanyarray(repose_voxels(image, pose, order=1).dataobj).astype(float)
    by_header = resample_from_to(repose_header(image, pose), (image.shape, image.affine), order=1, cval=0.0)
    np.testing.assert_allclose(by_header.get_fdata(), by_voxels, atol=1.0)  # int16 rounding only

    # and the head's centre of mass moved by the pose in world space
    def centre(volume: np.ndarray) -> np.ndarray:
        from scipy import ndimage

        return (image.affine @ np.append(ndimage.center_of_mass(volume), 1))[:3]

    original = centre(np.asanyarray(image.dataobj).astype(float))
    grid_centre = (image.affine @ np.append((np.array(image.shape) - 1) / 2, 1))[:3]
    expected = (pose.matrix(grid_centre) @ np.append(original, 1))[:3]
    np.testing.assert_allclose(centre(by_voxels), expected, atol=0.3)


def test_write_poses_reads_analyze_pairs(tmp_path: Path) -> None:
    head = _head()
    pair = tmp_path / "mpr-1.nifti.hdr"
    nib.Nifti1Pair(np.asanyarray(head.dataobj)[..., None], head.affine).to_filename(str(pair))  # OASIS-2 style, 4-D
    files = write_poses(pair, random_poses(3, seed=1), tmp_path / "out", mode="voxels")
    assert [f.name for f in files] == [f"mpr-1_voxels_pose{k:02d}.nii.gz" for k in range(3)]
    first = nib.load(files[0])
    assert first.shape == head.shape
    np.testing.assert_array_equal(np.asanyarray(first.dataobj), np.asanyarray(head.dataobj))
    with pytest.raises(ValueError, match="mode"):
        write_poses(pair, [Pose()], tmp_path, mode="both")


def _save(image: nib.Nifti1Image, path: Path) -> Path:
    image.to_filename(str(path))
    return path


# --- documentation -------------------------------------------------------------------------------


def test_every_public_name_has_an_example_in_api_md() -> None:
    code = "\n".join(re.findall(r"^```python\n(.*?)^```", (ROOT / "docs" / "api.md").read_text(encoding="utf-8"), re.MULTILINE | re.DOTALL))
    for module in (reliability, retest, conformal):
        missing = [name for name in module.__all__ if not re.search(rf"\b{name}\b", code)]
        assert not missing, f"docs/api.md has no example of {module.__name__}.{', '.join(missing)}"


def test_the_spaghetti_plot_draws_each_persons_change_on_the_identity_when_brain_age_follows_age() -> None:
    from brainage.report import spaghetti_figure

    predictions = _cohort(subjects=4, visits=3, repeats=2, scan_sd=0.0)
    predictions["mr_delay"] = (predictions["session_id"].str[-1].astype(int) - 1) * 365.25 * 2.5  # visits 2.5 years apart
    _absolute, change = spaghetti_figure(predictions).axes
    people = [line for line in change.get_lines() if len(line.get_xdata()) == 3]
    assert len(people) == 4
    for line in people:
        np.testing.assert_allclose(line.get_xdata(), [0.0, 2.5, 5.0])  # the delays, not the 2-year age steps
        np.testing.assert_allclose(line.get_ydata(), [0.0, 2.0, 4.0])  # brain age moved 2 years a visit
    assert any("identity slope" in text.get_text() for text in change.get_legend().get_texts())
