"""Baseline estimators (mean, tabular ridge, voxel PCA-ridge, Gaussian process), their tuning by an
inner subject-grouped cross-validation, volume down-sampling, and the out-of-fold baselines of a cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.linear_model import Ridge
from sklearn.pipeline import Pipeline

from brainage.baselines import (
    ALPHAS,
    BASELINES,
    CappedPCA,
    baseline_predictions,
    downsample_volumes,
    gpr_baseline,
    inner_cv,
    mean_baseline,
    tabular_baseline,
    tuned_tabular_baseline,
    tuned_voxel_baseline,
    voxel_baseline,
)


def tabular_frame(n: int, seed: int) -> pd.DataFrame:
    """Whole-brain volume falls with age; men have a larger head."""
    rng = np.random.default_rng(seed)
    age = rng.uniform(60, 95, n)
    sex = rng.choice(["M", "F"], n)
    etiv = np.where(sex == "M", 1600.0, 1400.0) + rng.normal(0, 80, n)
    nwbv = 0.85 - 0.0025 * (age - 60) + rng.normal(0, 0.01, n)
    return pd.DataFrame({"age": age, "sex": sex, "etiv": etiv, "nwbv": nwbv})


def test_mean_baseline_predicts_the_training_mean() -> None:
    model = mean_baseline().fit(np.zeros((3, 1)), [60.0, 70.0, 95.0])
    assert model.predict(np.zeros((2, 1))).tolist() == [75.0, 75.0]


def test_tabular_baseline_learns_age_from_brain_volume() -> None:
    train, test = tabular_frame(200, seed=0), tabular_frame(100, seed=1)
    model = tabular_baseline().fit(train, train["age"])
    predicted = model.predict(test)
    mae = np.abs(predicted - test["age"]).mean()
    assert mae < 0.5 * np.abs(test["age"] - train["age"].mean()).mean()


def test_tabular_baseline_scales_with_training_rows_only() -> None:
    train, test = tabular_frame(100, seed=0), tabular_frame(20, seed=1)
    model = tabular_baseline().fit(train, train["age"])
    scaler = model.named_steps["columns"].named_transformers_["numeric"][-1]
    assert scaler.mean_ == pytest.approx(train[["nwbv", "etiv"]].mean().to_numpy())
    # a prediction depends on its own row and the fitted model only, not on other test rows
    outliers = test.assign(etiv=test["etiv"] * 10, nwbv=test["nwbv"] / 2)
    alone = model.predict(test.iloc[:5])
    among_outliers = model.predict(pd.concat([test.iloc[:5], outliers]))[:5]
    assert np.array_equal(alone, among_outliers)


def test_tabular_baseline_handles_missing_values_unseen_categories_and_column_subsets() -> None:
    train, test = tabular_frame(60, seed=0), tabular_frame(4, seed=1)
    train.loc[:5, "nwbv"] = np.nan
    test.loc[0, "sex"] = "unknown"
    predicted = tabular_baseline().fit(train, train["age"]).predict(test)
    assert np.isfinite(predicted).all()
    numeric_only = tabular_baseline(numeric=["nwbv"], categorical=[]).fit(train.drop(columns=["sex", "etiv"]), train["age"])
    assert np.isfinite(numeric_only.predict(test[["nwbv"]])).all()
    with pytest.raises(ValueError, match="at least one column"):
        tabular_baseline(numeric=[], categorical=[])


def test_downsample_volumes_takes_block_means_and_crops_partial_blocks() -> None:
    volumes = np.arange(2 * 5 * 4 * 4, dtype=float).reshape(2, 5, 4, 4)
    features = downsample_volumes(volumes, factor=2)
    assert features.shape == (2, 2 * 2 * 2) and features.dtype == np.float32
    assert features[0, 0] == pytest.approx(volumes[0, :2, :2, :2].mean())
    assert features[1, -1] == pytest.approx(volumes[1, 2:4, 2:4, 2:4].mean())
    assert np.array_equal(downsample_volumes(volumes, 1), volumes.reshape(2, -1).astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        downsample_volumes(volumes[0], 2)
    with pytest.raises(ValueError, match="factor"):
        downsample_volumes(volumes, 5)


def synthetic_volumes(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """16³ noise volumes whose central 'ventricle' darkens with age."""
    rng = np.random.default_rng(seed)
    age = rng.uniform(60, 95, n)
    volumes = rng.normal(0, 1, (n, 16, 16, 16))
    volumes[:, 6:10, 6:10, 6:10] -= ((age - 60) / 10)[:, None, None, None]
    return volumes, age


def test_voxel_baseline_predicts_age_from_downsampled_volumes() -> None:
    train_volumes, train_age = synthetic_volumes(80, seed=0)
    test_volumes, test_age = synthetic_volumes(40, seed=1)
    model = voxel_baseline(n_components=20).fit(downsample_volumes(train_volumes, 2), train_age)
    predicted = model.predict(downsample_volumes(test_volumes, 2))
    assert np.abs(predicted - test_age).mean() < 0.5 * np.abs(test_age - train_age.mean()).mean()


def test_voxel_baseline_caps_components_one_below_the_training_set_size() -> None:
    volumes, age = synthetic_volumes(12, seed=0)
    model = clone(voxel_baseline(n_components=500)).fit(downsample_volumes(volumes, 4), age)
    assert model.named_steps["pca"].pca_.n_components_ == 11  # 12 centred rows span 11 dimensions
    assert model.predict(downsample_volumes(volumes[:3], 4)).shape == (3,)


def signal_features(subjects: int, scans: int, seed: int, label_noise: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """8³ noise volumes, flattened, whose central 4³ voxels brighten linearly with a subject's brain
    age; the age to predict is that brain age plus ``label_noise`` (SD, years). ``scans`` scans per
    subject share its ages; returns features, ages and subject ids."""
    rng = np.random.default_rng(seed)
    brain_age = rng.uniform(60, 95, subjects)
    age = np.repeat(brain_age + rng.normal(0, label_noise, subjects), scans)
    groups = np.repeat([f"{seed}-{i}" for i in range(subjects)], scans)
    volumes = rng.normal(0, 1, (subjects * scans, 8, 8, 8))
    volumes[:, 2:6, 2:6, 2:6] += np.repeat((brain_age - 77.5) / 20, scans)[:, None, None, None]
    return volumes.reshape(len(age), -1), age, groups


def test_inner_cross_validation_keeps_each_subject_on_one_side() -> None:
    features, age, groups = signal_features(30, 3, seed=0, label_noise=3)
    search = tuned_voxel_baseline(inner_cv(groups), max_components=10).fit(features, age, groups=groups)
    assert search.n_splits_ == 5
    splits = list(search.cv.split(features, age, groups))
    for inner_train, inner_val in splits:
        assert not set(groups[inner_train]) & set(groups[inner_val])
    assert sorted(np.concatenate([val for _, val in splits]).tolist()) == list(range(len(age)))
    assert inner_cv(groups[:6]).n_splits == 2  # fewer subjects than inner folds: one fold per subject
    with pytest.raises(ValueError, match="two subjects"):
        inner_cv(["a", "a"])
    with pytest.raises(ValueError, match="groups"):
        tuned_voxel_baseline(inner_cv(groups), max_components=10).fit(features, age)  # ungrouped fit is refused


def sparse_signal(subjects: int, scans: int, seed: int, label_noise: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """4³ noise volumes, flattened, four of whose voxels set a subject's brain age linearly (SD 8 y);
    the age to predict is that plus ``label_noise`` (SD, years). A subject's ``scans`` share its
    volume up to scan noise; returns features, ages and subject ids."""
    rng = np.random.default_rng(seed)
    base = rng.normal(0, 1, (subjects, 4, 4, 4))
    brain_age = 77.5 + 4 * base[:, 1:3, 1:3, 1].sum(axis=(1, 2))
    age = np.repeat(brain_age + rng.normal(0, label_noise, subjects), scans)
    volumes = np.repeat(base, scans, axis=0) + rng.normal(0, 0.3, (subjects * scans, 4, 4, 4))
    groups = np.repeat([f"{seed}-{i}" for i in range(subjects)], scans)
    return volumes.reshape(len(age), -1), age, groups


def test_tuned_voxel_ridge_beats_the_untuned_ridge_on_unscaled_components() -> None:
    features, age, groups = sparse_signal(50, 2, seed=0, label_noise=5)
    test_features, test_age, _ = sparse_signal(300, 1, seed=1, label_noise=5)
    untuned = Pipeline([("pca", CappedPCA(100)), ("ridge", Ridge(alpha=1.0))]).fit(features, age)  # the former voxel baseline
    tuned = tuned_voxel_baseline(inner_cv(groups), max_components=100).fit(features, age, groups=groups)
    untuned_mae = np.abs(untuned.predict(test_features) - test_age).mean()
    tuned_mae = np.abs(tuned.predict(test_features) - test_age).mean()
    assert untuned_mae > np.abs(test_age - age.mean()).mean()  # the default is clearly wrong here: it fits the label noise
    assert tuned_mae < 0.9 * untuned_mae
    assert tuned.best_params_["ridge__alpha"] >= 10


def test_tuned_tabular_ridge_chooses_a_large_alpha_when_the_columns_carry_no_age() -> None:
    train = tabular_frame(120, seed=0)
    train["nwbv"] = np.random.default_rng(2).normal(0.75, 0.02, len(train))  # no longer related to age
    groups = np.repeat(np.arange(60), 2)
    search = tuned_tabular_baseline(inner_cv(groups)).fit(train, train["age"], groups=groups)
    assert search.best_params_["ridge__alpha"] > 1.0
    assert search.best_params_["ridge__alpha"] in ALPHAS


def test_gpr_baseline_predicts_finite_ages_for_every_scan() -> None:
    features, age, _ = signal_features(40, 2, seed=0, label_noise=2)
    test_features, test_age, _ = signal_features(25, 1, seed=1, label_noise=2)
    model = gpr_baseline(n_components=10, pca_components=50).fit(features, age)
    predicted = model.predict(test_features)
    assert predicted.shape == (25,) and np.isfinite(predicted).all()
    assert np.abs(predicted - test_age).mean() < 0.6 * np.abs(test_age - age.mean()).mean()
    assert model.named_steps["pca"].pca_.n_components_ == 50


def test_baselines_of_a_cache_are_out_of_fold_and_never_fitted_on_test_people(tiny_cache_seed: Path) -> None:
    from brainage.data import make_folds
    from brainage.preprocess import load_cache
    from brainage.training import TrainConfig

    cache = load_cache(tiny_cache_seed)
    manifest = cache.manifest
    folds = make_folds(manifest, folds=3, seed=0)
    record: dict = {}
    predictions = baseline_predictions(cache, folds, TrainConfig(voxel_components=8), record)
    assert sorted(predictions["scan_id"]) == sorted(manifest["scan_id"])
    assert set(BASELINES) <= set(predictions.columns) and np.isfinite(predictions[list(BASELINES)].to_numpy(float)).all()
    assert record["components"] == [8] and len(record["folds"]) == len(folds)
    subjects = manifest["subject_id"].astype(str).to_numpy()
    for fold, entry in zip(folds, record["folds"], strict=True):
        test_people = set(subjects[fold.test])
        assert not set(entry["subjects"]) & test_people
        assert set(entry["subjects"]) == set(subjects[np.concatenate([fold.train, fold.val])])
        assert set(entry["chosen"]) == set(BASELINES)
        assert entry["chosen"]["ridge_voxels"]["alpha"] in ALPHAS and entry["chosen"]["ridge_voxels"]["n_components"] <= 8
        assert "RBF" in entry["chosen"]["gpr_voxels"]["kernel"]
        tested = predictions.set_index("scan_id").loc[manifest["scan_id"].iloc[fold.test], "mean_age"]
        assert tested.to_numpy() == pytest.approx(manifest["age"].iloc[np.concatenate([fold.train, fold.val])].mean())
