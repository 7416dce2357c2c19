"""One run from several finished runs on the same folds: every network of every run becomes a member
of the combined run, whose out-of-fold brain age is the mean over all of them, then bias-corrected
and calibrated exactly as training does (fold k's fit on the other folds' controls).

This is how networks trained differently (from scratch and fine-tuned with ``--init``, another
model, another learning rate) are averaged and evaluated honestly, and the combined run folder is a
run folder like any other: ``brainage predict``, ``report`` and ``export`` use all its members.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from brainage.checkpoint import fold_folder, load_checkpoint, refuse_overlap, save_checkpoint
from brainage.errors import BrainAgeError, InputError
from brainage.preprocess import load_cache
from brainage.training.config import _plain
from brainage.training.evaluate import (
    REFERENCES,
    TrainResult,
    evaluate_run,
    members_per_fold,
    read_predictions,
    read_references,
    run_settings,
    write_yaml,
)
from brainage.training.run import RunFolderError
from brainage.utils import write_csv

#: What runs must share to be combined: the same cache, preprocessing and folds.
SHARED = ("cache", "n_scans", "preprocessing", "split_digest")


def combine(runs: Sequence[str | Path], out: str | Path, progress: bool = True) -> TrainResult:
    """Combine finished runs (``brainage train`` run folders) into the run folder ``out``.

    The runs must have tested the same scans in the same folds (same cache and split: the same
    ``--seed`` and ``--folds`` or ``--test-fraction``). Member ``m`` of fold ``k`` of the combined run
    (``fold_k``, ``fold_k-1``, …) is a copy of a run's checkpoint, in the order the runs are given;
    each network weighs the same, in the out-of-fold prediction as in ``brainage predict``. The
    correction, the intervals and every other setting of the summary are the first run's; the
    baselines are the first run's too (the same folds give the same baselines). ``out`` may be a
    folder that holds this same combination, which is then written again.
    """
    dirs = [Path(run) for run in runs]  # the runs as paths
    if len(dirs) < 2:
        raise RunFolderError("combine needs at least two run folders")
    run_dir = Path(out)
    configs = [_finished_run(run) for run in dirs]
    first = configs[0]
    _refuse_overlaps(dirs, configs)
    for run, values in zip(dirs[1:], configs[1:], strict=False):
        differs = [key for key in SHARED if values.get(key) != first.get(key)]
        if differs:
            raise RunFolderError(f"{run} was not trained on the same {', '.join(differs)} as {dirs[0]}; only runs on the same folds can be combined")
    sources = [{"run": str(run.resolve()), "members": members_per_fold(values), "train": values["train"]} for run, values in zip(dirs, configs, strict=False)]
    _start_combined_folder(run_dir, first, sources)

    run_histories = [_history(run) for run in dirs]
    histories = []
    for fold in sorted({int(row["fold"]) for row in first["folds"]}):
        member = 0
        for run, source, history in zip(dirs, sources, run_histories, strict=False):
            for own in range(source["members"]):
                folder, target = fold_folder(run, fold, own), fold_folder(run_dir, fold, member)
                checkpoint = load_checkpoint(folder / "model.ckpt")
                checkpoint.extra = {**checkpoint.extra, "member": member, "combined_from": f"{run.resolve()} fold {fold} member {own}"}
                save_checkpoint(checkpoint, target / "model.ckpt")
                for name in ("predictions.csv", "val_predictions.csv", "calibration_predictions.csv"):
                    if (folder / name).is_file():
                        shutil.copyfile(folder / name, target / name)
                if not history.empty:
                    histories.append(history[(history["fold"] == fold) & (history["member"] == own)].assign(member=member))
                member += 1
    write_csv(pd.concat(histories, ignore_index=True) if histories else pd.DataFrame(), run_dir / "metrics.csv")
    write_csv(read_references(dirs[0]), run_dir / REFERENCES)
    if (dirs[0] / "baselines.yaml").is_file():  # the same folds: the first run's baselines
        shutil.copyfile(dirs[0] / "baselines.yaml", run_dir / "baselines.yaml")
    settings = run_settings(dirs[0], first, progress)  # the first run's, as it was last evaluated
    return evaluate_run(run_dir, settings, {**first, "combined_from": _plain(sources)})


def _finished_run(run: Path) -> dict[str, Any]:
    """A finished run's ``config.yaml``; a clear error for anything else."""
    path = run / "config.yaml"
    if not path.is_file():
        raise InputError(run, "not a brainage run folder (no config.yaml)")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise InputError(path, f"unreadable run configuration: {error}".replace("\n", " ")) from error
    if not (run / "predictions.csv").is_file():
        raise InputError(run, "this run has not finished (no predictions.csv); finish it with `brainage train` first")
    for fold in {int(row["fold"]) for row in values.get("folds") or []}:
        for member in range(members_per_fold(values)):
            if not (fold_folder(run, fold, member) / "model.ckpt").is_file():
                raise InputError(fold_folder(run, fold, member), "no model.ckpt: this run is incomplete")
    return values


def _refuse_overlaps(runs: Sequence[Path], configs: Sequence[dict[str, Any]]) -> None:
    """Refuse any member fitted on a test person of fold k of the combined run (the first run's folds),
    by subject id and by the content hashes of the first run's cache where it can be read."""
    try:
        manifest = load_cache(configs[0]["cache"]).manifest
        hashes = dict(zip(manifest["scan_id"].astype(str), manifest["content_hash"].astype(str), strict=False))
    except (BrainAgeError, KeyError, TypeError):
        hashes = {}
    for fold in sorted({int(row["fold"]) for row in configs[0].get("folds") or []}):
        tests = read_predictions(fold_folder(runs[0], fold) / "predictions.csv")
        where = load_checkpoint(fold_folder(runs[0], fold) / "model.ckpt").train_data_root or None
        for run, values in zip(runs, configs, strict=False):
            for member in range(members_per_fold(values)):
                path = fold_folder(run, fold, member) / "model.ckpt"
                if path.is_file() and not tests.empty:
                    tested = [hashes.get(scan) for scan in tests["scan_id"]]
                    refuse_overlap(load_checkpoint(path), f"combine: {path}", fold, tests["subject_id"], tested, where)


def _history(run: Path) -> pd.DataFrame:
    """A run's ``metrics.csv`` (empty if it has none), with member 0 where it was written before ensembles existed."""
    history = read_predictions(run / "metrics.csv")
    if not history.empty and "member" not in history:
        history["member"] = 0
    return history


def _start_combined_folder(run_dir: Path, first: dict[str, Any], sources: list[dict[str, Any]]) -> None:
    """Write the combined run's ``config.yaml`` (the first run's, with ``combined_from``), or check that
    the folder holds this same combination."""
    values = {**first, "combined_from": _plain(sources)}
    path = run_dir / "config.yaml"
    if path.is_file():
        existing = yaml.safe_load(path.read_text()) or {}
        if existing.get("combined_from") != values["combined_from"]:
            raise RunFolderError(f"{run_dir} holds another run; choose another --out")
    elif run_dir.is_dir() and any(run_dir.iterdir()):
        raise RunFolderError(f"{run_dir} is not empty and holds no brainage run; choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_yaml(values, path)
