"""The checkpoint format: a trained model with everything needed to predict, readable without Lightning.

A checkpoint is a plain dict saved with ``torch.save`` (so ``torch.load(weights_only=True)`` reads
it): weights, the model's registry name and hyper-parameters, the preprocessing configuration,
the training age statistics, the age-bias correction, the split-conformal interval calibrated on
out-of-fold residuals, whether predictions average the left–right flip, the content hashes of the
scans it was fitted on, and provenance in ``extra``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from brainage import __version__
from brainage.errors import InputError
from brainage.evaluation import AgeBiasCorrector
from brainage.models import AgeRegressor, build_model
from brainage.reliability import ConformalInterval
from brainage.utils import atomic_write

CHECKPOINT_FORMAT = "brainage-model"
#: 2: residual (controls-fitted) bias correction, ``tta_flip``, ``train_content_hashes``.
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
            "interval": self.interval.to_dict() if self.interval is not None else None,
            "extra": dict(self.extra),
        }


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
        model_name=values["model_name"],
        age_mean=values["age_mean"],
        age_std=values["age_std"],
        preprocessing=values["preprocessing"],
        corrector=AgeBiasCorrector.from_dict(bias) if bias else None,
        train_age_range=tuple(values.get("train_age_range", (math.nan, math.nan))),
        tta_flip=bool(values.get("tta_flip", True)),
        train_content_hashes=tuple(values.get("train_content_hashes", ())),
        interval=ConformalInterval.from_dict(values["interval"]) if values.get("interval") else None,
        brainage_version=values.get("brainage_version", "unknown"),
        extra=values.get("extra", {}),
    )


def fold_folder(run_dir: Path, fold: int, member: int = 0) -> Path:
    """The folder of ensemble member ``member`` of fold ``fold`` in a run folder: ``fold_K``, then ``fold_K-1``, …"""
    return run_dir / (f"fold_{fold}-{member}" if member else f"fold_{fold}")
