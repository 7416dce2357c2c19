"""Deterministic rendering: a subject/session/scan record in, tissue maps and an int16 scan out.

Three stages, each cached at its own level by the caller:

1. :func:`subject_anatomy` — the subject's individual anatomy in template space: the template
   warped by the subject's smooth random deformation, plus skull, scalp and neck (once per subject);
2. :func:`aged_tissues` and :func:`t1_signal` — the anatomy at one brain age, the subject warp and
   the ageing deformation composed into one displacement applied once (once per session);
3. :func:`acquire` — one repeat scan: head pose and motion in one affine resampling into the
   scanner grid, bias field, Rician noise, intensity scale, int16 (once per scan).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from brainage.cohort.ageing import AGEING, AgeingModel
from brainage.cohort.anatomy import HEAD_CENTRE_MM, Anatomy
from brainage.cohort.fields import bspline_field
from brainage.cohort.people import ScanRecord, SessionRecord, SubjectRecord
from brainage.cohort.presets import Preset
from brainage.utils import mask_bounds

#: T1 signal of pure tissue relative to young white matter.
CSF_SIGNAL, GM_SIGNAL, WM_SIGNAL = 0.28, 0.70, 1.0
#: Weight of the template's own detail (its T1 minus the tissue mixture).
TEXTURE_GAIN = 0.8
#: Layers outside the intracranial surface, inside out: (thickness in template mm, T1 signal).
#: The first four scale with the subject's skull thickness, the last two with their scalp.
SKULL_LAYERS = ((1.5, 0.25), (1.5, 0.05), (2.5, 0.55), (1.5, 0.05))
SCALP_LAYERS = ((3.5, 1.15), (2.0, 0.55))
NECK_SIGNAL = 0.5
#: Template height (mm) below which the skull ends and the neck begins.
SKULL_BASE_MM = -62.0
#: Spacing (mm) of the control points of the per-subject random deformation.
DEFORMATION_SPACING_MM = 25.0


@dataclass(frozen=True, eq=False)
class SubjectAnatomy:
    """One subject's anatomy in template space before ageing.

    ``positions`` are the template voxel positions (working-grid units) that each grid point
    samples: the grid index plus the subject's random displacement. The ageing fields are the
    template's, sampled at those positions on the field grid.
    """

    anatomy: Anatomy
    head_scale: float
    positions: np.ndarray
    icv: np.ndarray
    ventricles: np.ndarray
    #: T1 signal of everything outside the intracranial volume (skull, scalp, neck, air).
    head: np.ndarray
    #: Where white-matter lesions grow, and the template's detail (smooth or fine, so they are
    #: sampled once per subject, not re-aged per session).
    periventricular: np.ndarray
    texture: np.ndarray
    #: Bounding box (working-grid indices, lower and upper) of everything with signal.
    support: tuple[np.ndarray, np.ndarray]
    sulcal: np.ndarray
    retraction: np.ndarray
    ventricle_normal: np.ndarray
    ventricle_distance: np.ndarray

    @property
    def voxel_cm3(self) -> float:
        """Volume of one grid voxel in the subject's head (cm³)."""
        return self.anatomy.voxel_cm3 * self.head_scale**3


@dataclass(frozen=True, eq=False)
class Tissues:
    """Tissue maps (fractions per voxel) of one subject at one brain age."""

    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    #: The ventricles (fraction of each voxel), which the ageing displacement enlarges.
    ventricles: np.ndarray


@dataclass(frozen=True)
class Volumes:
    """Tissue volumes (cm³) in the subject's head."""

    gm: float
    wm: float
    csf: float
    ventricles: float
    icv: float

    @property
    def nwbv(self) -> float:
        """Normalised whole-brain volume: (GM + WM) / intracranial volume."""
        return (self.gm + self.wm) / self.icv


def subject_anatomy(subject: SubjectRecord, anatomy: Anatomy) -> SubjectAnatomy:
    """Warp the template by the subject's random deformation and add their skull, scalp and neck."""
    displacement = _random_deformation(subject.deformation_seed, subject.deformation_mm, anatomy)
    positions = np.indices(anatomy.shape, dtype=np.float32) + displacement / np.float32(anatomy.resolution)
    return anatomy_at(positions, subject, anatomy)


def anatomy_at(positions: np.ndarray, subject: SubjectRecord, anatomy: Anatomy) -> SubjectAnatomy:
    """The template sampled at ``positions`` (for each output voxel, the template voxel it comes
    from), with the subject's skull, scalp and neck."""
    coarse = positions[:, ::2, ::2, ::2] / np.float32(2.0)
    distance = _sample(anatomy.distance, positions, mode="nearest")
    icv = _sample(anatomy.icv, positions)
    height = positions[2] * np.float32(anatomy.resolution) + np.float32(anatomy.origin[2])
    head = (1.0 - icv) * _head_signal(distance, height, _sample(anatomy.neck, positions), subject, anatomy.resolution)
    return SubjectAnatomy(
        anatomy=anatomy,
        head_scale=subject.head_scale,
        positions=positions,
        icv=icv,
        ventricles=_sample(anatomy.ventricles, positions),
        head=head,
        periventricular=_sample(anatomy.periventricular, positions),
        texture=_sample(anatomy.texture, positions),
        support=mask_bounds((head > 1e-3) | (icv > 1e-3)),
        sulcal=np.stack([_sample(c, coarse) for c in anatomy.sulcal]),
        retraction=np.stack([_sample(c, coarse) for c in anatomy.retraction]),
        ventricle_normal=np.stack([_sample(c, coarse) for c in anatomy.ventricle_normal]),
        ventricle_distance=_sample(anatomy.ventricle_distance, coarse, mode="nearest"),
    )


def ageing_displacement(space: SubjectAnatomy, brain_age: float, ageing: AgeingModel = AGEING) -> np.ndarray:
    """Template-space displacement (mm, field grid) that ages the subject's anatomy to ``brain_age``.

    Sulcal widening and cortical retraction grow with :meth:`AgeingModel.atrophy`; the ventricle
    walls move out by ``ventricle_mm·d³`` fading as exp(−distance / falloff), never sampling past
    the wall they move (so thin ventricles cannot fold onto the tissue behind them).
    """
    atrophy = ageing.atrophy(brain_age)
    wall_mm = ageing.ventricle_mm * ageing.decades(brain_age) ** 3
    outside = np.maximum(space.ventricle_distance, 0.0)
    inward = np.minimum(
        np.float32(wall_mm) * np.exp(-outside / np.float32(ageing.ventricle_falloff_mm)),
        outside + np.float32(0.5 * space.anatomy.resolution),
    )
    return (
        np.float32(ageing.sulcal_mm * atrophy) * space.sulcal + np.float32(ageing.retraction_mm * atrophy) * space.retraction - inward * space.ventricle_normal
    )


def aged_tissues(space: SubjectAnatomy, brain_age: float, ageing: AgeingModel = AGEING) -> Tissues:
    """The subject's tissue maps at ``brain_age``.

    The subject warp and the ageing displacement are composed into one displacement applied once;
    then a share of the grey matter that touches CSF turns into CSF (cortical thinning), the
    template's ventricles stay CSF and tissue never exceeds the intracranial volume.
    """
    anatomy = space.anatomy
    shift = _upsample(ageing_displacement(space, brain_age, ageing), anatomy.shape)
    positions = space.positions + shift / np.float32(anatomy.resolution)
    keep = 1.0 - space.ventricles
    thinning = min(ageing.gm_thinning * ageing.atrophy(brain_age), 0.9)
    gm = _sample(anatomy.gm, positions) * (1.0 - thinning * _sample(anatomy.border, positions)) * keep
    wm = _sample(anatomy.wm, positions) * keep
    fit = np.minimum(1.0, space.icv / np.maximum(gm + wm, 1e-6))
    gm *= fit
    wm *= fit
    return Tissues(
        gm=gm,
        wm=wm,
        csf=np.maximum(space.icv - gm - wm, 0.0),
        ventricles=np.maximum(_sample(anatomy.ventricles, positions), space.ventricles),
    )


def measure(space: SubjectAnatomy, tissues: Tissues) -> Volumes:
    """Tissue, ventricle and intracranial volumes (cm³) of aged tissue maps."""
    voxel = space.voxel_cm3
    return Volumes(
        gm=float(tissues.gm.sum(dtype=np.float64)) * voxel,
        wm=float(tissues.wm.sum(dtype=np.float64)) * voxel,
        csf=float(tissues.csf.sum(dtype=np.float64)) * voxel,
        ventricles=float((tissues.csf * tissues.ventricles).sum(dtype=np.float64)) * voxel,
        icv=float(space.icv.sum(dtype=np.float64)) * voxel,
    )


def t1_signal(space: SubjectAnatomy, tissues: Tissues, brain_age: float, ageing: AgeingModel = AGEING) -> np.ndarray:
    """T1-weighted signal in template space (young white matter = 1), head included."""
    d = ageing.decades(brain_age)
    lesion = np.float32(ageing.wm_lesion * d * d) * space.periventricular
    wm_signal = np.float32(WM_SIGNAL * (1.0 - ageing.wm_signal_drop * d)) * (1.0 - lesion)
    brain = CSF_SIGNAL * tissues.csf + GM_SIGNAL * tissues.gm + wm_signal * tissues.wm
    return brain + TEXTURE_GAIN * space.texture * (tissues.gm + tissues.wm) + space.head


def scanner_affine(preset: Preset) -> np.ndarray:
    """Voxel-to-world affine of the scanner grid: sagittal, axes posterior, inferior, right (PIR).

    The centre of the field of view is the world origin, so the head sits roughly centred.
    """
    zooms = preset.zooms
    affine = np.zeros((4, 4))
    affine[0, 2] = zooms[2]
    affine[1, 0] = -zooms[0]
    affine[2, 1] = -zooms[1]
    affine[3, 3] = 1.0
    centre = (np.asarray(preset.shape) - 1) / 2.0
    affine[:3, 3] = -affine[:3, :3] @ centre
    return affine


def bias_field(session: SessionRecord, shape: tuple[int, int, int]) -> np.ndarray:
    """Smooth multiplicative bias field on the scanner grid: exp of a low-order cosine series."""
    rng = np.random.default_rng(session.bias_seed)
    coefficients = rng.standard_normal((3, 3, 3))
    coefficients[0, 0, 0] = 0.0
    bases = [np.cos(np.pi * np.outer(np.linspace(0.0, 1.0, n), np.arange(3))).astype(np.float32) for n in shape]
    yz = np.zeros((3, shape[1], shape[2]), dtype=np.float32)
    for a, b, c in np.ndindex(3, 3, 3):
        yz[a] += np.float32(coefficients[a, b, c]) * bases[1][:, b, None] * bases[2][None, :, c]
    log_field = np.zeros(shape, dtype=np.float32)
    for a in range(3):
        log_field += bases[0][:, a, None, None] * yz[a][None]
    log_field *= np.float32(session.bias_sd / log_field.std(dtype=np.float64))
    return np.exp(log_field)


def acquire(
    signal: np.ndarray,
    space: SubjectAnatomy,
    session: SessionRecord,
    scan: ScanRecord,
    preset: Preset,
    bias: np.ndarray,
) -> np.ndarray:
    """One repeat scan as stored on the preset's scanner grid (:func:`acquire_on_grid`)."""
    return acquire_on_grid(signal, space, session, scan, scanner_affine(preset), preset.shape, bias)


def acquire_on_grid(
    signal: np.ndarray,
    space: SubjectAnatomy,
    session: SessionRecord,
    scan: ScanRecord,
    affine: np.ndarray,
    shape: tuple[int, int, int],
    bias: np.ndarray,
) -> np.ndarray:
    """One scan as stored on the grid ``affine`` × ``shape``: pose + motion in one affine resampling
    of ``signal`` (the working grid), bias field, Rician noise, scale, int16; the ``v1`` and ``v2``
    generators' one acquisition."""
    anatomy = space.anatomy
    rotation = _rotation(session.pose_rotation_deg) @ _rotation(scan.motion_rotation_deg)
    shift = np.add(session.pose_shift_mm, scan.motion_shift_mm)
    # scanner index → world → head (pose undone) → template mm → working-grid index
    scale = 1.0 / (space.head_scale * anatomy.resolution)
    matrix = scale * rotation.T @ affine[:3, :3]
    offset = scale * rotation.T @ (affine[:3, 3] - shift) + (np.asarray(HEAD_CENTRE_MM) - anatomy.origin) / anatomy.resolution
    # resample only the part of the field of view that the head's bounding box can reach
    corners = np.array(list(itertools.product(*zip(*space.support, strict=True)))).T
    reach = np.linalg.solve(matrix, corners - offset[:, None])
    lower = np.clip(np.floor(reach.min(1)).astype(int) - 1, 0, shape)
    upper = np.clip(np.ceil(reach.max(1)).astype(int) + 2, 0, shape)
    image = np.zeros(shape, dtype=np.float32)
    box = tuple(slice(lo, hi) for lo, hi in zip(lower, upper, strict=True))
    if all(hi > lo for lo, hi in zip(lower, upper, strict=True)):  # else the head is posed out of the field of view
        ndimage.affine_transform(signal, matrix, offset + matrix @ lower, output_shape=tuple(upper - lower), order=1, mode="constant", output=image[box])
    image *= bias
    noise = np.random.default_rng(scan.noise_seed).standard_normal((2, *shape), dtype=np.float32)
    noise *= np.float32(session.noise_sd)
    image += noise[0]
    image = np.hypot(image, noise[1], out=image)
    image *= np.float32(session.intensity_scale)
    np.rint(image, out=image)
    np.clip(image, 0, np.iinfo(np.int16).max, out=image)
    return image.astype(np.int16)


def _rotation(degrees: tuple[float, float, float]) -> np.ndarray:
    """Rotation about the world x (left–right), then y (anterior–posterior), then z
    (inferior–superior) axes: ``Rz @ Ry @ Rx``."""
    return Rotation.from_euler("xyz", degrees, degrees=True).as_matrix()


def _sample(array: np.ndarray, positions: np.ndarray, mode: Literal["constant", "nearest"] = "constant") -> np.ndarray:
    return ndimage.map_coordinates(array, positions, order=1, mode=mode, output=np.float32)


def _upsample(field: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Linear interpolation of a field-grid array (every 2nd working-grid point, leading vector
    axis) back onto the working grid ``shape``; the last point is repeated past the edge."""
    for axis, n in enumerate(shape, start=1):
        coarse = np.moveaxis(field, axis, 0)
        fine = np.empty((n, *coarse.shape[1:]), dtype=np.float32)
        fine[0::2] = coarse
        odd = fine[1::2]
        inner = min(len(odd), len(coarse) - 1)
        odd[:inner] = 0.5 * (coarse[:inner] + coarse[1 : inner + 1])
        odd[inner:] = coarse[-1]
        field = np.moveaxis(fine, 0, axis)
    return np.ascontiguousarray(field)


def _random_deformation(seed: int, sd_mm: float, anatomy: Anatomy) -> np.ndarray:
    """Smooth random displacement (mm, shape ``(3, *grid)``): a cubic B-spline per axis with
    control points every :data:`DEFORMATION_SPACING_MM` in template space, so a subject's warp is
    the same at every resolution."""
    rng = np.random.default_rng(seed)
    return np.stack([bspline_field(rng, sd_mm, DEFORMATION_SPACING_MM, anatomy.shape, anatomy.resolution) for _ in range(3)])


def _head_signal(distance: np.ndarray, height_mm: np.ndarray, neck: np.ndarray, subject: SubjectRecord, resolution: float) -> np.ndarray:
    """T1 signal outside the intracranial surface: skull and scalp layers by distance (mm) to the
    surface, ending at the skull base, and the neck's soft tissue below and around them."""
    layers = [(t * subject.skull_thickness, v) for t, v in SKULL_LAYERS]
    layers += [(t * subject.scalp_thickness, v) for t, v in SCALP_LAYERS]
    width = np.float32(max(0.25 * resolution, 0.3))

    def step(edge: float, value: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(np.clip((np.float32(edge) - value) / width, -30, 30)))

    signal = np.zeros_like(distance)
    inner, below = 0.0, step(0.0, distance)
    for thickness, value in layers:
        outer = inner + thickness
        above = step(outer, distance)
        signal += np.float32(value) * (below - above)
        inner, below = outer, above
    skull = step(SKULL_BASE_MM, height_mm)
    return skull * signal + np.float32(NECK_SIGNAL) * neck * (1.0 - skull * (1.0 - below))
