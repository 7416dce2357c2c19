"""Training with Lightning: configuration, the LightningModule, the fold loop and the run folder.

A run folder holds::

    config.yaml              resolved configuration (this file's TrainConfig, cache, preprocessing, folds)
    metrics.csv              per-epoch loss, MAE, RMSE (years), learning rate, max gradient norm, per fold
    predictions.csv          out-of-fold predictions: network (uncorrected and bias-corrected) and baselines
    summary.csv              metrics at scan and session level for the network and the baselines
    training.png             the tutorial's figure: loss, MAE, RMSE, learning rate, max gradient norm
    predicted_vs_true.png    predicted against true age, before and after age-bias correction
    fold_K/model.ckpt        self-contained checkpoint (see :func:`save_checkpoint`)
    fold_K/predictions.csv   the fold's test predictions (a finished fold is not trained again)
    logs/fold_K/             Lightning's CSV and TensorBoard logs
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import math
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
import yaml
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import Callback, EarlyStopping, EMAWeightAveraging, LearningRateMonitor, ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torch.utils.data import DataLoader
from torchmetrics import MeanAbsoluteError, MeanSquaredError

from brainage import __version__
from brainage.baselines import downsample_volumes, mean_baseline, tabular_baseline, voxel_baseline
from brainage.console import console
from brainage.data import AugmentConfig, BrainAgeDataModule, Fold, make_folds
from brainage.errors import BrainAgeError, InputError
from brainage.evaluation import AgeBiasCorrector, gap_by_group, summarize_predictions
from brainage.models import AgeRegressor, build_model
from brainage.preprocess import PreparedCache, load_cache
from brainage.utils import atomic_write

CHECKPOINT_FORMAT = "brainage-model"
CHECKPOINT_VERSION = 1
PREDICTION_COLUMNS = ("scan_id", "subject_id", "session_id", "age", "sex", "group", "cdr", "qc_flagged")
#: Columns of the baselines in predictions.csv, and their names in the summary.
BASELINES = {"mean_age": "mean age", "ridge_tabular": "ridge nWBV+eTIV+sex", "ridge_voxels": "ridge voxels (PCA)"}


def _plain(value: Any) -> Any:
    """Numpy scalars and tuples as plain Python values, for YAML."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value.item() if isinstance(value, np.generic) else value


class ConfigError(BrainAgeError, ValueError):
    """A training configuration with an unknown option or a value out of range."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run; defaults live here and nowhere else.

    Optimisation follows the tutorial: AdamW, linear warm-up over ``warmup_epochs``, then
    reduce-on-plateau of the validation loss, gradient clipping, early stopping and the best
    checkpoint on validation MAE. ``folds`` (K-fold) or ``val_fraction`` (one hold-out) choose the
    subject-grouped test side; ``early_stopping_fraction`` of each training side's subjects form the
    validation set. ``precision``/``channels_last`` ``"auto"`` pick bf16 and channels-last where the
    hardware runs them fast. ``precise_bn`` re-estimates batch-norm statistics over the training
    scans before every validation (see :class:`PreciseBatchNorm`); ``ema_decay`` validates, checkpoints and
    predicts with an exponential moving average of the weights (Lightning's EMAWeightAveraging,
    updated every step). The default model is the compact ResNet (``resnet``); the tutorial's
    whole recipe is :data:`TUTORIAL_RECIPE`.
    """

    model: str = "resnet"
    model_hparams: Mapping[str, Any] = field(default_factory=dict)
    epochs: int = 50
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 3
    plateau_factor: float = 0.5
    plateau_patience: int = 5
    min_lr: float = 1e-6
    early_stopping_patience: int = 10
    gradient_clip: float = 1.0
    precise_bn: bool = True
    ema_decay: float | None = 0.9
    folds: int | None = None
    val_fraction: float = 0.2
    early_stopping_fraction: float = 0.15
    train_groups: tuple[str, ...] | None = None
    augmentation: AugmentConfig = field(default_factory=AugmentConfig)
    seed: int = 42
    deterministic: bool = False
    accelerator: str = "auto"
    devices: int | str = "auto"
    num_nodes: int = 1
    precision: str = "auto"
    channels_last: bool | str = "auto"
    num_workers: int | None = None
    baselines: bool = True
    voxel_components: int = 100
    voxel_downsample: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        # Plain, YAML-ready values, so that a configuration read back compares equal.
        object.__setattr__(self, "model_hparams", _plain(dict(self.model_hparams)))
        object.__setattr__(self, "train_groups", tuple(str(g) for g in self.train_groups) if self.train_groups else None)
        problems = [
            message
            for failed, message in (
                (self.epochs < 1, f"epochs must be at least 1, got {self.epochs}"),
                (self.batch_size < 2, f"batch_size must be at least 2 (batch norm), got {self.batch_size}"),
                (self.lr <= 0, f"lr must be positive, got {self.lr}"),
                (self.ema_decay is not None and not 0 < self.ema_decay < 1, f"ema_decay must be between 0 and 1, got {self.ema_decay}"),
                (self.folds is not None and self.folds < 2, f"folds must be at least 2, got {self.folds}"),
                (not 0 < self.val_fraction < 1, f"val_fraction must be between 0 and 1, got {self.val_fraction}"),
                (not 0 < self.early_stopping_fraction < 1, f"early_stopping_fraction must be between 0 and 1, got {self.early_stopping_fraction}"),
            )
            if failed
        ]
        if problems:
            raise ConfigError("; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """Plain values (lists for tuples) for YAML; :meth:`from_dict` reads them back equal."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TrainConfig":
        """The configuration described by ``values``; unknown keys are an error."""
        values = dict(values)
        augmentation = dict(values.get("augmentation") or {})
        for kind, given in ((cls, values), (AugmentConfig, augmentation)):
            unknown = sorted(set(given) - {f.name for f in dataclasses.fields(kind)})
            if unknown:
                raise ConfigError(f"unknown {kind.__name__} option(s): {', '.join(unknown)}")
        values["augmentation"] = AugmentConfig(**augmentation)
        values["model_hparams"] = values.get("model_hparams") or {}
        return cls(**values)


#: The tutorial's training recipe (its network and optimisation, batch-norm running averages as
#: they were), for side-by-side comparison.
TUTORIAL_RECIPE = TrainConfig(
    model="seed", epochs=50, batch_size=8, lr=1e-3, weight_decay=0.05, warmup_epochs=3, plateau_factor=0.5,
    plateau_patience=5, min_lr=1e-6, early_stopping_patience=10, gradient_clip=1.0, precise_bn=False, ema_decay=None,
    augmentation=AugmentConfig(noise=True, intensity=True, flip=True, affine=False, bias_field=False, gamma=False),
)


def load_config(path: str | Path) -> TrainConfig:
    """A :class:`TrainConfig` from a YAML file: a bare configuration or a run's ``config.yaml``."""
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text()) or {}
        return TrainConfig.from_dict(values.get("train", values))
    except OSError as error:
        raise InputError(path, error.strerror or "cannot be read") from error
    except (yaml.YAMLError, ValueError, TypeError, AttributeError) as error:
        raise InputError(path, f"not a valid training configuration: {error}".replace("\n", " ")) from error


# --- hardware ------------------------------------------------------------------------------------


def resolve_accelerator(accelerator: str = "auto") -> str:
    """``"auto"`` → CUDA, else Apple MPS, else CPU; anything else is returned as given."""
    if accelerator != "auto":
        return accelerator
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def cpu_supports_bf16() -> bool:
    """Whether oneDNN has native bf16 kernels on this CPU (AVX-512 BF16 / AMX); emulated bf16 is slow."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, accelerator: str) -> str:
    """``"auto"`` → bf16-mixed on CUDA with bf16 (else 16-mixed), on a bf16-capable CPU; 32-true otherwise."""
    if precision != "auto":
        return precision
    if accelerator in ("cuda", "gpu"):
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    if accelerator == "cpu" and cpu_supports_bf16():
        return "bf16-mixed"
    return "32-true"


def resolve_channels_last(channels_last: bool | str, precision: str) -> bool:
    """``"auto"`` → channels-last (NDHWC) memory for mixed precision, where oneDNN/cuDNN gain most."""
    if channels_last == "auto":
        return precision in ("bf16-mixed", "16-mixed")
    return bool(channels_last)


# --- the LightningModule ---------------------------------------------------------------------------


class BrainAgeModule(L.LightningModule):
    """An :class:`AgeRegressor` with its optimiser, schedule and per-epoch metrics in years."""

    def __init__(self, model: AgeRegressor, age_mean: float, age_std: float, config: TrainConfig, channels_last: bool = False) -> None:
        super().__init__()
        self.model = model.to(memory_format=torch.channels_last_3d) if channels_last else model
        self.age_mean = age_mean
        self.age_std = age_std
        self.config = config
        self.channels_last = channels_last
        self.metrics = torch.nn.ModuleDict()
        for stage in ("train", "val"):
            self.metrics[f"{stage}_mae"] = MeanAbsoluteError()
            self.metrics[f"{stage}_rmse"] = MeanSquaredError(squared=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        images, age_z, _ = batch
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last_3d)
        raw = self.model(images)
        loss = self.model.loss(raw, age_z)
        predicted = self.model.predict_z(raw).detach() * self.age_std + self.age_mean
        age = age_z.float() * self.age_std + self.age_mean
        size = len(age_z)
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=size, sync_dist=True)
        for name in ("mae", "rmse"):
            metric = self.metrics[f"{stage}_{name}"]
            metric(predicted, age)
            self.log(f"{stage}_{name}", metric, on_step=False, on_epoch=True, prog_bar=name == "mae", batch_size=size)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "val")

    def configure_optimizers(self) -> Any:
        config = self.config
        optimizer = torch.optim.AdamW(self.parameters(), lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.999))
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=config.plateau_factor, patience=config.plateau_patience, min_lr=config.min_lr
        )
        schedulers = [{"scheduler": plateau, "monitor": "val_loss", "interval": "epoch"}]
        if config.warmup_epochs > 1:
            # lr × (epoch + 1) / warmup for the first epochs, as the tutorial; chains with the plateau.
            warmup = torch.optim.lr_scheduler.LinearLR(
                optimizer, start_factor=1 / config.warmup_epochs, end_factor=1.0, total_iters=config.warmup_epochs - 1
            )
            schedulers.insert(0, {"scheduler": warmup, "interval": "epoch"})
        return [optimizer], schedulers


# --- callbacks for what Lightning lacks -------------------------------------------------------------


class MaxGradientNorm(Callback):
    """Logs ``max_grad_norm``: the largest total gradient norm of the epoch, before clipping."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._max = torch.zeros((), device=pl_module.device)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        if grads:
            self._max = torch.maximum(self._max, torch.nn.utils.get_total_norm(grads).detach().float())

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.log("max_grad_norm", self._max, on_epoch=True, sync_dist=True, reduce_fx="max")


@torch.no_grad()
def recompute_batch_norm(model: torch.nn.Module, loader: Iterable[Any], device: torch.device | str = "cpu", channels_last: bool = False) -> None:
    """Replace every batch-norm layer's running mean and variance by the average over ``loader``'s
    batches (images first in each batch) with the current weights, dropout off, as in inference."""
    norms = [module for module in model.modules() if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    was_training, momenta = model.training, [norm.momentum for norm in norms]
    model.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average: every batch counts the same
        norm.train()
    memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
    for images, *_ in loader:
        model(images.to(device).contiguous(memory_format=memory_format))
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    model.train(was_training)


class PreciseBatchNorm(Callback):
    """Re-estimates batch-norm statistics over the training scans (``loader``: unaugmented, every
    process all of them) before each validation, so that validation, the best checkpoint and later
    predictions use statistics of the weights they belong to.

    Running averages (momentum 0.1) over small batches lag weights that AdamW moves quickly. On a
    256-scan demo cohort (resnet, hold-out of 16 subjects, 25 epochs), validation MAE swung between
    2.7 and 20.5 years from epoch to epoch after the warm-up without this callback and stayed within
    1.7–3.3 years with it; test MAE went from 3.70 to 3.22 years ("precise BN", Wu & Johnson 2021).
    """

    def __init__(self, loader: Iterable[Any]) -> None:
        self.loader = loader

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            recompute_batch_norm(pl_module.model, self.loader, pl_module.device, getattr(pl_module, "channels_last", False))


class _ProgressBar(RichProgressBar):
    """Rich progress bar without Lightning's logger version number."""

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics


HISTORY_COLUMNS = ("epoch", "lr", "max_grad_norm", "train_loss", "val_loss", "train_mae", "val_mae", "train_rmse", "val_rmse")


class TrainingCurves(Callback):
    """Writes one row per epoch to ``metrics.csv`` (as training goes) and, at the end, the
    tutorial's five-panel figure ``training.png``, both in ``folder``. Place after
    :class:`MaxGradientNorm`."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.rows: list[dict[str, float]] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._lr = trainer.optimizers[0].param_groups[0]["lr"]  # schedulers step before epoch end

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        row = {"epoch": trainer.current_epoch + 1, "lr": self._lr}
        row.update({name: float(metrics[name]) for name in HISTORY_COLUMNS[2:] if name in metrics})
        self.rows.append(row)
        if trainer.is_global_zero:
            write_csv(self.history, self.folder / "metrics.csv")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and self.rows:
            plot_training_curves(self.history, self.folder / "training.png")

    @property
    def history(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows).reindex(columns=list(HISTORY_COLUMNS))


# --- figures -------------------------------------------------------------------------------------


def plot_training_curves(history: pd.DataFrame, path: str | Path) -> Path:
    """The tutorial's 3×2 figure (loss, MAE, RMSE, learning rate, max gradient norm) per epoch;
    one line per fold when ``history`` has a ``fold`` column."""
    figure = Figure(figsize=(12, 12), layout="constrained")
    axes = figure.subplots(3, 2).ravel()
    panels = (("loss", "Loss (z units)"), ("mae", "MAE (years)"), ("rmse", "RMSE (years)"), ("lr", "Learning rate"), ("max_grad_norm", "Max gradient norm"))
    folds = list(history.groupby("fold")) if "fold" in history else [(None, history)]
    for ax, (key, title) in zip(axes, panels):
        for fold, table in folds:
            label = "" if fold is None else f"fold {fold} "
            if key in ("loss", "mae", "rmse"):
                line = ax.plot(table["epoch"], table[f"train_{key}"], label=f"{label}train")[0]
                ax.plot(table["epoch"], table[f"val_{key}"], "--", color=line.get_color(), label=f"{label}validation")
            else:
                ax.plot(table["epoch"], table[key], label=label.strip() or None)
        ax.set_title(title)
        ax.set_xlabel("Epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if key in ("loss", "mae") and len(folds) <= 5:
            ax.legend(fontsize="small")
    axes[3].set_yscale("log")
    axes[5].set_axis_off()
    return _save_figure(figure, path)


def plot_predictions(predictions: pd.DataFrame, path: str | Path) -> Path:
    """Predicted against true age (identity line), uncorrected and bias-corrected, by group."""
    variants = [column for column in ("brain_age", "brain_age_corrected") if column in predictions]
    figure = Figure(figsize=(6 * len(variants), 5.5), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, len(variants)))
    groups = predictions["group"].fillna("unknown") if "group" in predictions else pd.Series("all", index=predictions.index)
    low = float(np.nanmin(predictions[["age", *variants]].to_numpy())) - 2
    high = float(np.nanmax(predictions[["age", *variants]].to_numpy())) + 2
    for ax, column in zip(axes, variants):
        for group, rows in predictions.groupby(groups, sort=True):
            ax.scatter(rows["age"], rows[column], s=14, alpha=0.7, label=str(group))
        ax.plot([low, high], [low, high], color="black", lw=1)
        mae = float(np.nanmean(np.abs(predictions[column] - predictions["age"])))
        ax.set_title(f"{'bias-corrected' if column.endswith('corrected') else 'uncorrected'}: MAE {mae:.2f} y")
        ax.set(xlim=(low, high), ylim=(low, high), xlabel="Age (years)", ylabel="Brain age (years)", aspect="equal")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return _save_figure(figure, path)


def _save_figure(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    with atomic_write(path) as tmp:
        figure.savefig(tmp, dpi=100)
    return path


def write_csv(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write ``frame`` (no index) atomically."""
    path = Path(path)
    with atomic_write(path) as tmp:
        frame.to_csv(tmp, index=False)
    return path


def _write_yaml(values: Mapping[str, Any], path: Path) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(yaml.safe_dump(dict(values), sort_keys=False))


# --- checkpoints ---------------------------------------------------------------------------------


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
            "extra": dict(self.extra),
        }

    @torch.inference_mode()
    def predict(self, images: torch.Tensor) -> np.ndarray:
        """Uncorrected brain age in years of a batch ``(B, 1, X, Y, Z)``, on the model's device."""
        self.model.eval()
        device = next(self.model.parameters()).device
        raw = self.model(images.to(device=device, dtype=torch.float32))
        return (self.model.predict_z(raw).cpu().double().numpy() * self.age_std) + self.age_mean


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
    except Exception as error:  # noqa: BLE001 - any unreadable file is one user-facing error
        raise InputError(path, f"not a readable brainage checkpoint ({type(error).__name__})") from error
    if not isinstance(values, dict) or values.get("format") != CHECKPOINT_FORMAT:
        raise InputError(path, "not a brainage model checkpoint")
    if values.get("format_version", 0) > CHECKPOINT_VERSION:
        raise InputError(path, f"checkpoint format {values['format_version']} is newer than this brainage ({__version__}); upgrade brainage")
    try:
        model = build_model(values["model_name"], **values["model_hparams"])
        model.load_state_dict(values["state_dict"])
    except (KeyError, RuntimeError, TypeError, ValueError) as error:
        raise InputError(path, f"the checkpoint's model cannot be rebuilt: {error}".replace("\n", " ")) from error
    model.eval()
    bias = values.get("bias_correction")
    return BrainAgeCheckpoint(
        model=model,
        model_name=values["model_name"],
        age_mean=values["age_mean"],
        age_std=values["age_std"],
        preprocessing=values["preprocessing"],
        corrector=AgeBiasCorrector.from_dict(bias) if bias else None,
        train_age_range=tuple(values.get("train_age_range", (math.nan, math.nan))),
        brainage_version=values.get("brainage_version", "unknown"),
        extra=values.get("extra", {}),
    )


# --- prediction ----------------------------------------------------------------------------------


@torch.inference_mode()
def predict_ages(model: AgeRegressor, loader: DataLoader, age_mean: float, age_std: float, device: torch.device | str = "cpu") -> np.ndarray:
    """Brain age in years (fp32) for every scan of ``loader``, in its order; the model in eval mode."""
    model = model.to(device).eval()
    outputs = [model.predict_z(model(images.to(device))).float().cpu() for images, *_ in loader]
    if not outputs:
        return np.empty(0)
    return torch.cat(outputs).double().numpy() * age_std + age_mean


# --- the fold loop -------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What a run produced; the same is on disk in ``run_dir``."""

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


class RunFolderError(BrainAgeError):
    """A run folder that holds a different run."""


def train(cache: PreparedCache | str | Path, out: str | Path, config: TrainConfig | None = None) -> TrainResult | None:
    """Train ``config.model`` on ``cache`` with subject-grouped folds, fit the baselines on the very
    same folds and write the run folder ``out``.

    A folder that already holds this very run (same configuration and cache) is resumed: finished
    folds are kept, not trained again. A folder that holds another run is refused. Under
    multi-process (DDP) training only the global rank 0 predicts and writes; the others return None.
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
    folds = make_folds(cache.manifest, config.folds, config.val_fraction, config.early_stopping_fraction, config.seed, config.train_groups)
    fold_table = pd.DataFrame([fold.describe(cache.manifest) for fold in folds])
    _start_run_folder(run_dir, cache, config, fold_table, _split_digest(cache.manifest, folds), accelerator, precision)

    fold_predictions, histories, checkpoints = [], [], []
    for fold in folds:
        predictions, history = _fit_fold(cache, fold, config, run_dir, accelerator, precision)
        fold_predictions.append(predictions)
        histories.append(history.assign(fold=fold.index))
        checkpoints.append(run_dir / f"fold_{fold.index}" / "model.ckpt")
    if rank_zero_only.rank != 0:
        return None
    predictions = pd.concat(fold_predictions, ignore_index=True)
    if config.baselines:
        predictions = predictions.merge(baseline_predictions(cache, folds, config), on="scan_id", how="left")
    history = pd.concat(histories, ignore_index=True).reindex(columns=["fold", *HISTORY_COLUMNS])
    summary = summarize_run(predictions, config.model)
    group_gaps, group_test = gap_by_group(predictions, by="group", column="brain_age_corrected")
    write_csv(predictions, run_dir / "predictions.csv")
    write_csv(summary, run_dir / "summary.csv")
    write_csv(history, run_dir / "metrics.csv")
    plot_training_curves(history, run_dir / "training.png")
    plot_predictions(predictions, run_dir / "predicted_vs_true.png")
    return TrainResult(run_dir, predictions, summary, history, fold_table, checkpoints, group_gaps, group_test, precision, accelerator)


def _start_run_folder(run_dir: Path, cache: PreparedCache, config: TrainConfig, folds: pd.DataFrame, split_digest: str, accelerator: str, precision: str) -> None:
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
        return
    if run_dir.is_dir() and any(run_dir.iterdir()):
        raise RunFolderError(f"{run_dir} is not empty and holds no brainage run; choose another --out")
    if rank_zero_only.rank == 0:
        _write_yaml(values, path)


def _run_identity(values: Mapping[str, Any]) -> dict[str, Any]:
    """What makes two runs the same run: the cache, its preprocessing, the folds and every training
    setting except display ones."""
    train = {key: value for key, value in (values.get("train") or {}).items() if key != "progress"}
    return {key: values.get(key) for key in ("cache", "n_scans", "preprocessing", "split_digest")} | {"train": train}


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
            for message in (".*does not have many workers.*", ".*smaller than the logging interval.*", ".*LeafSpec.*is deprecated.*", ".*exists and is not empty.*"):
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        lightning_log.setLevel(level)


def fold_module(cache: PreparedCache, fold: Fold, config: TrainConfig, accelerator: str, precision: str) -> tuple[BrainAgeModule, BrainAgeDataModule]:
    """The fold's data module (age statistics of its training scans) and a fresh model around it."""
    data = BrainAgeDataModule(cache, fold, config.batch_size, config.augmentation, config.num_workers, pin_memory=accelerator == "cuda")
    hparams = dict(config.model_hparams)
    if accelerator == "mps" and config.model == "seed":
        hparams.setdefault("strided_pool", True)  # the tutorial's MaxPool3d replacement on Apple GPUs
    channels_last = resolve_channels_last(config.channels_last, precision)
    return BrainAgeModule(build_model(config.model, **hparams), data.age_mean, data.age_std, config, channels_last), data


def fold_trainer(
    config: TrainConfig, accelerator: str, precision: str, folder: Path, log_dir: Path, data: BrainAgeDataModule, extra_callbacks: Sequence[Callback] = ()
) -> tuple[L.Trainer, ModelCheckpoint, TrainingCurves]:
    """The Lightning trainer of one fold (``data``'s training scans also give the batch-norm
    statistics when ``config.precise_bn``), its best-checkpoint callback and its training curves."""
    # Full checkpoints: callbacks (weight averaging) only put their state in those.
    best = ModelCheckpoint(dirpath=folder, filename="best", monitor="val_mae", mode="min", enable_version_counter=False)
    curves = TrainingCurves(folder)
    callbacks: list[Callback] = [
        # Order matters: the averaged weights are swapped in before their batch-norm statistics are recomputed.
        *([EMAWeightAveraging(decay=config.ema_decay)] if config.ema_decay else []),
        *([PreciseBatchNorm(data.loader(data.fold.train))] if config.precise_bn else []),
        MaxGradientNorm(),
        curves,
        LearningRateMonitor(logging_interval="epoch"),
        EarlyStopping(monitor="val_mae", mode="min", patience=config.early_stopping_patience),
        best,
        *extra_callbacks,
    ]
    if config.progress:
        callbacks.append(_ProgressBar())
    trainer = L.Trainer(
        max_epochs=config.epochs,
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


def _fit_fold(cache: PreparedCache, fold: Fold, config: TrainConfig, run_dir: Path, accelerator: str, precision: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train one fold (or reuse it if it finished before); return its test predictions and history."""
    folder = run_dir / f"fold_{fold.index}"
    finished = folder / "predictions.csv"
    if finished.is_file() and (folder / "model.ckpt").is_file():
        history = pd.read_csv(folder / "metrics.csv") if (folder / "metrics.csv").is_file() else pd.DataFrame(columns=HISTORY_COLUMNS)
        return pd.read_csv(finished, dtype={"scan_id": str, "subject_id": str, "session_id": str}), history

    L.seed_everything(config.seed + fold.index, workers=True, verbose=False)
    module, data = fold_module(cache, fold, config, accelerator, precision)
    with quiet_lightning():
        trainer, best, curves = fold_trainer(config, accelerator, precision, folder, run_dir / "logs" / f"fold_{fold.index}", data)
        if config.progress and trainer.is_global_zero:
            console.print(
                f"[bold]fold {fold.index}[/]: {config.model} on {len(fold.train)} training scans, "
                f"{len(fold.val)} validation, {len(fold.test)} test; {accelerator}, {precision}"
                f"{', channels-last' if module.channels_last else ''}"
                f"{f', {trainer.world_size} processes (DDP)' if trainer.world_size > 1 else ''}"
            )
        trainer.fit(module, datamodule=data)
    if not trainer.is_global_zero:
        return pd.DataFrame(), curves.history
    module.load_state_dict(torch.load(best.best_model_path, map_location="cpu", weights_only=True)["state_dict"])
    Path(best.best_model_path).unlink()

    # Predictions in fp32, as a reloaded checkpoint makes them, whatever the training precision.
    model = module.model.to(memory_format=torch.contiguous_format)
    device = trainer.strategy.root_device
    val_predicted = predict_ages(model, data.loader(fold.val), data.age_mean, data.age_std, device)
    test_predicted = predict_ages(model, data.loader(fold.test), data.age_mean, data.age_std, device)
    model.cpu()
    val_age = cache.manifest["age"].to_numpy(dtype=float)[fold.val]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        corrector = AgeBiasCorrector().fit(val_age, val_predicted)
    bias_warning = "; ".join(str(w.message) for w in caught)

    train_ages = cache.manifest["age"].to_numpy(dtype=float)[fold.train]
    checkpoint = BrainAgeCheckpoint(
        model=model,
        model_name=config.model,
        age_mean=data.age_mean,
        age_std=data.age_std,
        preprocessing=cache.config.to_dict(),
        corrector=corrector,
        train_age_range=(float(train_ages.min()), float(train_ages.max())),
        extra={
            "fold": fold.index,
            "best_epoch": int(curves.history["val_mae"].idxmin()) + 1 if curves.rows else None,
            "best_val_mae": float(best.best_model_score) if best.best_model_score is not None else None,
            "bias_correction_warning": bias_warning or None,
            "train_config": config.to_dict(),
        },
    )
    save_checkpoint(checkpoint, folder / "model.ckpt")
    columns = [column for column in PREDICTION_COLUMNS if column in cache.manifest]
    predictions = cache.manifest.iloc[fold.test][columns].reset_index(drop=True)
    predictions["fold"] = fold.index
    predictions["brain_age"] = test_predicted
    predictions["brain_age_corrected"] = corrector.transform(test_predicted)
    write_csv(predictions, finished)
    if config.progress:
        test_mae = float(np.mean(np.abs(test_predicted - predictions["age"].to_numpy(dtype=float))))
        console.print(
            f"[bold]fold {fold.index}[/]: best validation MAE {checkpoint.extra['best_val_mae']:.2f} y at epoch "
            f"{checkpoint.extra['best_epoch']}; test MAE {test_mae:.2f} y"
        )
        if bias_warning:
            console.print(f"[yellow]fold {fold.index}: {bias_warning}[/]")
    return predictions, curves.history


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


def summarize_run(predictions: pd.DataFrame, model_name: str) -> pd.DataFrame:
    """Scan- and session-level metrics of the network (uncorrected and corrected with each fold's
    own validation-fitted correction) and of every baseline, one row per model × level × correction."""
    rows = [summarize_predictions(predictions).assign(model=model_name)]
    if "brain_age_corrected" in predictions:
        corrected = summarize_predictions(predictions.assign(brain_age=predictions["brain_age_corrected"]))
        rows.append(corrected.assign(model=model_name, correction="linear"))
    for column, name in BASELINES.items():
        if column in predictions and predictions[column].notna().any():
            rows.append(summarize_predictions(predictions.assign(brain_age=predictions[column])).assign(model=name))
    summary = pd.concat(rows, ignore_index=True)
    order = {"scan": 0, "session": 1}
    summary = summary.sort_values(["level", "model"], key=lambda s: s.map(order) if s.name == "level" else s.map(_model_order(summary)), kind="stable")
    return summary[["model", "level", "correction", *[c for c in summary.columns if c not in ("model", "level", "correction")]]].reset_index(drop=True)


def _model_order(summary: pd.DataFrame) -> dict[str, int]:
    return {name: i for i, name in enumerate(dict.fromkeys(summary["model"]))}
