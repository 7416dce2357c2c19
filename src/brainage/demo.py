"""The demo pipeline: synthetic cohort → prepare → train → evaluate → predict held-out people → report.

Every step is the library's own (the same code the commands run); each is skipped when its
output is already there, so a second run only repeats prediction and the report. Sizes are
fields of :class:`DemoConfig`.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from brainage.cohort import SUMMARY, get_preset, synthesize, unfinished
from brainage.data import subject_holdout
from brainage.errors import BrainAgeError, InputError
from brainage.io import discover
from brainage.predict import BrainAgeModel, accuracy_table
from brainage.preprocess import make_config, prepare
from brainage.preprocess.pipelines import PIPELINES, PipelineConfig
from brainage.report import build_report
from brainage.training import BASELINES, TrainConfig, train, write_csv


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


#: Training settings (:class:`TrainConfig` fields) per cohort preset; the others keep their defaults.
#: One device: the demo is one process, never a multi-GPU launch.
TRAINING: dict[str, dict[str, Any]] = {
    "demo": {"model": "resnet", "epochs": 40, "batch_size": 8, "devices": 1},
    "tiny": {"model": "sfcn", "model_hparams": {"width": 0.125}, "epochs": 2, "batch_size": 8, "voxel_components": 5, "devices": 1},
}


#: Preprocessing overrides per cohort preset (standard pipeline). The demo's 2 mm scans are skull
#: stripped on a 160³ grid (deepbet's box at ~1 mm, still finer than the scans): 0.8 s less per scan
#: than 192³ on one core, masks at Dice 0.955–0.976 against 192³ on 11 demo scans.
PREPROCESSING: dict[str, dict[str, Any]] = {"demo": {"strip_shape": 160}}


def training_for(preset: str, model: str | None = None, epochs: int | None = None) -> dict[str, Any]:
    """The preset's training settings, with another ``model`` (at its default hyper-parameters)
    or another number of ``epochs`` if given."""
    settings = dict(TRAINING.get(preset, TRAINING["demo"]))
    if model is not None and model != settings.get("model"):
        settings.pop("model_hparams", None)
        settings["model"] = model
    if epochs is not None:
        settings["epochs"] = epochs
    return settings


@dataclass(frozen=True)
class DemoConfig:
    """What the demo runs: the cohort preset, the preprocessing pipeline and the training run.

    ``holdout_fraction`` of the subjects never reach training; they are predicted from their raw
    scans at the end, as new people would be. ``train`` holds the :class:`TrainConfig` fields the
    demo sets; None takes ``TRAINING[preset]``.
    """

    preset: str = "demo"
    pipeline: str = "standard"
    seed: int = 0
    holdout_fraction: float = 0.1
    workers: int = field(default_factory=_cores)
    train: Mapping[str, Any] | None = None
    saliency: str = "gradient"

    def __post_init__(self) -> None:
        get_preset(self.preset)
        if self.pipeline not in PIPELINES:
            raise BrainAgeError(f"unknown pipeline {self.pipeline!r}; choose from {', '.join(PIPELINES)}")

    def preprocessing(self) -> PipelineConfig:
        """The pipeline's configuration with the preset's overrides (:data:`PREPROCESSING`)."""
        overrides = PREPROCESSING.get(self.preset, {}) if self.pipeline == "standard" else {}
        return make_config(self.pipeline, **overrides)

    def train_config(self) -> TrainConfig:
        """The training configuration: ``train`` (or the preset's settings) and the demo's seed."""
        settings = self.train if self.train is not None else training_for(self.preset)
        return TrainConfig(**{"seed": self.seed, **settings})


@dataclass(frozen=True)
class DemoResult:
    """The demo's outputs: the comparison table, where the files are, and seconds per step."""

    table: pd.DataFrame
    out: Path
    run_dir: Path
    predictions: Path
    report: Path
    seconds: dict[str, float]


def run_demo(out: str | Path = "brainage-demo", config: DemoConfig | None = None) -> DemoResult:
    """Run the whole demo into ``out`` (``cohort/``, ``cache/``, ``run/``, ``heldout_predictions.csv``,
    ``report.html``) and return the comparison of the network, the baselines and the cohort's best
    possible MAE."""
    config = config or DemoConfig()
    out = Path(out)
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(step: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[step] = now - clock
        clock = now

    cohort = _cohort(out / "cohort", config)
    lap("synthesize cohort")
    manifest = discover(cohort).manifest
    kept, held_out = subject_holdout(manifest, config.holdout_fraction, config.seed)
    prepared = prepare(manifest.iloc[kept], out / "cache", config.preprocessing(), workers=config.workers)
    if prepared.problems:
        raise InputError(prepared.problems[0].path, f"the demo cohort failed to prepare: {prepared.problems[0].cause}")
    lap(f"prepare ({config.pipeline})")
    train_config = config.train_config()
    result = train(out / "cache", out / "run", train_config)
    lap(f"train ({train_config.model})")
    model = BrainAgeModel.load(out / "run")
    heldout = model.predict(manifest.iloc[held_out], workers=config.workers)
    predictions = write_csv(heldout, out / "heldout_predictions.csv")
    lap("predict held-out subjects")
    report = build_report(out / "run", out / "report.html", saliency=config.saliency)
    lap("report")
    made = json.loads((cohort / SUMMARY).read_text())
    best = ((made.get("true_brain_age_mae") or made["best_possible_mae"])["scan"], made["counts"]["scans"])
    table = comparison_table(result.summary, train_config.model, accuracy_table(heldout, model.mean_training_age), best)
    return DemoResult(table, out, result.run_dir, predictions, report, seconds)


def _cohort(root: Path, config: DemoConfig) -> Path:
    """The synthetic cohort in ``root``: reused when it was made with the same preset and seed,
    finished when its synthesis was stopped (:func:`synthesize` resumes it)."""
    summary = root / SUMMARY
    if summary.is_file() and not unfinished(root):
        made = json.loads(summary.read_text())
        if made.get("seed") == config.seed and made.get("preset", {}).get("name") == config.preset:
            return root
        raise InputError(root, f"holds another cohort (preset {made.get('preset', {}).get('name')}, seed {made.get('seed')}); choose another --out")
    synthesize(root, get_preset(config.preset), seed=config.seed, workers=config.workers)
    return root


def comparison_table(summary: pd.DataFrame, model: str, heldout: pd.DataFrame, best_possible: tuple[float, int]) -> pd.DataFrame:
    """Scan-level n, MAE, RMSE and r: the network on its test split (uncorrected, bias-corrected),
    the baselines on the same split, the network on the held-out people, and the best possible MAE
    (``(mae, scans)`` of the whole cohort)."""
    scans = summary[summary["level"] == "scan"]
    names = {(model, "none"): f"{model} (network)", (model, "linear"): f"{model}, bias-corrected"}
    names.update({(name, "none"): f"baseline: {name}" for name in BASELINES.values()})
    rows = [
        {"model": names[(row.model, row.correction)], "scans": "test split", "n": row.n, "mae": row.mae, "rmse": row.rmse, "r": row.r}
        for row in scans.itertuples()
        if (row.model, row.correction) in names
    ]
    labels = {
        "brain age": f"{model} (network)",
        "brain age, bias-corrected": f"{model}, bias-corrected",
        "mean training age": f"baseline: {BASELINES['mean_age']}",
    }
    rows += [
        {"model": labels[row.prediction], "scans": "held-out people", "n": row.n, "mae": row.mae, "rmse": row.rmse, "r": row.r}
        for row in heldout.itertuples()
    ]
    mae, count = best_possible
    rows.append({"model": "best possible (hidden brain-age offsets)", "scans": "whole cohort", "n": count, "mae": mae, "rmse": math.nan, "r": math.nan})
    return pd.DataFrame(rows).astype({"n": int})
