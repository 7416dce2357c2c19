"""Training configuration: :class:`TrainConfig` (every setting and its default), the tutorial's
recipe, reading a configuration back, and the hardware choices (accelerator, precision, memory
layout) that ``"auto"`` resolves to."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import yaml

from brainage.data import AugmentConfig
from brainage.errors import BrainAgeError, InputError
from brainage.evaluation import AgeBiasCorrector
from brainage.inference import resolve_accelerator
from brainage.models import current_model_name

__all__ = [
    "TUTORIAL_RECIPE",
    "ConfigError",
    "TrainConfig",
    "cpu_supports_bf16",
    "load_config",
    "resolve_accelerator",
    "resolve_channels_last",
    "resolve_precision",
]


def _plain(value: Any) -> Any:
    """Numpy scalars and tuples as plain Python values, for YAML."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value.item() if isinstance(value, np.generic) else value


class ConfigError(BrainAgeError, ValueError):
    """A training configuration with an unknown option or a value out of range."""


_NUMBERS = {"float": float, "float | None": float, "int": int, "int | None": int}


def _numbers(kind: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """The number-typed fields of dataclass ``kind`` among ``values`` that are given as text (YAML 1.1
    reads ``lr: 2e-4`` as the string ``"2e-4"``), as numbers; text that is no number is an error."""
    types = {f.name: _NUMBERS.get(str(f.type)) for f in dataclasses.fields(kind)}
    converted = {}
    for name, value in values.items():
        convert = types.get(name)
        if isinstance(value, str) and convert:
            try:
                converted[name] = convert(value)
            except ValueError:
                raise ConfigError(f"{name} must be a number, got {value!r}") from None
    return converted


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run; defaults live here and nowhere else.

    Optimisation follows the tutorial: AdamW, linear warm-up over ``warmup_epochs``, then
    reduce-on-plateau of the validation loss (``schedule="cosine"``: a cosine decay to ``min_lr``
    over the remaining epochs instead), gradient clipping, early stopping and the best
    checkpoint on validation MAE. ``folds`` (K-fold) or ``test_fraction`` (one hold-out) choose the
    subject-grouped test side (``val_fraction`` before: old configurations still load);
    ``early_stopping_fraction`` of each training side's subjects form the validation set. ``precision``/``channels_last`` ``"auto"`` pick bf16 and channels-last where the
    hardware runs them fast. ``precise_bn`` re-estimates batch-norm statistics over the training
    scans before every validation (see :class:`PreciseBatchNorm`); ``ema_decay`` validates, checkpoints and
    predicts with an exponential moving average of the weights (Lightning's EMAWeightAveraging,
    updated every step; 0.99 averages about the last 100 steps; docs/benchmarks.md compares decays).
    The default model is the compact ResNet (``resnet``); the tutorial's whole recipe is
    :data:`TUTORIAL_RECIPE`. ``precise_bn_batches`` bounds the batches that re-estimation reads.
    Early stopping cannot stop before ``min_epochs`` (at most ``epochs``): with few validation
    people, the validation MAE can be lowest in the first epochs, before the network has learned.

    ``repeats_per_session`` draws at most that many of a session's repeat scans into each training
    epoch, afresh every epoch (None: all of them): with OASIS-2's 3–4 repeats a session, ``1``
    makes epochs several times cheaper and still shows every session once an epoch.

    ``ensemble`` trains that many networks per fold, on the same split but from different seeds
    (weights, batch order, augmentation); the fold's out-of-fold prediction is their mean, and a
    run folder predicts with all of them (member ``m`` > 0 of fold ``K`` lives in ``fold_K-m``).

    ``init`` (a checkpoint or a run folder) starts every fold from trained weights of the same
    model: fine-tuning on a new cohort or scanner; the checkpoints record it. With ``epochs=0`` its
    weights are kept as they are and only its output line is re-fitted on each fold's training
    scans (age regressed on its predictions, least squares): the cheapest way to carry a
    pre-trained network to a new cohort (docs/benchmarks.md compares it with fine-tuning).

    ``bias_correction`` (``residual``, ``cole`` or ``none``; see
    :class:`~brainage.evaluation.AgeBiasCorrector`) is fitted on the out-of-fold predictions of
    controls (``control_group``, else read from the data) of the other folds, never on the
    corrected fold's people; with one hold-out, on the validation predictions. ``tta_flip``
    averages every prediction (out-of-fold, ``predict``, export) with that of the left–right
    mirror image. ``interval`` is the coverage of the split-conformal intervals calibrated, like the
    correction, on other people's out-of-fold residuals (one per session).
    """

    model: str = "resnet"
    model_hparams: Mapping[str, Any] = field(default_factory=dict)
    init: str | None = None
    ensemble: int = 1
    epochs: int = 50
    batch_size: int = 8
    repeats_per_session: int | None = None
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 3
    schedule: str = "plateau"
    plateau_factor: float = 0.5
    plateau_patience: int = 5
    min_lr: float = 1e-6
    early_stopping_patience: int = 10
    min_epochs: int = 15
    gradient_clip: float = 1.0
    precise_bn: bool = True
    precise_bn_batches: int = 64
    ema_decay: float | None = 0.99
    folds: int | None = None
    test_fraction: float = 0.2
    early_stopping_fraction: float = 0.15
    train_groups: tuple[str, ...] | None = None
    control_group: tuple[str, ...] | None = None
    bias_correction: str = "residual"
    tta_flip: bool = True
    interval: float = 0.9
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

    SCHEDULES: ClassVar[tuple[str, ...]] = ("plateau", "cosine")
    #: Old names of fields, read by :meth:`from_dict` so that old configurations and run folders still load.
    RENAMED: ClassVar[dict[str, str]] = {"val_fraction": "test_fraction"}

    def __post_init__(self) -> None:
        # Plain, YAML-ready values, so that a configuration read back compares equal.
        for name, value in _numbers(type(self), {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}).items():
            object.__setattr__(self, name, value)
        object.__setattr__(self, "model", current_model_name(self.model))  # an old model name (seed) as its name now
        object.__setattr__(self, "model_hparams", _plain(dict(self.model_hparams)))
        object.__setattr__(self, "train_groups", tuple(str(g) for g in self.train_groups) if self.train_groups else None)
        object.__setattr__(self, "control_group", tuple(str(g) for g in self.control_group) if self.control_group else None)
        problems = [
            message
            for failed, message in (
                (self.epochs < 0, f"epochs must be at least 0, got {self.epochs}"),
                (self.epochs == 0 and not self.init, "epochs 0 re-calibrates the model of init and needs one: give init (--init), or epochs above 0"),
                (self.epochs == 0 and self.ensemble > 1, f"epochs 0 re-calibrates one model: ensemble must be 1, got {self.ensemble}"),
                (self.ensemble < 1, f"ensemble must be at least 1, got {self.ensemble}"),
                (self.batch_size < 2, f"batch_size must be at least 2 (batch norm), got {self.batch_size}"),
                (
                    self.repeats_per_session is not None and self.repeats_per_session < 1,
                    f"repeats_per_session must be at least 1, got {self.repeats_per_session}",
                ),
                (self.lr <= 0, f"lr must be positive, got {self.lr}"),
                (self.schedule not in self.SCHEDULES, f"schedule must be one of {', '.join(self.SCHEDULES)}, got {self.schedule!r}"),
                (self.ema_decay is not None and not 0 < self.ema_decay < 1, f"ema_decay must be between 0 and 1, got {self.ema_decay}"),
                (self.folds is not None and self.folds < 2, f"folds must be at least 2, got {self.folds}"),
                (not 0 < self.test_fraction < 1, f"test_fraction must be between 0 and 1, got {self.test_fraction}"),
                (not 0 < self.early_stopping_fraction < 1, f"early_stopping_fraction must be between 0 and 1, got {self.early_stopping_fraction}"),
                (self.min_epochs < 0, f"min_epochs must be at least 0, got {self.min_epochs}"),
                (self.precise_bn_batches < 1, f"precise_bn_batches must be at least 1, got {self.precise_bn_batches}"),
                (not 0 < self.interval < 1, f"interval must be between 0 and 1, got {self.interval}"),
                (
                    self.bias_correction not in (*AgeBiasCorrector.METHODS, "none"),
                    f"bias_correction must be one of {', '.join((*AgeBiasCorrector.METHODS, 'none'))}, got {self.bias_correction!r}",
                ),
            )
            if failed
        ]
        if problems:
            raise ConfigError("; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """Plain values (lists for tuples) for YAML; :meth:`from_dict` reads them back equal."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """The configuration described by ``values``; unknown keys are an error, old names
        (:attr:`RENAMED`) are read as their new ones."""
        values = dict(values)
        for old, new in cls.RENAMED.items():
            if old in values:
                if new in values:
                    raise ConfigError(f"{old} is the old name of {new}: give one of them, not both")
                values[new] = values.pop(old)
        augmentation = dict(values.get("augmentation") or {})
        for kind, given in ((cls, values), (AugmentConfig, augmentation)):
            unknown = sorted(set(given) - {f.name for f in dataclasses.fields(kind)})
            if unknown:
                raise ConfigError(f"unknown {kind.__name__} option(s): {', '.join(unknown)}")
        values["augmentation"] = AugmentConfig(**augmentation | _numbers(AugmentConfig, augmentation))
        values["model_hparams"] = values.get("model_hparams") or {}
        return cls(**values)


#: The tutorial's training recipe (its network and optimisation, batch-norm running averages as
#: they were), for side-by-side comparison.
TUTORIAL_RECIPE = TrainConfig(
    model="tutorial",
    tta_flip=False,
    epochs=50,
    batch_size=8,
    lr=1e-3,
    weight_decay=0.05,
    warmup_epochs=3,
    plateau_factor=0.5,
    plateau_patience=5,
    min_lr=1e-6,
    early_stopping_patience=10,
    min_epochs=0,
    gradient_clip=1.0,
    precise_bn=False,
    ema_decay=None,
    augmentation=AugmentConfig(noise=True, intensity=True, flip=True, affine=False, bias_field=False, gamma=False, blur=False),
)


def load_config(path: str | Path) -> TrainConfig:
    """A :class:`TrainConfig` from a YAML file: a bare configuration or a run's ``config.yaml``."""
    path = Path(path)
    try:
        values: dict[str, Any] = yaml.safe_load(path.read_text()) or {}
        return TrainConfig.from_dict(values.get("train", values))
    except OSError as error:
        raise InputError(path, error.strerror or "cannot be read") from error
    except (yaml.YAMLError, ValueError, TypeError, AttributeError) as error:
        raise InputError(path, f"not a valid training configuration: {error}".replace("\n", " ")) from error


def cpu_supports_bf16() -> bool:
    """Whether this CPU trains in bf16 both fast and finite: oneDNN's native bf16 kernels with AMX
    tiles. Emulated bf16 is many times slower than fp32, and on a CPU with AVX-512 BF16 but no AMX
    bf16 backward passes of the default network gave non-finite gradient norms, so training diverged."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported() and torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, accelerator: str) -> str:
    """``"auto"`` → bf16-mixed on CUDA with native bf16 (else 16-mixed) and on a CPU where
    :func:`cpu_supports_bf16`; 32-true otherwise."""
    if precision != "auto":
        return precision
    if accelerator in ("cuda", "gpu"):
        return "bf16-mixed" if torch.cuda.is_bf16_supported(including_emulation=False) else "16-mixed"
    if accelerator == "cpu" and cpu_supports_bf16():
        return "bf16-mixed"
    return "32-true"


def resolve_channels_last(channels_last: bool | str, precision: str) -> bool:
    """``"auto"`` → channels-last (NDHWC) memory for mixed precision, where oneDNN/cuDNN gain most."""
    if channels_last == "auto":
        return precision in ("bf16-mixed", "16-mixed")
    return bool(channels_last)
