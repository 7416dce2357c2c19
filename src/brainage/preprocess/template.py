"""The MNI152 brain template that nilearn installs (no download), resampled onto any grid."""

from __future__ import annotations

import functools

import numpy as np

from brainage.preprocess import stages

#: Centre (RAS mm) of the bounding box of nilearn's MNI152 brain mask, x ∈ [-72, 72],
#: y ∈ [-107, 73], z ∈ [-72, 82].
MNI_BRAIN_CENTER = (0.0, -17.0, 5.0)
_MNI_BRAIN_LOW = np.array([-72.0, -107.0, -72.0])
_MNI_BRAIN_HIGH = np.array([72.0, 73.0, 82.0])
#: Field of view of nilearn's 1 mm template: 197 × 233 × 189 voxels from (-98, -134, -72) mm.
_TEMPLATE_ORIGIN = (-98.0, -134.0, -72.0)
_TEMPLATE_EXTENT_MM = (197.0, 233.0, 189.0)


def template_grid(voxel_size: float, margin: float | None = None) -> tuple[np.ndarray, tuple[int, int, int]]:
    """An isotropic ``voxel_size`` grid (affine, shape) over the whole template's field of view,
    or, with a ``margin`` (mm), over the MNI brain's bounding box grown by that margin."""
    affine = np.diag([voxel_size] * 3 + [1.0])
    if margin is None:
        affine[:3, 3] = _TEMPLATE_ORIGIN
        shape = tuple(int(np.ceil(extent / voxel_size)) for extent in _TEMPLATE_EXTENT_MM)
    else:
        low = _MNI_BRAIN_LOW - margin
        affine[:3, 3] = low
        shape = tuple(int(n) for n in np.ceil((_MNI_BRAIN_HIGH + margin - low) / voxel_size) + 1)
    return affine, shape  # type: ignore[return-value]


def template_on_grid(affine: np.ndarray, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The 1 mm MNI152 T1 brain template and its brain mask resampled onto ``(affine, shape)``."""
    return _template_on_grid(tuple(map(float, np.asarray(affine, dtype=float).ravel())), tuple(shape))


@functools.lru_cache(maxsize=8)
def _template_on_grid(affine: tuple[float, ...], shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    from nilearn import datasets

    target = np.asarray(affine).reshape(4, 4)
    t1 = datasets.load_mni152_template(resolution=1)
    mask = datasets.load_mni152_brain_mask(resolution=1)
    template = stages.resample(t1.get_fdata(dtype=np.float32), t1.affine, target, shape)
    brain = stages.resample(mask.get_fdata(dtype=np.float32), mask.affine, target, shape) > 0.5
    template.setflags(write=False)
    brain.setflags(write=False)
    return template, brain
