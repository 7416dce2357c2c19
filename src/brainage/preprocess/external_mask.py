"""A brain mask made elsewhere (fMRIPrep's ``*_desc-brain_mask.nii.gz``) used instead of our skull stripping.

The standard pipeline's expensive part is the :class:`~brainage.preprocess.pipelines.Spatial`: the
native-space brain mask and the registration to MNI. With an external mask, the mask is read here
(reoriented to RAS like the scan, ``> 0.5``) and :func:`brainage.preprocess.pipelines.external_spatial`
runs only the registration of the masked brain; the rest of the pipeline is unchanged, so the
volume lands in the same cache, on the same grid. This module does not import the pipelines.

The mask is the one given (a manifest's ``mask_path``) or else, for an fMRIPrep image
``<prefix>_desc-preproc_T1w.nii.gz``, the ``<prefix>_desc-brain_mask.nii.gz`` beside it. The seed
pipeline does no skull stripping and ignores masks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from brainage.errors import InputError
from brainage.io.images import load_scan
from brainage.preprocess import stages

PREPROC_SUFFIX = "_desc-preproc_T1w"
MASK_SUFFIX = "_desc-brain_mask"


def mask_beside(path: str | Path) -> Path | None:
    """fMRIPrep's brain mask next to its ``*_desc-preproc_T1w`` image, if there is one."""
    path = Path(path)
    name = path.name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(PREPROC_SUFFIX + ext):
            prefix = name[: -len(PREPROC_SUFFIX + ext)]
            for mask_ext in (".nii.gz", ".nii"):
                candidate = path.with_name(prefix + MASK_SUFFIX + mask_ext)
                if candidate.is_file():
                    return candidate
    return None


def external_mask_path(path: str | Path, mask_path: str | Path | None = None) -> Path | None:
    """The external mask to use for ``path``: ``mask_path`` when given (not missing), else :func:`mask_beside`."""
    if mask_path is not None and str(mask_path).strip().lower() not in ("", "nan", "none", "n/a"):
        return Path(mask_path)
    return mask_beside(path)


def read_external_mask(mask_file: str | Path, scan: str | Path, shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """The brain mask in ``mask_file``, reoriented to RAS and thresholded at 0.5, for the ``scan``
    whose RAS-reoriented grid is ``shape`` and ``affine``. Raises :class:`InputError` naming the mask
    when it cannot be used (unreadable, another grid than the scan, empty)."""
    mask_scan = load_scan(mask_file)
    mask_data, mask_affine = stages.reorient_ras(mask_scan.data, mask_scan.affine)
    if mask_data.shape != tuple(shape) or not np.allclose(mask_affine, affine, atol=1e-3):
        raise InputError(mask_file, f"the brain mask's grid {mask_data.shape} differs from that of {Path(scan).name} {tuple(shape)}")
    mask = mask_data > 0.5
    if not mask.any():
        raise InputError(mask_file, "empty brain mask")
    return mask
