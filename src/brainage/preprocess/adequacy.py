"""Can a brain age be read from this scan at all? Checks with one-line reasons.

A model trained on whole-head 3-D T1 scans of about 1 mm says nothing useful about a clinical slab
of thick slices, a crop of the brain's centre, a T2 image or a person outside its training ages:
it still outputs a number. These checks say why a scan is refused instead:

* from the header, before any work (:func:`header_reasons`): voxels no larger than
  ``max_voxel_mm`` along every axis (slice thickness and in-plane resolution) where the voxels are
  anisotropic (a 2-D acquisition of thick slices: the thickest side more than ``max_anisotropy``
  times the finest), and no larger than ``max_isotropic_mm`` where they are not (the project's
  own ``tiny`` test cohort has 4 × 4 × 5 mm voxels); and a field of view of at least
  ``min_field_of_view_mm`` along every axis (smaller cannot hold an adult brain);
* after registration (:func:`measure`, standard pipeline): the share of the template's brain that
  lies inside the scan's field of view (``min_brain_coverage``), T1-like contrast (white matter
  brighter than grey matter, by the template's tissue priors on the normalised volume,
  ``min_contrast`` SDs), and an axis arrangement that fits the template clearly better than the
  one the header gives (:func:`~brainage.preprocess.qc.orientation_check`);
* at prediction (:func:`age_reason`): the given age inside the model's training age range.

Measures are plain floats so that they travel through the cache's records and manifest;
:func:`reasons` turns them into the reasons, so changed thresholds apply to cached scans too.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from nibabel.spatialimages import SpatialImage

from brainage.errors import InputError
from brainage.preprocess import stages
from brainage.preprocess.qc import ARRANGEMENTS, orientation_check
from brainage.preprocess.template import mni152_1mm, template_on_grid

#: Measures :func:`measure` returns (NaN where they do not apply, e.g. the seed pipeline).
MEASURES = ("brain_coverage", "wm_gm_contrast", "orientation_gain", "orientation_best")
_PRIOR_FILES = {"gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz", "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"}


@dataclass(frozen=True)
class AdequacyConfig:
    """Thresholds of the adequacy checks; defaults in this one place.

    ``max_voxel_mm``: the largest voxel side accepted in a scan of thick slices, whose thickest
    side exceeds ``max_anisotropy`` times its finest (the models are trained on 3-D scans of about
    1 mm, resampled to 3 mm); ``max_isotropic_mm``: the largest side accepted otherwise. ``min_field_of_view_mm``: the smallest extent along any axis
    (an adult brain is 130 mm or more along each). ``min_brain_coverage``: the share of the MNI brain
    mask that must fall inside the field of view once registered. ``min_contrast``: the white minus
    grey matter mean, in SDs of the normalised brain, below which a scan is not T1-like.
    ``orientation_margin``: how much better (in template correlation) another axis arrangement must
    fit for the header's orientation to be called wrong.
    """

    max_voxel_mm: float = 3.0
    max_anisotropy: float = 2.0
    max_isotropic_mm: float = 6.0
    min_field_of_view_mm: float = 100.0
    min_brain_coverage: float = 0.95
    min_contrast: float = 0.2
    orientation_margin: float = 0.1

    @classmethod
    def with_overrides(cls, **overrides: float | None) -> AdequacyConfig:
        """The defaults with ``overrides`` (``None`` values ignored: a CLI option not given)."""
        return cls(**{key: value for key, value in overrides.items() if value is not None})


def header_reasons(path: str | Path, config: AdequacyConfig = AdequacyConfig()) -> list[str]:
    """Why the header of ``path`` rules the scan out (empty: it does not); reads the header only.

    An unreadable file is not judged here: reading it reports why (:func:`~brainage.io.images.load_scan`).
    """
    try:
        image = nib.load(path)
    except Exception:  # the reader names the cause later
        return []
    if not isinstance(image, SpatialImage):
        return []
    shape = tuple(int(n) for n in image.shape[:3])
    if len(shape) < 3:
        return []
    zooms = np.abs(np.array(image.header.get_zooms()[:3], dtype=np.float64))
    found = []
    slices = zooms.min() > 0 and zooms.max() > config.max_anisotropy * zooms.min()
    limit = config.max_voxel_mm if slices else config.max_isotropic_mm
    thick = [(axis + 1, zoom) for axis, zoom in enumerate(zooms) if zoom > limit]
    if thick:
        sides = ", ".join(f"{zoom:.3g} mm along axis {axis}" for axis, zoom in thick)
        kind = f"thick slices: {sides}, in-plane {zooms.min():.3g} mm" if slices else f"voxels too coarse: {sides}"
        found.append(f"{kind} (at most {limit:g} mm)")
    extent = zooms * np.asarray(shape)
    if (extent < config.min_field_of_view_mm).any():
        sizes = " × ".join(f"{value:g}" for value in np.round(extent, 1))
        found.append(f"field of view {sizes} mm cannot hold a whole brain (at least {config.min_field_of_view_mm:g} mm along every axis)")
    return found


def check_header(path: str | Path, config: AdequacyConfig = AdequacyConfig()) -> None:
    """Raise :class:`InputError` with the first of :func:`header_reasons`, if any."""
    found = header_reasons(path, config)
    if found:
        raise InputError(path, f"not adequate for brain age: {found[0]}")


def measure(
    volume: np.ndarray, grid_affine: np.ndarray, source_shape: tuple[int, ...], source_affine: np.ndarray, world_to_source: np.ndarray
) -> dict[str, float]:
    """The post-registration measures of a normalised ``volume`` on the output grid ``grid_affine``,
    registered by ``world_to_source`` (MNI world → the scan's world) to a scan of ``source_shape``
    voxels with ``source_affine``."""
    _, brain = template_on_grid(grid_affine, volume.shape)
    points = np.argwhere(brain)
    world = grid_affine[:3, :3] @ points.T + grid_affine[:3, 3:4]
    native = np.linalg.inv(source_affine) @ world_to_source @ np.vstack([world, np.ones(len(points))])
    inside = ((native[:3] >= -0.5) & (native[:3] <= np.asarray(source_shape[:3])[:, None] - 0.5)).all(axis=0)
    gm, wm = tissue_priors(grid_affine, volume.shape)
    grey, white = volume[gm & brain], volume[wm & brain]
    contrast = float(white.mean() - grey.mean()) if grey.size and white.size else math.nan
    gain, best = orientation_check(volume, grid_affine)
    return {"brain_coverage": float(inside.mean()) if len(points) else math.nan, "wm_gm_contrast": contrast, "orientation_gain": gain, "orientation_best": best}


def reasons(measures: Mapping[str, object], config: AdequacyConfig = AdequacyConfig()) -> list[str]:
    """The reasons the post-registration ``measures`` give to refuse a scan (NaN or missing: no reason)."""
    found = []
    coverage = _number(measures.get("brain_coverage"))
    if coverage < config.min_brain_coverage:
        found.append(
            f"only {100 * coverage:.0f} % of the brain is inside the field of view after registration (at least {100 * config.min_brain_coverage:g} %)"
        )
    contrast = _number(measures.get("wm_gm_contrast"))
    if contrast < config.min_contrast:
        found.append(f"not T1-like: white matter is not brighter than grey matter ({contrast:+.2f} SD, at least {config.min_contrast:g})")
    gain = _number(measures.get("orientation_gain"))
    if gain > config.orientation_margin:
        best = _number(measures.get("orientation_best"))
        name = ARRANGEMENTS[int(best)][0] if math.isfinite(best) else "another arrangement"
        found.append(f"orientation: the brain fits the template better with its axes {name} (+{gain:.2f}); is the header's orientation wrong?")
    return found


def row_reasons(rows: pd.DataFrame, config: AdequacyConfig = AdequacyConfig()) -> pd.Series:
    """:func:`reasons` of each row's recorded measures, ``"; "``-joined (empty: none; rows recorded
    before the measures were kept have none)."""
    columns = [column for column in MEASURES if column in rows.columns]
    records = [{str(key): value for key, value in record.items()} for record in rows[columns].to_dict("records")] if columns else [{}] * len(rows)
    return pd.Series(["; ".join(reasons({str(key): value for key, value in record.items()}, config)) for record in records], index=rows.index, dtype=object)


def age_reason(age: float, low: float, high: float) -> str | None:
    """Why a given age is outside the training range ``low``–``high`` (None if it is inside or unknown)."""
    if math.isfinite(age) and math.isfinite(low) and math.isfinite(high) and not low <= age <= high:
        return f"age {age:g} is outside the model's training range {low:g}–{high:g}"
    return None


def tissue_priors(affine: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Grey and white matter masks (prior probability above 0.5) of nilearn's MNI152 on ``(affine, shape)``."""
    x, y, z = (int(n) for n in shape)
    return _priors_on_grid(tuple(map(float, np.asarray(affine, dtype=float).ravel())), (x, y, z))


@functools.lru_cache(maxsize=8)
def _priors_on_grid(affine: tuple[float, ...], shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    target = np.asarray(affine).reshape(4, 4)
    _, _, source = mni152_1mm()
    masks = []
    for name in ("gm", "wm"):
        prior = np.asanyarray(_prior_image(name).dataobj).astype(np.float32)
        mask = stages.resample(prior / prior.max(), source, target, shape) > 0.5
        mask.setflags(write=False)
        masks.append(mask)
    return masks[0], masks[1]


def _prior_image(name: str) -> SpatialImage:
    """nilearn's MNI152 ``gm`` or ``wm`` prior, read from its package data (no download)."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("nilearn is not installed; its MNI152 tissue priors are needed")
    image = nib.load(Path(spec.submodule_search_locations[0]) / "datasets" / "data" / _PRIOR_FILES[name])
    assert isinstance(image, SpatialImage)
    return image


def _number(value: Any) -> float:
    try:
        number = float(value)  # any recorded value: TypeError and ValueError below say it is no number
    except (TypeError, ValueError):
        return math.nan
    return number
