"""Training with Lightning, by concern:

- :mod:`brainage.training.config`: :class:`TrainConfig`, the tutorial's recipe, hardware choices;
- :mod:`brainage.training.module`: the LightningModule and the callbacks for what Lightning lacks;
- :mod:`brainage.training.run`: the fold loop, the baselines on the same folds, the run folder;
- :mod:`brainage.training.evaluate`: everything after the networks (bias correction, intervals,
  summary), again and again without training (``brainage evaluate``);
- :mod:`brainage.training.summary`: the summary table of a run's out-of-fold predictions;
- :mod:`brainage.training.combine`: one run from several finished runs on the same folds.

The checkpoint format is :mod:`brainage.checkpoint` and the inference path :mod:`brainage.inference`
(neither needs Lightning); figures are in :mod:`brainage.figures`.
"""

from brainage.checkpoint import BrainAgeCheckpoint, load_checkpoint, save_checkpoint
from brainage.training.combine import combine
from brainage.training.config import (
    TUTORIAL_RECIPE,
    ConfigError,
    TrainConfig,
    cpu_supports_bf16,
    load_config,
    resolve_accelerator,
    resolve_channels_last,
    resolve_precision,
)
from brainage.training.evaluate import EvaluationSettings, TrainResult, calibrate_intervals, correct_bias, evaluate
from brainage.training.module import (
    BrainAgeModule,
    FiniteEarlyStopping,
    MaxGradientNorm,
    PreciseBatchNorm,
    TrainingCurves,
    TrainingDiverged,
    recompute_batch_norm,
)
from brainage.training.run import RunFolderError, baseline_predictions, fold_module, fold_trainer, quiet_lightning, train
from brainage.training.summary import summarize_run
from brainage.utils import write_csv

__all__ = [
    "TUTORIAL_RECIPE", "BrainAgeCheckpoint", "BrainAgeModule", "ConfigError", "EvaluationSettings", "FiniteEarlyStopping", "MaxGradientNorm", "PreciseBatchNorm",
    "RunFolderError", "TrainConfig", "TrainResult", "TrainingCurves", "TrainingDiverged", "baseline_predictions", "calibrate_intervals", "combine", "correct_bias", "cpu_supports_bf16", "evaluate",
    "fold_module", "fold_trainer", "load_checkpoint", "load_config", "quiet_lightning", "recompute_batch_norm",
    "resolve_accelerator", "resolve_channels_last", "resolve_precision", "save_checkpoint", "summarize_run", "train", "write_csv",
]  # fmt: skip  # names grouped in rows
