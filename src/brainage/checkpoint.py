"""The checkpoint format: a trained model with everything needed to predict, readable without Lightning.

A checkpoint is a plain dict saved with ``torch.save`` (so ``torch.load(weights_only=True)`` reads
it): weights, the model's registry name and hyper-parameters, the preprocessing configuration,
the training age statistics, the age-bias correction, the conformal interval calibrated on
out-of-fold residuals (with each residual's fold, for CV+ over a run's fold models; a checkpoint
written before that keeps split conformal), whether predictions average the left–right flip, what it was fitted on (the
content hashes of those scans, their subject and session ids and the folder their dataset lies in)
and provenance in ``extra``.

What a model was fitted on lets a reuse refuse a leak (:func:`refuse_overlap`: ``train --init`` and
``combine`` must never test a model on people it was fitted on) and ``predict`` warn about scans
that are not out-of-sample. Subject ids name people only within one dataset (``sub-01`` of two BIDS
datasets, or ``OAS2_0001`` of two synthetic cohorts, are different people), so ids are compared only
where the scans lie in the folder of the model's dataset; content hashes are compared everywhere.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from brainage import __version__
from brainage.conformal import ConformalInterval
from brainage.errors import BrainAgeError, InputError
from brainage.evaluation import AgeBiasCorrector
from brainage.models import AgeRegressor, build_model, current_model_name
from brainage.utils import atomic_write

if TYPE_CHECKING:
    import pandas as pd

CHECKPOINT_FORMAT = "brainage-model"
#: 2: residual (controls-fitted) bias correction, ``tta_flip``, ``train_content_hashes``. Later
#: optional keys (``train_subject_ids``, ``train_session_ids``, ``train_data_root``) keep format 2:
#: older brainage ignores them, and checkpoints without them still load.
CHECKPOINT_VERSION = 2


@dataclass
class BrainAgeCheckpoint:
    """A trained model with everything needed to predict from a prepared scan."""

    model: AgeRegressor
    model_name: str
    age_mean: float
    age_std: float
    preprocessing: dict[str, Any]
    corrector: AgeBiasCorrector | None = None
    train_age_range: tuple[float, float] = (math.nan, math.nan)
    tta_flip: bool = True
    train_content_hashes: tuple[str, ...] = ()
    train_subject_ids: tuple[str, ...] = ()
    train_session_ids: tuple[str, ...] = ()
    train_data_root: str = ""
    interval: ConformalInterval | None = None
    brainage_version: str = __version__
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain values and CPU tensors only, so ``torch.load(weights_only=True)`` reads it."""
        return {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_VERSION,
            "brainage_version": self.brainage_version,
            "model_name": self.model_name,
            "model_hparams": dict(self.model.hparams),
            "state_dict": {key: value.detach().cpu().contiguous() for key, value in self.model.state_dict().items()},
            "preprocessing": dict(self.preprocessing),
            "age_mean": float(self.age_mean),
            "age_std": float(self.age_std),
            "bias_correction": self.corrector.to_dict() if self.corrector is not None else None,
            "train_age_range": [float(v) for v in self.train_age_range],
            "tta_flip": bool(self.tta_flip),
            "train_content_hashes": [str(h) for h in self.train_content_hashes],
            "train_subject_ids": [str(s) for s in self.train_subject_ids],
            "train_session_ids": [str(s) for s in self.train_session_ids],
            "train_data_root": str(self.train_data_root),
            "interval": self.interval.to_dict() if self.interval is not None else None,
            "extra": dict(self.extra),
        }

    @property
    def fold(self) -> int | None:
        """The fold this model was trained for (``extra["fold"]``; None for a model not of a K-fold
        run): which column of :func:`brainage.conformal.served_interval` its predictions are."""
        fold = self.extra.get("fold")
        return None if fold is None else int(fold)


def save_checkpoint(checkpoint: BrainAgeCheckpoint, path: str | Path) -> Path:
    """Write ``checkpoint`` atomically as a plain dict (``torch.save``)."""
    path = Path(path)
    with atomic_write(path) as tmp:
        torch.save(checkpoint.to_dict(), tmp)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> BrainAgeCheckpoint:
    """Read a checkpoint written by :func:`save_checkpoint`; the model is rebuilt by name, in eval mode."""
    path = Path(path)
    try:
        values = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise InputError(path, "no such checkpoint") from None
    except Exception as error:
        raise InputError(path, f"not a readable brainage checkpoint ({type(error).__name__})") from error
    if not isinstance(values, dict) or values.get("format") != CHECKPOINT_FORMAT:
        raise InputError(path, "not a brainage model checkpoint")
    version = values.get("format_version", 0)
    if version > CHECKPOINT_VERSION:
        raise InputError(path, f"checkpoint format {version} is newer than this brainage ({__version__}); upgrade brainage")
    try:
        model = build_model(values["model_name"], **values["model_hparams"])
        model.load_state_dict(values["state_dict"])
    except (KeyError, RuntimeError, TypeError, ValueError) as error:
        raise InputError(path, f"the checkpoint's model cannot be rebuilt: {error}".replace("\n", " ")) from error
    model.eval()
    bias = values.get("bias_correction")
    if bias and version < 2:
        bias = {"method": "cole", **bias}  # format 1 stored Cole's inversion, fitted on validation scans
    return BrainAgeCheckpoint(
        model=model,
        model_name=current_model_name(values["model_name"]),  # an old name (seed) as the model's name now
        age_mean=values["age_mean"],
        age_std=values["age_std"],
        preprocessing=values["preprocessing"],
        corrector=AgeBiasCorrector.from_dict(bias) if bias else None,
        train_age_range=tuple(values.get("train_age_range", (math.nan, math.nan))),
        tta_flip=bool(values.get("tta_flip", True)),
        train_content_hashes=tuple(values.get("train_content_hashes", ())),
        train_subject_ids=tuple(values.get("train_subject_ids", ())),
        train_session_ids=tuple(values.get("train_session_ids", ())),
        train_data_root=str(values.get("train_data_root", "")),
        interval=ConformalInterval.from_dict(values["interval"]) if values.get("interval") else None,
        brainage_version=values.get("brainage_version", "unknown"),
        extra=values.get("extra", {}),
    )


def fold_folder(run_dir: Path, fold: int, member: int = 0) -> Path:
    """The folder of ensemble member ``member`` of fold ``fold`` in a run folder: ``fold_K``, then ``fold_K-1``, …"""
    return run_dir / (f"fold_{fold}-{member}" if member else f"fold_{fold}")


# --- what a model was fitted on, and reuse without leaks -----------------------------------------


class TrainingOverlapError(BrainAgeError):
    """A model to reuse (``--init``, a ``combine`` member) was fitted on people it would be tested on."""


def fitted_scans(manifest: pd.DataFrame, rows: Sequence[int]) -> dict[str, Any]:
    """The :class:`BrainAgeCheckpoint` fields that record what a model was fitted on: ``rows`` of the
    cache ``manifest`` (training and validation scans). The data root is the folder holding every
    scan of the cache, so that all its people, fitted on or not, lie in it."""
    fitted = manifest.iloc[list(rows)]
    return {
        "train_content_hashes": tuple(fitted["content_hash"].astype(str)) if "content_hash" in manifest else (),
        "train_subject_ids": tuple(sorted(set(fitted["subject_id"].astype(str)))) if "subject_id" in manifest else (),
        "train_session_ids": tuple(sorted(set(fitted["session_id"].astype(str)))) if "session_id" in manifest else (),
        "train_data_root": data_root(manifest["path"]) if "path" in manifest else "",
    }


def data_root(paths: Iterable[str | Path]) -> str:
    """The deepest folder holding every one of ``paths`` (empty for none)."""
    folders = [os.path.dirname(os.path.abspath(str(path))) for path in paths]
    return os.path.commonpath(folders) if folders else ""


def same_dataset(checkpoint: BrainAgeCheckpoint, where: str | Path | None) -> bool:
    """Whether subject ids of scans at ``where`` (a scan, or a folder holding scans) name the people
    the checkpoint's ids name: one lies inside the other's folder, or either is unknown."""
    if not checkpoint.train_data_root or not where:
        return True
    root, other = Path(checkpoint.train_data_root), Path(os.path.abspath(str(where)))
    return other.is_relative_to(root) or root.is_relative_to(other)


def overlap(
    checkpoint: BrainAgeCheckpoint, subject_ids: Iterable[str], content_hashes: Iterable[str | None], where: str | Path | None = None
) -> tuple[int, int]:
    """``(fitted, people)``: how many of the people of the given scans (``subject_ids`` and
    ``content_hashes`` side by side) the checkpoint was fitted on, and how many people they are. A
    person counts by subject id (where ``where``, the scans' folder, is in the checkpoint's
    dataset: :func:`same_dataset`) or by the content hash of any of their scans."""
    ids = set(checkpoint.train_subject_ids) if same_dataset(checkpoint, where) else set()
    hashes = set(checkpoint.train_content_hashes)
    people: set[str] = set()
    fitted: set[str] = set()
    for subject, digest in zip(subject_ids, content_hashes, strict=True):
        people.add(str(subject))
        if str(subject) in ids or (str(digest) not in ("", "None", "nan") and str(digest) in hashes):
            fitted.add(str(subject))
    return len(fitted), len(people)


def refuse_overlap(
    checkpoint: BrainAgeCheckpoint, what: str, fold: int, subject_ids: Iterable[str], content_hashes: Iterable[str | None], where: str | Path | None = None
) -> None:
    """Raise :class:`TrainingOverlapError` (one line naming ``fold`` and the number of people) when
    the model ``what`` was fitted on any of fold ``fold``'s test people (see :func:`overlap`). A
    checkpoint written before subject ids were kept is checked by content hash only, with a warning."""
    fitted, people = overlap(checkpoint, subject_ids, content_hashes, where)
    how = "by subject id or content hash" if checkpoint.train_subject_ids else "by content hash: it records no subject ids"
    if fitted:
        raise TrainingOverlapError(
            f"{what} was fitted on {fitted} of the {people} test people of fold {fold} ({how}), so its predictions on them "
            "would not be out-of-sample; reuse a model fitted on other people, or on the training side of these same folds"
        )
    if not checkpoint.train_subject_ids:
        kept = "by content hash only" if checkpoint.train_content_hashes else "not at all: it records neither subject ids nor content hashes"
        warnings.warn(f"{what} was written before checkpoints kept subject ids; its overlap with test people was checked {kept}", stacklevel=2)


def seen_by_id(checkpoints: Sequence[BrainAgeCheckpoint], subject_ids: Iterable[str], session_ids: Iterable[str], paths: Iterable[str]) -> list[str]:
    """Per scan, a warning where any of ``checkpoints`` was fitted on its person (by subject id) or
    its session (by session id) and the scan lies in that checkpoint's dataset (:func:`same_dataset`);
    empty where none was. Another scan or visit of a training person is not out-of-sample either."""
    notes = []
    known = [(checkpoint, set(checkpoint.train_subject_ids), set(checkpoint.train_session_ids)) for checkpoint in checkpoints]
    for subject, session, path in zip(subject_ids, session_ids, paths, strict=True):
        fitted = [(c, visits) for c, people, visits in known if (str(subject) in people or str(session) in visits) and same_dataset(c, path)]
        sessions = sum(str(session) in visits for _, visits in fitted)
        notes.append(
            f"this {'session' if sessions else 'person'} was in the training data of {len(fitted)} of {len(checkpoints)} model(s) by "
            f"{'session' if sessions else 'subject'} id, though not these bytes: its prediction is not out-of-sample"
            if fitted
            else ""
        )
    return notes
