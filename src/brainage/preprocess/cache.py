"""The on-disk cache of preprocessed volumes: prepare it once, load it memory-mapped.

Layout of a cache folder::

    cache.json                      configuration, output grid (shape, affine), format version
    manifest.csv                    one row per prepared scan (``manifest.shard-I-of-N.csv`` per shard)
    volumes/<key>.npy, <key>.json   the volume and its record (QC score, hashes); key = hash of the
                                    input file's content and of the configuration
    spatial/<key>.npz               standard pipeline: brain mask + registration, reused when only
                                    the output grid or the normalisation changes
    qc/<key>.png                    three orthogonal slices through the preprocessed volume (``prepare`` only)
    hashes/<key>.json               content hash memo keyed by path, size and modification time

Every file is written atomically, and a volume's record is written after its volume, so an
interrupted run leaves nothing half-written and the next run picks up where it stopped; the
temporary files of killed writers are removed by the next run that finds no other ``prepare``
of the cache running (``.lock``). Volumes of earlier configurations stay on disk (switching back
costs nothing); ``cache.json`` and the manifest describe the configuration prepared last. Each
record keeps the CPU seconds of the stages that computed it (``cpu_s_<stage>`` columns).

With ``session_reuse`` (the standard pipeline's default) the scans of one session are prepared in
sorted order by one worker: the first that succeeds is stripped and registered, the others are
aligned to it rigidly (``reference_scan`` names it). Such a scan's keys hold the reference's content
hash and the session fields, so a changed reference recomputes its repeats.

Adequacy (:mod:`brainage.preprocess.adequacy`): a scan whose header rules it out (voxels too coarse,
a field of view too small for a brain) is not prepared and is reported with the reason among the
problems; every prepared scan's record keeps the post-registration measures, and the manifest's
``inadequate`` column gives the reasons they yield (empty: none). Such a scan is ``qc_flagged`` too,
so training leaves it out.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from brainage.errors import BrainAgeError, InputError, Problem
from brainage.io.images import pair_partner
from brainage.io.manifest import sort_manifest, validate_manifest, write_manifest
from brainage.preprocess.adequacy import MEASURES, AdequacyConfig, header_reasons, row_reasons
from brainage.preprocess.external_mask import external_mask_path
from brainage.preprocess.pipelines import (
    STAGES,
    PipelineConfig,
    SessionReference,
    Spatial,
    StageTimer,
    StandardConfig,
    config_from_dict,
    external_spatial,
    make_config,
    preprocess_scan,
)
from brainage.preprocess.qc import save_missing_qc_png, save_qc_png
from brainage.preprocess.stages import torch_device
from brainage.utils import atomic_write, parallel_map

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; a prepare there never removes temporary files
    fcntl = None  # type: ignore[assignment]  # None stands for the missing module; its users check for it

CACHE_FORMAT = 1
MANIFEST = "manifest.csv"
#: Per-stage CPU seconds of each scan's record (NaN for records written before they were kept).
TIME_COLUMNS = tuple(f"cpu_s_{stage}" for stage in STAGES)
#: ``reference_scan``: the scan_id a session's repeat was aligned to (missing where the scan was
#: stripped and registered itself); ``spatial_file``: its mask and registration (standard pipeline).
CACHE_COLUMNS = (
    "cache_file", "qc_file", "qc_score", "qc_flagged", "content_hash", "config_digest", "spatial_file", "reference_scan",
    *MEASURES, "inadequate", *TIME_COLUMNS,
)  # fmt: skip  # names grouped in rows
#: Folders where ``atomic_write`` leaves ``.<name>.<random>.tmp<suffix>`` files when killed.
_WRITTEN_FOLDERS = ("", "volumes", "spatial", "qc", "hashes")


@dataclass(frozen=True)
class PreparedCache:
    """A prepared cache: the manifest of its scans, the configuration and the output grid."""

    root: Path
    manifest: pd.DataFrame
    config: PipelineConfig
    shape: tuple[int, int, int]
    affine: np.ndarray

    def __len__(self) -> int:
        return len(self.manifest)

    def volume(self, i: int) -> np.ndarray:
        """The ``i``-th manifest row's volume, a read-only memory map (RAS axes, ``shape``)."""
        return np.load(self.root / str(self.manifest["cache_file"].iat[i]), mmap_mode="r")


@dataclass(frozen=True)
class PrepareReport:
    """What a ``prepare`` run did; ``manifest`` lists the scans now in the cache."""

    root: Path
    manifest: pd.DataFrame
    done: int
    cached: int
    reused_registration: int
    problems: list[Problem] = field(default_factory=list)
    seconds: float = 0.0
    aligned: int = 0  # prepared now by alignment to their session's reference

    @property
    def flagged(self) -> pd.DataFrame:
        """Rows whose registration score is below the QC threshold."""
        return self.manifest[self.manifest["qc_flagged"]]

    @property
    def scans_per_second(self) -> float:
        return (self.done + self.cached) / self.seconds if self.seconds > 0 else float("nan")

    def summary(self) -> list[dict[str, object]]:
        """Rows for a summary table."""
        return [
            {"outcome": "prepared now", "scans": self.done},
            {"outcome": "already cached", "scans": self.cached},
            {"outcome": "aligned to a session mate", "scans": self.aligned},
            {"outcome": "failed (skipped)", "scans": len(self.problems)},
            {"outcome": "flagged by QC", "scans": len(self.flagged)},
            {"outcome": "scans/s", "scans": round(self.scans_per_second, 2)},
        ]


@dataclass(frozen=True)
class _Job:
    path: str
    scan_id: str
    root: Path
    config: PipelineConfig
    mask_path: str | None = None  # an external brain mask (fMRIPrep): preprocess/external_mask.py
    device: str = "cpu"
    adequacy: AdequacyConfig = field(default_factory=AdequacyConfig)
    qc_picture: bool = True  # draw qc/<key>.png; predict does not (a picture changes no volume)


@dataclass
class _Reference:
    """The scan of a session that its repeats align to; its volume is read when the first repeat
    that is not cached needs it."""

    job: _Job
    digest: str
    spatial_path: Path
    spatial: Spatial | None = None
    loaded: SessionReference | None = None

    def load(self) -> SessionReference:
        if self.loaded is None:
            spatial = self.spatial or _read_spatial(self.spatial_path)
            if spatial is None:
                raise InputError(self.spatial_path, f"the spatial file of the session reference {self.job.scan_id} is missing")
            self.loaded = SessionReference.from_file(self.job.path, spatial)
        return self.loaded


def prepare(
    source: str | Path | pd.DataFrame,
    out: str | Path,
    pipeline: str | PipelineConfig = "standard",
    workers: int = 1,
    shard: tuple[int, int] | None = None,
    demographics: str | Path | None = None,
    device: str = "cpu",
    adequacy: AdequacyConfig | None = None,
) -> PrepareReport:
    """Preprocess every scan of ``source`` into the cache folder ``out``; return what was done.

    ``source`` is anything :func:`brainage.io.discover` understands, or a manifest DataFrame
    (:func:`brainage.io.validate_manifest` columns). ``pipeline`` is a name (defaults) or a configuration.
    ``shard=(i, n)`` (1 ≤ i ≤ n) prepares only every n-th scan starting at the i-th (every n-th
    session where the configuration reuses a session's registration), so n jobs can fill one
    cache; an unsharded run afterwards finds them all cached. ``device`` runs the
    skull-stripping network there (``cpu``, ``cuda``, ``mps``, ``auto``; CPU where it is missing).
    Bad scans are skipped and returned in ``problems``, as are scans whose header fails the
    ``adequacy`` checks (default :class:`AdequacyConfig`); the manifest's ``inadequate`` column
    gives the reasons a prepared scan fails the post-registration ones.
    """
    adequacy = adequacy or AdequacyConfig()
    start = time.perf_counter()
    config = make_config(pipeline) if isinstance(pipeline, str) else pipeline
    try:
        device = torch_device(device)  # once here, so that a fallback warns once, not in every worker
    except ValueError as error:
        raise BrainAgeError(str(error)) from None
    root = Path(out)
    manifest, problems = _manifest(source, demographics)
    manifest = sort_manifest(manifest)
    masks = manifest["mask_path"] if "mask_path" in manifest else [None] * len(manifest)
    jobs = {
        str(path): _Job(str(path), str(scan_id), root, config, None if pd.isna(mask) else str(mask), device, adequacy)
        for path, scan_id, mask in zip(manifest["path"], manifest["scan_id"], masks, strict=False)
    }  # a path listed twice is prepared once
    sessions = _shard(_sessions(jobs, manifest, config), shard)
    manifest = manifest[manifest["path"].astype(str).isin({job.path for session in sessions for job in session})]
    records: dict[str, dict[str, Any]] = {}
    with _running(root):
        unit = ", sessions" if len(sessions) < len(jobs) else ""
        for session, results in parallel_map(_prepare_session, sessions, workers, description=f"prepare ({config.name}{unit})"):
            for job, result in zip(session, results if isinstance(results, list) else [results] * len(session), strict=False):
                if isinstance(result, InputError):
                    problems.append(Problem.from_error(result))
                elif isinstance(result, BaseException):
                    problems.append(Problem(job.path, f"{type(result).__name__}: {result}"))
                else:
                    records[job.path] = result
        prepared = _finish_manifest(manifest, records, config, adequacy)
        _write_cache(root, prepared, config, shard)
    statuses = [record["status"] for record in records.values()]
    return PrepareReport(
        root=root,
        manifest=prepared,
        done=sum(status != "cached" for status in statuses),
        cached=statuses.count("cached"),
        reused_registration=statuses.count("reused registration"),
        problems=problems,
        seconds=time.perf_counter() - start,
        aligned=statuses.count("aligned"),
    )


def load_cache(path: str | Path, adequacy: AdequacyConfig | None = None) -> PreparedCache:
    """Open a prepared cache (manifest and shard manifests merged); volumes load lazily. The
    ``inadequate`` column is recomputed from the recorded measures with ``adequacy`` (default
    :class:`AdequacyConfig`), and such scans are ``qc_flagged``."""
    root = Path(path)
    meta_path = root / "cache.json"
    if not meta_path.is_file():
        raise InputError(root, "not a brainage cache (no cache.json); run `brainage prepare` first")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != CACHE_FORMAT:
        raise InputError(meta_path, f"cache format {meta.get('format')} is not {CACHE_FORMAT}; prepare it again")
    config = config_from_dict(meta["config"])
    files = [file for file in [root / MANIFEST, *sorted(root.glob("manifest.shard-*.csv"))] if file.is_file()]
    if not files:
        raise InputError(root, "the cache has no manifest; run `brainage prepare` again")
    manifest = pd.concat([pd.read_csv(file, dtype=str) for file in files], ignore_index=True)
    current = manifest[manifest["config_digest"] == config.volume_digest()]  # before de-duplication: a stale row never hides a current one
    manifest = validate_manifest(current.drop_duplicates("scan_id", keep="last"), root / MANIFEST)
    for column in ("qc_score", *(column for column in (*MEASURES, *TIME_COLUMNS) if column in manifest.columns)):
        manifest[column] = manifest[column].astype(float)
    manifest["inadequate"] = row_reasons(manifest, adequacy or AdequacyConfig())
    manifest["qc_flagged"] = _flags(manifest["qc_score"], config.qc_threshold) | (manifest["inadequate"] != "")
    return PreparedCache(root, manifest, config, tuple(meta["shape"]), np.asarray(meta["affine"], dtype=float))


def content_hash(path: str | Path) -> str:
    """BLAKE2b of a scan's bytes (both halves of an Analyze/NIfTI ``.img``/``.hdr`` pair)."""
    digest = hashlib.blake2b(digest_size=16)
    for part in _parts(Path(path)):
        with open(part, "rb") as handle:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()


def _parts(path: Path) -> list[Path]:
    """The files that make up a scan: a ``.hdr``/``.img`` pair, or the file itself."""
    if path.suffix.lower() in (".img", ".hdr"):
        return sorted([path, pair_partner(path)], key=lambda part: part.suffix.lower())
    return [path]


def _key(*parts: str) -> str:
    return hashlib.blake2b("/".join(parts).encode(), digest_size=12).hexdigest()


def _memo_hash(path: Path, root: Path) -> str:
    """The content hash, recomputed only if the file's size or modification time changed."""
    try:
        stats = [os.stat(part) for part in _parts(path)]
    except OSError as error:
        raise InputError(path, error.strerror or "cannot be read") from error
    stamp = [[s.st_size, s.st_mtime_ns] for s in stats]
    memo = root / "hashes" / f"{_key(str(path.resolve()))}.json"
    if memo.is_file():
        saved = json.loads(memo.read_text())
        if saved.get("stamp") == stamp:
            return saved["hash"]
    try:
        digest = content_hash(path)
    except OSError as error:
        raise InputError(path, error.strerror or "cannot be read") from error
    with atomic_write(memo) as tmp:
        tmp.write_text(json.dumps({"path": str(path), "stamp": stamp, "hash": digest}))
    return digest


def _sessions(jobs: dict[str, _Job], manifest: pd.DataFrame, config: PipelineConfig) -> list[tuple[_Job, ...]]:
    """The jobs (by path) grouped by session in manifest order where ``config`` reuses a session's
    registration; one job a group otherwise, and for a scan with an external brain mask."""
    reuse = isinstance(config, StandardConfig) and config.session_reuse
    groups: dict[object, list[_Job]] = {}
    for path, subject, session in zip(manifest["path"].astype(str), manifest["subject_id"], manifest["session_id"], strict=False):
        job = jobs[path]
        alone = not reuse or external_mask_path(job.path, job.mask_path) is not None
        group = groups.setdefault(path if alone else (subject, session), [])
        if job not in group:
            group.append(job)
    return [tuple(group) for group in groups.values()]


def _prepare_session(jobs: tuple[_Job, ...]) -> list[dict[str, Any] | Exception]:
    """Worker: the records of a session's scans, prepared in order. The first that succeeds is the
    reference the others align to (when there are others); a scan that fails leaves its exception
    in its place and the session goes on."""
    results: list[dict[str, Any] | Exception] = []
    reference: _Reference | None = None
    for job in jobs:
        try:
            record, prepared_alone = _prepare_one(job, reference, len(jobs) > 1)
        except Exception as error:
            results.append(error)
            continue
        reference = reference or prepared_alone
        results.append(record)
    return results


def _prepare_one(job: _Job, reference: _Reference | None = None, in_session: bool = False) -> tuple[dict[str, Any], _Reference | None]:
    """Return the scan's record, computing and writing its volume unless cached, aligned to
    ``reference`` if given; and, for a scan of a session prepared on its own, the reference it makes."""
    path, root, config = Path(job.path), job.root, job.config
    found = header_reasons(path, job.adequacy)
    if found:
        raise InputError(path, f"not adequate for brain age: {'; '.join(found)}")
    timer = StageTimer()
    with timer("load"):
        digest = _memo_hash(path, root)
        mask = external_mask_path(path, job.mask_path) if isinstance(config, StandardConfig) else None
        digest_and_mask = _key(digest, _memo_hash(mask, root)) if mask is not None else digest  # a new mask: a new volume
    spatial_path = None
    if reference is not None:
        session = config.digest(*StandardConfig.SPATIAL_FIELDS, *StandardConfig.SESSION_FIELDS)
        key = _key(digest, "aligned to", reference.digest, config.volume_digest(), session)
        spatial_path = root / "spatial" / f"{_key(digest, 'aligned to', reference.digest, session)}.npz"
    else:
        key = _key(digest_and_mask, config.volume_digest())
        if isinstance(config, StandardConfig):
            spatial_path = root / "spatial" / f"{_key(digest_and_mask, config.digest(*StandardConfig.SPATIAL_FIELDS))}.npz"
    own = _Reference(job, digest, spatial_path) if in_session and reference is None and spatial_path is not None else None
    live = {"reference_scan": reference.job.scan_id if reference is not None else math.nan}
    record_path = root / "volumes" / f"{key}.json"
    picture = {"qc_file": f"qc/{key}.png"} if job.qc_picture else {}
    if record_path.is_file() and record_path.with_suffix(".npy").is_file() and (own is None or own.spatial_path.is_file()):
        found = json.loads(record_path.read_text())
        if picture:  # a volume that predict stored has none yet
            save_missing_qc_png(root / picture["qc_file"], record_path.with_suffix(".npy"), title=f"{job.scan_id}  r={found['qc_score']:.2f}")
        return {**found, **picture, **live, "status": "cached"}, own
    spatial = _read_spatial(spatial_path) if spatial_path is not None else None
    if spatial is None and mask is not None:
        with timer("register"):
            external = external_spatial(path, config, mask)
    else:
        external = None
    session_reference = None
    if reference is not None and spatial is None:
        with timer("load"):
            session_reference = reference.load()
    prepared = preprocess_scan(path, config, spatial or external, job.device, session_reference)
    if spatial_path is not None and spatial is None and prepared.spatial is not None:
        _write_spatial(spatial_path, prepared.spatial)
    if own is not None:
        own.spatial = prepared.spatial
    with atomic_write(root / "volumes" / f"{key}.npy") as tmp:
        np.save(tmp, prepared.volume)
    if picture:
        with timer("qc"):
            save_qc_png(prepared.volume, root / picture["qc_file"], title=f"{job.scan_id}  r={prepared.qc_score:.2f}")
    seconds = {stage: timer.seconds.get(stage, 0.0) + prepared.seconds.get(stage, 0.0) for stage in STAGES}
    record = {
        "cache_file": f"volumes/{key}.npy",
        **picture,
        "qc_score": prepared.qc_score,
        "content_hash": digest,
        "config_digest": config.volume_digest(),
        **({"spatial_file": f"spatial/{spatial_path.name}"} if spatial_path is not None else {}),
        **{f"cpu_s_{stage}": round(value, 4) for stage, value in seconds.items()},
        **prepared.measures,
    }
    with atomic_write(record_path) as tmp:
        tmp.write_text(json.dumps(record))
    status = "reused registration" if spatial is not None else "aligned" if session_reference is not None else "done"
    return {**record, **live, "status": status}, own


def _read_spatial(path: Path) -> Spatial | None:
    if not path.is_file():
        return None
    with np.load(path) as saved:
        shape = tuple(int(n) for n in saved["shape"])
        order: Literal["C", "F"] = "F" if "order" in saved and str(saved["order"]) == "F" else "C"  # "C" in files written before it was kept
        mask = np.unpackbits(saved["mask"], count=int(np.prod(shape))).reshape(shape, order=order).astype(bool)
        return Spatial(mask, saved["world_to_source"])


def _write_spatial(path: Path, spatial: Spatial) -> None:
    """The mask's bits in the order they lie in memory (a Fortran-ordered mask, as fill_voids gives, is not copied)."""
    mask = spatial.mask
    order: Literal["C", "F"] = "F" if mask.flags.f_contiguous and not mask.flags.c_contiguous else "C"
    with atomic_write(path) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, mask=np.packbits(mask.ravel(order)), shape=np.asarray(mask.shape), world_to_source=spatial.world_to_source, order=order)


def _manifest(source: str | Path | pd.DataFrame, demographics: str | Path | None) -> tuple[pd.DataFrame, list[Problem]]:
    if isinstance(source, pd.DataFrame):
        return validate_manifest(source, "manifest"), []
    from brainage.io import discover

    discovery = discover(source, demographics)
    return discovery.manifest.copy(), list(discovery.problems)


def _shard(sessions: list[tuple[_Job, ...]], shard: tuple[int, int] | None) -> list[tuple[_Job, ...]]:
    """Every n-th group of jobs from the i-th (a session stays in one shard, so its repeats align
    to the same reference as in an unsharded run)."""
    if shard is None:
        return sessions
    index, count = shard
    if not 1 <= index <= count:
        raise ValueError(f"shard {index}/{count}: the index must be between 1 and {count}")
    return sessions[index - 1 :: count]


def _finish_manifest(manifest: pd.DataFrame, records: dict[str, dict[str, Any]], config: PipelineConfig, adequacy: AdequacyConfig) -> pd.DataFrame:
    prepared = manifest[manifest["path"].astype(str).isin(records)].copy()
    for column in CACHE_COLUMNS:
        if column not in ("qc_flagged", "inadequate"):
            prepared[column] = [records[str(path)].get(column, math.nan) for path in prepared["path"]]
    prepared["inadequate"] = row_reasons(prepared, adequacy)
    prepared["qc_flagged"] = _flags(prepared["qc_score"].astype(float), config.qc_threshold) | (prepared["inadequate"] != "")
    return prepared.reset_index(drop=True)


@contextlib.contextmanager
def _running(root: Path) -> Iterator[None]:
    """Hold a shared lock on ``root/.lock`` while a ``prepare`` runs. A run that finds no other
    holder (an exclusive lock succeeds) first removes the temporary files that killed writers left."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = open(root / ".lock", "a")  # noqa: SIM115 - closed by the with below
    except OSError as error:
        raise InputError(root, f"cannot write the cache folder ({error.strerror or error})") from None
    with lock:
        if fcntl is None:  # no advisory locks here: another run's temporary files may be live
            yield
            return
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            alone = True
        except BlockingIOError:
            alone = False  # another prepare of this cache is running: its temporary files are live
        except OSError:  # a file system without locks: nothing is removed
            yield
            return
        if alone:
            for folder in _WRITTEN_FOLDERS:
                for leftover in (root / folder).glob(".*.tmp*"):
                    leftover.unlink(missing_ok=True)
        fcntl.flock(lock, fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _flags(scores: pd.Series, threshold: float | None) -> pd.Series:
    """QC flags: a score below the threshold or missing (no threshold: nothing is flagged)."""
    if threshold is None:
        return pd.Series(False, index=scores.index)
    return (scores < threshold) | scores.isna()


def _write_cache(root: Path, manifest: pd.DataFrame, config: PipelineConfig, shard: tuple[int, int] | None) -> None:
    meta = {"format": CACHE_FORMAT, "config": config.to_dict(), "shape": list(config.shape), "affine": config.affine.tolist(), "dtype": config.dtype}
    with atomic_write(root / "cache.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=2))
    name = MANIFEST if shard is None else f"manifest.shard-{shard[0]}-of-{shard[1]}.csv"
    write_manifest(manifest, root / name)
    if shard is None:
        for stale in root.glob("manifest.shard-*.csv"):
            stale.unlink(missing_ok=True)
