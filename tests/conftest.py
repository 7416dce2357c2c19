"""Shared fixtures: the synthetic cohort is generated once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from brainage.cohort import TINY, synthesize

TINY_SEED = 0


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of a ``tiny`` synthetic OASIS-2 cohort (12 subjects, 24 sessions, 48 scans), seed 0."""
    root = tmp_path_factory.mktemp("cohort") / "tiny"
    synthesize(root, TINY, seed=TINY_SEED, workers=1)
    return root


@pytest.fixture(scope="session")
def tiny_cache_seed(tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of a cache of the whole ``tiny`` cohort prepared with the ``seed`` pipeline (64³ float32);
    open it with :func:`brainage.preprocess.load_cache`."""
    from brainage.preprocess import prepare

    root = tmp_path_factory.mktemp("cache") / "tiny-seed"
    prepare(tiny_cohort, root, "seed")
    return root
