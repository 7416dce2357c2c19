"""Template anatomy: the MNI152 2009 maps that nilearn installs, as tissue maps and ageing fields.

Everything here is in template space (MNI millimetres) and the same for every subject. The 1 mm
T1, GM and WM templates and the brain mask are read once per process (offline, from
``nilearn/datasets/data``); CSF is the brain mask minus GM and WM. Tissue maps are resampled onto
a working grid of the preset's resolution, and the smooth fields that drive the ageing model are
computed on 2 mm block means and sampled on a coarser *field grid* (every second working-grid
point). Results are cached per process and resolution.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from nilearn import datasets
from scipy import ndimage

#: Working-grid bounds in MNI mm: the template's box plus 40 mm below it for the neck.
LOWER_MM = (-98.0, -134.0, -112.0)
UPPER_MM = (98.0, 98.0, 116.0)
#: The point of template space placed at the centre of the scanner's field of view.
HEAD_CENTRE_MM = (0.0, -20.0, 0.0)
#: Box (MNI mm) holding the ventricles: the two largest CSF components in it are the lateral
#: ventricles and the third ventricle with the cisterns behind it.
VENTRICLE_BOX_MM = ((-30.0, 30.0), (-50.0, 35.0), (-10.0, 40.0))

_SULCAL_SIGMA_MM = 2.0
_NORMAL_SIGMA_MM = 2.0
_BORDER_SIGMA_MM = 1.0
_PERIVENTRICULAR_SIGMA_MM = 6.0


@dataclass(frozen=True, eq=False)
class Anatomy:
    """Template maps on a working grid (index ``ijk`` ↦ ``origin + resolution·ijk`` mm).

    Tissue maps are fractions in [0, 1] on the working grid. The ageing fields live on the field
    grid, ``working[::2, ::2, ::2]``; vectors have shape ``(3, ...)``.
    """

    resolution: float
    origin: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    icv: np.ndarray
    #: Signed distance to the intracranial surface in mm (positive outside).
    distance: np.ndarray
    #: Soft-tissue fraction of the neck under the skull.
    neck: np.ndarray
    ventricles: np.ndarray
    #: Grey matter that touches CSF (0..1): where cortical thinning acts.
    border: np.ndarray
    #: Periventricular white matter (0..1): where white-matter lesions grow.
    periventricular: np.ndarray
    #: The T1 template minus its three-tissue mixture (relative to white matter): detail that
    #: tissue classes do not explain.
    texture: np.ndarray
    #: Gradient of smoothed CSF, scaled so its 99th-percentile length in the brain is 1 and
    #: clipped at 1: sampling along it widens sulci.
    sulcal: np.ndarray
    #: Outward normal of the intracranial surface, fading with depth as exp(−depth / 15 mm):
    #: sampling along it retracts the cortex from the skull.
    retraction: np.ndarray
    #: Unit outward normal of the ventricles and the signed distance to them (mm, positive outside).
    ventricle_normal: np.ndarray
    ventricle_distance: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        x, y, z = self.gm.shape
        return x, y, z

    @property
    def voxel_cm3(self) -> float:
        return self.resolution**3 / 1000.0


@lru_cache(maxsize=2)
def load_anatomy(resolution: float) -> Anatomy:
    """Build the template anatomy on a ``resolution`` mm grid (once per process and resolution).

    Tissue maps come from the 1 mm templates, or from their 2 mm block means when the grid is
    2 mm or coarser; the ageing fields always come from the 2 mm block means.
    """
    t1, gm, wm, mask, offset = _load_templates()
    return anatomy_from_maps(t1, gm, wm, mask, offset, resolution)


def anatomy_from_maps(
    t1: np.ndarray, gm: np.ndarray, wm: np.ndarray, mask: np.ndarray, offset: np.ndarray, resolution: float, csf_class: np.ndarray | None = None
) -> Anatomy:
    """An :class:`Anatomy` on a ``resolution`` mm grid from 1 mm maps on the MNI grid (``offset``: the
    MNI position of voxel 0). CSF is the mask less GM and WM; ``csf_class``, a segmentation's own CSF
    map where there is one, also marks the ventricles and gives the CSF intensity."""
    csf = np.clip(mask - gm - wm, 0.0, 1.0)
    ventricles = _ventricles(csf if csf_class is None else np.maximum(csf, csf_class), offset)
    means = [float(t1[p > 0.9].mean()) for p in (gm, wm, csf if csf_class is None else csf_class)]
    texture = (t1 - means[0] * gm - means[1] * wm - means[2] * csf) * mask / means[1]
    fine = {"gm": gm, "wm": wm, "mask": mask, "ventricles": ventricles, "texture": texture}
    coarse = {name: _block_mean(array) for name, array in fine.items()}
    csf2 = _block_mean(csf)
    offset2 = offset + 0.5

    ventricles2, mask2 = coarse["ventricles"], coarse["mask"]
    border = np.clip(ndimage.gaussian_filter(csf2, _BORDER_SIGMA_MM / 2) / 0.5, 0.0, 1.0) * (coarse["gm"] > 0.05)
    periventricular = ndimage.gaussian_filter(ventricles2, _PERIVENTRICULAR_SIGMA_MM / 2)
    periventricular = np.clip(periventricular / max(float(periventricular.max()), 1e-6) * 2.0, 0.0, 1.0) * coarse["wm"]
    sulcal = _unit_gradient(ndimage.gaussian_filter(csf2, _SULCAL_SIGMA_MM / 2), mask2 > 0.5)
    icv_distance = _signed_distance(ndimage.binary_fill_holes(mask2 > 0.5), 2.0)
    retraction = _normal(icv_distance) * np.exp(np.minimum(icv_distance, 0.0) / 15.0)
    ventricle_distance = _signed_distance(ventricles2 > 0.5, 2.0)

    grid = _Grid(resolution)
    source, source_offset, source_res = (coarse, offset2, 2.0) if resolution >= 2.0 else (fine, offset, 1.0)
    base = {name: grid.sample(array, source_offset, source_res) for name, array in source.items()}
    icv = np.maximum(base["mask"], ndimage.binary_fill_holes(base["mask"] > 0.5)).astype(np.float32)
    field = _Grid(2.0 * resolution)
    return Anatomy(
        resolution=float(resolution),
        origin=np.asarray(LOWER_MM),
        gm=base["gm"] * icv,
        wm=base["wm"] * icv,
        icv=icv,
        distance=_signed_distance(icv > 0.5, resolution),
        neck=_neck(grid.shape, resolution),
        ventricles=base["ventricles"],
        border=grid.sample(border, offset2, 2.0),
        periventricular=grid.sample(periventricular, offset2, 2.0),
        texture=base["texture"],
        sulcal=np.stack([field.sample(c, offset2, 2.0) for c in sulcal]),
        retraction=np.stack([field.sample(c, offset2, 2.0) for c in retraction]),
        ventricle_normal=np.stack([field.sample(c, offset2, 2.0) for c in _normal(ventricle_distance)]),
        ventricle_distance=field.sample(ventricle_distance, offset2, 2.0),
    )


def _load_templates() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The 1 mm T1, GM, WM and brain mask (float32) and the mm position of voxel (0, 0, 0)."""
    t1_img = datasets.load_mni152_template(resolution=1)
    images = (
        t1_img,
        datasets.load_mni152_gm_template(resolution=1),
        datasets.load_mni152_wm_template(resolution=1),
        datasets.load_mni152_brain_mask(resolution=1),
    )
    affine = t1_img.affine
    if not np.allclose(affine[:3, :3], np.eye(3)):
        raise RuntimeError(f"unexpected MNI152 template affine {affine.tolist()}")
    arrays = [np.asarray(img.dataobj, dtype=np.float32) for img in images]
    t1, gm, wm, mask = arrays
    return t1, gm, wm, mask, affine[:3, 3].copy()


def _box(shape: tuple[int, ...], offset: np.ndarray, voxel: float) -> np.ndarray:
    """Boolean map of :data:`VENTRICLE_BOX_MM` on a grid of ``voxel`` mm starting at ``offset``."""
    axes = [np.arange(n) * voxel + o for n, o in zip(shape, offset, strict=False)]
    masks = [(lo < a) & (a < hi) for a, (lo, hi) in zip(axes, VENTRICLE_BOX_MM, strict=False)]
    return masks[0][:, None, None] & masks[1][None, :, None] & masks[2][None, None, :]


def _ventricles(csf: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """The two largest connected CSF components (p > 0.5) inside the ventricle box, as float32."""
    labels, _ = ndimage.label((csf > 0.5) & _box(csf.shape, offset, 1.0))  # type: ignore[misc]  # scipy-stubs: int | tuple (the int only with output=)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    largest = np.argsort(sizes, kind="stable")[::-1][:2]
    return np.isin(labels, largest).astype(np.float32)


def _block_mean(array: np.ndarray) -> np.ndarray:
    """Average 2×2×2 blocks (zero-padding odd sizes at the end): 1 mm → 2 mm."""
    padded = np.pad(array, [(0, n % 2) for n in array.shape])
    total = np.zeros([n // 2 for n in padded.shape], dtype=np.float32)
    for i, j, k in np.ndindex(2, 2, 2):
        total += padded[i::2, j::2, k::2]
    return total / 8.0


def _signed_distance(inside: np.ndarray, voxel: float) -> np.ndarray:
    """Distance (mm) to the surface of a binary region: positive outside, negative inside."""
    spacing = (voxel,) * 3
    outside = ndimage.distance_transform_edt(~inside, sampling=spacing)
    return (outside - ndimage.distance_transform_edt(inside, sampling=spacing)).astype(np.float32)  # type: ignore[operator]  # scipy-stubs: a union of return shapes


def _normal(distance: np.ndarray) -> np.ndarray:
    """Unit gradient of a (smoothed) 2 mm distance map: the outward normal of its surface."""
    grad = np.stack(np.gradient(ndimage.gaussian_filter(distance, _NORMAL_SIGMA_MM / 2), 2.0))
    return (grad / np.maximum(np.sqrt((grad**2).sum(0)), 1e-3)).astype(np.float32)


def _unit_gradient(field: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Gradient of a 2 mm ``field`` scaled so its 99th-percentile length in ``brain`` is 1, clipped at 1."""
    grad = np.stack(np.gradient(field, 2.0)).astype(np.float32)
    length = np.sqrt((grad**2).sum(0))
    scale = float(np.percentile(length[brain], 99))
    return grad / (np.maximum(length / scale, 1.0) * scale)


def _neck(shape: tuple[int, int, int], resolution: float) -> np.ndarray:
    """Soft-tissue column under the skull, fading out downwards like head-coil sensitivity."""
    x, y, z = (np.arange(n, dtype=np.float32) * resolution + lo for n, lo in zip(shape, LOWER_MM, strict=False))
    radius = np.sqrt((x[:, None, None] / 50.0) ** 2 + ((y[None, :, None] + 32.0) / 44.0) ** 2)
    inside = 1.0 / (1.0 + np.exp(np.minimum((radius - 1.0) / 0.06, 60.0)))
    below = 1.0 / (1.0 + np.exp((z[None, None, :] + 50.0) / 6.0))
    fade = 1.0 / (1.0 + np.exp(-(z[None, None, :] + 95.0) / 8.0))
    return (inside * below * fade).astype(np.float32)


class _Grid:
    """A grid over the working bounds at ``resolution`` mm; samples template arrays onto it."""

    def __init__(self, resolution: float) -> None:
        self.resolution = resolution
        nx, ny, nz = (int(np.floor((hi - lo) / resolution + 1e-6)) + 1 for lo, hi in zip(LOWER_MM, UPPER_MM, strict=False))
        self.shape = (nx, ny, nz)

    def sample(self, array: np.ndarray, offset: np.ndarray, source_resolution: float) -> np.ndarray:
        """Gaussian anti-aliasing when shrinking, then linear interpolation (edges padded)."""
        step = self.resolution / source_resolution
        if step > 1.2:
            array = ndimage.gaussian_filter(array, 0.4 * step)
        start = (np.asarray(LOWER_MM) - offset) / source_resolution
        with warnings.catch_warnings():  # a 1-D matrix means a diagonal one: the fast zoom-and-shift path
            warnings.simplefilter("ignore", UserWarning)
            return ndimage.affine_transform(array, np.full(3, step), offset=start, output_shape=self.shape, order=1, mode="nearest", output=np.float32)
