"""Preprocessing pipelines (``standard``, ``tutorial``) and the on-disk cache they fill."""

from brainage.preprocess.cache import PreparedCache, PrepareReport, content_hash, load_cache, prepare
from brainage.preprocess.pipelines import (
    PipelineConfig,
    PreparedScan,
    SeedConfig,
    StandardConfig,
    TutorialConfig,
    config_from_dict,
    make_config,
    preprocess_scan,
)

__all__ = [
    "PipelineConfig",
    "PrepareReport",
    "PreparedCache",
    "PreparedScan",
    "SeedConfig",
    "StandardConfig",
    "TutorialConfig",
    "config_from_dict",
    "content_hash",
    "load_cache",
    "make_config",
    "prepare",
    "preprocess_scan",
]
