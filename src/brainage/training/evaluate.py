"""Everything after the networks, again and again without training: :func:`evaluate` reads a run
folder's out-of-fold predictions (``fold_K/predictions.csv``, member-averaged), fits the age-bias
correction and the conformal intervals on other people's predictions, stores the final ones in
every checkpoint, merges the baselines and the true brain age (``references.csv``) and writes
``predictions.csv``, ``summary.csv``, ``bias_correction.yaml``, ``evaluation.yaml`` and
``predicted_vs_true.png``. ``brainage train`` calls it at its end, ``brainage combine`` on the
combined folder, and ``brainage evaluate RUN --control-group …`` with other post-hoc settings: none of
them is part of the run identity, so a finished run is re-evaluated without training.

Calibration and the predictor that is served: with K folds, each scan's out-of-fold prediction is
its fold's network (the mean of its ensemble members), while ``brainage predict RUN`` serves the
mean of every fold's networks. The final correction is fitted on the former: the mean of K networks
has the same age bias in expectation (averaging removes noise that does not depend on age, not
shrinkage). The final interval keeps each out-of-fold residual with its fold, and its served
half-width is scaled for the mean's smaller errors, from the scans that two fold networks never
trained on (:class:`~brainage.conformal.ConformalInterval`, :func:`~brainage.conformal.served_interval`;
CV+ over the fold networks stays possible, and over-covers). Each checkpoint records this under
``extra["calibration"]``; ``bench/served_calibration.py`` measures the coverage on fresh people.
In hold-out mode the calibration people (``calibration_predictions.csv``) are apart from the
early-stopping people that chose the best epoch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from brainage.baselines import BASELINES
from brainage.checkpoint import fold_folder, load_checkpoint, save_checkpoint
from brainage.conformal import ConformalInterval, coverage, session_residuals
from brainage.console import console
from brainage.errors import BrainAgeError, InputError
from brainage.evaluation import AgeBiasCorrector, check_control_group, control_mask, fit_bias_correction, gap_by_group
from brainage.figures import plot_predictions
from brainage.training.config import ConfigError, TrainConfig, _plain
from brainage.training.summary import reliability, summarize_run
from brainage.utils import atomic_write, write_csv

#: TrainConfig fields that change no trained weight: left out of the run identity, free to change on re-evaluation.
POST_HOC = ("control_group", "bias_correction", "interval", "baselines", "voxel_components", "voxel_downsample", "progress")
#: The predictions that are not the network's, by scan: baselines on the same folds and the true brain age.
REFERENCES = "references.csv"
IDS = {"scan_id": str, "subject_id": str, "session_id": str}


@dataclass(frozen=True)
class EvaluationSettings:
    """What :func:`evaluate` may change without training: the controls of the age-bias correction
    and the visit slopes (``control_group``; None: read from the data), the correction's method
    (``residual``, ``cole`` or ``none``) and the coverage of the conformal intervals."""

    control_group: tuple[str, ...] | None = None
    bias_correction: str = "residual"
    interval: float = 0.9
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "control_group", tuple(str(g) for g in self.control_group) if self.control_group else None)
        methods = (*AgeBiasCorrector.METHODS, "none")
        if self.bias_correction not in methods:
            raise ConfigError(f"bias_correction must be one of {', '.join(methods)}, got {self.bias_correction!r}")
        if not 0 < self.interval < 1:
            raise ConfigError(f"interval must be between 0 and 1, got {self.interval}")

    @classmethod
    def of(cls, config: TrainConfig) -> EvaluationSettings:
        """The settings a training configuration asks for."""
        return cls(config.control_group, config.bias_correction, config.interval, config.progress)

    def to_dict(self) -> dict[str, Any]:
        return {"control_group": list(self.control_group or []) or None, "bias_correction": self.bias_correction, "interval": self.interval}


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


def evaluate(
    run: str | Path,
    control_group: Sequence[str] | None = None,
    bias_correction: str | None = None,
    interval: float | None = None,
    progress: bool = True,
) -> TrainResult:
    """(Re-)evaluate the finished run folder ``run``; settings left out keep those of its last
    evaluation (``evaluation.yaml``), else of its training configuration. The networks and their
    fold predictions are not touched; the checkpoints get the new final correction and interval."""
    run_dir = Path(run)
    values = read_run_config(run_dir)
    given = {"control_group": control_group, "bias_correction": bias_correction, "interval": interval}
    return evaluate_run(run_dir, run_settings(run_dir, values, progress, **{key: value for key, value in given.items() if value is not None}), values)


def run_settings(run_dir: Path, values: Mapping[str, Any], progress: bool = True, **given: Any) -> EvaluationSettings:
    """The settings of the run folder ``run_dir``: ``given`` ones, else those of its last evaluation
    (``evaluation.yaml``), else those of its training configuration (``values``, its ``config.yaml``)."""
    previous = _read_yaml(run_dir / "evaluation.yaml") if (run_dir / "evaluation.yaml").is_file() else {}
    train = values.get("train") or {}
    chosen = {key: given[key] if key in given else previous.get(key, train.get(key)) for key in ("control_group", "bias_correction", "interval")}
    return EvaluationSettings(
        control_group=chosen["control_group"],
        bias_correction=str(chosen["bias_correction"] or "residual"),
        interval=float(chosen["interval"] or 0.9),
        progress=progress,
    )


def evaluate_run(run_dir: Path, settings: EvaluationSettings, values: Mapping[str, Any] | None = None) -> TrainResult:
    """:func:`evaluate` with the settings resolved (``values``: the run's ``config.yaml``)."""
    values = read_run_config(run_dir) if values is None else values
    fold_predictions, calibration, checkpoints = read_fold_predictions(run_dir, values)
    predictions = pd.concat(fold_predictions, ignore_index=True)
    groups = predictions["group"].dropna().tolist() if "group" in predictions else []
    try:
        check_control_group(groups, settings.control_group)
    except ValueError as error:
        raise ConfigError(f"--control-group: {error}") from None
    references = read_references(run_dir)
    if not references.empty:
        predictions = predictions.merge(references, on="scan_id", how="left")
    calibration_set = pd.concat(calibration, ignore_index=True)
    predictions, corrector = correct_bias(predictions, calibration_set, settings, run_dir)
    predictions, interval = calibrate_intervals(predictions, calibration_set, settings)
    k_fold = predictions["fold"].nunique() > 1
    record = calibration_record(k_fold, len(checkpoints), len(fold_predictions), calibration_set if not k_fold else predictions)
    if interval is not None:
        record |= {"served_scale": round(interval.served_scale_, 4), "served_pairs": interval.served_pairs_}
    for path in checkpoints:  # the final correction and interval, in every fold's checkpoint
        checkpoint = load_checkpoint(path)
        checkpoint.corrector, checkpoint.interval = corrector, interval
        checkpoint.extra = {**checkpoint.extra, "calibration": record}
        save_checkpoint(checkpoint, path)
    model = str((values.get("train") or {}).get("model"))
    summary = summarize_run(predictions, model, settings.bias_correction, settings.control_group, _baseline_names(references))
    column = "brain_age_corrected" if predictions["brain_age_corrected"].notna().any() else "brain_age"
    group_gaps, group_test = gap_by_group(predictions, by="group", column=column) if "group" in predictions else (pd.DataFrame(), {"test": "none"})
    group_test["column"] = column
    write_csv(predictions, run_dir / "predictions.csv")
    write_csv(summary, run_dir / "summary.csv")
    write_yaml(settings.to_dict() | {"calibration": record}, run_dir / "evaluation.yaml")
    plot_predictions(predictions, run_dir / "predicted_vs_true.png")
    notes = [str(result) for result in reliability(predictions, "brain_age", settings.control_group)]
    if interval is not None:
        inside = coverage(predictions["brain_age_lower"], predictions["brain_age_upper"], predictions["age"])
        notes.append(
            f"conformal intervals: {inside:.1%} of out-of-fold ages inside the {settings.interval:.0%} intervals (each fold calibrated on other people)"
        )
    history = read_predictions(run_dir / "metrics.csv")
    resolved = values.get("resolved") or {}
    return TrainResult(
        run_dir, predictions, summary, history, pd.DataFrame(values.get("folds") or []), list(checkpoints), group_gaps, group_test,
        str(resolved.get("precision")), str(resolved.get("accelerator")), corrector, interval, notes,
    )  # fmt: skip  # arguments grouped by meaning


def calibration_record(k_fold: bool, n_networks: int, n_folds: int, fitted_on: pd.DataFrame) -> dict[str, Any]:
    """What the final correction and interval were fitted on, beside what ``brainage predict`` serves."""
    per_fold = max(1, n_networks // max(1, n_folds))
    return {
        "fitted_on": (
            f"out-of-fold predictions of each scan's own fold ({per_fold} network(s) averaged)"
            if k_fold
            else f"calibration people of the training side ({per_fold} network(s) averaged), apart from the early-stopping people"
        ),
        "served": f"the mean of {n_networks} network(s)",
        "served_interval": "split conformal around the served brain age"
        + (", its half-width scaled for the mean of the fold networks (CV+ over them possible)" if k_fold and n_folds > 1 else ""),
        "n_sessions": int(fitted_on[["subject_id", "session_id"]].drop_duplicates().shape[0]) if len(fitted_on) else 0,
    }


def correct_bias(
    predictions: pd.DataFrame, calibration: pd.DataFrame, settings: EvaluationSettings | TrainConfig, run_dir: Path | None
) -> tuple[pd.DataFrame, AgeBiasCorrector | None]:
    """Add ``brain_age_corrected`` to out-of-fold ``predictions``, record every fit in
    ``run_dir/bias_correction.yaml`` (no record without ``run_dir``) and return the final correction
    (for the checkpoints).

    K folds: fold k's scans are corrected with a fit on the out-of-fold predictions of the other
    folds' controls (never fold k's people); the final correction is fitted on all of them. One
    hold-out: the fit is on the ``calibration`` predictions of the training side. Fits are at
    session level; one refused (too few controls, a slope that could be zero) leaves NaN and says why.
    """
    predictions = predictions.copy()
    predictions["brain_age_corrected"] = np.nan
    if settings.bias_correction == "none":
        return predictions, None
    k_fold = predictions["fold"].nunique() > 1
    record: dict[str, Any] = {"method": settings.bias_correction, "control_group": list(settings.control_group or []), "folds": []}
    for fold, rows in predictions.groupby("fold", sort=True):
        fit_on = predictions[predictions["fold"] != fold] if k_fold else _of_fold(calibration, fold)
        corrector = fit_bias_correction(fit_on, settings.control_group, settings.bias_correction)
        predictions.loc[rows.index, "brain_age_corrected"] = corrector.transform(rows["brain_age"], rows["age"])
        mask = control_mask(fit_on, settings.control_group)[0] if len(fit_on) else np.zeros(0, dtype=bool)
        record["folds"].append(
            {
                "fold": int(str(fold)),
                "fitted_on": "out-of-fold predictions of the other folds" if k_fold else "calibration predictions of the training side",
                "subjects": sorted(set(fit_on["subject_id"][mask].astype(str))) if len(fit_on) else [],
                "description": corrector.describe(),
                **corrector.to_dict(),
            }
        )
        if settings.progress and k_fold:
            console.print(f"[bold]fold {fold}[/]: {corrector.describe()}", style=None if corrector.applicable else "yellow")
    final = fit_bias_correction(predictions if k_fold else calibration, settings.control_group, settings.bias_correction)
    record["final"] = {"description": final.describe(), **final.to_dict()}
    if settings.progress:
        console.print(f"final: {final.describe()}", style=None if final.applicable else "yellow")
    if run_dir is not None:
        write_yaml(_plain(record), run_dir / "bias_correction.yaml")
    return predictions, final


def calibrate_intervals(
    predictions: pd.DataFrame, calibration: pd.DataFrame, settings: EvaluationSettings | TrainConfig
) -> tuple[pd.DataFrame, ConformalInterval | None]:
    """Add ``brain_age_lower``/``brain_age_upper`` (coverage ``settings.interval``) to out-of-fold
    ``predictions``, each fold's from a split-conformal calibration on the other folds' residuals
    (one per session; one hold-out: on the ``calibration`` predictions); return the final
    calibration (on every out-of-fold residual, for the checkpoints; with K folds each residual
    keeps its fold, for CV+ at prediction, and the served mean's scale is fitted on the scans that
    two fold networks never trained on: :func:`served_pair_differences`)."""
    predictions = predictions.copy()
    k_fold = predictions["fold"].nunique() > 1

    def fitted(frame: pd.DataFrame, with_folds: bool = False) -> ConformalInterval | None:
        if not len(frame):
            return None
        sessions = session_residuals(frame, level="scan")
        if sessions.empty:
            return None
        folds = sessions["fold"].astype(int) if with_folds and "fold" in sessions else None
        pairs = served_pair_differences(frame, calibration) if folds is not None else None
        return ConformalInterval(settings.interval).fit(sessions["residual"].to_numpy(dtype=float), folds=folds, pair_differences=pairs)

    predictions["brain_age_lower"] = predictions["brain_age_upper"] = np.nan
    for fold, rows in predictions.groupby("fold", sort=True):
        interval = fitted(predictions[predictions["fold"] != fold] if k_fold else _of_fold(calibration, fold))
        if interval is not None:
            lower, upper = interval.interval(rows["brain_age"])
            predictions.loc[rows.index, "brain_age_lower"], predictions.loc[rows.index, "brain_age_upper"] = lower, upper
    return predictions, fitted(predictions, with_folds=True) if k_fold else fitted(calibration)


def served_pair_differences(predictions: pd.DataFrame, validation: pd.DataFrame) -> np.ndarray:
    """Per scan that two fold networks never trained on, their brain ages subtracted: the test
    prediction (``predictions``, out of fold) minus the prediction of another fold's network that
    only stopped early on it (``validation``, its validation predictions with its ``fold``)."""
    if validation.empty or not {"scan_id", "fold", "brain_age"} <= set(validation.columns):
        return np.zeros(0)
    pairs = predictions[["scan_id", "fold", "brain_age"]].merge(validation[["scan_id", "fold", "brain_age"]], on="scan_id", suffixes=("", "_other"))
    pairs = pairs[pairs["fold"] != pairs["fold_other"]]
    return (pairs["brain_age"] - pairs["brain_age_other"]).to_numpy(dtype=float)


def _of_fold(frame: pd.DataFrame, fold: object) -> pd.DataFrame:
    return frame[frame["fold"] == fold] if "fold" in frame else frame.iloc[:0]


# --- the run folder --------------------------------------------------------------------------------


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """A run folder's ``config.yaml``; a one-line error for anything that is not a finished run."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise InputError(run_dir, "not a brainage run folder (no config.yaml)")
    return _read_yaml(path)


def members_per_fold(values: Mapping[str, Any]) -> int:
    """Networks per fold of the run described by ``config.yaml``'s ``values``."""
    combined = values.get("combined_from")
    return sum(source["members"] for source in combined) if combined else int((values.get("train") or {}).get("ensemble", 1))


def read_fold_predictions(run_dir: Path, values: Mapping[str, Any]) -> tuple[list[pd.DataFrame], list[pd.DataFrame], list[Path]]:
    """Per fold, the member-averaged test and calibration predictions (``calibration_predictions.csv``,
    else, in runs written before it existed, ``val_predictions.csv``), and every checkpoint."""
    tests, calibration, checkpoints = [], [], []
    for fold in sorted({int(row["fold"]) for row in values.get("folds") or []}):
        folders = [fold_folder(run_dir, fold, member) for member in range(members_per_fold(values))]
        for folder in folders:
            for name in ("predictions.csv", "model.ckpt"):
                if not (folder / name).is_file():
                    raise InputError(folder / name, "missing: this run has not finished; finish it with `brainage train` first")
        tests.append(member_mean([read_predictions(folder / "predictions.csv") for folder in folders]))
        own = "calibration_predictions.csv" if (folders[0] / "calibration_predictions.csv").is_file() else "val_predictions.csv"
        calibration.append(member_mean([read_predictions(folder / own) for folder in folders]))
        checkpoints += [folder / "model.ckpt" for folder in folders]
    if not tests:
        raise InputError(run_dir / "config.yaml", "names no folds")
    return tests, calibration, checkpoints


def read_references(run_dir: Path) -> pd.DataFrame:
    """``references.csv`` (scan_id, the baselines' columns, the true brain age); for runs written
    before it existed, those columns of ``predictions.csv``."""
    if (run_dir / REFERENCES).is_file():
        return read_predictions(run_dir / REFERENCES)
    old = read_predictions(run_dir / "predictions.csv")
    columns = [column for column in (*BASELINES, "true_brain_age") if column in old]
    return old[["scan_id", *columns]] if columns else pd.DataFrame()


def _baseline_names(references: pd.DataFrame) -> dict[str, str]:
    """The baselines' columns among ``references`` and their names in the summary (:data:`BASELINES`, else the column's)."""
    return {column: BASELINES.get(column, column.replace("_", " ")) for column in references.columns if column not in ("scan_id", "true_brain_age")}


def member_mean(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """One fold's predictions by its ensemble members (same scans, same order), with ``brain_age``
    their mean (empty on the ranks of multi-process training that do not predict)."""
    frame = frames[0].copy()
    if len(frames) > 1 and not frame.empty:
        if any(not other["scan_id"].equals(frame["scan_id"]) for other in frames[1:]):
            raise BrainAgeError("the ensemble members of a fold predicted different scans; train the run again in a new folder")
        frame["brain_age"] = np.mean([other["brain_age"].to_numpy(dtype=float) for other in frames], axis=0)
    return frame


def read_predictions(path: Path) -> pd.DataFrame:
    """A CSV of the run folder with its ids as text; empty where the file is not there."""
    return pd.read_csv(path, dtype=IDS) if path.is_file() else pd.DataFrame()


def write_yaml(values: Mapping[str, Any], path: Path) -> None:
    """``values`` as YAML, atomically."""
    with atomic_write(path) as tmp:
        tmp.write_text(yaml.safe_dump(dict(values), sort_keys=False))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise InputError(path, f"unreadable run configuration: {error}".replace("\n", " ")) from error
