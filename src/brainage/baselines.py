"""Reference predictors fitted on the very same folds as the network (scikit-learn estimators).

- :func:`mean_baseline`: always the mean training age;
- :func:`tabular_baseline`: ridge on the spreadsheet's whole-brain measures (nWBV, eTIV, sex);
- :func:`voxel_baseline`: PCA then ridge on down-sampled preprocessed volumes
  (see :func:`downsample_volumes`).

Every imputation, scaling and projection is a pipeline step, so it is fitted on training rows
only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.decomposition import PCA
from sklearn.dummy import DummyRegressor
from sklearn.impute import SimpleImputer
from sklearn.linear_model import Ridge
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

TABULAR_NUMERIC = ("nwbv", "etiv")
TABULAR_CATEGORICAL = ("sex",)


def mean_baseline() -> DummyRegressor:
    """Predicts the mean training age for every scan: the floor any model must clear."""
    return DummyRegressor(strategy="mean")


def tabular_baseline(
    numeric: Sequence[str] = TABULAR_NUMERIC,
    categorical: Sequence[str] = TABULAR_CATEGORICAL,
    alpha: float = 1.0,
) -> Pipeline:
    """Ridge regression on a DataFrame's ``numeric`` (median-imputed, standardised) and
    ``categorical`` (one-hot) columns; by default nWBV, eTIV and sex.

    Pass only the columns a cohort has; at least one is needed.
    """
    transformers = []
    if numeric:
        numeric_steps = make_pipeline(SimpleImputer(strategy="median"), StandardScaler())
        transformers.append(("numeric", numeric_steps, list(numeric)))
    if categorical:
        categorical_steps = make_pipeline(SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore"))
        transformers.append(("categorical", categorical_steps, list(categorical)))
    if not transformers:
        raise ValueError("tabular_baseline needs at least one column")
    return Pipeline([("columns", ColumnTransformer(transformers)), ("ridge", Ridge(alpha=alpha))])


class CappedPCA(TransformerMixin, BaseEstimator):
    """PCA keeping ``n_components`` components, or as many as the training data allow."""

    def __init__(self, n_components: int = 100, random_state: int | None = 0) -> None:
        self.n_components = n_components
        self.random_state = random_state

    def fit(self, X: np.ndarray, y: object = None) -> CappedPCA:
        n_components = min(self.n_components, X.shape[0], X.shape[1])
        self.pca_ = PCA(n_components=n_components, random_state=self.random_state).fit(X)
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        return self.pca_.transform(X)


def voxel_baseline(n_components: int = 100, alpha: float = 1.0) -> Pipeline:
    """PCA (``n_components``, capped by the training set size) then ridge, on flattened volumes."""
    return Pipeline([("pca", CappedPCA(n_components)), ("ridge", Ridge(alpha=alpha))])


def downsample_volumes(volumes: np.ndarray, factor: int) -> np.ndarray:
    """Block means over ``factor``³ voxels, flattened: ``(N, X, Y, Z) -> (N, F)`` float32.

    Edges that do not fill a whole block are cropped.
    """
    volumes = np.asarray(volumes)
    if volumes.ndim != 4:
        raise ValueError(f"expected volumes of shape (N, X, Y, Z), got {volumes.shape}")
    if factor < 1 or min(volumes.shape[1:]) < factor:
        raise ValueError(f"factor must be between 1 and the smallest volume side, got {factor}")
    n = volumes.shape[0]
    x, y, z = (side // factor for side in volumes.shape[1:])
    cropped = volumes[:, : x * factor, : y * factor, : z * factor].astype(np.float32, copy=False)
    blocks = cropped.reshape(n, x, factor, y, factor, z, factor).mean(axis=(2, 4, 6))
    return blocks.reshape(n, -1)
