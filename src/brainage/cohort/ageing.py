"""The ageing model: how brain age changes the synthetic anatomy, every parameter in one place.

Brain age drives anatomy: ``brain_age = age + offset`` with a hidden per-subject offset
~ N(0, ``offset_sd``²); Demented subjects add ``dementia_years`` from their first visit, and
everyone with dementia (Demented from the first visit, Converted from conversion) ages
``dementia_rate`` extra years per year since onset.

With ``d = max(brain_age − reference_age, 0) / 10`` decades since the age of the template and
``atrophy = d + acceleration·d²``, tissue is sampled at ``x + u(x)`` in template space, where the
displacement ``u`` (composed with the subject's own warp, applied once) sums

- sulcal widening: ``sulcal_mm·atrophy · ∇(G₂ₘₘ * CSF)`` (gradient scaled to length ≤ 1), which
  opens sulci towards the CSF in them;
- cortical retraction: ``retraction_mm·atrophy · n_icv·exp(−depth/15 mm)``, the brain shrinking
  away from the skull as the subarachnoid space grows;
- ventricular enlargement: ``−min(ventricle_mm·d³·exp(−r/ventricle_falloff_mm), r + ½ voxel) · n_v``
  for a point ``r`` mm outside the ventricles with outward normal ``n_v``: the walls move out and
  the tissue around them is pushed back.

Grey matter touching CSF thins: a share ``gm_thinning·atrophy`` of it becomes CSF. White matter
darkens on T1 by ``wm_signal_drop·d`` and periventricular white matter by a further
``wm_lesion·d²`` (hypointense lesions). The defaults give nWBV ≈ 0.78 at 60 falling ≈ 0.3 % of
intracranial volume a year, and ventricles that double from 60 to 90, as in OASIS;
``brainage synth`` writes the measured values into ``cohort.json``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

GROUPS = ("Nondemented", "Demented", "Converted")


@dataclass(frozen=True)
class AgeingParameters:
    """Named parameters of brain ageing and of its link to chronological age (see the module doc),
    held by the ``v1`` model and by the ``v2`` family (:class:`~brainage.cohort.population.AgeingFamily`)."""

    #: Age (years) the MNI152 template represents: its young adults' mean age.
    reference_age: float = 25.0
    #: Curvature of atrophy: ``atrophy = d + acceleration·d²`` (d in decades since reference_age).
    acceleration: float = 0.15
    #: Sulcal widening per unit of atrophy (mm).
    sulcal_mm: float = 0.15
    #: Cortical retraction from the skull per unit of atrophy (mm).
    retraction_mm: float = 0.3
    #: Share of CSF-facing grey matter that becomes CSF per unit of atrophy.
    gm_thinning: float = 0.02
    #: Ventricle-wall displacement per decade³ (mm) and its fall-off distance (mm).
    ventricle_mm: float = 0.025
    ventricle_falloff_mm: float = 15.0
    #: Relative drop of white-matter T1 signal per decade.
    wm_signal_drop: float = 0.015
    #: Extra relative drop of periventricular white-matter signal per decade².
    wm_lesion: float = 0.006
    #: Standard deviation of the per-subject brain-age offset (years).
    offset_sd: float = 3.0
    #: Extra brain age of Demented subjects at their first visit (years).
    dementia_years: float = 4.0
    #: Extra brain-age years per year since the onset of dementia.
    dementia_rate: float = 1.0


@dataclass(frozen=True)
class AgeingModel(AgeingParameters):
    """The ``v1`` ageing model: the parameters and what they make of one brain age."""

    def decades(self, brain_age: float) -> float:
        """Decades of ageing since the template: ``max(brain_age − reference_age, 0) / 10``."""
        return max(brain_age - self.reference_age, 0.0) / 10.0

    def atrophy(self, brain_age: float) -> float:
        """Cortical atrophy in decade units: ``d + acceleration·d²``."""
        d = self.decades(brain_age)
        return d + self.acceleration * d * d

    def brain_age(self, age: float, offset: float, group: str, years_since_onset: float | None) -> float:
        """Brain age of someone ``age`` years old with this ``offset`` and dementia history."""
        extra = self.dementia_years if group == "Demented" else 0.0
        if years_since_onset is not None and years_since_onset > 0:
            extra += self.dementia_rate * years_since_onset
        return age + offset + extra

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


AGEING = AgeingModel()
