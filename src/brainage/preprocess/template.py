"""The MNI152 brain template that nilearn installs (no download), resampled onto any grid."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import nibabel as nib
import numpy as np

from brainage.preprocess import stages

#: Centre (RAS mm) of the bounding box of nilearn's MNI152 brain mask, x ∈ [-72, 72],
#: y ∈ [-107, 73], z ∈ [-72, 82].
MNI_BRAIN_CENTER = (0.0, -17.0, 5.0)
_MNI152_FILE = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
_MNI152_MASK_THRESHOLD = 0.2  # nilearn's load_mni152_brain_mask default
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
    x, y, z = shape
    return affine, (x, y, z)


def template_on_grid(affine: np.ndarray, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The 1 mm MNI152 T1 brain template and its brain mask resampled onto ``(affine, shape)``."""
    return _template_on_grid(tuple(map(float, np.asarray(affine, dtype=float).ravel())), tuple(shape))


@functools.lru_cache(maxsize=8)
def _template_on_grid(affine: tuple[float, ...], shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    target = np.asarray(affine).reshape(4, 4)
    t1, mask, source = mni152_1mm()
    template = stages.resample(t1, source, target, shape)
    brain = stages.resample(mask.astype(np.float32), source, target, shape) > 0.5
    template.setflags(write=False)
    brain.setflags(write=False)
    return template, brain


@functools.lru_cache(maxsize=1)
def mni152_1mm() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """nilearn's 1 mm MNI152 T1 and brain mask (data, mask, affine), read once per process.

    The same arrays as ``nilearn.datasets.load_mni152_template`` (scaled to a maximum of 1) and
    ``load_mni152_brain_mask`` (template > 0.2), read from nilearn's package data with nibabel:
    importing ``nilearn.datasets`` is slow, and would be paid again in every worker process.
    """
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("nilearn is not installed; its MNI152 template is needed")
    image = nib.Nifti1Image.from_filename(Path(spec.submodule_search_locations[0]) / "datasets" / "data" / _MNI152_FILE)
    data = np.asanyarray(image.dataobj).astype(np.float32)
    data /= data.max()
    return data, data > _MNI152_MASK_THRESHOLD, np.asarray(image.affine, dtype=float)
