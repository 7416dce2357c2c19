"""The population generator (``v2``): many base heads, per-person anatomy, a family of ageing
processes and a randomised scanner, every choice a named parameter of a :class:`PopulationPreset`.

Randomness lives here only, as in the ``v1`` generator (:mod:`brainage.cohort.people`): the people,
their visits and clinical values are drawn exactly as ``v1`` draws them for the preset's
:attr:`PopulationPreset.cohort` sizes; then every person draws, from a generator of their own spawned
from ``(seed, 2)``, what ``v2`` adds (:class:`PersonRecord`): a base head, an anatomy (affine and a
stationary velocity field integrated into a diffeomorphism, plus regional volume variation, as
SynthSeg's generator does), an ageing variant with one weight and one regional pattern per ageing
component, and per session a scanner (:class:`ScanSetting`). :mod:`.population_render` turns a record
into images deterministically; :mod:`.population_write` writes them in ``v1``'s layout.

Brain age. With ``L = age + offset + dementia`` (the ``v1`` rule) and ``d = max(L − reference_age, 0)/10``
decades of ageing, component ``k`` of a person with weight ``w_k`` acts as ``c_k = w_k·d`` decades
of ageing; the brain age is what their sum says, ``brain_age = L + 10·d·(Σ_k π_k w_k − 1)`` with the
component shares ``π_k`` (summing to 1): someone whose weighted components age faster than ``L``
has an older brain.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TypeVar

import numpy as np

from brainage.cohort.ageing import AgeingModel, AgeingParameters
from brainage.cohort.people import SubjectRecord, sample_cohort
from brainage.cohort.presets import DEMO, PRETRAIN, TINY, Preset

GENERATOR = "v2"
COMPONENTS = ("ventricular", "sulcal", "cortical", "medial_temporal", "wm_signal", "lesion")
ORIENTATIONS = ("sagittal", "axial", "coronal")


@dataclass(frozen=True)
class AnatomyVariation:
    """Per-person anatomy: which head, and how far it is deformed (SynthSeg-like ranges)."""

    #: Base heads (names in :func:`brainage.cohort.heads.available_heads`), drawn with equal chance.
    heads: tuple[str, ...] = ("mni152_2009", "robex")
    #: Log of the per-axis scale on top of the person's head scale ~ N(0, sd²); shear ~ N(0, sd²).
    axis_log_scale_sd: float = 0.05
    shear_sd: float = 0.03
    #: SD (mm) of each component of the stationary velocity field ~ U(low, high); control points
    #: every ``velocity_spacing_mm``; integrated by scaling and squaring in ``integration_steps``.
    velocity_mm: tuple[float, float] = (2.0, 5.0)
    velocity_spacing_mm: float = 32.0
    integration_steps: int = 6
    #: Regional volume variation: the gradient of a smooth scalar field (control points every
    #: ``regional_spacing_mm``) added to the velocity, its largest push ~ U(low, high) mm.
    regional_mm: tuple[float, float] = (2.0, 6.0)
    regional_spacing_mm: float = 48.0


@dataclass(frozen=True)
class AgeingFamily(AgeingParameters):
    """The ageing components: ``v1``'s parameters (their strengths are per decade of component ageing),
    then the components' shares, per-person weights and patterns, and what ``v1`` lacks."""

    offset_sd: float = 2.5
    #: Share ``π_k`` of each component of :data:`COMPONENTS` in the brain age (normalised to sum 1).
    shares: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    #: Per-person weight of each component: the variant's multiplier × exp(N(0, weight_sd²) − weight_sd²/2)
    #: (mean 1, so the brain-age gap has mean 0 in every variant).
    weight_sd: float = 0.2
    #: Ageing variants (name, multiplier per component), drawn with equal chance; each variant's
    #: multipliers are scaled so that their weighted mean is 1 (a variant moves ageing between
    #: components, it does not age people faster).
    variants: tuple[tuple[str, tuple[float, ...]], ...] = (
        ("balanced", (1.0, 1.0, 1.0, 1.0, 1.0, 1.0)),
        ("subcortical", (1.7, 0.7, 0.6, 0.8, 1.4, 1.5)),
        ("cortical", (0.6, 1.5, 1.6, 1.4, 0.7, 0.6)),
    )
    #: Regional pattern of a component: exp(pattern_sd · smooth N(0, 1) field, control points every
    #: ``pattern_spacing_mm``), so each person ages faster in some regions than in others.
    pattern_sd: float = 0.5
    pattern_spacing_mm: float = 40.0
    #: Medial-temporal atrophy: shrinkage (mm per decade, towards the centre of each medial temporal
    #: lobe, Gaussian region of ``medial_temporal_radius_mm``) and grey-matter loss per decade there.
    medial_temporal_mm: float = 0.5
    medial_temporal_gm_loss: float = 0.03
    medial_temporal_radius_mm: float = 12.0
    #: Lesions away from the ventricles: a smooth field (control points every ``lesion_spacing_mm``)
    #: above a threshold that falls by ``lesion_per_decade`` SDs per decade from ``lesion_threshold``.
    lesion_spacing_mm: float = 10.0
    lesion_threshold: float = 3.5
    lesion_per_decade: float = 0.25

    def ageing_model(self) -> AgeingModel:
        """The ``v1`` model with this family's parameters (its link to age; the spreadsheet's eTIV/nWBV)."""
        return AgeingModel(**{parameter.name: getattr(self, parameter.name) for parameter in fields(AgeingParameters)})


@dataclass(frozen=True)
class ScannerVariation:
    """Per-session scanner: contrast, gamma, bias, noise, grid, field of view and pose ranges."""

    #: Tissue signal relative to white matter ~ U(low, high), kept in T1 order CSF < GM < WM.
    gm_signal: tuple[float, float] = (0.55, 0.85)
    #: CSF signal as a share of grey matter's.
    csf_share: tuple[float, float] = (0.1, 0.6)
    texture_gain: tuple[float, float] = (0.4, 1.0)
    head_gain: tuple[float, float] = (0.6, 1.3)
    #: log γ ~ N(0, sd²); the signal (white matter = 1) is raised to γ.
    gamma_log_sd: float = 0.15
    bias_sd: tuple[float, float] = (0.05, 0.3)
    noise_sd: tuple[float, float] = (0.01, 0.06)
    #: In-plane voxel size ~ U(low, high); slice thickness ~ U(in-plane, high).
    in_plane_mm: tuple[float, float] = (0.8, 1.5)
    slice_mm: tuple[float, float] = (0.8, 3.0)
    #: Field of view (mm) in plane and across slices ~ U(low, high).
    fov_in_plane_mm: tuple[float, float] = (220.0, 256.0)
    fov_slices_mm: tuple[float, float] = (180.0, 230.0)
    orientations: tuple[str, ...] = ORIENTATIONS
    rotation_deg: tuple[float, float, float] = (20.0, 10.0, 10.0)
    shift_mm: tuple[float, float, float] = (6.0, 15.0, 15.0)
    intensity_scale: tuple[float, float] = (300.0, 3000.0)


@dataclass(frozen=True)
class PopulationPreset:
    """A ``v2`` cohort: the ``v1`` preset giving its people and visits, and the ``v2`` variation."""

    name: str
    cohort: Preset
    anatomy: AnatomyVariation = field(default_factory=AnatomyVariation)
    ageing: AgeingFamily = field(default_factory=AgeingFamily)
    scanner: ScannerVariation = field(default_factory=ScannerVariation)
    generator: str = GENERATOR

    @property
    def resolution(self) -> float:
        return self.cohort.resolution

    @property
    def n_subjects(self) -> int:
        return self.cohort.n_subjects

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class ScanSetting:
    """One session's scanner: contrast, grid (voxel axes ↦ world) and the ``v1`` noise/bias state."""

    gm_signal: float
    csf_signal: float
    texture_gain: float
    head_gain: float
    gamma: float
    orientation: str
    zooms: tuple[float, float, float]
    shape: tuple[int, int, int]


@dataclass(frozen=True)
class PersonRecord:
    """What ``v2`` adds to a ``v1`` subject: head, anatomy, ageing weights and patterns, scanners."""

    subject_id: str
    head: str
    axis_log_scale: tuple[float, float, float]
    shear: tuple[float, float, float]
    velocity_mm: float
    regional_mm: float
    anatomy_seed: int
    variant: str
    weights: tuple[float, ...]
    pattern_seed: int
    lesion_seed: int
    #: Brain age before the components (age + offset + dementia), per session.
    latent_ages: tuple[float, ...]
    settings: tuple[ScanSetting, ...]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def component_decades(family: AgeingFamily, weights: tuple[float, ...], latent_age: float) -> np.ndarray:
    """Decades of ageing of each component: ``w_k · max(L − reference_age, 0) / 10``."""
    return np.asarray(weights) * max(latent_age - family.reference_age, 0.0) / 10.0


def brain_age(family: AgeingFamily, weights: tuple[float, ...], latent_age: float) -> float:
    """Brain age from the components: ``L + 10·d·(Σ π_k w_k − 1)`` (see the module doc)."""
    shares = np.asarray(family.shares, dtype=float) / sum(family.shares)
    d = max(latent_age - family.reference_age, 0.0) / 10.0
    return float(latent_age + 10.0 * d * (float(shares @ np.asarray(weights)) - 1.0))


def sample_population(preset: PopulationPreset, seed: int) -> tuple[tuple[SubjectRecord, PersonRecord], ...]:
    """Draw every person of ``preset`` from ``seed``: the ``v1`` records (with ``v2`` brain ages and
    scanner bias/noise) beside each person's :class:`PersonRecord`."""
    family = preset.ageing
    model = family.ageing_model()
    subjects = sample_cohort(preset.cohort, seed, ageing=model)
    sequences = np.random.SeedSequence((seed, 2)).spawn(len(subjects))
    people = []
    for subject, sequence in zip(subjects, sequences, strict=True):
        rng = np.random.default_rng(sequence)
        person = _sample_person(rng, subject, preset)
        sessions = tuple(
            replace(
                session,
                brain_age=brain_age(family, person.weights, latent),
                bias_sd=float(rng.uniform(*preset.scanner.bias_sd)),
                noise_sd=float(rng.uniform(*preset.scanner.noise_sd)),
                intensity_scale=float(rng.uniform(*preset.scanner.intensity_scale)),
                pose_rotation_deg=_three(float(rng.uniform(-r, r)) for r in preset.scanner.rotation_deg),
                pose_shift_mm=_three(float(rng.uniform(-s, s)) for s in preset.scanner.shift_mm),
            )
            for session, latent in zip(subject.sessions, person.latent_ages, strict=True)
        )
        people.append((replace(subject, sessions=sessions), person))
    return tuple(people)


_T = TypeVar("_T")


def _three(values: Iterable[_T]) -> tuple[_T, _T, _T]:
    """A per-axis generator's three values as a fixed-size tuple (an error if there are not three)."""
    x, y, z = values
    return x, y, z


def _sample_person(rng: np.random.Generator, subject: SubjectRecord, preset: PopulationPreset) -> PersonRecord:
    a, family, s = preset.anatomy, preset.ageing, preset.scanner
    head = a.heads[int(rng.integers(len(a.heads)))]
    variant, multipliers = family.variants[int(rng.integers(len(family.variants)))]
    shares = np.asarray(family.shares, dtype=float) / sum(family.shares)
    multipliers = np.asarray(multipliers, dtype=float) / float(shares @ np.asarray(multipliers, dtype=float))
    weights = multipliers * np.exp(rng.normal(0.0, family.weight_sd, len(COMPONENTS)) - family.weight_sd**2 / 2)
    model = family.ageing_model()
    latent = []
    for session in subject.sessions:
        since_onset = None if subject.onset_days is None else (session.mr_delay - subject.onset_days) / 365.25
        latent.append(model.brain_age(session.age, subject.brain_age_offset, subject.group, since_onset))
    return PersonRecord(
        subject_id=subject.subject_id,
        head=head,
        axis_log_scale=_three(float(v) for v in rng.normal(0.0, a.axis_log_scale_sd, 3)),
        shear=_three(float(v) for v in rng.normal(0.0, a.shear_sd, 3)),
        velocity_mm=float(rng.uniform(*a.velocity_mm)),
        regional_mm=float(rng.uniform(*a.regional_mm)),
        anatomy_seed=int(rng.integers(2**31)),
        variant=variant,
        weights=tuple(float(w) for w in weights),
        pattern_seed=int(rng.integers(2**31)),
        lesion_seed=int(rng.integers(2**31)),
        latent_ages=tuple(latent),
        settings=tuple(_sample_setting(rng, s) for _ in subject.sessions),
    )


def _sample_setting(rng: np.random.Generator, s: ScannerVariation) -> ScanSetting:
    gm = float(rng.uniform(*s.gm_signal))
    in_plane = float(rng.uniform(*s.in_plane_mm))
    thickness = float(rng.uniform(max(in_plane, s.slice_mm[0]), max(in_plane, s.slice_mm[1])))
    fov = (float(rng.uniform(*s.fov_in_plane_mm)), float(rng.uniform(*s.fov_in_plane_mm)), float(rng.uniform(*s.fov_slices_mm)))
    zooms = (in_plane, in_plane, thickness)
    return ScanSetting(
        gm_signal=gm,
        csf_signal=gm * float(rng.uniform(*s.csf_share)),
        texture_gain=float(rng.uniform(*s.texture_gain)),
        head_gain=float(rng.uniform(*s.head_gain)),
        gamma=float(np.exp(rng.normal(0.0, s.gamma_log_sd))),
        orientation=s.orientations[int(rng.integers(len(s.orientations)))],
        zooms=zooms,
        shape=_three(max(8, round(f / z)) for f, z in zip(fov, zooms, strict=True)),
    )


#: For tests: a dozen people on coarse grids (seconds).
POPULATION_TINY = PopulationPreset(
    name="population_tiny",
    cohort=replace(TINY, name="population_tiny"),
    scanner=ScannerVariation(in_plane_mm=(3.0, 4.0), slice_mm=(3.0, 5.0), fov_in_plane_mm=(220.0, 256.0), fov_slices_mm=(180.0, 230.0)),
)
#: The demo's people from many heads, at clinical resolutions between 1 and 3 mm.
POPULATION_DEMO = PopulationPreset(
    name="population",
    cohort=replace(DEMO, name="population"),
    scanner=ScannerVariation(in_plane_mm=(1.0, 2.0), slice_mm=(1.0, 3.0)),
)
#: 1000 people, one scan each, to pre-train on (resolutions 0.8–3 mm: pre-training sees them all).
POPULATION_PRETRAIN = PopulationPreset(name="population_pretrain", cohort=replace(PRETRAIN, name="population_pretrain", resolution=1.5))

POPULATION_PRESETS: dict[str, PopulationPreset] = {p.name: p for p in (POPULATION_TINY, POPULATION_DEMO, POPULATION_PRETRAIN)}
