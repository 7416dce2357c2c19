"""predict at cohort scale: a batch killed with SIGKILL resumes with only its unfinished scans, a rerun
prepares nothing, and ``sessions=True`` prepares repeats exactly as ``prepare`` does with session reuse."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from brainage.checkpoint import BrainAgeCheckpoint
from brainage.evaluation import AgeBiasCorrector
from brainage.io import discover
from brainage.models import build_model
from brainage.predict import BrainAgeModel, find_inputs
from brainage.predict_store import OUTCOMES, default_work, stored_scans
from brainage.preprocess import load_cache, make_config, prepare
from brainage.utils import write_csv

#: Predicts argv[4:] with the checkpoint argv[1] into the work folder argv[2], writes the CSV argv[3],
#: and prints what became of the scans.
SCRIPT = """
import json, sys
from brainage.predict import BrainAgeModel
from brainage.utils import write_csv
model = BrainAgeModel.load(sys.argv[1], device="cpu")
table = model.predict(sys.argv[4:], cache=None, workers=2, work=sys.argv[2])
write_csv(table, sys.argv[3])
print("OUTCOMES " + json.dumps(model.preprocessing_))
"""


def _finished(work: Path) -> dict[str, int]:
    """The stored volumes whose record is written (a scan done), by name → modification time (ns); a
    record being written atomically (a hidden temporary, pathlib's glob lists it) is not one yet."""
    return {record.with_suffix(".npy").name: record.with_suffix(".npy").stat().st_mtime_ns for record in (work / "volumes").glob("[!.]*.json")}


def _predict(checkpoint: Path, work: Path, out: Path, scans: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(checkpoint), str(work), str(out), *scans], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _outcomes(stdout: str) -> dict[str, int]:
    return json.loads(next(line for line in stdout.splitlines() if line.startswith("OUTCOMES "))[len("OUTCOMES ") :])


@dataclass(frozen=True)
class Resumed:
    scans: list[str]
    work: Path
    before: dict[str, int]  # the scans finished when the first run was killed
    after: dict[str, int]  # every scan finished, after the rerun
    outcomes: dict[str, int]  # what the rerun did
    predictions: Path


@pytest.fixture(scope="module")
def resumed(untrained_checkpoints: list[Path], tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Resumed:
    """Six scans predicted in a subprocess killed (SIGKILL) once some are stored, then predicted again."""
    scans = [str(path) for path in sorted(tiny_cohort.glob("OAS2_RAW_PART*/*/RAW/mpr-*.nifti.hdr"))[:6]]
    folder = tmp_path_factory.mktemp("resume")
    out = folder / "predictions.csv"
    work = default_work(out)
    killed = _predict(untrained_checkpoints[0], work, out, scans)
    deadline = time.monotonic() + 300
    while not _finished(work) and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(killed.pid, signal.SIGKILL)
    killed.communicate()
    time.sleep(0.5)  # the pool's workers die with their parent (PR_SET_PDEATHSIG)
    before = _finished(work)
    assert not out.exists() and 0 < len(before) < len(scans), f"the kill came too late or too early: {len(before)} of {len(scans)} stored"
    rerun = _predict(untrained_checkpoints[0], work, out, scans)
    stdout, stderr = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, stderr
    return Resumed(scans, work, before, _finished(work), _outcomes(stdout), out)


def test_a_killed_batch_resumes_with_only_its_unfinished_scans(resumed: Resumed, untrained_checkpoints: list[Path], tmp_path: Path) -> None:
    done_before = len(resumed.before)
    assert resumed.outcomes["already in the work folder"] == done_before
    assert resumed.outcomes["prepared now"] == len(resumed.scans) - done_before and resumed.outcomes["failed"] == 0
    assert len(resumed.after) == len(resumed.scans)
    assert {name: resumed.after[name] for name in resumed.before} == resumed.before  # finished scans were not written again
    assert not [path for path in resumed.work.rglob(".*") if ".tmp" in path.name]  # what the killed writers left is gone
    model = BrainAgeModel.load(untrained_checkpoints[0], device="cpu")
    uninterrupted = model.predict(resumed.scans, cache=None, work=tmp_path / "fresh")
    assert model.preprocessing_["prepared now"] == len(resumed.scans)
    write_csv(uninterrupted, tmp_path / "uninterrupted.csv")
    pd.testing.assert_frame_equal(pd.read_csv(resumed.predictions), pd.read_csv(tmp_path / "uninterrupted.csv"), rtol=1e-5)


def test_a_second_run_over_the_same_scans_prepares_nothing(resumed: Resumed, untrained_checkpoints: list[Path]) -> None:
    model = BrainAgeModel.load(untrained_checkpoints[0], device="cpu")
    again = model.predict(resumed.scans, cache=None, work=resumed.work)
    assert model.preprocessing_ == {outcome: len(resumed.scans) if outcome == "already in the work folder" else 0 for outcome in OUTCOMES}
    assert _finished(resumed.work) == resumed.after
    assert again["brain_age"].notna().all() and len(again) == len(resumed.scans)


def test_sessions_are_prepared_with_session_reuse_as_prepare_prepares_them(tiny_cohort: Path, tmp_path: Path) -> None:
    manifest = discover(tiny_cohort).manifest
    session = manifest[manifest["session_id"] == manifest["session_id"].iat[0]].reset_index(drop=True)
    assert len(session) == 2
    torch.manual_seed(0)
    checkpoint = BrainAgeCheckpoint(
        model=build_model("resnet", widths=[4, 8], stem_width=4).eval(), model_name="resnet", age_mean=75.0, age_std=10.0,
        preprocessing=make_config("standard").to_dict(), corrector=AgeBiasCorrector.from_dict({"method": "residual", "slope": 0.0, "intercept": 0.0, "n_subjects": 40}),
        train_age_range=(60.0, 90.0),
    )  # fmt: skip  # arguments grouped by meaning
    model = BrainAgeModel([checkpoint], device="cpu")
    rows = model.predict(session[::-1], sessions=True, cache=None, work=tmp_path / "work")  # the repeat first: the order prepare sorts into is kept
    assert model.preprocessing_["aligned to a session mate"] == 1 and model.preprocessing_["prepared now"] == 1
    assert len(rows) == 1 and rows["n_scans"].iat[0] == 2
    cache = load_cache(prepare(session, tmp_path / "cache", "standard").root)
    assert cache.manifest["reference_scan"].notna().sum() == 1
    stored = sorted(path.name for path in (tmp_path / "work" / "volumes").glob("*.npy"))
    assert stored == sorted(Path(name).name for name in cache.manifest["cache_file"])  # the same keys: the same reference, the same alignment
    for i, name in enumerate(cache.manifest["cache_file"]):  # ANTs' registration is not bit-reproducible run to run
        assert np.corrcoef(np.load(tmp_path / "work" / name).ravel(), np.asarray(cache.volume(i)).ravel())[0, 1] > 0.999


def test_without_keep_each_volume_leaves_the_folder_once_read(tiny_cohort: Path, tmp_path: Path) -> None:
    """What ``predict`` does in its temporary folder (``work=None``): few volumes on disk at a time."""
    rows, _ = find_inputs(sorted(str(path) for path in tiny_cohort.glob("OAS2_RAW_PART*/*/RAW/mpr-*.nifti.hdr"))[:2])
    counts: Counter[str] = Counter()
    seen = []
    for scan in stored_scans(rows, [0, 1], make_config("seed"), tmp_path, [], counts, keep=False):
        seen.append(scan.indices)
        assert scan.volume.shape == make_config("seed").shape and not list((tmp_path / "volumes").glob("*.npy"))
    assert sorted(seen) == [(0,), (1,)] and counts["prepared now"] == 2
