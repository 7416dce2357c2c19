"""A synthetic OASIS-2-shaped cohort built from the MNI152 template, with known ground truth.

Sample records (:func:`sample_cohort`), render them deterministically (:mod:`.render`) and write
them like OASIS-2 raw (:func:`synthesize`); ``brainage synth`` is the command-line entry point.
The spreadsheet follows from the records alone (:func:`demographics`, :mod:`.spreadsheet`).
"""

from brainage.cohort.ageing import AGEING, GROUPS, AgeingModel
from brainage.cohort.anatomy import Anatomy, load_anatomy
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
    synthesize,
    true_brain_age_mae,
    unfinished,
)

__all__ = [
    "ACQUISITION",
    "AGEING",
    "DEMO",
    "DEMOGRAPHICS",
    "GROUND_TRUTH",
    "GROUPS",
    "MEASUREMENT",
    "OASIS2",
    "PRESETS",
    "REAL_OASIS2",
    "SPREADSHEET",
    "SUMMARY",
    "TINY",
    "Acquisition",
    "AgeingModel",
    "Anatomy",
    "Demographics",
    "Measurement",
    "Preset",
    "ScanRecord",
    "SessionRecord",
    "SubjectAnatomy",
    "SubjectRecord",
    "SynthesisResult",
    "Tissues",
    "Volumes",
    "acquire",
    "aged_tissues",
    "demographics",
    "demographics_table",
    "get_preset",
    "load_anatomy",
    "measure",
    "sample_cohort",
    "scan_path",
    "scanner_affine",
    "spreadsheet_statistics",
    "subject_anatomy",
    "summary_table",
    "synthesize",
    "t1_signal",
    "true_brain_age_mae",
    "unfinished",
]
