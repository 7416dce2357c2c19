"""Cohort sizes and image geometry, one frozen dataclass per preset: every number to tune is here."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from brainage.errors import BrainAgeError

if TYPE_CHECKING:
    from brainage.cohort.population import PopulationPreset


@dataclass(frozen=True)
class Preset:
    """How many people, sessions and scans to make, and on which scanner grid.

    ``visits`` and ``repeats`` are ``(count, number of subjects/sessions)`` pairs; the field of
    view is ``shape × zooms`` (256 × 256 × 160 mm for every preset, as OASIS-2), sagittal: the
    third axis (``zooms[2]`` mm) runs left–right. ``resolution`` is the grid (mm) on which the
    anatomy is built before it is resampled into the scanner grid.
    """

    name: str
    nondemented: int
    demented: int
    converted: int
    visits: tuple[tuple[int, int], ...]
    repeats: tuple[tuple[int, int], ...]
    shape: tuple[int, int, int]
    zooms: tuple[float, float, float]
    resolution: float
    #: Overrides of :class:`brainage.cohort.people.Demographics` (field, value), e.g. the ages of ``oasis1``.
    demographics: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        if sum(n for _, n in self.visits) != self.n_subjects:
            raise ValueError(f"preset {self.name}: visits do not add up to {self.n_subjects} subjects")
        if sum(n for _, n in self.repeats) != self.n_sessions:
            raise ValueError(f"preset {self.name}: repeats do not add up to {self.n_sessions} sessions")
        if self.converted and max(v for v, _ in self.visits) < 2:
            raise ValueError(f"preset {self.name}: converted subjects need at least two visits")

    @property
    def n_subjects(self) -> int:
        return self.nondemented + self.demented + self.converted

    @property
    def n_sessions(self) -> int:
        return sum(v * n for v, n in self.visits)

    @property
    def n_scans(self) -> int:
        return sum(r * n for r, n in self.repeats)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


#: OASIS-2 itself: 150 subjects (72/64/14), 373 sessions of 2–5 visits, 1368 scans of 3–4 repeats,
#: 256 × 256 × 128 voxels of 1.0 × 1.0 × 1.25 mm.
OASIS2 = Preset(
    name="oasis2",
    nondemented=72,
    demented=64,
    converted=14,
    visits=((2, 98), (3, 37), (4, 9), (5, 6)),
    repeats=((3, 124), (4, 249)),
    shape=(256, 256, 128),
    zooms=(1.0, 1.0, 1.25),
    resolution=1.5,
)

#: The demo: sized so that synth + prepare (standard pipeline) + 4-fold training of a small CNN +
#: prediction + report take minutes on 2 CPU cores (the README gives the measured time): 128
#: subjects (the network needs people more than repeats; with 64 it lost to the voxel ridge, whose
#: folds' validation sets of 5–6 people also chose under-trained epochs), 192 sessions, 256 scans,
#: one or two repeats per session.
DEMO = Preset(
    name="demo",
    nondemented=62,
    demented=54,
    converted=12,
    visits=((1, 64), (2, 64)),
    repeats=((1, 128), (2, 64)),
    shape=(128, 128, 64),
    zooms=(2.0, 2.0, 2.5),
    resolution=2.0,
)

#: For tests: generates in seconds.
TINY = Preset(
    name="tiny",
    nondemented=6,
    demented=5,
    converted=1,
    visits=((2, 12),),
    repeats=((2, 24),),
    shape=(64, 64, 32),
    zooms=(4.0, 4.0, 5.0),
    resolution=3.0,
)

#: OASIS-1 itself: 416 people aged 18–96 (100 of those over 60 with CDR > 0), one session each and a
#: second one days later for 20 of them (the reliability re-scans), 3–4 scans per session, the
#: OASIS-2 scanner grid. Written in the OASIS-1 layout with ``--layout oasis1`` (brainage.cohort.oasis1).
OASIS1 = Preset(
    name="oasis1",
    nondemented=316,
    demented=100,
    converted=0,
    visits=((1, 396), (2, 20)),
    repeats=((3, 100), (4, 336)),
    shape=(256, 256, 128),
    zooms=(1.0, 1.0, 1.25),
    resolution=1.5,
    demographics=(
        ("baseline_age_mean", 45.0),
        ("baseline_age_sd", 27.0),
        ("min_age", 18.0),
        ("max_age", 97.0),
        ("min_gap_days", 1),
        ("gap_shape", 1.5),
        ("gap_scale_days", 14.0),
        ("skipped_visit_share", 0.0),
        ("id_span", 457 / 416),
    ),
)

#: Many people to pre-train on before fine-tuning on a cohort (``brainage train --init``): 1000 people
#: with OASIS-2's ages and share of dementia, one session of one scan each, on the demo's scanner grid
#: (the cheapest to render and prepare).
PRETRAIN = Preset(
    name="pretrain",
    nondemented=540,
    demented=460,
    converted=0,
    visits=((1, 1000),),
    repeats=((1, 1000),),
    shape=(128, 128, 64),
    zooms=(2.0, 2.0, 2.5),
    resolution=2.0,
)

PRESETS: dict[str, Preset] = {preset.name: preset for preset in (TINY, DEMO, OASIS2, OASIS1, PRETRAIN)}


def get_preset(name: str) -> Preset | PopulationPreset:
    """The preset called ``name``: a ``v1`` :class:`Preset` or a ``v2`` population preset
    (:data:`brainage.cohort.population.POPULATION_PRESETS`)."""
    from brainage.cohort.population import POPULATION_PRESETS  # here: population imports this module

    if name in PRESETS:
        return PRESETS[name]
    try:
        return POPULATION_PRESETS[name]
    except KeyError:
        raise BrainAgeError(f"unknown preset {name!r}; choose one of {', '.join([*PRESETS, *POPULATION_PRESETS])}") from None
