"""The demo pipeline: synthetic cohort → prepare → train → evaluate → predict held-out people → report.

Every step is the library's own (the same code the commands run); each is skipped when its
output is already there, so a second run only repeats prediction and the report. Sizes are
fields of :class:`DemoConfig`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from brainage.cohort import SUMMARY, get_preset, synthesize, unfinished
from brainage.conformal import coverage
from brainage.data import subject_holdout
from brainage.errors import BrainAgeError, InputError
from brainage.io import discover
from brainage.predict import BrainAgeModel, accuracy_table, summarise_sessions
from brainage.preprocess import make_config, prepare
from brainage.preprocess.pipelines import PIPELINES, PipelineConfig, pipeline_name
from brainage.report import build_report
from brainage.training import TrainConfig, train
from brainage.training.run import BASELINES
from brainage.utils import usable_cores, write_csv

#: Training settings (:class:`TrainConfig` fields) per cohort preset; the others keep their defaults.
#: One device: the demo is one process, never a multi-GPU launch.
TRAINING: dict[str, dict[str, Any]] = {
    # 4 folds by subject: every scan gets an out-of-fold prediction and each fold's bias correction
    # is fitted on the other three folds' controls (about 22 people, above the 20 it needs), never
    # on its own. Early stopping after 5 epochs without improvement (TrainConfig's default: 10), at
    # the earliest after 15: on the development cohort (seed 0) every fold's best epoch came by
    # epoch 15, so the shorter wait chooses the same epochs there, sooner.
    "demo": {"model": "resnet", "epochs": 40, "batch_size": 8, "folds": 4, "devices": 1, "early_stopping_patience": 5},
    "tiny": {"model": "sfcn", "model_hparams": {"width": 0.125}, "epochs": 2, "batch_size": 8, "voxel_components": 5, "devices": 1},
}


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
    workers: int = field(default_factory=usable_cores)
    train: Mapping[str, Any] | None = None
    saliency: str = "gradient"

    def __post_init__(self) -> None:
        get_preset(self.preset)
        object.__setattr__(self, "pipeline", pipeline_name(self.pipeline))  # seed: the tutorial pipeline's old name
        if self.pipeline not in PIPELINES:
            raise BrainAgeError(f"unknown pipeline {self.pipeline!r}; choose from {', '.join(PIPELINES)}")

    def preprocessing(self) -> PipelineConfig:
        """The pipeline's default configuration (the standard default skull-strips with deepbet's
        coarse network, already finer than the 3 mm output grid, so the demo needs no override)."""
        return make_config(self.pipeline)

    def train_config(self) -> TrainConfig:
        """The training configuration: ``train`` (or the preset's settings) and the demo's seed."""
        settings = self.train if self.train is not None else training_for(self.preset)
        return TrainConfig(**{"seed": self.seed, **settings})


@dataclass(frozen=True)
class DemoResult:
    """The demo's outputs: the comparison table, where the files are, and seconds per step.

    ``seconds`` is each step's wall time, ``cpu_seconds`` its processor time (user + system, of the
    demo's process and the worker processes it waited for); both end with a ``total``. On a
    machine shared with other work, CPU seconds over the cores used estimate the quiet wall time.
    """

    table: pd.DataFrame
    out: Path
    run_dir: Path
    predictions: Path
    report: Path
    seconds: dict[str, float]
    group_test: dict[str, Any] = field(default_factory=dict)
    correction: str = ""
    reliability: list[str] = field(default_factory=list)
    cpu_seconds: dict[str, float] = field(default_factory=dict)

    def timings(self) -> pd.DataFrame:
        """One row per step and the total: wall and CPU seconds."""
        return pd.DataFrame(
            {"step": list(self.seconds), "wall_s": list(self.seconds.values()), "cpu_s": [self.cpu_seconds.get(step, float("nan")) for step in self.seconds]}
        )


def _cpu_time() -> float:
    """User + system seconds of this process and of its finished (waited-for) child processes
    (this process's alone where the system has no ``resource`` module: Windows)."""
    try:
        import resource  # POSIX only: imported here so that the package imports on Windows
    except ImportError:
        return time.process_time()
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_demo(out: str | Path = "brainage-demo", config: DemoConfig | None = None) -> DemoResult:
    """Run the whole demo into ``out`` (``cohort/``, ``cache/``, ``run/``, ``heldout_predictions.csv``,
    ``report.html``) and return the session-level comparison of the network, the baselines and the
    cohort's true brain age."""
    config = config or DemoConfig()
    out = Path(out)
    seconds: dict[str, float] = {}
    cpu_seconds: dict[str, float] = {}
    start = clock = time.perf_counter()
    cpu_start = cpu_clock = _cpu_time()

    def lap(step: str) -> None:
        nonlocal clock, cpu_clock
        now, cpu_now = time.perf_counter(), _cpu_time()
        seconds[step], cpu_seconds[step] = now - clock, cpu_now - cpu_clock
        clock, cpu_clock = now, cpu_now

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
    assert result is not None  # train returns None only on the non-zero ranks of multi-process training
    lap(f"train ({train_config.model})")
    model = BrainAgeModel.load(out / "run")
    heldout = model.predict(manifest.iloc[held_out], workers=config.workers)
    predictions = write_csv(heldout, out / "heldout_predictions.csv")
    lap("predict held-out subjects")
    report = build_report(out / "run", out / "report.html", saliency=config.saliency, heldout=heldout)
    lap("report")
    table = comparison_table(result.summary, train_config.model, accuracy_table(summarise_sessions(heldout), model.mean_training_age))
    correction = result.corrector.describe() if result.corrector else "none"
    notes = [*result.reliability, _heldout_coverage(heldout)]
    seconds["total"], cpu_seconds["total"] = time.perf_counter() - start, _cpu_time() - cpu_start
    return DemoResult(table, out, result.run_dir, predictions, report, seconds, result.group_test, correction, notes, cpu_seconds)


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


def _heldout_coverage(heldout: pd.DataFrame) -> str:
    """How many held-out people's ages the predicted intervals hold."""
    known = heldout.dropna(subset=["age", "brain_age_lower"])
    if known.empty:
        return "held-out people: no interval (the model has no calibration)"
    inside = coverage(known["brain_age_lower"], known["brain_age_upper"], known["age"])
    return f"held-out people: {inside:.1%} of {len(known)} scans' ages inside their intervals"


def comparison_table(summary: pd.DataFrame, model: str, heldout: pd.DataFrame) -> pd.DataFrame:
    """Session-level (repeat scans averaged) n, MAE against age, MAE against the true brain age, gap
    fidelity and the Demented-minus-Nondemented gap per subject with its p value: the network's
    out-of-fold predictions (uncorrected, bias-corrected), the baselines on the same folds, the true
    brain age itself, and the network on the held-out people (MAE only)."""
    sessions = summary[summary["level"] == "session"]
    rows = []
    for row in sessions.itertuples():
        if row.model == model:
            name = f"{model} (network)" if row.correction == "none" else f"{model}, bias-corrected ({row.correction})"
        elif row.model in BASELINES.values():
            name = f"baseline: {row.model}"
        else:
            name = row.model
        rows.append({
            "model": name, "sessions": "out-of-fold", "n": row.n, "mae": row.mae, "mae_true": row.mae_true,
            "gap_fidelity": row.gap_fidelity, "dementia_gap": row.dementia_gap, "dementia_p": row.dementia_p,
        })  # fmt: skip  # keys grouped in rows
    labels = {
        "brain age": f"{model} (network)",
        "brain age, bias-corrected": f"{model}, bias-corrected",
        "mean training age": f"baseline: {BASELINES['mean_age']}",
    }
    rows += [{"model": labels[str(row.prediction)], "sessions": "held-out people", "n": row.n, "mae": row.mae} for row in heldout.itertuples() if row.n]
    return pd.DataFrame(rows).astype({"n": int})
