"""What ``predict`` leaves out of its preprocessing to go faster changes no prepared volume: its work
folder holds, byte for byte, the volumes ``prepare`` makes of the same scans, without QC pictures,
and ``prepare`` over that folder draws the missing pictures without preparing anything again."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from brainage.errors import Problem
from brainage.io import discover
from brainage.predict_store import stored_scans
from brainage.preprocess import make_config, prepare


@pytest.fixture(scope="module")
def two_sessions(tiny_cohort: Path) -> pd.DataFrame:
    """The first scan of two sessions: each is stripped and registered on its own, by predict and by prepare."""
    manifest = discover(tiny_cohort).manifest
    return manifest.drop_duplicates("session_id").head(2).reset_index(drop=True)


@pytest.fixture(scope="module")
def predicted_work(two_sessions: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Predict's work folder after preprocessing ``two_sessions`` (two workers: one ITK thread each,
    so the registration is bit-reproducible)."""
    work = tmp_path_factory.mktemp("work")
    problems: list[Problem] = []
    scans = list(stored_scans(two_sessions, [0, 1], make_config("standard"), work, problems, Counter(), workers=2))
    assert not problems and sorted(index for scan in scans for index in scan.indices) == [0, 1]
    return work


def test_predict_stores_the_volumes_prepare_makes_without_pictures(two_sessions: pd.DataFrame, predicted_work: Path, tmp_path: Path) -> None:
    report = prepare(two_sessions, tmp_path / "cache", "standard", workers=2)
    assert report.done == 2 and not report.problems
    for cache_file, qc_file in zip(report.manifest["cache_file"], report.manifest["qc_file"], strict=True):
        stored = predicted_work / cache_file  # the same key: the same content and configuration
        assert np.array_equal(np.load(stored), np.load(tmp_path / "cache" / cache_file))
        assert np.load(stored).dtype == np.float16
        assert (tmp_path / "cache" / qc_file).read_bytes()[:4] == b"\x89PNG"
    assert not list(predicted_work.glob("qc/*.png"))


def test_prepare_over_predicts_folder_draws_the_missing_pictures_only(two_sessions: pd.DataFrame, predicted_work: Path) -> None:
    volumes = {path.name: path.stat().st_mtime_ns for path in predicted_work.glob("volumes/*.npy")}
    report = prepare(two_sessions, predicted_work, "standard", workers=1)
    assert report.cached == 2 and report.done == 0
    pictures = [predicted_work / name for name in report.manifest["qc_file"]]
    assert all(picture.read_bytes()[:4] == b"\x89PNG" for picture in pictures)
    assert {path.name: path.stat().st_mtime_ns for path in predicted_work.glob("volumes/*.npy")} == volumes
    drawn = [picture.stat().st_mtime_ns for picture in pictures]
    prepare(two_sessions, predicted_work, "standard", workers=1)
    assert [picture.stat().st_mtime_ns for picture in pictures] == drawn  # drawn once
