"""The fold loop and the run folder: train one model per subject-grouped fold, predict its test
scans through the one inference path, fit the baselines on the very same folds, then evaluate
(:mod:`brainage.training.evaluate`: the age-bias correction on other people's out-of-fold
predictions, the intervals, the summary; run again with ``brainage evaluate`` without training).

A run folder holds::

    config.yaml              resolved configuration (TrainConfig, cache, preprocessing, folds)
    metrics.csv              per-epoch loss, MAE, RMSE (years), learning rate, max gradient norm, per fold (and ensemble member)
    predictions.csv          out-of-fold predictions: network (uncorrected and bias-corrected) and baselines
    references.csv           the baselines' out-of-fold predictions and (synthetic cohorts) the true brain age, by scan
    baselines.yaml           the baselines' hyper-parameters chosen by inner CV, and whom each fold fitted them on
    evaluation.yaml          the post-hoc settings of the last evaluation and what the calibration was fitted on
    summary.csv              metrics at session and scan level for the network, the baselines and
                             (synthetic cohorts) the true brain age
    bias_correction.yaml     each fold's correction, whom it was fitted on, and the final one
    training.png             the tutorial's figure: loss, MAE, RMSE, learning rate, max gradient norm (none with epochs 0)
    predicted_vs_true.png    predicted against true age, before and after age-bias correction
    fold_K/model.ckpt        self-contained checkpoint (:mod:`brainage.checkpoint`), with the final correction
    fold_K-M/                ensemble member M > 0 of fold K (``TrainConfig.ensemble``), the same files
    fold_K/predictions.csv   the fold's test predictions (a finished fold is not trained again)
    fold_K/val_predictions.csv, fold_K/calibration_predictions.csv
                             its early-stopping people's predictions; hold-out mode: its calibration people's
    fold_K/last.ckpt         Lightning's state while the fold trains: a killed fold resumes from it
    logs/fold_K/             Lightning's CSV and TensorBoard logs
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
import yaml
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import Callback, EMAWeightAveraging, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from brainage import __version__
from brainage.baselines import BASELINES as BASELINES  # where demo.py and bench/accuracy.py import it from
from brainage.baselines import baseline_predictions
from brainage.checkpoint import BrainAgeCheckpoint, data_root, fitted_scans, fold_folder, load_checkpoint, refuse_overlap, save_checkpoint
from brainage.cohort.truth import true_brain_ages
from brainage.console import console
from brainage.data import BrainAgeDataModule, Fold, make_folds, subject_holdout
from brainage.errors import BrainAgeError, InputError
from brainage.evaluation import check_control_group, control_mask, fit_line
from brainage.figures import plot_training_curves
from brainage.inference import BrainAgeEnsemble, predict_batches
from brainage.models import AgeRegressor, build_model
from brainage.predict import resolve_checkpoints
from brainage.preprocess import PreparedCache, load_cache
from brainage.training.config import ConfigError, TrainConfig, _plain, resolve_accelerator, resolve_channels_last, resolve_precision
from brainage.training.evaluate import POST_HOC, REFERENCES, EvaluationSettings, TrainResult, evaluate_run, write_yaml
from brainage.training.module import HISTORY_COLUMNS, BrainAgeModule, FiniteEarlyStopping, MaxGradientNorm, PreciseBatchNorm, ProgressBar, TrainingCurves
from brainage.utils import write_csv
from brainage.zoo import resolve_model

#: The cache manifest's columns that an out-of-fold prediction row carries beside its brain ages
#: (served predictions have their own schema: :data:`brainage.predict.PREDICTION_COLUMNS`).
MANIFEST_COLUMNS = ("scan_id", "subject_id", "session_id", "age", "sex", "group", "cdr", "mr_delay", "qc_flagged")
#: Hold-out mode: fewer control people than this to calibrate on, and the command says so.
MIN_CALIBRATION_CONTROLS = 20


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
    try:  # a typo'd control group is refused before anything trains
        check_control_group(cache.manifest["group"].dropna().tolist() if "group" in cache.manifest else [], config.control_group)
    except ValueError as error:
        raise ConfigError(f"--control-group: {error}") from None
    run_dir = Path(out)
    accelerator = resolve_accelerator(config.accelerator)
    precision = resolve_precision(config.precision, accelerator)
    folds = make_folds(cache.manifest, config.folds, config.test_fraction, config.early_stopping_fraction, config.seed, config.train_groups)
    folds, calibration = calibration_split(cache.manifest, folds, config)
    if config.init:  # every fold's --init checked before anything is written or trained
        for fold in folds:
            _refuse_init_overlap(initial_checkpoint(config.init, fold.index), cache, fold, config)
    fold_table = pd.DataFrame([fold.describe(cache.manifest) for fold in folds])
    if config.folds is None:
        fold_table.insert(3, "calibration", [f"{len(rows)} / {cache.manifest['subject_id'].iloc[rows].nunique()}" for rows in calibration])
    _start_run_folder(run_dir, cache, config, fold_table, _split_digest(cache.manifest, folds, calibration), accelerator, precision)
    warning = calibration_warning(cache.manifest, calibration, config) if config.folds is None and config.bias_correction != "none" else None
    if warning and config.progress and rank_zero_only.rank == 0:  # type: ignore[attr-defined]  # Lightning sets .rank at import
        console.print(warning, style="yellow", soft_wrap=True)

    histories = []
    for fold in folds:
        members = [_fit_fold(cache, fold, calibration[fold.index], member, config, run_dir, accelerator, precision) for member in range(config.ensemble)]
        histories += [history.assign(fold=fold.index, member=member) for member, history in enumerate(members)]
    if rank_zero_only.rank != 0:  # type: ignore[attr-defined]  # Lightning sets .rank on the function at import
        return None
    history = pd.concat(histories, ignore_index=True).reindex(columns=["fold", "member", *HISTORY_COLUMNS])
    write_csv(history, run_dir / "metrics.csv")
    if not history.empty:  # none when only the output line of --init was re-fitted (epochs 0)
        plot_training_curves(history, run_dir / "training.png")
    references = pd.DataFrame({"scan_id": cache.manifest["scan_id"].astype(str)})
    truth = true_brain_ages(cache.manifest["path"])
    if truth is not None:
        references["true_brain_age"] = np.asarray(truth, dtype=float)
    if config.baselines:
        chosen: dict[str, Any] = {}
        references = references.merge(baseline_predictions(cache, folds, config, chosen), on="scan_id", how="left")
        write_yaml(_plain(chosen), run_dir / "baselines.yaml")
    write_csv(references, run_dir / REFERENCES)
    return evaluate_run(run_dir, EvaluationSettings.of(config))


def calibration_split(manifest: pd.DataFrame, folds: Sequence[Fold], config: TrainConfig) -> tuple[list[Fold], list[np.ndarray]]:
    """Hold-out mode (no ``config.folds``): each fold's validation people split by subject into an
    early-stopping half (the fold's ``val``) and a calibration half (returned beside it), so the
    correction and the intervals are not fitted on the people that chose the best epoch. K folds:
    the folds as they are, no calibration people (other folds' out-of-fold predictions calibrate)."""
    if config.folds is not None:
        return list(folds), [np.zeros(0, dtype=int) for _ in folds]
    split, calibration = [], []
    for fold in folds:
        n_subjects = manifest["subject_id"].iloc[fold.val].nunique()
        if n_subjects < 2:
            split.append(fold)
            calibration.append(np.zeros(0, dtype=int))
            continue
        stopping, calibrating = subject_holdout(manifest.iloc[fold.val], n_subjects // 2, config.seed + 7919 + fold.index)
        split.append(dataclasses.replace(fold, val=fold.val[stopping]))
        calibration.append(fold.val[calibrating])
    return split, calibration


def calibration_warning(manifest: pd.DataFrame, calibration: Sequence[np.ndarray], config: TrainConfig) -> str | None:
    """Hold-out mode: one line when a fold has fewer than :data:`MIN_CALIBRATION_CONTROLS` control
    people to calibrate the correction and the intervals on (None when every fold has enough)."""
    for rows in calibration:
        frame = manifest.iloc[rows]
        controls = frame["subject_id"][control_mask(frame, config.control_group)[0]].nunique() if len(frame) else 0
        if controls < MIN_CALIBRATION_CONTROLS:
            return (
                f"hold-out: {controls} control people to calibrate the bias correction and the intervals on, fewer than "
                f"{MIN_CALIBRATION_CONTROLS}, so no corrected brain age will be given; --folds K calibrates on everyone's out-of-fold predictions"
            )
    return None


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
    if rank_zero_only.rank == 0:  # type: ignore[attr-defined]  # Lightning sets .rank on the function at import
        write_yaml(values, path)


def _run_identity(values: Mapping[str, Any]) -> dict[str, Any]:
    """What makes two runs the same run: the cache, its preprocessing, the folds and every training
    setting that changes the trained weights (not the post-hoc ones, ``evaluate.POST_HOC``, which
    ``brainage evaluate`` changes without training)."""
    train = values.get("train") or {}
    with contextlib.suppress(ConfigError, TypeError):  # a run folder written before a setting existed holds its default
        train = TrainConfig.from_dict(train).to_dict()
    train = {key: value for key, value in train.items() if key not in POST_HOC}
    # A combined run (brainage.training.combine) is never the same run as one to train.
    return {key: values.get(key) for key in ("cache", "n_scans", "preprocessing", "split_digest", "combined_from")} | {"train": train}


def _split_digest(manifest: pd.DataFrame, folds: Sequence[Fold], calibration: Sequence[np.ndarray] = ()) -> str:
    """A hash of which scans are in which side of which fold (the calibration side only where there is one)."""
    digest = hashlib.blake2b(digest_size=8)
    calibration = list(calibration) + [np.zeros(0, dtype=int)] * (len(folds) - len(calibration))
    for fold, calibrating in zip(folds, calibration, strict=True):
        sides = (fold.train, fold.val, fold.test, *([calibrating] if len(calibrating) else []))
        for side in sides:
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
    if accelerator == "mps" and config.model == "tutorial":
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
    chosen = fold_folder(resolve_model(init), fold) / "model.ckpt"  # a named model keeps its run's fold folders
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
        # Order matters: the averaged weights are swapped in before their batch-norm statistics are recomputed.
        *([EMAWeightAveraging(decay=config.ema_decay)] if config.ema_decay else []),
        *([PreciseBatchNorm(data.loader(data.fold.train), config.precise_bn_batches)] if config.precise_bn else []),
        MaxGradientNorm(),
        curves,
        LearningRateMonitor(logging_interval="epoch"),
        # A non-finite validation MAE raises TrainingDiverged here, before the checkpoint callbacks (Lightning runs those last) save it.
        FiniteEarlyStopping(folder, precision, config.early_stopping_patience),
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
        precision=precision,  # type: ignore[arg-type]  # resolve_precision gives one of Lightning's names
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


def _fit_fold(
    cache: PreparedCache, fold: Fold, calibration: np.ndarray, member: int, config: TrainConfig, run_dir: Path, accelerator: str, precision: str
) -> pd.DataFrame:
    """Train ensemble member ``member`` of one fold (reuse it if it finished before, resume it from
    ``last.ckpt`` if it was interrupted; ``config.epochs == 0``: re-fit only the output line of
    ``config.init``, see :func:`_recalibrated`); write its test, validation and ``calibration``
    predictions (uncorrected) beside its checkpoint and return its history."""
    folder = fold_folder(run_dir, fold.index, member)
    name = f"fold {fold.index}" + (f" member {member}" if config.ensemble > 1 else "")
    seed = config.seed + fold.index + 1000 * member
    finished = folder / "predictions.csv"
    if finished.is_file() and (folder / "model.ckpt").is_file():
        return pd.read_csv(folder / "metrics.csv") if (folder / "metrics.csv").is_file() else pd.DataFrame(columns=HISTORY_COLUMNS)

    L.seed_everything(seed, workers=True, verbose=False)
    module, data = fold_module(cache, fold, config, accelerator, precision, seed)
    if config.epochs == 0:
        if rank_zero_only.rank != 0:  # type: ignore[attr-defined]  # nothing to train: under DDP only rank 0 predicts
            return pd.DataFrame(columns=HISTORY_COLUMNS)
        device = torch.device(accelerator)
        checkpoint = _recalibrated(cache, fold, data, config, device)
        test = _predict_fold(checkpoint, cache, fold, calibration, data, device, folder)
        if config.progress:
            console.print(f"[bold]{name}[/]: {checkpoint.extra['recalibration']}; test MAE {_mae(test):.2f} y (uncorrected, per scan)", soft_wrap=True)
        return pd.DataFrame(columns=HISTORY_COLUMNS)

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
        return curves.history
    module.load_state_dict(torch.load(best.best_model_path, map_location="cpu", weights_only=True)["state_dict"])
    checkpoint = _fold_checkpoint(
        module.model.to(memory_format=torch.contiguous_format), data.age_mean, data.age_std, cache, fold, config,  # type: ignore[call-overload]  # torch's stubs lack memory_format
        member=member, best_epoch=int(np.nanargmin(curves.history["val_mae"].to_numpy(dtype=float))) + 1 if curves.rows else None,
        best_val_mae=float(best.best_model_score) if best.best_model_score is not None else None,
    )  # fmt: skip  # arguments grouped by meaning
    test = _predict_fold(checkpoint, cache, fold, calibration, data, trainer.strategy.root_device, folder)
    for leftover in (Path(best.best_model_path), last):
        leftover.unlink(missing_ok=True)
    if config.progress:
        console.print(
            f"[bold]{name}[/]: best validation MAE {checkpoint.extra['best_val_mae']:.2f} y at epoch "
            f"{checkpoint.extra['best_epoch']}; test MAE {_mae(test):.2f} y (uncorrected, per scan)"
        )
    return curves.history


def _fold_checkpoint(
    model: AgeRegressor, age_mean: float, age_std: float, cache: PreparedCache, fold: Fold, config: TrainConfig, **extra: Any
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
            "fold": fold.index, **extra, "fine_tuned_from": str(resolve_model(config.init).resolve()) if config.init else None, "train_config": config.to_dict(),
        },
    )  # fmt: skip  # arguments grouped by meaning


def _recalibrated(cache: PreparedCache, fold: Fold, data: BrainAgeDataModule, config: TrainConfig, device: torch.device) -> BrainAgeCheckpoint:
    """``config.init``'s network, its weights untouched, with its output line re-fitted to this
    cohort: age regressed on its predictions (least squares, per scan) over the fold's training and
    validation scans, folded into the checkpoint's age scale (``age_mean``, ``age_std``) so that
    ``brainage predict`` applies it. The fold's test people are not used."""
    assert config.init is not None  # called only for a run with --init
    source = initial_checkpoint(config.init, fold.index)
    _refuse_init_overlap(source, cache, fold, config)
    source.tta_flip = config.tta_flip
    fitted_on = np.concatenate([fold.train, fold.val])
    predicted = predict_batches(BrainAgeEnsemble([source]), data.loader(fitted_on), device=device)[:, 0]
    ages = cache.manifest["age"].to_numpy(dtype=float)[fitted_on]
    line = fit_line(predicted, ages)
    slope, intercept = line.slope, line.intercept
    if slope <= 0:
        raise BrainAgeError(
            f"--init {config.init}: on fold {fold.index}'s training scans its predictions do not rise with age "
            f"(age = {intercept:.1f} + {slope:.3f} × prediction), so no line can re-calibrate it; fine-tune it instead (--epochs above 0)"
        )
    return _fold_checkpoint(
        source.model, intercept + slope * source.age_mean, slope * source.age_std, cache, fold, config, member=0,
        recalibration=f"output re-calibrated on {len(fitted_on)} training scans: age = {intercept:.2f} + {slope:.3f} × prediction (MAE {np.mean(np.abs(line(predicted) - ages)):.2f} y there, {np.mean(np.abs(predicted - ages)):.2f} y before)",
    )  # fmt: skip  # arguments grouped by meaning


def _predict_fold(
    checkpoint: BrainAgeCheckpoint, cache: PreparedCache, fold: Fold, calibration: np.ndarray, data: BrainAgeDataModule, device: torch.device, folder: Path
) -> pd.DataFrame:
    """The fold's test, validation and (hold-out mode) calibration predictions by ``checkpoint``
    through the path of `brainage predict` (its own ensemble of one, in fp32), written with it to
    ``folder``; returns the test predictions."""
    network = BrainAgeEnsemble([checkpoint])
    manifest = cache.manifest
    columns = [column for column in MANIFEST_COLUMNS if column in manifest]
    sides = {"val": fold.val, "test": fold.test, **({"calibration": calibration} if len(calibration) else {})}
    frames = {}
    for side, indices in sides.items():
        frame = manifest.iloc[indices][columns].reset_index(drop=True)
        frame["fold"] = fold.index
        frame["brain_age"] = predict_batches(network, data.loader(indices), device=device)[:, 0]
        frames[side] = frame
    network.cpu()
    save_checkpoint(checkpoint, folder / "model.ckpt")
    for side, frame in frames.items():
        write_csv(frame, folder / ("predictions.csv" if side == "test" else f"{side}_predictions.csv"))
    return frames["test"]


def _mae(frame: pd.DataFrame) -> float:
    return float(np.mean(np.abs(frame["brain_age"] - frame["age"].to_numpy(dtype=float))))
