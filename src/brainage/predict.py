"""Brain age for new scans: load trained checkpoints, preprocess as they were trained, predict.

Example::

    model = BrainAgeModel.load("runs/oasis2")          # a run folder: its K fold models, averaged
    table = model.predict(["scan.nii.gz", "folder/"])  # one row per scan
    table = model.predict("scans.xlsx", work="out.parts")  # keeps each preprocessed scan: a rerun resumes
    model.problems_                                    # the inputs that were skipped, and why

A model is one checkpoint or an ensemble of several (the mean of their predictions). Each scan is
preprocessed with the configuration stored in the checkpoints, or taken from a prepared cache
that already holds it (matched by the content hash of the file), into a work folder that a rerun
or a resumed batch takes finished scans from (:mod:`brainage.predict_store`), and predicted with left–right
flip test-time averaging where the model was trained so: the very function (:mod:`brainage.inference`)
that made the run's out-of-fold predictions. The age-bias correction applies only where a row has
an age, and the ``bias_correction`` column says which correction was applied, or why none was.
A scan that fails an adequacy check (:mod:`brainage.preprocess.adequacy`) gets no brain age unless
``force``: its row keeps the reasons in ``inadequate`` and the batch goes on.

This module does not import Lightning, torchmetrics or matplotlib.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from brainage.checkpoint import BrainAgeCheckpoint, load_checkpoint, seen_by_id
from brainage.conformal import served_scale
from brainage.errors import BrainAgeError, InputError, Problem
from brainage.evaluation import aggregate_sessions, regression_metrics
from brainage.inference import BrainAgeEnsemble, predict_batches, resolve_accelerator
from brainage.io.manifest import natural_key
from brainage.predict_inputs import find_inputs, training_caches
from brainage.predict_store import OUTCOMES, scan_hash, stored_scans, unreadable, work_folder
from brainage.preprocess import PreparedCache, config_from_dict, load_cache
from brainage.preprocess.adequacy import MEASURES, AdequacyConfig, age_reason, header_reasons, reasons
from brainage.zoo import age_trend, find_model, resolve_model

__all__ = ["BrainAgeEnsemble", "BrainAgeModel", "accuracy_table", "find_inputs", "resolve_checkpoints", "summarise_sessions", "training_caches"]

CHECKPOINT_NAME = "model.ckpt"
PREDICTION_COLUMNS = (
    "path", "scan_id", "subject_id", "session_id", "age", "brain_age", "brain_age_lower", "brain_age_upper", "brain_age_corrected",
    "brain_age_gap", "brain_age_gap_corrected", "bias_correction", "qc_score", "qc_flagged", "warnings", "inadequate", "model",
)  # fmt: skip  # names grouped in rows
#: Emptied (NaN) in a row that fails an adequacy check, unless ``force``.
BRAIN_AGE_COLUMNS = ("brain_age", "brain_age_lower", "brain_age_upper", "brain_age_corrected", "brain_age_gap", "brain_age_gap_corrected")


def resolve_checkpoints(path_or_paths: str | Path | Iterable[str | Path]) -> list[Path]:
    """Checkpoint files from files, run folders (a run folder gives every ``fold_*/model.ckpt``) and named models (:mod:`brainage.zoo`)."""
    paths = [path_or_paths] if isinstance(path_or_paths, (str, Path)) else list(path_or_paths)
    if not paths:
        raise BrainAgeError("no model given: pass a checkpoint (model.ckpt) or a run folder")
    found: list[Path] = []
    for path in map(resolve_model, paths):
        if path.is_dir():
            inside = sorted(path.glob(f"fold_*/{CHECKPOINT_NAME}"), key=lambda p: natural_key(str(p)))
            inside = inside or ([path / CHECKPOINT_NAME] if (path / CHECKPOINT_NAME).is_file() else [])
            if not inside:
                raise InputError(path, f"no {CHECKPOINT_NAME} in this folder nor in its fold_* folders")
            found.extend(inside)
        elif path.is_file():
            found.append(path)
        else:
            raise InputError(path, "no such checkpoint or run folder")
    return list(dict.fromkeys(found))


def _model_name(entry: str | Path) -> str:
    """A named model as ``NAME`` (and its card's version where it has one), anything else as given."""
    named = None if Path(entry).exists() else find_model(str(entry))
    if named is None:
        return str(entry)
    version = named.card.get("version") or named.card.get("generator")
    return f"{named.name} ({version})" if version else named.name


class AgeTrendWarning(UserWarning):
    """The predictions of a batch with ages do not rise with age (:func:`brainage.zoo.age_trend`)."""


# --- the model -----------------------------------------------------------------------------------


class BrainAgeModel:
    """One or more trained checkpoints that predict brain age for scans on disk.

    Build it with :meth:`load`. ``predict`` returns one row per scan (or per session) and leaves
    the inputs it skipped, with the reason, in ``problems_``.
    """

    def __init__(self, checkpoints: Sequence[BrainAgeCheckpoint], paths: Sequence[str | Path] = (), device: str = "auto") -> None:
        if not checkpoints:
            raise BrainAgeError("a BrainAgeModel needs at least one checkpoint")
        configs = [config_from_dict(checkpoint.preprocessing) for checkpoint in checkpoints]
        names = [str(path) for path in paths] or [f"checkpoint {k}" for k in range(len(checkpoints))]
        for name, config in zip(names[1:], configs[1:], strict=False):
            if config.volume_digest() != configs[0].volume_digest():
                raise InputError(name, f"its preprocessing differs from that of {names[0]}; an ensemble needs one preprocessing")
        self.checkpoints = list(checkpoints)
        self.paths = [Path(path) for path in paths]
        self.config = configs[0]
        self.device = torch.device(resolve_accelerator(device))
        self.network = BrainAgeEnsemble(checkpoints).to(self.device).eval()
        self.problems_: list[Problem] = []
        self.preprocessing_: dict[str, int] = {}
        self.age_trend_: tuple[float, float, str | None] = (math.nan, math.nan, None)
        #: What the ``model`` column names: the named models and the checkpoints or run folders given.
        self.name = ", ".join(str(path) for path in paths) if paths else "checkpoints given in memory"

    @classmethod
    def load(cls, path_or_paths: str | Path | Iterable[str | Path], device: str = "auto") -> BrainAgeModel:
        """Checkpoints (``model.ckpt``), run folders (all their fold models) and named models
        (:mod:`brainage.zoo`, named in the ``model`` column with their card's version); several are averaged."""
        given = [path_or_paths] if isinstance(path_or_paths, (str, Path)) else list(path_or_paths)
        paths = resolve_checkpoints(given)
        model = cls([load_checkpoint(path) for path in paths], paths, device)
        model.name = ", ".join(_model_name(entry) for entry in given)
        return model

    @property
    def train_age_range(self) -> tuple[float, float]:
        """The youngest and oldest training age over every member."""
        ranges = np.array([checkpoint.train_age_range for checkpoint in self.checkpoints], dtype=float)
        return float(np.nanmin(ranges[:, 0])), float(np.nanmax(ranges[:, 1]))

    @property
    def mean_training_age(self) -> float:
        """The members' mean training age: what the mean-age baseline predicts for every scan."""
        return float(np.mean([checkpoint.age_mean for checkpoint in self.checkpoints]))

    @torch.inference_mode()
    def predict_volumes(self, volumes: np.ndarray, ages: np.ndarray | Sequence[float] | None = None) -> np.ndarray:
        """``(B, 3)`` brain age, bias-corrected brain age (NaN where ``ages`` is NaN or None) and the
        members' SD, of preprocessed volumes ``(B, X, Y, Z)``."""
        batch = torch.from_numpy(np.array(volumes, dtype=np.float32))[:, None]
        return predict_batches(self.network, [batch], ages, self.device)

    @property
    def correction(self) -> str:
        """What ``brain_age_corrected`` is: the members' correction in words, or why there is none."""
        correctors = [checkpoint.corrector for checkpoint in self.checkpoints if checkpoint.corrector is not None]
        if len(correctors) < len(self.checkpoints):
            return "none: a model has no bias correction"
        refused = [corrector.refused_ for corrector in correctors if not corrector.applicable]
        if refused:
            return f"none: {refused[0]}"
        methods = sorted({corrector.method for corrector in correctors})
        counts = sorted({corrector.n_subjects_ for corrector in correctors})
        return f"{'/'.join(methods)}, fitted on {'/'.join(map(str, counts))} control subjects"

    @property
    def training_hashes(self) -> dict[str, int]:
        """Content hash of every scan a member was fitted on → how many members were."""
        counts: dict[str, int] = {}
        for checkpoint in self.checkpoints:
            for digest in set(checkpoint.train_content_hashes):
                counts[digest] = counts.get(digest, 0) + 1
        return counts

    def predict(
        self,
        inputs: str | Path | Iterable[str | Path] | pd.DataFrame,
        sessions: bool = False,
        cache: str | Path | None = "auto",
        workers: int = 1,
        batch_size: int = 8,
        interval: float | None = None,
        force: bool = False,
        adequacy: AdequacyConfig | None = None,
        work: str | Path | None = None,
    ) -> pd.DataFrame:
        """Brain age of every scan of ``inputs`` (see :func:`find_inputs`), one row per scan.

        ``brain_age_lower``/``brain_age_upper`` bound the brain age at coverage ``interval`` (default:
        the one the model was calibrated for, 0.9) by split-conformal calibration on the run's
        out-of-fold residuals, around the members' mean, scaled for that mean where the members are
        the run's fold networks (:func:`~brainage.conformal.served_scale`; ``bench/served_calibration.py``
        measures it on fresh people); NaN for a model without a calibration.

        Columns: ``PREDICTION_COLUMNS`` then ``sex``, ``group``, ``cdr`` where the inputs give
        them; ``model`` names the model (:attr:`name`). Gaps are brain age − age, NaN where the age is unknown. ``age_trend_`` holds the
        slope and r of brain age on age over the batch, and an :class:`AgeTrendWarning` is issued where
        brain age does not rise with age. ``warnings`` names an age
        outside the training range and a registration below the QC threshold. ``sessions=True``
        averages the repeat scans of each session (one row per session, ``n_scans``), and prepares
        them as ``prepare`` does with session reuse.
        ``cache``: a prepared cache to take preprocessed scans from (matched by content hash),
        ``"auto"`` for the caches the checkpoints were trained on, None for none. The other scans
        are preprocessed in ``workers`` processes into the folder ``work``
        (:mod:`brainage.predict_store`: a rerun, or the rerun of a killed batch, prepares only what
        is not there yet; None: a temporary folder that holds few volumes at a time) and predicted ``batch_size`` at a time as they
        finish. ``preprocessing_`` counts what became of the scans (``OUTCOMES``). Inputs
        that cannot be used are skipped and listed in ``problems_``. A scan that fails the
        ``adequacy`` checks (default :class:`AdequacyConfig`) keeps its row with the reasons in
        ``inadequate`` and no brain age, unless ``force`` (a scan whose header fails them is then
        not even preprocessed).
        """
        adequacy = adequacy or AdequacyConfig()
        rows, problems = find_inputs(inputs)
        caches = self._caches(cache)
        known_ages = rows["age"].to_numpy(dtype=float)
        refused = [header_reasons(path, adequacy) for path in rows["path"]]
        skip = set() if force else {index for index, found in enumerate(refused) if found}
        measured: dict[int, dict[str, float]] = {}
        predicted: dict[int, tuple[float, float, float, float]] = {}
        counts: Counter[str] = Counter()
        with work_folder(work) as root:
            hashes = [scan_hash(path, root) for path in rows["path"]]
            options = {"workers": workers, "sessions": sessions, "adequacy": adequacy, "force": force, "keep": work is not None}
            scans = self._volumes(rows, hashes, caches, root, options, problems, counts, skip, measured)
            for indices, volumes, scores in _batches(scans, batch_size):
                for index, ages, score in zip(indices, self.predict_volumes(volumes, known_ages[indices]), scores, strict=False):
                    predicted[index] = (float(ages[0]), float(ages[1]), float(ages[2]), score)
        self.problems_ = sorted(problems, key=lambda problem: natural_key(problem.path))
        self.preprocessing_ = {outcome: counts[outcome] for outcome in OUTCOMES}
        low, high = self.train_age_range
        for index, found in enumerate(refused):
            found.extend(reasons(measured.get(index, {}), adequacy))
            found.extend(filter(None, [age_reason(known_ages[index], low, high)]))
        inadequate = ["; ".join(found) for found in refused]
        table = self._table(rows, predicted, hashes, interval, inadequate, force)
        self.age_trend_ = age_trend(table["age"].to_numpy(dtype=float), table["brain_age"].to_numpy(dtype=float))
        if self.age_trend_[2] is not None:
            warnings.warn(self.age_trend_[2], AgeTrendWarning, stacklevel=2)
        return summarise_sessions(table) if sessions else table

    def _caches(self, cache: str | Path | None) -> list[PreparedCache]:
        """The caches to look scans up in: only those prepared with this model's preprocessing."""
        if cache is None:
            return []
        roots = training_caches(self.paths) if isinstance(cache, str) and cache == "auto" else [Path(cache)]
        caches = [load_cache(root) for root in roots]
        return [found for found in caches if found.config.volume_digest() == self.config.volume_digest() and len(found)]

    def _volumes(
        self,
        rows: pd.DataFrame,
        hashes: Sequence[str | None],
        caches: Sequence[PreparedCache],
        root: Path,
        options: dict[str, Any],
        problems: list[Problem],
        counts: Counter[str],
        skip: set[int],
        measured: dict[int, dict[str, float]],
    ) -> Iterator[tuple[int, np.ndarray, float]]:
        """``(row index, volume, QC score)`` for every usable row but those in ``skip``: those in a
        cache first, then the others as their preprocessing into ``root`` finishes (``options``:
        :func:`~brainage.predict_store.stored_scans`'). Failures are appended to ``problems``, each
        row's adequacy measures put in ``measured``, the outcomes counted in ``counts``."""
        lookup = {
            content: (found, i) for found in caches if "content_hash" in found.manifest for i, content in enumerate(found.manifest["content_hash"].astype(str))
        }
        to_prepare: list[int] = []
        for index, (path, digest) in enumerate(zip(rows["path"], hashes, strict=True)):
            if index in skip:
                continue
            if digest is None:
                problems.append(unreadable(path))
                counts[OUTCOMES[-1]] += 1
                continue
            hit = lookup.get(digest) if lookup and digest else None
            if hit is None:
                to_prepare.append(index)
                continue
            found, i = hit
            measured[index] = {key: found.manifest[key].iloc[i] for key in MEASURES if key in found.manifest}
            counts[OUTCOMES[0]] += 1
            yield index, np.asarray(found.volume(i)), float(found.manifest["qc_score"].iloc[i])
        for scan in stored_scans(rows, to_prepare, self.config, root, problems, counts, **options):
            for index in scan.indices:
                measured[index] = scan.measures
                yield index, scan.volume, scan.qc_score

    def _table(
        self,
        rows: pd.DataFrame,
        predicted: dict[int, tuple[float, float, float, float]],
        hashes: Sequence[str | None],
        interval: float | None,
        inadequate: Sequence[str],
        force: bool = False,
    ) -> pd.DataFrame:
        """The predictions frame of the rows that were predicted or refused as inadequate, in input
        order; a refused row's brain ages are NaN unless ``force``."""
        refused = {index for index, reason in enumerate(inadequate) if reason}
        done = sorted(set(predicted) | (set() if force else refused))
        trained = self.training_hashes
        seen = [trained.get(digest, 0) if digest else 0 for digest in (hashes[index] for index in done)]
        table = rows.iloc[done].reset_index(drop=True)
        values = np.array([predicted.get(index, (np.nan,) * 4) for index in done], dtype=float).reshape(-1, 4)
        table["brain_age"], table["brain_age_corrected"], _, table["qc_score"] = values.T
        calibration = self.checkpoints[0].interval
        if calibration is not None and len(table):
            scale = served_scale(calibration, [checkpoint.fold for checkpoint in self.checkpoints])
            table["brain_age_lower"], table["brain_age_upper"] = calibration.interval(
                table["brain_age"], None, interval, scale
            )  # split conformal around the mean
        else:
            table["brain_age_lower"] = table["brain_age_upper"] = np.nan
        table["brain_age_gap"] = table["brain_age"] - table["age"]
        table["brain_age_gap_corrected"] = table["brain_age_corrected"] - table["age"]
        correction = self.correction
        table["bias_correction"] = np.where(table["age"].notna(), correction, "none: no age given")
        threshold = self.config.qc_threshold
        table["qc_flagged"] = (table["qc_score"].isna() | (table["qc_score"] < threshold)) if threshold is not None else False
        table["qc_flagged"] &= np.isin(done, list(predicted))  # a scan refused before preprocessing has no registration to judge
        low, high = math.nan, math.nan  # an age outside the training range is a reason in ``inadequate``, not a warning
        members = len(self.checkpoints)
        by_id = seen_by_id(self.checkpoints, table["subject_id"], table["session_id"], table["path"])  # a warning where the bytes differ
        table["warnings"] = [
            "; ".join(part for part in (_warnings(age, score, flagged, low, high, threshold, trained_by, members), "" if trained_by else note) if part)
            for age, score, flagged, trained_by, note in zip(table["age"], table["qc_score"], table["qc_flagged"], seen, by_id, strict=False)
        ]
        table["inadequate"] = [inadequate[index] for index in done]
        if not force:
            table.loc[table["inadequate"] != "", list(BRAIN_AGE_COLUMNS)] = np.nan
        table["model"] = self.name
        extra = [column for column in ("sex", "group", "cdr") if table[column].notna().any()]
        return table[[*PREDICTION_COLUMNS, *extra]]


def _batches(items: Iterable[tuple[int, np.ndarray, float]], size: int) -> Iterator[tuple[list[int], np.ndarray, list[float]]]:
    """Group ``(index, volume, score)`` items into stacked batches of at most ``size``."""
    batch: list[tuple[int, np.ndarray, float]] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield [i for i, _, _ in batch], np.stack([v for _, v, _ in batch]), [s for _, _, s in batch]
            batch = []
    if batch:
        yield [i for i, _, _ in batch], np.stack([v for _, v, _ in batch]), [s for _, _, s in batch]


def _warnings(age: float, score: float, flagged: bool, low: float, high: float, threshold: float | None, trained_by: int = 0, members: int = 1) -> str:
    """Why a prediction deserves caution, ``"; "``-separated (empty if none)."""
    found = []
    if trained_by:
        found.append(
            f"this scan was in the training data of {trained_by} of {members} model(s): its prediction is not out-of-sample"
            + (" (its run's predictions.csv holds the out-of-fold one)" if members > 1 else "")
        )
    if np.isfinite(age) and np.isfinite(low) and not low <= age <= high:
        found.append(f"age {age:g} is outside the training range {low:g}–{high:g}")
    if flagged:
        found.append("poor registration (QC score undefined)" if np.isnan(score) else f"poor registration (QC score {score:.2f} < {threshold:g})")
    return "; ".join(found)


def summarise_sessions(predictions: pd.DataFrame) -> pd.DataFrame:
    """One row per session: ages, brain ages and gaps averaged over its scans, the lowest QC score,
    ``qc_flagged`` if any scan is, the warnings of every scan, ``n_scans``."""
    if predictions.empty:
        return predictions.drop(columns=["path", "scan_id"]).assign(n_scans=pd.Series(dtype=int))
    averaged = aggregate_sessions(predictions.drop(columns=["path", "qc_score", "qc_flagged", "warnings", "inadequate", "bias_correction"]))
    grouped = predictions.groupby(["subject_id", "session_id"], sort=True, dropna=False)
    quality = pd.DataFrame(
        {
            "qc_score": grouped["qc_score"].min(),
            "qc_flagged": grouped["qc_flagged"].any(),
            "warnings": grouped["warnings"].agg(lambda values: "; ".join(dict.fromkeys(v for v in values if v))),
            "inadequate": grouped["inadequate"].agg(lambda values: "; ".join(dict.fromkeys(v for v in values if v))),
            "bias_correction": grouped["bias_correction"].first(),
        }
    ).reset_index()
    sessions = averaged.merge(quality, on=["subject_id", "session_id"], how="left")
    order = [column for column in PREDICTION_COLUMNS if column in sessions] + ["n_scans"]
    return sessions[order + [column for column in sessions.columns if column not in order]]


def accuracy_table(predictions: pd.DataFrame, mean_training_age: float) -> pd.DataFrame:
    """MAE, RMSE and r of the rows with a known age: brain age, bias-corrected brain age and the
    mean-age baseline (every scan predicted as ``mean_training_age``); empty if no age is known."""
    known = predictions[predictions["age"].notna()]
    if known.empty:
        return pd.DataFrame(columns=["prediction", "n", "mae", "rmse", "r"])
    candidates: dict[str, pd.Series | np.ndarray] = {
        "brain age": known["brain_age"],
        "brain age, bias-corrected": known["brain_age_corrected"],
        "mean training age": np.full(len(known), mean_training_age),
    }
    rows = []
    for name, values in candidates.items():
        metrics = regression_metrics(known["age"], values)
        rows.append({"prediction": name, **{key: metrics[key] for key in ("n", "mae", "rmse", "r")}})
    return pd.DataFrame(rows)
