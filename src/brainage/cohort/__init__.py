"""A synthetic OASIS-2-shaped cohort built from the MNI152 template, with known ground truth.

Sample records (:func:`sample_cohort`), render them deterministically (:mod:`.render`) and write
them like OASIS-2 raw (:func:`synthesize`); ``brainage synth`` is the command-line entry point.
"""

from brainage.cohort.ageing import AGEING, GROUPS, AgeingModel
from brainage.cohort.anatomy import Anatomy, load_anatomy
from brainage.cohort.people import (
    ACQUISITION,
    DEMOGRAPHICS,
    Acquisition,
    Demographics,
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
from brainage.cohort.write import (
    GROUND_TRUTH,
    SPREADSHEET,
    SUMMARY,
    SynthesisResult,
    best_possible_mae,
    scan_path,
    summary_table,
    synthesize,
)

__all__ = [
    "ACQUISITION",
    "AGEING",
    "DEMO",
    "DEMOGRAPHICS",
    "GROUND_TRUTH",
    "GROUPS",
    "OASIS2",
    "PRESETS",
    "SPREADSHEET",
    "SUMMARY",
    "TINY",
    "Acquisition",
    "AgeingModel",
    "Anatomy",
    "Demographics",
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
    "best_possible_mae",
    "get_preset",
    "load_anatomy",
    "measure",
    "sample_cohort",
    "scan_path",
    "scanner_affine",
    "subject_anatomy",
    "summary_table",
    "synthesize",
    "t1_signal",
]
