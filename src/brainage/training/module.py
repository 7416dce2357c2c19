"""The LightningModule and the callbacks for what Lightning lacks: the maximum gradient norm per
epoch, precise batch-norm statistics before validation, a diverged fold stopped with a one-line
error (Lightning's ``EarlyStopping`` with ``check_finite``), and the per-epoch history that survives
a resume (the tutorial's ``metrics.csv`` and five-panel figure)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, RichProgressBar
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from lightning.pytorch.utilities import grad_norm
from torchmetrics import MeanAbsoluteError, MeanSquaredError, Metric

from brainage.errors import BrainAgeError
from brainage.figures import plot_training_curves
from brainage.models import AgeRegressor
from brainage.training.config import TrainConfig
from brainage.utils import write_csv

HISTORY_COLUMNS = ("epoch", "lr", "max_grad_norm", "train_loss", "val_loss", "train_mae", "val_mae", "train_rmse", "val_rmse")


class BrainAgeModule(L.LightningModule):
    """An :class:`AgeRegressor` with its optimiser, schedule and per-epoch metrics in years."""

    def __init__(self, model: AgeRegressor, age_mean: float, age_std: float, config: TrainConfig, channels_last: bool = False) -> None:
        super().__init__()
        self.model = model.to(memory_format=torch.channels_last_3d) if channels_last else model  # type: ignore[call-overload]  # torch's stubs lack memory_format
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
            assert isinstance(metric, Metric)  # narrows the ModuleDict's item
            metric(predicted, age)
            self.log(f"{stage}_{name}", metric, on_step=False, on_epoch=True, prog_bar=name == "mae", batch_size=size)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "val")

    def configure_optimizers(self) -> Any:
        """AdamW with the tutorial's linear warm-up, then ``config.schedule``: reduce-on-plateau of
        the validation loss (the tutorial's) or a cosine decay to ``min_lr`` at the last epoch."""
        config = self.config
        optimizer = torch.optim.AdamW(self.parameters(), lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.999))
        warmup = max(config.warmup_epochs, 1)
        if config.schedule == "cosine":
            floor, span = config.min_lr / config.lr, max(config.epochs - warmup, 1)

            def factor(epoch: int) -> float:
                if epoch < warmup:
                    return (epoch + 1) / warmup
                return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(epoch - warmup + 1, span) / span))

            return [optimizer], [{"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, factor), "interval": "epoch"}]
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=config.plateau_factor, patience=config.plateau_patience, min_lr=config.min_lr
        )
        schedulers = [{"scheduler": plateau, "monitor": "val_loss", "interval": "epoch"}]
        if warmup > 1:
            # lr × (epoch + 1) / warmup for the first epochs, as the tutorial; chains with the plateau.
            schedulers.insert(0, {"scheduler": torch.optim.lr_scheduler.LinearLR(
                optimizer, start_factor=1 / warmup, end_factor=1.0, total_iters=warmup - 1
            ), "interval": "epoch"})  # fmt: skip  # keys grouped in rows
        return [optimizer], schedulers


class TrainingDiverged(BrainAgeError):
    """The training loss of a fold became infinite or NaN."""


class FiniteEarlyStopping(EarlyStopping):
    """Lightning's ``EarlyStopping`` on the validation MAE (``patience`` epochs without improvement;
    ``check_finite=True``: a NaN or infinite MAE stops the fold) that turns the non-finite stop into
    :class:`TrainingDiverged` at once. Lightning's own stop is silent, waits for ``min_epochs`` and
    lets that epoch's weights be checkpointed (checkpoint callbacks run after this one); the error
    names the fold and the precision instead. Lightning reduces the stop over DDP processes, and
    the synchronised MAE is the same in all, so every process raises together."""

    def __init__(self, folder: str | Path, precision: str, patience: int) -> None:
        super().__init__(monitor="val_mae", mode="min", patience=patience, check_finite=True)
        self.folder = Path(folder)
        self.precision = precision

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._raise_if_diverged(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        self._raise_if_diverged(trainer)

    def _raise_if_diverged(self, trainer: L.Trainer) -> None:
        if self.stopping_reason == EarlyStoppingReason.NON_FINITE_METRIC:
            raise TrainingDiverged(
                f"{self.folder}: the validation MAE is not finite in epoch {trainer.current_epoch + 1} ({self.precision}); "
                "the fold diverged: train it again with --precision 32-true or a lower --lr"
            )


class MaxGradientNorm(Callback):
    """Logs ``max_grad_norm``: the largest total gradient norm (Lightning's ``grad_norm``) of the
    epoch, before clipping."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._max = torch.zeros((), device=pl_module.device)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer) -> None:
        total = grad_norm(pl_module, norm_type=2).get("grad_2.0_norm_total")
        if total is not None:
            self._max = torch.maximum(self._max, torch.as_tensor(total).detach().float().to(self._max.device))  # grad_norm is typed float, gives tensors

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.log("max_grad_norm", self._max, on_epoch=True, sync_dist=True, reduce_fx="max")


@torch.no_grad()
def recompute_batch_norm(
    model: torch.nn.Module, loader: Iterable[Any], device: torch.device | str = "cpu", channels_last: bool = False, max_batches: int | None = None
) -> None:
    """Replace every batch-norm layer's running mean and variance by the average over ``loader``'s
    first ``max_batches`` batches (images first in each batch) with the current weights.

    Unlike ``torch.optim.swa_utils.update_bn``, which runs the whole model in training mode, dropout
    stays off, as at inference. A batch of one image is left out where some layer would see a single
    value per channel (a one-voxel feature map): batch norm in training mode cannot use it.
    """
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
    for images, *_ in itertools.islice(loader, max_batches):
        images = images.to(device).contiguous(memory_format=memory_format)
        if len(images) > 1 or _single_image_fits(model, norms, images):
            model(images)
    for norm, momentum in zip(norms, momenta, strict=False):
        norm.momentum = momentum
    model.train(was_training)


def _single_image_fits(model: torch.nn.Module, norms: list[torch.nn.modules.batchnorm._BatchNorm], images: torch.Tensor) -> bool:
    """Whether every batch-norm layer sees more than one value per channel for ``images`` (one
    image), found by a forward pass with the norms in eval mode, which changes no statistics."""
    sizes: list[int] = []
    hooks = [norm.register_forward_pre_hook(lambda _, inputs: sizes.append(inputs[0].numel() // inputs[0].shape[1])) for norm in norms]
    try:
        for norm in norms:
            norm.eval()
        model(images)
    finally:
        for hook in hooks:
            hook.remove()
        for norm in norms:
            norm.train()
    return min(sizes, default=2) > 1


class PreciseBatchNorm(Callback):
    """Re-estimates batch-norm statistics over the training scans (``loader``: unaugmented, every
    process all of them; at most ``max_batches`` batches) before each validation, inside the
    trainer's precision context, so that validation, the best checkpoint and later predictions use
    statistics of the weights they belong to.

    Running averages (momentum 0.1) over small batches lag weights that AdamW moves quickly, so
    the validation MAE swings from epoch to epoch without it ("precise BN", Wu & Johnson 2021).
    """

    def __init__(self, loader: Iterable[Any], max_batches: int | None = None) -> None:
        self.loader = loader
        self.max_batches = max_batches

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            assert isinstance(pl_module.model, torch.nn.Module)  # narrows the LightningModule's attribute
            with trainer.precision_plugin.forward_context():
                recompute_batch_norm(pl_module.model, self.loader, pl_module.device, getattr(pl_module, "channels_last", False), self.max_batches)


class ProgressBar(RichProgressBar):
    """Rich progress bar without Lightning's logger version number."""

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics


class TrainingCurves(Callback):
    """Writes one row per epoch to ``metrics.csv`` (as training goes) and, at the end, the
    tutorial's five-panel figure ``training.png``, both in ``folder``. Place after
    :class:`MaxGradientNorm`. Its rows travel in Lightning's checkpoints, so a resumed fold keeps
    the epochs before the interruption: Lightning's ``CSVLogger`` (which the run keeps too, in
    ``logs/``) deletes its file when a resumed process opens it again, so it cannot be the history."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.rows: list[dict[str, float]] = []

    def state_dict(self) -> dict[str, Any]:
        return {"rows": list(self.rows)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict.get("rows", []))

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
