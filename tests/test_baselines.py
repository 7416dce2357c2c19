"""Baseline estimators: mean, tabular ridge, voxel PCA-ridge, and volume down-sampling."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone

from brainage.baselines import downsample_volumes, mean_baseline, tabular_baseline, voxel_baseline


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


def test_voxel_baseline_caps_components_at_the_training_set_size() -> None:
    volumes, age = synthetic_volumes(12, seed=0)
    model = clone(voxel_baseline(n_components=500)).fit(downsample_volumes(volumes, 4), age)
    assert model.named_steps["pca"].pca_.n_components_ == 12
    assert model.predict(downsample_volumes(volumes[:3], 4)).shape == (3,)
