"""Deterministic rendering of a ``v2`` person (:mod:`brainage.cohort.population`): records in, images out.

1. :func:`person_space` — the person's anatomy: their base head warped by an affine map composed
   with a diffeomorphism (a stationary velocity field plus the gradient of a smooth scalar field for
   regional volume variation, integrated by scaling and squaring), plus skull, scalp and neck as
   ``v1`` makes them, and one smooth regional pattern per ageing component (once per person);
2. :func:`aged_tissues` and :func:`t1_signal` — the anatomy at one session, each ageing component
   at its own decades (:func:`~brainage.cohort.population.component_decades`) and pattern, then the
   session's scanner contrast and gamma (once per session);
3. :func:`acquire` — one scan on the session's own grid (orientation, voxel size, field of view):
   a blur to the scan's resolution, pose and motion, bias field, Rician noise, scale, int16.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from brainage.cohort.anatomy import HEAD_CENTRE_MM
from brainage.cohort.fields import bspline_field
from brainage.cohort.heads import head_anatomy
from brainage.cohort.people import ScanRecord, SessionRecord, SubjectRecord
from brainage.cohort.population import COMPONENTS, AgeingFamily, PersonRecord, PopulationPreset, ScanSetting, component_decades
from brainage.cohort.render import SubjectAnatomy, Tissues, _sample, _upsample, acquire_on_grid, anatomy_at

#: Centres (MNI mm) of the left and right medial temporal lobes (hippocampus and amygdala).
MEDIAL_TEMPORAL_MM = ((-26.0, -22.0, -18.0), (26.0, -22.0, -18.0))
_INDEX = {name: k for k, name in enumerate(COMPONENTS)}


@dataclass(frozen=True, eq=False)
class PersonSpace:
    """A person's anatomy (``v1``'s :class:`SubjectAnatomy`) and what their ageing needs."""

    space: SubjectAnatomy
    #: Regional pattern of each component on the field grid (component axis first).
    patterns: np.ndarray
    #: Medial temporal region (0..1) on the working grid, and its inward pull (template mm per
    #: decade per unit, field grid, vector axis first).
    medial_temporal: np.ndarray
    medial_pull: np.ndarray
    #: Smooth N(0, 1) field whose high values become white-matter lesions (working grid).
    lesion_field: np.ndarray


def person_space(subject: SubjectRecord, person: PersonRecord, preset: PopulationPreset) -> PersonSpace:
    """The person's head, warped by their affine map and diffeomorphism, and their ageing patterns."""
    anatomy = head_anatomy(person.head, preset.resolution)
    res = np.float32(anatomy.resolution)
    fx, fy, fz = (int(n) for n in anatomy.sulcal.shape[1:])
    field_shape = (fx, fy, fz)
    rng = np.random.default_rng(person.anatomy_seed)
    a = preset.anatomy
    velocity = np.stack([bspline_field(rng, person.velocity_mm, a.velocity_spacing_mm, field_shape, 2.0 * float(res)) for _ in range(3)])
    scalar = bspline_field(rng, 1.0, a.regional_spacing_mm, field_shape, 2.0 * float(res))
    push = np.stack(np.gradient(scalar, 2.0 * float(res)))
    velocity += push * np.float32(person.regional_mm / max(float(np.sqrt((push**2).sum(0)).max()), 1e-6))
    displacement = _upsample(_integrate(velocity, a.integration_steps, 2.0 * float(res)), anatomy.shape)
    centre = (np.asarray(HEAD_CENTRE_MM) - anatomy.origin) / anatomy.resolution
    matrix = np.diag(np.exp(person.axis_log_scale)) + np.array([[0, person.shear[0], person.shear[1]], [0, 0, person.shear[2]], [0, 0, 0]])
    warped = np.indices(anatomy.shape, dtype=np.float32) + displacement / res - centre.astype(np.float32)[:, None, None, None]
    positions = np.einsum("ij,j...->i...", matrix.astype(np.float32), warped) + centre.astype(np.float32)[:, None, None, None]
    space = anatomy_at(positions, subject, anatomy)
    family = preset.ageing
    pattern_rng = np.random.default_rng(person.pattern_seed)
    patterns = np.stack([np.exp(bspline_field(pattern_rng, family.pattern_sd, family.pattern_spacing_mm, field_shape, 2.0 * float(res))) for _ in COMPONENTS])
    mm = positions * res + anatomy.origin.astype(np.float32)[:, None, None, None]
    region, pull = np.zeros(anatomy.shape, dtype=np.float32), np.zeros((3, *field_shape), dtype=np.float32)
    radius = np.float32(family.medial_temporal_radius_mm)
    for centre_mm in MEDIAL_TEMPORAL_MM:
        offset = mm - np.asarray(centre_mm, dtype=np.float32)[:, None, None, None]
        weight = np.exp(-(offset**2).sum(0) / (2.0 * radius**2))
        region += weight
        pull += (weight * offset / radius)[:, ::2, ::2, ::2]
    lesion_rng = np.random.default_rng(person.lesion_seed)
    lesion_field = bspline_field(lesion_rng, 1.0, family.lesion_spacing_mm, anatomy.shape, float(res))
    return PersonSpace(space, patterns.astype(np.float32), np.minimum(region, 1.0), pull, lesion_field)


def _integrate(velocity: np.ndarray, steps: int, voxel: float) -> np.ndarray:
    """Scaling and squaring: the displacement (mm) of the diffeomorphism exp(velocity)."""
    phi = velocity / np.float32(2**steps)
    grid = np.indices(phi.shape[1:], dtype=np.float32)
    for _ in range(steps):
        at = grid + phi / np.float32(voxel)
        phi = phi + np.stack([ndimage.map_coordinates(c, at, order=1, mode="nearest", output=np.float32) for c in phi])
    return phi


def _atrophy(family: AgeingFamily, decades: float) -> float:
    return decades + family.acceleration * decades * decades


def aged_tissues(person: PersonSpace, family: AgeingFamily, decades: np.ndarray) -> Tissues:
    """Tissue maps with each component at its ``decades`` (sulcal widening, cortical retraction and
    thinning, ventricular enlargement, medial-temporal shrinkage), each scaled by its pattern."""
    space, p = person.space, person.patterns
    anatomy = space.anatomy
    c = {name: float(decades[k]) for name, k in _INDEX.items()}
    outside = np.maximum(space.ventricle_distance, 0.0)
    wall = np.float32(family.ventricle_mm * c["ventricular"] ** 3) * p[_INDEX["ventricular"]]
    inward = np.minimum(wall * np.exp(-outside / np.float32(family.ventricle_falloff_mm)), outside + np.float32(0.5 * anatomy.resolution))
    shift = (
        np.float32(family.sulcal_mm * _atrophy(family, c["sulcal"])) * p[_INDEX["sulcal"]] * space.sulcal
        + np.float32(family.retraction_mm * _atrophy(family, c["cortical"])) * p[_INDEX["cortical"]] * space.retraction
        - inward * space.ventricle_normal
        + np.float32(family.medial_temporal_mm * c["medial_temporal"]) * p[_INDEX["medial_temporal"]] * person.medial_pull
    )
    positions = space.positions + _upsample(shift, anatomy.shape) / np.float32(anatomy.resolution)
    fine = _upsample(p, anatomy.shape)
    keep = 1.0 - space.ventricles
    thinning = np.minimum(np.float32(family.gm_thinning * _atrophy(family, c["cortical"])) * fine[_INDEX["cortical"]], 0.9)
    loss = np.minimum(np.float32(family.medial_temporal_gm_loss * c["medial_temporal"]) * fine[_INDEX["medial_temporal"]] * person.medial_temporal, 0.9)
    gm = _sample(anatomy.gm, positions) * (1.0 - thinning * _sample(anatomy.border, positions)) * (1.0 - loss) * keep
    wm = _sample(anatomy.wm, positions) * keep
    fit = np.minimum(1.0, space.icv / np.maximum(gm + wm, 1e-6))
    gm *= fit
    wm *= fit
    return Tissues(gm=gm, wm=wm, csf=np.maximum(space.icv - gm - wm, 0.0), ventricles=np.maximum(_sample(anatomy.ventricles, positions), space.ventricles))


def t1_signal(person: PersonSpace, tissues: Tissues, family: AgeingFamily, decades: np.ndarray, setting: ScanSetting) -> np.ndarray:
    """T1-like signal (white matter = 1 before gamma): the session's tissue contrast, white-matter
    darkening, periventricular and scattered lesions, the head's own detail, then gamma."""
    space = person.space
    fine = _upsample(person.patterns[[_INDEX["wm_signal"], _INDEX["lesion"]]], space.anatomy.shape)
    c_wm, c_lesion = float(decades[_INDEX["wm_signal"]]), float(decades[_INDEX["lesion"]])
    scattered = 1.0 / (1.0 + np.exp(np.clip((family.lesion_threshold - family.lesion_per_decade * c_lesion - person.lesion_field) / 0.15, -30, 30)))
    lesion = np.minimum(np.float32(family.wm_lesion * c_lesion**2) * space.periventricular * fine[1] + np.float32(0.4) * scattered, 0.8)
    wm_signal = (1.0 - np.minimum(np.float32(family.wm_signal_drop * c_wm) * fine[0], 0.5)) * (1.0 - lesion)
    brain = setting.csf_signal * tissues.csf + setting.gm_signal * tissues.gm + wm_signal * tissues.wm
    signal = brain + setting.texture_gain * space.texture * (tissues.gm + tissues.wm) + setting.head_gain * space.head
    return np.power(np.maximum(signal, 0.0), np.float32(setting.gamma)).astype(np.float32)


def scan_affine(setting: ScanSetting) -> np.ndarray:
    """Voxel-to-world affine of a session's grid, centred on the world origin; the third voxel axis
    runs across slices (left–right when sagittal, up when axial, forwards when coronal)."""
    z = setting.zooms
    columns = {
        "sagittal": ((0, -1, 0), (0, 0, -1), (1, 0, 0)),
        "axial": ((-1, 0, 0), (0, 1, 0), (0, 0, 1)),
        "coronal": ((1, 0, 0), (0, 0, 1), (0, 1, 0)),
    }[setting.orientation]
    affine = np.eye(4)
    affine[:3, :3] = np.array(columns, dtype=float).T * np.asarray(z)
    affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(setting.shape) - 1) / 2.0)
    return affine


def acquire(signal: np.ndarray, person: PersonSpace, session: SessionRecord, scan: ScanRecord, setting: ScanSetting, bias: np.ndarray) -> np.ndarray:
    """One scan as stored: blur to the scan's voxel size, pose + motion, bias, Rician noise, int16."""
    space = person.space
    anatomy = space.anatomy
    affine = scan_affine(setting)
    world_zoom = np.abs(affine[:3, :3]).sum(1)
    sigma = np.sqrt(np.maximum((world_zoom / space.head_scale) ** 2 - anatomy.resolution**2, 0.0)) / (2.355 * anatomy.resolution)
    blurred = ndimage.gaussian_filter(signal, sigma) if sigma.max() > 0.2 else signal
    return acquire_on_grid(blurred, space, session, scan, affine, setting.shape, bias)


def session_decades(family: AgeingFamily, person: PersonRecord, index: int) -> np.ndarray:
    """Decades of ageing of each component at the person's session ``index``."""
    return component_decades(family, person.weights, person.latent_ages[index])
