"""``predict``'s preprocessing: each scan prepared once into a work folder, streamed to the network.

The work folder is a ``prepare`` cache folder (:mod:`brainage.preprocess.cache`) filled by the very
worker ``prepare`` runs: a scan's volume, record and registration are keyed by its content hash and
the configuration's ``volume_digest``, each written atomically, and a scan whose record is there is
read back instead of prepared. No QC picture is drawn (it changes no volume and costs a share of a
scan's CPU time; ``prepare`` draws the missing ones should the folder be prepared as a cache). A
batch killed at any point therefore leaves only finished scans behind, and its rerun (or a second
run over the same scans) prepares only the others. With ``sessions`` the repeats of a session are
prepared as ``prepare`` prepares them with ``session_reuse``: in sorted order by one worker, aligned
to the first that succeeds.

Memory stays bounded whatever the number of scans: at most ``2 × workers`` sessions are in flight
(:func:`brainage.utils.parallel_map`), a worker returns a record and not a volume, and a volume is
read from the folder only when its batch goes to the network.
"""

from __future__ import annotations

import math
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainage.errors import InputError, Problem
from brainage.io.images import check_scan_file
from brainage.io.manifest import sort_manifest
from brainage.preprocess.adequacy import MEASURES, AdequacyConfig
from brainage.preprocess.cache import _Job, _memo_hash, _prepare_session, _running, _sessions
from brainage.preprocess.pipelines import PipelineConfig
from brainage.utils import parallel_map

#: Suffix of the default work folder, beside the predictions: ``out.csv`` → ``out.csv.parts``.
WORK_SUFFIX = ".parts"
#: What became of each scan (:attr:`brainage.predict.BrainAgeModel.preprocessing_`), in display order.
OUTCOMES = ("from the training cache", "already in the work folder", "prepared now", "aligned to a session mate", "failed")
_STATUS = {"cached": OUTCOMES[1], "done": OUTCOMES[2], "reused registration": OUTCOMES[2], "aligned": OUTCOMES[3]}
#: Adequacy thresholds that refuse no header: ``force`` prepares such scans too.
_ACCEPT_ANY_HEADER = {"max_voxel_mm": math.inf, "max_isotropic_mm": math.inf, "min_field_of_view_mm": 0.0}


def default_work(out: str | Path) -> Path:
    """The work folder kept beside an output CSV (``predictions.csv`` → ``predictions.csv.parts``)."""
    out = Path(out)
    return out.with_name(out.name + WORK_SUFFIX)


@contextmanager
def work_folder(work: str | Path | None) -> Iterator[Path]:
    """The work folder, held like a ``prepare`` cache (temporaries of killed runs removed when no
    other run holds it); with ``work=None`` a temporary folder, removed afterwards."""
    if work is not None:
        with _running(Path(work)):
            yield Path(work)
        return
    with tempfile.TemporaryDirectory(prefix="brainage-predict-") as folder, _running(Path(folder)):
        yield Path(folder)


def scan_hash(path: str, root: Path) -> str | None:
    """A scan's content hash, remembered in ``root`` by path, size and modification time (None:
    unreadable, which preprocessing then reports)."""
    try:
        return _memo_hash(Path(path), root)
    except InputError:
        return None


def unreadable(path: str) -> Problem:
    """Why a scan whose content hash could not be read is skipped, as its reader says it."""
    try:
        check_scan_file(path)
    except InputError as error:
        return Problem.from_error(error)
    return Problem(path, "cannot be read")


@dataclass(frozen=True)
class StoredScan:
    """A preprocessed scan read back from the work folder, for the rows ``indices``."""

    indices: tuple[int, ...]
    volume: np.ndarray
    qc_score: float
    measures: dict[str, float]


def stored_scans(
    rows: pd.DataFrame,
    indices: Sequence[int],
    config: PipelineConfig,
    root: Path,
    problems: list[Problem],
    counts: Counter[str],
    workers: int = 1,
    sessions: bool = False,
    adequacy: AdequacyConfig | None = None,
    force: bool = False,
    keep: bool = True,
) -> Iterator[StoredScan]:
    """The scans of ``rows.iloc[indices]`` (columns ``path``, ``scan_id``, ``subject_id``,
    ``session_id``) prepared into ``root`` with ``config``, in the order they finish; a path given
    twice is prepared once. Failures are appended to ``problems``; ``counts`` counts the
    ``OUTCOMES``. ``force`` prepares scans whose header fails the ``adequacy`` checks too. Without
    ``keep`` each volume is removed once read back (a temporary folder then holds few at a time)."""
    adequacy = adequacy or AdequacyConfig()
    if force:
        adequacy = replace(adequacy, **_ACCEPT_ANY_HEADER)
    chosen = rows.iloc[list(indices)]
    by_path: dict[str, list[int]] = {}
    for index, path in zip(indices, chosen["path"].astype(str), strict=True):
        by_path.setdefault(path, []).append(index)
    if not by_path:
        return
    jobs = {
        path: _Job(path, str(scan_id), root, config, adequacy=adequacy, qc_picture=False)
        for path, scan_id in zip(chosen["path"].astype(str), chosen["scan_id"], strict=True)
    }
    groups = _sessions(jobs, sort_manifest(chosen), config) if sessions else [(job,) for job in jobs.values()]
    unit = ", sessions" if len(groups) < len(jobs) else ""
    for group, results in parallel_map(_prepare_session, groups, workers, description=f"preprocess ({config.name}{unit})"):
        for job, result in zip(group, results if isinstance(results, list) else [results] * len(group), strict=True):
            scan = _read_back(job.path, result, root, keep)
            if isinstance(scan, Problem):
                problems.append(scan)
                counts[OUTCOMES[-1]] += 1
                continue
            counts[scan[3]] += 1
            yield StoredScan(tuple(by_path[job.path]), *scan[:3])


def _read_back(path: str, result: dict[str, Any] | BaseException, root: Path, keep: bool = True) -> tuple[np.ndarray, float, dict[str, float], str] | Problem:
    """A worker's result as the volume, QC score, adequacy measures and outcome, or the problem;
    without ``keep`` the volume and its record are removed from ``root`` once read."""
    if isinstance(result, InputError):
        return Problem.from_error(result)
    if isinstance(result, BaseException):
        return Problem(path, f"{type(result).__name__}: {result}")
    stored = root / str(result["cache_file"])
    volume = np.load(stored)
    if not keep:
        stored.unlink(missing_ok=True)
        stored.with_suffix(".json").unlink(missing_ok=True)
    if not np.isfinite(volume).all():
        return Problem(path, "preprocessing gave non-finite values (is the image empty or all NaN?)")
    measures = {key: float(result.get(key, math.nan)) for key in MEASURES}
    return volume, float(result["qc_score"]), measures, _STATUS.get(str(result.get("status")), OUTCOMES[2])
