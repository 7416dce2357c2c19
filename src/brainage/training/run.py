"""The fold loop and the run folder: train one model per subject-grouped fold, predict its test
scans through the one inference path, fit the age-bias correction on other people's out-of-fold
predictions, fit the baselines on the very same folds, and summarise.

A run folder holds::

    config.yaml              resolved configuration (TrainConfig, cache, preprocessing, folds)
    metrics.csv              per-epoch loss, MAE, RMSE (years), learning rate, max gradient norm, per fold (and ensemble member)
    predictions.csv          out-of-fold predictions: network (uncorrected and bias-corrected) and baselines
    summary.csv              metrics at session and scan level for the network, the baselines and
                             (synthetic cohorts) the true brain age
    bias_correction.yaml     each fold's correction, whom it was fitted on, and the final one
    training.png             the tutorial's figure: loss, MAE, RMSE, learning rate, max gradient norm (none with epochs 0)
    predicted_vs_true.png    predicted against true age, before and after age-bias correction
    fold_K/model.ckpt        self-contained checkpoint (:mod:`brainage.checkpoint`), with the final correction
    fold_K-M/                ensemble member M > 0 of fold K (``TrainConfig.ensemble``), the same files
    fold_K/predictions.csv   the fold's test predictions (a finished fold is not trained again)
    fold_K/last.ckpt         Lightning's state while the fold trains: a killed fold resumes from it
    logs/fold_K/             Lightning's CSV and TensorBoard logs
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
import yaml
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import Callback, EarlyStopping, EMAWeightAveraging, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from sklearn.linear_model import LinearRegression

from brainage import __version__
from brainage.baselines import downsample_volumes, mean_baseline, tabular_baseline, voxel_baseline
from brainage.checkpoint import BrainAgeCheckpoint, data_root, fitted_scans, fold_folder, load_checkpoint, refuse_overlap, save_checkpoint
from brainage.cohort.truth import true_brain_ages
from brainage.console import console
from brainage.data import BrainAgeDataModule, Fold, make_folds
from brainage.errors import BrainAgeError, InputError
from brainage.evaluation import (
    TRUE_BRAIN_AGE_LABEL,
    AgeBiasCorrector,
    control_mask,
    demented_vs_nondemented,
    fit_bias_correction,
    gap_by_group,
    summarize_predictions,
)  # fmt: skip
from brainage.figures import plot_predictions, plot_training_curves
from brainage.inference import BrainAgeEnsemble, predict_batches
from brainage.models import build_model
from brainage.predict import resolve_checkpoints
from brainage.preprocess import PreparedCache, load_cache
from brainage.reliability import ConformalInterval, ReliabilityResult, coverage, longitudinal, session_residuals, test_retest
from brainage.training.config import ConfigError, TrainConfig, _plain, resolve_accelerator, resolve_channels_last, resolve_precision
from brainage.training.module import HISTORY_COLUMNS, BrainAgeModule, FiniteLoss, MaxGradientNorm, PreciseBatchNorm, ProgressBar, TrainingCurves
from brainage.utils import atomic_write, write_csv

PREDICTION_COLUMNS = ("scan_id", "subject_id", "session_id", "age", "sex", "group", "cdr", "mr_delay", "qc_flagged")
#: Columns of the baselines in predictions.csv, and their names in the summary.
BASELINES = {"mean_age": "mean age", "ridge_tabular": "ridge nWBV+eTIV+sex", "ridge_voxels": "ridge voxels (PCA)"}
IDS = {"scan_id": str, "subject_id": str, "session_id": str}


@dataclass
class TrainResult:
    """What a run produced; the same is on disk in ``run_dir``. ``corrector`` and ``interval`` are the
    final age-bias correction and conformal interval (stored in every fold's checkpoint)."""

    run_dir: Path
    predictions: pd.DataFrame
    summary: pd.DataFrame
    history: pd.DataFrame
    folds: pd.DataFrame
    checkpoints: list[Path]
    group_gaps: pd.DataFrame
    group_test: dict[str, Any]
    precision: str
    accelerator: str
    corrector: AgeBiasCorrector | None = None
    interval: ConformalInterval | None = None
    reliability: list[str] = field(default_factory=list)


class RunFolderError(BrainAgeError):
    """A run folder that holds a different run."""


def train(cache: PreparedCache | str | Path, out: str | Path, config: TrainConfig | None = None) -> TrainResult | None:
    """Train ``config.model`` on ``cache`` with subject-grouped folds, fit the baselines on the very
    same folds and write the run folder ``out``.

    A folder that already holds this very run (same configuration, cache and hardware) is resumed:
    finished folds are kept, an interrupted fold continues from its last epoch. A folder that holds
    another run is refused. Under multi-process (DDP) training only the global rank 0 predicts and
    writes; the others return None.
    """
    config = config or TrainConfig()
    try:
        build_model(config.model, **config.model_hparams)
    except BrainAgeError:
        raise
    except (TypeError, ValueError) as error:
        raise ConfigError(f"model {config.model!r}: {error}") from error
    cache = cache if isinstance(cache, PreparedCache) else load_cache(cache)
    run_dir = Path(out)
    accelerator = resolve_accelerator(config.accelerator)
    precision = resolve_precision(config.precision, accelerator)
    folds = make_folds(cache.manifest, config.folds, config.test_fraction, config.early_stopping_fraction, config.seed, config.train_groups)
    fold_table = pd.DataFrame([fold.describe(cache.manifest) for fold in folds])
    _start_run_folder(run_dir, cache, config, fold_table, _split_digest(cache.manifest, folds), accelerator, precision)

    fold_predictions, validation, histories, checkpoints = [], [], [], []
    for fold in folds:
        members = [_fit_fold(cache, fold, member, config, run_dir, accelerator, precision) for member in range(config.ensemble)]
        fold_predictions.append(_member_mean([test for test, _, _ in members]))
        validation.append(_member_mean([val for _, val, _ in members]))
        histories += [history.assign(fold=fold.index, member=member) for member, (_, _, history) in enumerate(members)]
        checkpoints += [fold_folder(run_dir, fold.index, member) / "model.ckpt" for member in range(config.ensemble)]
    if rank_zero_only.rank != 0:
        return None
    truth = true_brain_ages(cache.manifest["path"])
    truth = None if truth is None else pd.Series(truth, index=cache.manifest["scan_id"].astype(str))
    baselines = baseline_predictions(cache, folds, config) if config.baselines else None
    return finish_run(run_dir, config, fold_predictions, validation, histories, checkpoints, fold_table, truth, baselines, accelerator, precision)


def finish_run(
    run_dir: Path,
    config: TrainConfig,
    fold_predictions: Sequence[pd.DataFrame],
    validation: Sequence[pd.DataFrame],
    histories: Sequence[pd.DataFrame],
    checkpoints: Sequence[Path],
    fold_table: pd.DataFrame,
    truth: pd.Series | None,
    baselines: pd.DataFrame | None,
    accelerator: str,
    precision: str,
) -> TrainResult:
    """Everything after the networks: each fold's (member-averaged) out-of-fold and validation
    predictions are bias-corrected and given conformal intervals, the final correction and interval
    go into every checkpoint, and predictions (with ``truth``, the true brain age by scan id, and the
    ``baselines``' columns), summary, metrics and figures are written to ``run_dir``."""
    predictions = pd.concat(fold_predictions, ignore_index=True)
    if truth is not None:
        predictions["true_brain_age"] = truth.reindex(predictions["scan_id"].astype(str)).to_numpy()
    validation = pd.concat(validation, ignore_index=True)
    predictions, corrector = correct_bias(predictions, validation, config, run_dir)
    predictions, interval = calibrate_intervals(predictions, validation, config)
    for path in checkpoints:  # the final correction and interval, in every fold's checkpoint
        checkpoint = load_checkpoint(path)
        checkpoint.corrector, checkpoint.interval = corrector, interval
        save_checkpoint(checkpoint, path)
    if baselines is not None:
        predictions = predictions.merge(baselines, on="scan_id", how="left")
    history = pd.concat(histories, ignore_index=True).reindex(columns=["fold", "member", *HISTORY_COLUMNS])
    summary = summarize_run(predictions, config.model, config.bias_correction)
    column = "brain_age_corrected" if predictions["brain_age_corrected"].notna().any() else "brain_age"
    group_gaps, group_test = gap_by_group(predictions, by="group", column=column) if "group" in predictions else (pd.DataFrame(), {"test": "none"})
    group_test["column"] = column
    write_csv(predictions, run_dir / "predictions.csv")
    write_csv(summary, run_dir / "summary.csv")
    write_csv(history, run_dir / "metrics.csv")
    if not history.empty:  # none when only the output line of --init was re-fitted (epochs 0)
        plot_training_curves(history, run_dir / "training.png")
    plot_predictions(predictions, run_dir / "predicted_vs_true.png")
    retest, visits = reliability(predictions)
    notes = [str(retest), str(visits)]
    if interval is not None:
        inside = coverage(predictions["brain_age_lower"], predictions["brain_age_upper"], predictions["age"])
        notes.append(f"conformal intervals: {inside:.1%} of out-of-fold ages inside the {config.interval:.0%} intervals (each fold calibrated on other people)")
    return TrainResult(
        run_dir, predictions, summary, history, fold_table, list(checkpoints), group_gaps, group_test, precision, accelerator, corrector, interval, notes
    )


def correct_bias(
    predictions: pd.DataFrame, validation: pd.DataFrame, config: TrainConfig, run_dir: Path | None
) -> tuple[pd.DataFrame, AgeBiasCorrector | None]:
    """Add ``brain_age_corrected`` to out-of-fold ``predictions``, record every fit in
    ``run_dir/bias_correction.yaml`` (no record without ``run_dir``) and return the final correction
    (for the checkpoints).

    K folds: fold k's scans are corrected with a fit on the out-of-fold predictions of the other
    folds' controls (never fold k's people); the final correction is fitted on all of them. One
    hold-out: the fit is on the validation predictions of the training side. Fits are at session
    level; one refused (too few controls, a slope that could be zero) leaves NaN and says why.
    """
    predictions = predictions.copy()
    predictions["brain_age_corrected"] = np.nan
    if config.bias_correction == "none":
        return predictions, None
    k_fold = predictions["fold"].nunique() > 1
    record: dict[str, Any] = {"method": config.bias_correction, "control_group": list(config.control_group or []), "folds": []}
    for fold, rows in predictions.groupby("fold", sort=True):
        fit_on = predictions[predictions["fold"] != fold] if k_fold else validation[validation.get("fold", pd.Series(dtype=int)) == fold]
        corrector = fit_bias_correction(fit_on, config.control_group, config.bias_correction)
        predictions.loc[rows.index, "brain_age_corrected"] = corrector.transform(rows["brain_age"], rows["age"])
        record["folds"].append(
            {
                "fold": int(fold),
                "fitted_on": "out-of-fold predictions of the other folds" if k_fold else "validation predictions of the training side",
                "subjects": sorted(set(_controls(fit_on, config).astype(str))),
                "description": corrector.describe(),
                **corrector.to_dict(),
            }
        )
        if config.progress and k_fold:
            console.print(f"[bold]fold {fold}[/]: {corrector.describe()}", style=None if corrector.applicable else "yellow")
    final = fit_bias_correction(predictions if k_fold else validation, config.control_group, config.bias_correction)
    record["final"] = {"description": final.describe(), **final.to_dict()}
    if config.progress:
        console.print(f"final: {final.describe()}", style=None if final.applicable else "yellow")
    if run_dir is not None:
        _write_yaml(_plain(record), run_dir / "bias_correction.yaml")
    return predictions, final


def calibrate_intervals(predictions: pd.DataFrame, validation: pd.DataFrame, config: TrainConfig) -> tuple[pd.DataFrame, ConformalInterval | None]:
    """Add ``brain_age_lower``/``brain_age_upper`` (coverage ``config.interval``) to out-of-fold
    ``predictions``, each fold's from a split-conformal calibration on the other folds' residuals
    (one per session; one hold-out: on the validation predictions); return the final calibration
    (on every out-of-fold residual, for the checkpoints)."""
    predictions = predictions.copy()
    k_fold = predictions["fold"].nunique() > 1

    def fitted(frame: pd.DataFrame) -> ConformalInterval | None:
        residuals = session_residuals(frame, level="scan")["residual"] if len(frame) else []
        return ConformalInterval(config.interval).fit(residuals) if len(residuals) else None

    predictions["brain_age_lower"] = predictions["brain_age_upper"] = np.nan
    for fold, rows in predictions.groupby("fold", sort=True):
        interval = fitted(predictions[predictions["fold"] != fold] if k_fold else validation[validation.get("fold", pd.Series(dtype=int)) == fold])
        if interval is not None:
            lower, upper = interval.interval(rows["brain_age"])
            predictions.loc[rows.index, "brain_age_lower"], predictions.loc[rows.index, "brain_age_upper"] = lower, upper
    return predictions, fitted(predictions if k_fold else validation)


def _controls(frame: pd.DataFrame, config: TrainConfig) -> pd.Series:
    """The subject ids of the controls among ``frame``'s rows."""
    mask, _ = control_mask(frame, config.control_group)
    return frame["subject_id"][mask]


def _start_run_folder(
    run_dir: Path, cache: PreparedCache, config: TrainConfig, folds: pd.DataFrame, split_digest: str, accelerator: str, precision: str
) -> None:
    """Write ``config.yaml``, or check that the one there describes this same run."""
    values = {
        "brainage_version": __version__,
        "cache": str(Path(cache.root).resolve()),
        "n_scans": len(cache.manifest),
        "preprocessing": _plain(cache.config.to_dict()),
        "train": config.to_dict(),
        "resolved": {"accelerator": accelerator, "precision": precision, "channels_last": resolve_channels_last(config.channels_last, precision)},
        "folds": _plain(folds.to_dict(orient="records")),
        "split_digest": split_digest,
    }
    path = run_dir / "config.yaml"
    if path.is_file():
        try:
            existing = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise InputError(path, f"unreadable run configuration: {error}".replace("\n", " ")) from error
        if _run_identity(existing) != _run_identity(values):
            raise RunFolderError(f"{run_dir} holds another run (different configuration or cache); choose another --out")
        if existing.get("resolved") != values["resolved"]:
            was, now = existing.get("resolved") or {}, values["resolved"]
            raise RunFolderError(
                f"{run_dir} was trained on {was.get('accelerator')} with {was.get('precision')}, this machine gives "
                f"{now['accelerator']} with {now['precision']}: resuming would mix folds of different hardware; "
                "pass the same --accelerator/--precision or choose another --out"
            )
        return
    if run_dir.is_dir() and any(run_dir.iterdir()):
        raise RunFolderError(f"{run_dir} is not empty and holds no brainage run; choose another --out")
    if rank_zero_only.rank == 0:
        _write_yaml(values, path)


def _run_identity(values: Mapping[str, Any]) -> dict[str, Any]:
    """What makes two runs the same run: the cache, its preprocessing, the folds and every training
    setting except display ones."""
    train = values.get("train") or {}
    with contextlib.suppress(ConfigError, TypeError):  # a run folder written before a setting existed holds its default
        train = TrainConfig.from_dict(train).to_dict()
    train = {key: value for key, value in train.items() if key != "progress"}
    # A combined run (brainage.training.combine) is never the same run as one to train.
    return {key: values.get(key) for key in ("cache", "n_scans", "preprocessing", "split_digest", "combined_from")} | {"train": train}


def _split_digest(manifest: pd.DataFrame, folds: Sequence[Fold]) -> str:
    """A hash of which scans are in which side of which fold."""
    digest = hashlib.blake2b(digest_size=8)
    for fold in folds:
        for side in (fold.train, fold.val, fold.test):
            digest.update(("|".join(manifest["scan_id"].iloc[side].astype(str)) + "#").encode())
    return digest.hexdigest()


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Hide Lightning's banner lines (devices, tips) and warnings that do not apply to this loop."""
    lightning_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = lightning_log.level
    lightning_log.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            for message in (
                ".*does not have many workers.*",
                ".*smaller than the logging interval.*",
                ".*LeafSpec.*is deprecated.*",
                ".*exists and is not empty.*",
            ):
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        lightning_log.setLevel(level)


def fold_module(
    cache: PreparedCache, fold: Fold, config: TrainConfig, accelerator: str, precision: str, seed: int | None = None
) -> tuple[BrainAgeModule, BrainAgeDataModule]:
    """The fold's data module (age statistics of its training scans; batches and augmentation drawn
    from ``seed``, by default the fold's) and a fresh model around it, starting from
    ``config.init``'s weights when given."""
    data = BrainAgeDataModule(
        cache,
        fold,
        config.batch_size,
        config.augmentation,
        config.num_workers,
        pin_memory=accelerator == "cuda",
        seed=config.seed + fold.index if seed is None else seed,
        repeats_per_session=config.repeats_per_session,
    )
    hparams = dict(config.model_hparams)
    if accelerator == "mps" and config.model == "seed":
        hparams.setdefault("strided_pool", True)  # the tutorial's MaxPool3d replacement on Apple GPUs
    model = build_model(config.model, **hparams)
    if config.init:
        source = initial_checkpoint(config.init, fold.index)
        _refuse_init_overlap(source, cache, fold, config)
        if source.model_name != config.model or dict(source.model.hparams) != dict(model.hparams):
            raise ConfigError(
                f"--init {config.init}: its model is {source.model_name} {dict(source.model.hparams)}, "
                f"not {config.model} {dict(model.hparams)}; pass the same --model (and hyper-parameters)"
            )
        model.load_state_dict(source.model.state_dict())
    channels_last = resolve_channels_last(config.channels_last, precision)
    return BrainAgeModule(model, data.age_mean, data.age_std, config, channels_last), data


def initial_checkpoint(init: str | Path, fold: int) -> BrainAgeCheckpoint:
    """The checkpoint a fold is fine-tuned from: ``init`` itself, or fold ``fold``'s (else the
    first) of a run folder."""
    members = resolve_checkpoints(init)
    chosen = fold_folder(Path(init), fold) / "model.ckpt"
    return load_checkpoint(chosen if chosen in members else members[0])


def _refuse_init_overlap(source: BrainAgeCheckpoint, cache: PreparedCache, fold: Fold, config: TrainConfig) -> None:
    """Refuse ``config.init``'s ``source`` for ``fold`` if it was fitted on any of the fold's test people."""
    tested = cache.manifest.iloc[fold.test]
    hashes = tested["content_hash"] if "content_hash" in tested else [None] * len(tested)
    where = data_root(cache.manifest["path"]) if "path" in cache.manifest else None
    refuse_overlap(source, f"--init {config.init}", fold.index, tested["subject_id"].astype(str), hashes, where)


def fold_trainer(
    config: TrainConfig, accelerator: str, precision: str, folder: Path, log_dir: Path, data: BrainAgeDataModule, extra_callbacks: Sequence[Callback] = ()
) -> tuple[L.Trainer, ModelCheckpoint, TrainingCurves]:
    """The Lightning trainer of one fold (``data``'s training scans also give the batch-norm
    statistics when ``config.precise_bn``), its best-checkpoint callback (which also keeps
    ``last.ckpt`` for resuming) and its training curves."""
    # Full checkpoints: callbacks (weight averaging, curves) only put their state in those.
    best = ModelCheckpoint(dirpath=folder, filename="best", monitor="val_mae", mode="min", save_last=True, enable_version_counter=False)
    curves = TrainingCurves(folder)
    callbacks: list[Callback] = [
        FiniteLoss(folder, precision),  # first: a diverged epoch stops before anything uses or saves its weights
        # Order matters: the averaged weights are swapped in before their batch-norm statistics are recomputed.
        *([EMAWeightAveraging(decay=config.ema_decay)] if config.ema_decay else []),
        *([PreciseBatchNorm(data.loader(data.fold.train), config.precise_bn_batches)] if config.precise_bn else []),
        MaxGradientNorm(),
        curves,
        LearningRateMonitor(logging_interval="epoch"),
        EarlyStopping(monitor="val_mae", mode="min", patience=config.early_stopping_patience),
        best,
        *extra_callbacks,
    ]
    if config.progress:
        callbacks.append(ProgressBar())
    trainer = L.Trainer(
        max_epochs=config.epochs,
        min_epochs=min(config.min_epochs, config.epochs),
        accelerator=accelerator,
        devices=config.devices,
        num_nodes=config.num_nodes,
        precision=precision,
        gradient_clip_val=config.gradient_clip,
        gradient_clip_algorithm="norm",
        deterministic=config.deterministic,
        callbacks=callbacks,
        logger=[
            CSVLogger(log_dir.parent, name=log_dir.name, version="csv"),
            TensorBoardLogger(log_dir.parent, name=log_dir.name, version="tensorboard", default_hp_metric=False),
        ],
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        enable_model_summary=False,
        enable_progress_bar=config.progress,
    )
    return trainer, best, curves


def _member_mean(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """One fold's predictions by its ensemble members (same scans, same order), with ``brain_age``
    their mean (empty on the ranks of multi-process training that do not predict)."""
    frame = frames[0].copy()
    if len(frames) > 1 and not frame.empty:
        if any(not other["scan_id"].equals(frame["scan_id"]) for other in frames[1:]):
            raise BrainAgeError("the ensemble members of a fold predicted different scans; train the run again in a new folder")
        frame["brain_age"] = np.mean([other["brain_age"].to_numpy(dtype=float) for other in frames], axis=0)
    return frame


def _read_predictions(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=IDS) if path.is_file() else pd.DataFrame()


def _fit_fold(
    cache: PreparedCache, fold: Fold, member: int, config: TrainConfig, run_dir: Path, accelerator: str, precision: str
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Train ensemble member ``member`` of one fold (reuse it if it finished before, resume it from
    ``last.ckpt`` if it was interrupted; ``config.epochs == 0``: re-fit only the output line of
    ``config.init``, see :func:`_recalibrated`); return its test and validation predictions
    (uncorrected) and its history."""
    folder = fold_folder(run_dir, fold.index, member)
    name = f"fold {fold.index}" + (f" member {member}" if config.ensemble > 1 else "")
    seed = config.seed + fold.index + 1000 * member
    finished = folder / "predictions.csv"
    if finished.is_file() and (folder / "model.ckpt").is_file():
        history = pd.read_csv(folder / "metrics.csv") if (folder / "metrics.csv").is_file() else pd.DataFrame(columns=HISTORY_COLUMNS)
        return _read_predictions(finished), _read_predictions(folder / "val_predictions.csv"), history

    L.seed_everything(seed, workers=True, verbose=False)
    module, data = fold_module(cache, fold, config, accelerator, precision, seed)
    if config.epochs == 0:
        if rank_zero_only.rank != 0:  # nothing to train: under DDP only rank 0 predicts
            return pd.DataFrame(), pd.DataFrame(), pd.DataFrame(columns=HISTORY_COLUMNS)
        device = torch.device(accelerator)
        checkpoint = _recalibrated(cache, fold, data, config, device)
        test, val = _predict_fold(checkpoint, cache, fold, data, device, folder)
        if config.progress:
            console.print(f"[bold]{name}[/]: {checkpoint.extra['recalibration']}; test MAE {_mae(test):.2f} y (uncorrected, per scan)", soft_wrap=True)
        return test, val, pd.DataFrame(columns=HISTORY_COLUMNS)

    last = folder / "last.ckpt"
    with quiet_lightning():
        trainer, best, curves = fold_trainer(config, accelerator, precision, folder, run_dir / "logs" / folder.name, data)
        if config.progress and trainer.is_global_zero:
            console.print(
                f"[bold]{name}[/]: {config.model} on {len(fold.train)} training scans, "
                f"{len(fold.val)} validation, {len(fold.test)} test; {accelerator}, {precision}"
                f"{', channels-last' if module.channels_last else ''}"
                f"{f', {trainer.world_size} processes (DDP)' if trainer.world_size > 1 else ''}"
                f"{f'; resumed from {last.name}' if last.is_file() else ''}"
            )
        trainer.fit(module, datamodule=data, ckpt_path=last if last.is_file() else None)
    if not trainer.is_global_zero:
        return pd.DataFrame(), pd.DataFrame(), curves.history
    module.load_state_dict(torch.load(best.best_model_path, map_location="cpu", weights_only=True)["state_dict"])
    checkpoint = _fold_checkpoint(
        module.model.to(memory_format=torch.contiguous_format), data.age_mean, data.age_std, cache, fold, config,
        member=member, best_epoch=int(curves.history["val_mae"].idxmin()) + 1 if curves.rows else None,
        best_val_mae=float(best.best_model_score) if best.best_model_score is not None else None,
    )  # fmt: skip
    test, val = _predict_fold(checkpoint, cache, fold, data, trainer.strategy.root_device, folder)
    for leftover in (Path(best.best_model_path), last):
        leftover.unlink(missing_ok=True)
    if config.progress:
        console.print(
            f"[bold]{name}[/]: best validation MAE {checkpoint.extra['best_val_mae']:.2f} y at epoch "
            f"{checkpoint.extra['best_epoch']}; test MAE {_mae(test):.2f} y (uncorrected, per scan)"
        )
    return test, val, curves.history


def _fold_checkpoint(
    model: torch.nn.Module, age_mean: float, age_std: float, cache: PreparedCache, fold: Fold, config: TrainConfig, **extra: Any
) -> BrainAgeCheckpoint:
    """The self-contained checkpoint of one fold's model, fitted on its training and validation scans."""
    manifest = cache.manifest
    train_ages = manifest["age"].to_numpy(dtype=float)[fold.train]
    fitted_on = np.concatenate([fold.train, fold.val])
    return BrainAgeCheckpoint(
        model=model.cpu().eval(),
        model_name=config.model,
        age_mean=age_mean,
        age_std=age_std,
        preprocessing=cache.config.to_dict(),
        train_age_range=(float(train_ages.min()), float(train_ages.max())),
        tta_flip=config.tta_flip,
        **fitted_scans(manifest, fitted_on),
        extra={
            "fold": fold.index, **extra, "fine_tuned_from": str(Path(config.init).resolve()) if config.init else None, "train_config": config.to_dict(),
        },
    )  # fmt: skip


def _recalibrated(cache: PreparedCache, fold: Fold, data: BrainAgeDataModule, config: TrainConfig, device: torch.device) -> BrainAgeCheckpoint:
    """``config.init``'s network, its weights untouched, with its output line re-fitted to this
    cohort: age regressed on its predictions (least squares, per scan) over the fold's training and
    validation scans, folded into the checkpoint's age scale (``age_mean``, ``age_std``) so that
    ``brainage predict`` applies it. The fold's test people are not used."""
    source = initial_checkpoint(config.init, fold.index)
    _refuse_init_overlap(source, cache, fold, config)
    source.tta_flip = config.tta_flip
    fitted_on = np.concatenate([fold.train, fold.val])
    predicted = predict_batches(BrainAgeEnsemble([source]), data.loader(fitted_on), device=device)[:, 0]
    ages = cache.manifest["age"].to_numpy(dtype=float)[fitted_on]
    line = LinearRegression().fit(predicted[:, None], ages)
    slope, intercept = float(line.coef_[0]), float(line.intercept_)
    if slope <= 0:
        raise BrainAgeError(
            f"--init {config.init}: on fold {fold.index}'s training scans its predictions do not rise with age "
            f"(age = {intercept:.1f} + {slope:.3f} × prediction), so no line can re-calibrate it; fine-tune it instead (--epochs above 0)"
        )
    return _fold_checkpoint(
        source.model, intercept + slope * source.age_mean, slope * source.age_std, cache, fold, config, member=0,
        recalibration=f"output re-calibrated on {len(fitted_on)} training scans: age = {intercept:.2f} + {slope:.3f} × prediction (MAE {np.mean(np.abs(line.predict(predicted[:, None]) - ages)):.2f} y there, {np.mean(np.abs(predicted - ages)):.2f} y before)",
    )  # fmt: skip


def _predict_fold(
    checkpoint: BrainAgeCheckpoint, cache: PreparedCache, fold: Fold, data: BrainAgeDataModule, device: torch.device, folder: Path
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The fold's test and validation predictions by ``checkpoint`` through the path of
    `brainage predict` (its own ensemble of one, in fp32), written with it to ``folder``."""
    network = BrainAgeEnsemble([checkpoint])
    manifest = cache.manifest
    sides = {}
    for side, indices in (("val", fold.val), ("test", fold.test)):
        columns = [column for column in PREDICTION_COLUMNS if column in manifest]
        frame = manifest.iloc[indices][columns].reset_index(drop=True)
        frame["fold"] = fold.index
        frame["brain_age"] = predict_batches(network, data.loader(indices), device=device)[:, 0]
        sides[side] = frame
    network.cpu()
    save_checkpoint(checkpoint, folder / "model.ckpt")
    write_csv(sides["val"], folder / "val_predictions.csv")
    write_csv(sides["test"], folder / "predictions.csv")
    return sides["test"], sides["val"]


def _mae(frame: pd.DataFrame) -> float:
    return float(np.mean(np.abs(frame["brain_age"] - frame["age"].to_numpy(dtype=float))))


# --- baselines and summary -----------------------------------------------------------------------


def baseline_predictions(cache: PreparedCache, folds: Sequence[Fold], config: TrainConfig) -> pd.DataFrame:
    """Out-of-fold predictions of the baselines on the very same folds, fitted on each fold's
    train + validation scans: ``scan_id`` and one column per baseline (see ``BASELINES``)."""
    manifest = cache.manifest
    ages = manifest["age"].to_numpy(dtype=float)
    numeric = [c for c in ("nwbv", "etiv") if c in manifest and manifest[c].notna().any()]
    categorical = [c for c in ("sex",) if c in manifest and manifest[c].notna().any()]
    factor = config.voxel_downsample or max(1, round(min(cache.shape) / 16))
    voxels = np.concatenate(
        [downsample_volumes(np.stack([cache.volume(i) for i in range(start, min(start + 32, len(manifest)))]), factor) for start in range(0, len(manifest), 32)]
    )
    frames = []
    for fold in folds:
        fit = np.concatenate([fold.train, fold.val])
        out = pd.DataFrame({"scan_id": manifest["scan_id"].iloc[fold.test].to_numpy()})
        out["mean_age"] = mean_baseline().fit(np.zeros((len(fit), 1)), ages[fit]).predict(np.zeros((len(fold.test), 1)))
        if numeric or categorical:
            tabular = tabular_baseline(numeric, categorical).fit(manifest.iloc[fit], ages[fit])
            out["ridge_tabular"] = tabular.predict(manifest.iloc[fold.test])
        out["ridge_voxels"] = voxel_baseline(config.voxel_components).fit(voxels[fit], ages[fit]).predict(voxels[fold.test])
        frames.append(out)
    return pd.concat(frames, ignore_index=True)


SUMMARY_COLUMNS = (
    "model", "level", "correction", "n", "mae", "rmse", "r", "r2", "gap_age_r", "mae_true", "gap_fidelity", "dementia_gap", "dementia_p",
    "retest_sd", "icc2", "icc2_low", "icc2_high", "visit_slope", "visit_slope_true", "coverage",
)  # fmt: skip


def summarize_run(predictions: pd.DataFrame, model_name: str, correction: str = "residual") -> pd.DataFrame:
    """Session- and scan-level metrics of the network (uncorrected, and corrected where a correction
    was fitted), of every baseline and, on synthetic cohorts, of the true brain age used as a
    prediction; each row with the Demented-minus-Nondemented gap per subject and its p value, the
    test–retest SD and ICC(2,1) over repeat scans, the median per-subject slope of brain age on age
    over visits of controls (and on the true brain age), and, for the network, the share of ages
    inside the out-of-fold conformal intervals. A figure the data cannot give is NaN here; the
    printed summary says why."""
    candidates: list[tuple[str, str, str]] = [(model_name, "none", "brain_age")]
    if "brain_age_corrected" in predictions and predictions["brain_age_corrected"].notna().any():
        candidates.append((model_name, correction, "brain_age_corrected"))
    candidates += [(name, "none", column) for column, name in BASELINES.items() if column in predictions and predictions[column].notna().any()]
    if "true_brain_age" in predictions and predictions["true_brain_age"].notna().any():
        candidates.append((TRUE_BRAIN_AGE_LABEL, "none", "true_brain_age"))
    rows = []
    for name, how, column in candidates:
        dementia = demented_vs_nondemented(predictions, column)
        table = summarize_predictions(predictions, column)
        retest, visits = reliability(predictions, column)
        inside = (
            coverage(predictions["brain_age_lower"], predictions["brain_age_upper"], predictions["age"])
            if column == "brain_age" and "brain_age_lower" in predictions and predictions["brain_age_lower"].notna().any()
            else np.nan
        )
        rows.append(
            table.assign(
                model=name,
                correction=how,
                dementia_gap=dementia["difference"],
                dementia_p=dementia["p_value"],
                retest_sd=retest.values.get("within_sd", np.nan),
                icc2=retest.values.get("icc2", np.nan),
                icc2_low=retest.values.get("icc2_low", np.nan),
                icc2_high=retest.values.get("icc2_high", np.nan),
                visit_slope=visits.values.get("slope_median", np.nan),
                visit_slope_true=visits.values.get("slope_true_median", np.nan),
                coverage=inside,
            )
        )
    summary = pd.concat(rows, ignore_index=True)
    order = {"session": 0, "scan": 1}
    summary = summary.sort_values("level", key=lambda s: s.map(order), kind="stable")
    return summary[list(SUMMARY_COLUMNS)].reset_index(drop=True)


def reliability(predictions: pd.DataFrame, column: str = "brain_age") -> tuple[ReliabilityResult, ReliabilityResult]:
    """Test–retest over repeat scans and consistency over visits of ``column``; each says why when
    the data cannot give it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            retest = test_retest(predictions, column)
        except ValueError as error:
            retest = ReliabilityResult.unavailable("test–retest", f"not available: {error}")
        try:
            visits = longitudinal(predictions, column, true_column="true_brain_age" if column != "true_brain_age" else "")
        except ValueError as error:
            visits = ReliabilityResult.unavailable("longitudinal", f"not available: {error}")
    return retest, visits


def _write_yaml(values: Mapping[str, Any], path: Path) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(yaml.safe_dump(dict(values), sort_keys=False))
