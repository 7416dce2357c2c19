"""What ``predict`` leaves out of its preprocessing to go faster changes no prepared volume: its work
folder holds, byte for byte, the volumes ``prepare`` makes of the same scans, without QC pictures,
and ``prepare`` over that folder draws the missing pictures without preparing anything again."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from brainage.io import discover
from brainage.preprocess import load_cache, prepare
from brainage.preprocess.cache import _read_spatial, _write_spatial
from brainage.preprocess.pipelines import Spatial

#: In a fresh interpreter (its workers then run ITK on one thread, which makes the registration
#: bit-reproducible; workers forked from a process where ITK already ran keep its thread count):
#: predict's preprocessing of the table argv[1] into the work folder argv[2], then prepare's into argv[3].
SCRIPT = """
import sys
from collections import Counter
from pathlib import Path
import pandas as pd
from brainage.predict_store import stored_scans
from brainage.preprocess import make_config, prepare
rows = pd.read_csv(sys.argv[1])
problems = []
scans = list(stored_scans(rows, list(range(len(rows))), make_config("standard"), Path(sys.argv[2]), problems, Counter(), workers=2))
assert not problems and len(scans) == len(rows), problems
report = prepare(rows, sys.argv[3], "standard", workers=2)
assert report.done == len(rows) and not report.problems, report.problems
"""


@pytest.fixture(scope="module")
def two_sessions(tiny_cohort: Path) -> pd.DataFrame:
    """The first scan of two sessions: each is stripped and registered on its own, by predict and by prepare."""
    manifest = discover(tiny_cohort).manifest
    return manifest.drop_duplicates("session_id").head(2).reset_index(drop=True)


@pytest.fixture(scope="module")
def prepared(two_sessions: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Predict's work folder and prepare's cache folder of ``two_sessions``, each made with two workers."""
    folder = tmp_path_factory.mktemp("invariance")
    two_sessions.to_csv(folder / "scans.csv", index=False)
    subprocess.run([sys.executable, "-c", SCRIPT, str(folder / "scans.csv"), str(folder / "work"), str(folder / "cache")], check=True)
    return folder / "work", folder / "cache"


def test_predict_stores_the_volumes_prepare_makes_without_pictures(prepared: tuple[Path, Path]) -> None:
    work, cache = prepared
    manifest = load_cache(cache).manifest
    assert len(manifest) == 2
    for cache_file, qc_file in zip(manifest["cache_file"], manifest["qc_file"], strict=True):
        stored = np.load(work / cache_file)  # the same key: the same content and configuration
        assert stored.dtype == np.float16 and np.array_equal(stored, np.load(cache / cache_file))
        assert (cache / qc_file).read_bytes()[:4] == b"\x89PNG"
    assert not list(work.glob("qc/*.png"))


def test_prepare_over_predicts_folder_draws_the_missing_pictures_only(two_sessions: pd.DataFrame, prepared: tuple[Path, Path]) -> None:
    predicted_work = prepared[0]
    volumes = {path.name: path.stat().st_mtime_ns for path in predicted_work.glob("volumes/*.npy")}
    report = prepare(two_sessions, predicted_work, "standard", workers=1)
    assert report.cached == 2 and report.done == 0
    pictures = [predicted_work / name for name in report.manifest["qc_file"]]
    assert all(picture.read_bytes()[:4] == b"\x89PNG" for picture in pictures)
    assert {path.name: path.stat().st_mtime_ns for path in predicted_work.glob("volumes/*.npy")} == volumes
    drawn = [picture.stat().st_mtime_ns for picture in pictures]
    prepare(two_sessions, predicted_work, "standard", workers=1)
    assert [picture.stat().st_mtime_ns for picture in pictures] == drawn  # drawn once


def test_a_brain_mask_reads_back_as_written_in_either_memory_order(tmp_path: Path) -> None:
    """The spatial file packs the mask's bits in the order they lie in memory (no copy of a
    Fortran-ordered mask, as fill_voids gives); files written before, always in C order, read the same."""
    mask = np.random.default_rng(0).random((5, 6, 7)) > 0.5
    world_to_source = np.diag([1.0, 2.0, 3.0, 1.0])
    for name, written in (("c.npz", np.ascontiguousarray(mask)), ("f.npz", np.asfortranarray(mask))):
        _write_spatial(tmp_path / name, Spatial(written, world_to_source))
        spatial = _read_spatial(tmp_path / name)
        assert spatial is not None and np.array_equal(spatial.mask, mask) and np.array_equal(spatial.world_to_source, world_to_source)
    np.savez_compressed(tmp_path / "old.npz", mask=np.packbits(mask.ravel()), shape=np.asarray(mask.shape), world_to_source=world_to_source)
    old = _read_spatial(tmp_path / "old.npz")
    assert old is not None and np.array_equal(old.mask, mask)
