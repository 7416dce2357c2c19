"""A synthetic OASIS-2-shaped cohort with known ground truth, from one of two generators.

``v1`` builds everyone from the MNI152 template: sample records (:func:`sample_cohort`), render
them deterministically (:mod:`.render`) and write them like OASIS-2 raw (:func:`synthesize`);
``brainage synth`` is the command-line entry point. The spreadsheet follows from the records alone
(:func:`demographics`, :mod:`.spreadsheet`). ``v2`` (:mod:`.population`, presets ``population*``)
makes a population: many base heads (:mod:`.heads`), per-person diffeomorphic anatomy, a family of
ageing components and a randomised scanner, written in the same layout; :func:`synthesize` picks the
generator from the preset.
"""

from pathlib import Path

from brainage.cohort.ageing import AGEING, GROUPS, AgeingModel
from brainage.cohort.anatomy import Anatomy, load_anatomy
from brainage.cohort.heads import HeadMaps, available_heads, head_anatomy, head_maps
from brainage.cohort.people import (
    ACQUISITION,
    DEMOGRAPHICS,
    MEASUREMENT,
    Acquisition,
    Demographics,
    Measurement,
    ScanRecord,
    SessionRecord,
    SubjectRecord,
    sample_cohort,
)
from brainage.cohort.population import (
    COMPONENTS,
    POPULATION_PRESETS,
    AgeingFamily,
    AnatomyVariation,
    PersonRecord,
    PopulationPreset,
    ScannerVariation,
    ScanSetting,
    sample_population,
)
from brainage.cohort.population_write import synthesize_population
from brainage.cohort.presets import DEMO, OASIS2, PRESETS, TINY, Preset, get_preset
from brainage.cohort.render import (
    SubjectAnatomy,
    Tissues,
    Volumes,
    acquire,
    aged_tissues,
    measure,
    scanner_affine,
    subject_anatomy,
    t1_signal,
)
from brainage.cohort.spreadsheet import REAL_OASIS2, demographics, demographics_table, spreadsheet_statistics
from brainage.cohort.write import (
    GROUND_TRUTH,
    SPREADSHEET,
    SUMMARY,
    SynthesisResult,
    scan_path,
    summary_table,
    true_brain_age_mae,
    unfinished,
)
from brainage.cohort.write import synthesize as synthesize_v1


def synthesize(out: str | Path, preset: Preset | PopulationPreset, seed: int = 0, workers: int = 1, ageing: AgeingModel = AGEING) -> SynthesisResult:
    """Generate ``preset`` from ``seed`` into ``out``: ``v1`` (:func:`brainage.cohort.write.synthesize`,
    ``ageing`` its model) for a :class:`Preset`, ``v2`` (:func:`synthesize_population`) for a
    :class:`PopulationPreset`, whose ageing family is part of the preset."""
    if isinstance(preset, PopulationPreset):
        return synthesize_population(out, preset, seed=seed, workers=workers)
    return synthesize_v1(out, preset, seed=seed, workers=workers, ageing=ageing)


__all__ = [
    "ACQUISITION",
    "AGEING",
    "COMPONENTS",
    "DEMO",
    "DEMOGRAPHICS",
    "GROUND_TRUTH",
    "GROUPS",
    "MEASUREMENT",
    "OASIS2",
    "POPULATION_PRESETS",
    "PRESETS",
    "REAL_OASIS2",
    "SPREADSHEET",
    "SUMMARY",
    "TINY",
    "Acquisition",
    "AgeingFamily",
    "AgeingModel",
    "Anatomy",
    "AnatomyVariation",
    "Demographics",
    "HeadMaps",
    "Measurement",
    "PersonRecord",
    "PopulationPreset",
    "Preset",
    "ScanRecord",
    "ScanSetting",
    "ScannerVariation",
    "SessionRecord",
    "SubjectAnatomy",
    "SubjectRecord",
    "SynthesisResult",
    "Tissues",
    "Volumes",
    "acquire",
    "aged_tissues",
    "available_heads",
    "demographics",
    "demographics_table",
    "get_preset",
    "head_anatomy",
    "head_maps",
    "load_anatomy",
    "measure",
    "sample_cohort",
    "sample_population",
    "scan_path",
    "scanner_affine",
    "spreadsheet_statistics",
    "subject_anatomy",
    "summary_table",
    "synthesize",
    "synthesize_population",
    "t1_signal",
    "true_brain_age_mae",
    "unfinished",
]
