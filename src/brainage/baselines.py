"""Reference predictors fitted on the very same folds as the network, each at its best: every
hyper-parameter is chosen on the fold's training side only, by an inner cross-validation grouped by
subject (:class:`~sklearn.model_selection.GroupKFold` inside
:class:`~sklearn.model_selection.GridSearchCV`), or by marginal likelihood for the Gaussian process.

- :func:`mean_baseline`: always the mean training age (nothing to tune);
- :func:`tuned_tabular_baseline`: ridge on the spreadsheet's whole-brain measures (nWBV, eTIV, sex),
  alpha over :data:`ALPHAS`;
- :func:`tuned_voxel_baseline`: PCA of down-sampled volumes (see :func:`downsample_volumes`), the
  components standardised, then ridge; alpha over :data:`ALPHAS` and the number of components over
  :data:`COMPONENTS`;
- :func:`gpr_baseline`: Gaussian-process regression (constant × RBF + white noise) on the same
  standardised components, the method family of brainageR;
- :func:`baseline_predictions`: all of them, out of fold, with a record of what each chose and on whom.

Every imputation, scaling and projection is a pipeline step, so it is fitted on training rows only,
inner folds included.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.decomposition import PCA
from sklearn.dummy import DummyRegressor
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel
from sklearn.impute import SimpleImputer
from sklearn.linear_model import Ridge
from sklearn.model_selection import GridSearchCV, GroupKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

if TYPE_CHECKING:
    from brainage.data import Fold
    from brainage.preprocess import PreparedCache
    from brainage.training.config import TrainConfig

__all__ = [
    "BASELINES", "CappedPCA", "LeadingColumns", "baseline_predictions", "downsample_volumes", "gpr_baseline", "inner_cv", "mean_baseline",
    "tabular_baseline", "tuned_tabular_baseline", "tuned_voxel_baseline", "voxel_baseline",
]  # fmt: skip  # names grouped in rows

TABULAR_NUMERIC = ("nwbv", "etiv")
TABULAR_CATEGORICAL = ("sex",)
#: Ridge penalties searched by the inner cross-validation (both ridges).
ALPHAS = tuple(float(alpha) for alpha in np.logspace(-3, 4, 15))
#: Numbers of principal components searched for the voxel ridge (those below the configured maximum, and the maximum).
COMPONENTS = (25, 50, 100)
#: Inner folds (by subject) on each fold's training side; fewer when it has fewer subjects.
INNER_FOLDS = 5
#: Extra starts of the Gaussian process's marginal-likelihood optimiser (sampled with a fixed seed).
GPR_RESTARTS = 2
#: Columns of the baselines in predictions.csv, and their names in the summary.
BASELINES = {"mean_age": "mean age", "ridge_tabular": "ridge nWBV+eTIV+sex", "ridge_voxels": "ridge voxels (PCA)", "gpr_voxels": "GPR voxels (PCA)"}
#: What every inner search maximises: the headline metric, negated.
SCORING = "neg_mean_absolute_error"


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
    """PCA keeping ``n_components`` components, or as many as the training data allow: one fewer
    than its rows (centred rows span one dimension less; a further component is rounding noise that
    a scaler after it would blow up to unit variance) and no more than its columns."""

    def __init__(self, n_components: int = 100, random_state: int | None = 0) -> None:
        self.n_components = n_components
        self.random_state = random_state

    def fit(self, X: np.ndarray, y: object = None) -> CappedPCA:
        n_components = max(1, min(self.n_components, X.shape[0] - 1, X.shape[1]))
        self.pca_ = PCA(n_components=n_components, random_state=self.random_state).fit(X)
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        return self.pca_.transform(X)


class LeadingColumns(TransformerMixin, BaseEstimator):
    """Keeps the first ``n`` columns (all when there are fewer). After a PCA these are its ``n``
    leading components, so the number of components is tuned over one PCA fit per training set
    (cached by the pipeline) instead of one per candidate."""

    def __init__(self, n: int = 100) -> None:
        self.n = n

    def fit(self, X: np.ndarray, y: object = None) -> LeadingColumns:
        self.n_features_in_ = np.asarray(X).shape[1]
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(X)[:, : self.n]


def voxel_baseline(n_components: int = 100, alpha: float = 1.0, memory: str | None = None) -> Pipeline:
    """PCA of ``n_components`` (capped as in :class:`CappedPCA`), the components standardised, then
    ridge with ``alpha``, on flattened volumes. Setting ``components__n`` keeps fewer leading
    components; with ``memory`` (a folder) the pipeline caches the PCA, so that is not refitted."""
    steps = [("pca", CappedPCA(n_components)), ("scale", StandardScaler()), ("components", LeadingColumns(n_components)), ("ridge", Ridge(alpha=alpha))]
    return Pipeline(steps, memory=memory)


def inner_cv(groups: Sequence[object] | np.ndarray) -> GroupKFold:
    """The inner splitter of a training side whose rows belong to ``groups`` (subject ids):
    :data:`INNER_FOLDS` folds by subject, fewer when there are fewer subjects."""
    n_groups = len(np.unique(np.asarray(groups, dtype=str)))
    if n_groups < 2:
        raise ValueError(f"an inner cross-validation by subject needs at least two subjects, got {n_groups}")
    return GroupKFold(n_splits=min(INNER_FOLDS, n_groups))


def _search(estimator: BaseEstimator, grid: dict[str, Sequence[Any]], cv: GroupKFold) -> GridSearchCV:
    return GridSearchCV(estimator, grid, cv=cv, scoring=SCORING, error_score="raise")


def tuned_tabular_baseline(
    cv: GroupKFold,
    numeric: Sequence[str] = TABULAR_NUMERIC,
    categorical: Sequence[str] = TABULAR_CATEGORICAL,
    alphas: Sequence[float] = ALPHAS,
) -> GridSearchCV:
    """:func:`tabular_baseline` with alpha chosen over ``alphas`` by ``cv``; fit it with
    ``groups=`` the rows' subject ids."""
    return _search(tabular_baseline(numeric, categorical), {"ridge__alpha": list(alphas)}, cv)


def component_grid(max_components: int, components: Sequence[int] = COMPONENTS) -> list[int]:
    """The numbers of components searched: those of ``components`` below ``max_components``, and it."""
    if max_components < 1:
        raise ValueError(f"max_components must be at least 1, got {max_components}")
    return sorted({c for c in components if c < max_components} | {max_components})


def tuned_voxel_baseline(
    cv: GroupKFold,
    max_components: int = 100,
    alphas: Sequence[float] = ALPHAS,
    components: Sequence[int] = COMPONENTS,
    memory: str | None = None,
) -> GridSearchCV:
    """:func:`voxel_baseline` with alpha over ``alphas`` and the number of components over
    :func:`component_grid` chosen by ``cv``; fit it with ``groups=`` the rows' subject ids. One PCA of
    ``max_components`` per inner training set serves every candidate when ``memory`` is given."""
    grid: dict[str, Sequence[Any]] = {"components__n": component_grid(max_components, components), "ridge__alpha": list(alphas)}
    return _search(voxel_baseline(max_components, memory=memory), grid, cv)


def gpr_baseline(
    n_components: int, pca_components: int | None = None, restarts: int = GPR_RESTARTS, random_state: int = 0, memory: str | None = None
) -> Pipeline:
    """The ``n_components`` leading components of a PCA of ``pca_components`` (default
    ``n_components``; capped as in :class:`CappedPCA`), standardised, then
    :class:`~sklearn.gaussian_process.GaussianProcessRegressor` with a constant × RBF + white-noise
    kernel on normalised age; the kernel's amplitude, length scale and noise maximise the marginal
    likelihood of the training rows (``restarts`` extra starts drawn with ``random_state``)."""
    kernel = ConstantKernel(1.0, (1e-3, 1e5)) * RBF(length_scale=np.sqrt(n_components), length_scale_bounds=(1e-2, 1e4)) + WhiteKernel(0.1, (1e-5, 1e1))
    gpr = GaussianProcessRegressor(kernel=kernel, normalize_y=True, n_restarts_optimizer=restarts, random_state=random_state)
    pca = CappedPCA(max(n_components, pca_components or 0))
    steps = [("pca", pca), ("scale", StandardScaler()), ("components", LeadingColumns(n_components)), ("gpr", gpr)]
    return Pipeline(steps, memory=memory)


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


def cache_features(cache: PreparedCache, factor: int, chunk: int = 32) -> np.ndarray:
    """Every cache volume down-sampled by ``factor`` (:func:`downsample_volumes`), ``chunk`` volumes
    in memory at a time: ``(N, F)`` float32 in manifest order."""
    n = len(cache.manifest)
    chunks = [downsample_volumes(np.stack([cache.volume(i) for i in range(start, min(start + chunk, n))]), factor) for start in range(0, n, chunk)]
    return np.concatenate(chunks)


def _plain(value: Any) -> Any:
    """A NumPy scalar as a Python one, for YAML."""
    return value.item() if isinstance(value, np.generic) else value


def _chosen(search: GridSearchCV) -> dict[str, Any]:
    names = {"ridge__alpha": "alpha", "components__n": "n_components"}
    params = {names.get(name, name): _plain(value) for name, value in search.best_params_.items()}
    return {**params, "inner_mae": float(-search.best_score_)}


def _components_used(pipeline: Pipeline) -> int:
    """How many principal components a fitted voxel pipeline passes on (its PCA may hold fewer than asked)."""
    return int(min(pipeline.named_steps["components"].n, pipeline.named_steps["pca"].pca_.n_components_))


def baseline_predictions(cache: PreparedCache, folds: Sequence[Fold], config: TrainConfig, record: dict[str, Any] | None = None) -> pd.DataFrame:
    """Out-of-fold predictions of the baselines on the very same folds, each fitted and tuned on its
    fold's train + validation scans only: ``scan_id`` and one column per baseline (see
    :data:`BASELINES`; no ``ridge_tabular`` where the manifest has none of its columns).

    Volumes are down-sampled by ``config.voxel_downsample`` (default: to about 16 voxels a side);
    ``config.voxel_components`` is the most principal components tried. The Gaussian process uses
    as many components as the voxel ridge's inner cross-validation chose in the same fold: an inner
    search of its own would repeat its marginal-likelihood optimisation per candidate and inner fold.

    ``record``, when given, is filled with what was chosen and on whom: the grids, and per fold the
    subject ids every baseline was fitted on and each baseline's chosen hyper-parameters (plain
    values, ready for YAML).
    """
    manifest = cache.manifest
    ages = manifest["age"].to_numpy(dtype=float)
    subjects = manifest["subject_id"].astype(str).to_numpy()
    numeric = [c for c in TABULAR_NUMERIC if c in manifest and manifest[c].notna().any()]
    categorical = [c for c in TABULAR_CATEGORICAL if c in manifest and manifest[c].notna().any()]
    factor = config.voxel_downsample or max(1, round(min(cache.shape) / 16))
    voxels = cache_features(cache, factor)
    if record is not None:
        record.update(
            downsample=factor, features=int(voxels.shape[1]), alphas=list(ALPHAS), components=component_grid(config.voxel_components),
            tabular_columns=numeric + categorical, scoring=SCORING, gpr_restarts=GPR_RESTARTS, folds=[],
        )  # fmt: skip  # arguments grouped by meaning
    frames = []
    for fold in folds:
        with tempfile.TemporaryDirectory(prefix="brainage-baselines-") as memory:  # the PCA fits of this fold's inner CV
            fit = np.concatenate([fold.train, fold.val])
            groups = subjects[fit]
            cv = inner_cv(groups)
            out = pd.DataFrame({"scan_id": manifest["scan_id"].iloc[fold.test].to_numpy()})
            chosen: dict[str, dict[str, Any]] = {"mean_age": {}}
            out["mean_age"] = mean_baseline().fit(np.zeros((len(fit), 1)), ages[fit]).predict(np.zeros((len(fold.test), 1)))
            if numeric or categorical:
                tabular = tuned_tabular_baseline(cv, numeric, categorical).fit(manifest.iloc[fit], ages[fit], groups=groups)
                out["ridge_tabular"] = tabular.predict(manifest.iloc[fold.test])
                chosen["ridge_tabular"] = _chosen(tabular)
            ridge = tuned_voxel_baseline(cv, config.voxel_components, memory=memory).fit(voxels[fit], ages[fit], groups=groups)
            out["ridge_voxels"] = ridge.predict(voxels[fold.test])
            n_components = ridge.best_params_["components__n"]
            chosen["ridge_voxels"] = {**_chosen(ridge), "n_components": _components_used(ridge.best_estimator_)}
            gpr = gpr_baseline(n_components, config.voxel_components, memory=memory).fit(voxels[fit], ages[fit])
            out["gpr_voxels"] = gpr.predict(voxels[fold.test])
            fitted = gpr.named_steps["gpr"]
            chosen["gpr_voxels"] = {
                "n_components": _components_used(gpr),
                "kernel": str(fitted.kernel_),
                "log_marginal_likelihood": float(fitted.log_marginal_likelihood_value_),
            }
            frames.append(out)
            if record is not None:
                record["folds"].append(
                    {
                        "fold": int(fold.index),
                        "scans": len(fit),
                        "subjects": sorted(set(groups)),
                        "inner_cv": f"GroupKFold({cv.n_splits}) by subject_id",
                        "chosen": chosen,
                    }
                )
    return pd.concat(frames, ignore_index=True)
