"""Calibration of what ``brainage predict`` serves, measured on fresh people of the same generator.

A K-fold run's final age-bias correction and conformal interval are fitted on out-of-fold
predictions of single fold networks, while ``predict`` serves the mean of the K networks. This
script takes finished K-fold runs of ``bench/accuracy.py`` and, for each, the prepared cache of
ANOTHER evaluation seed (new people: none of them trained or calibrated any network), predicts
every adequate scan with every fold network, serves their mean, and reports:

- the coverage of the served 90 % interval four ways: split conformal around the served mean with
  its half-width scaled for the mean (what ``predict`` serves, :func:`brainage.conformal.served_interval`,
  the scale fitted on the scans two fold networks never trained on), the same not scaled (what it
  served before), CV+ over the fold networks, and split conformal widened by the networks' SD, each
  with a subject-level bootstrap 95 % CI (:mod:`brainage.bootstrap`);
- the controls' mean bias-corrected gap of the served mean and the slope of that gap on age, each
  with its bootstrap CI (a correction right for the mean leaves both at zero);
- beside them, one fold network alone with split conformal (what the calibration was fitted for),
  and every figure again with the pairs pooled.

Per scan the calibration is the run's own (one residual per session, its first scan, as
``brainage evaluate`` fits it); per session the fold networks' ages are averaged over the
session's repeats and the calibration is one session-mean residual per session. The run folders
and caches are only read. Usage (inference only, a few minutes on CPU)::

    nice -n 10 .venv/bin/python bench/served_calibration.py \\
        --pair bench-out/eval-demo/seed-1/run-standard-64-resnet-demo-settings bench-out/eval-demo/seed-2/cache-standard-64 \\
        --pair bench-out/eval-demo/seed-2/run-standard-64-resnet-demo-settings bench-out/eval-demo/seed-1/cache-standard-64 \\
        --out docs/results/served_calibration-demo-eval-seeds-1-2.json

(``docs/results/served_calibration-demo-eval-seeds-1-2-3.json`` has all six ordered pairs of seeds 1-3.)
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from results import write_results

from brainage.bootstrap import Estimate, cluster_bootstrap
from brainage.checkpoint import load_checkpoint
from brainage.conformal import ConformalInterval, covered, served_interval, session_residuals
from brainage.evaluation import control_mask
from brainage.inference import BrainAgeEnsemble
from brainage.preprocess import load_cache
from brainage.training.evaluate import (
    calibrate_intervals,
    correct_bias,
    read_fold_predictions,
    read_predictions,
    read_run_config,
    run_settings,
    served_pair_differences,
)

#: The served intervals measured (served_interval's methods), then one fold network alone with split conformal.
INTERVALS = {
    "split": "split conformal around the mean, scaled (served)",
    "unscaled": "split conformal around the mean, not scaled",
    "cv+": "CV+ over the fold networks",
    "additive": "split conformal + networks' SD (before CV+)",
    "single": "one fold network alone, split conformal",
}


def member_ages(run: Path, cache_root: Path, batch_size: int = 8) -> tuple[pd.DataFrame, np.ndarray, list[int | None]]:
    """The cache's adequate scans, every fold network's brain age of each ``(scans, members)`` and the members' folds."""
    checkpoints = [load_checkpoint(path) for path in sorted(run.glob("fold_*/model.ckpt"))]
    ensemble = BrainAgeEnsemble(checkpoints).eval()
    cache = load_cache(cache_root)
    manifest = cache.manifest.reset_index(drop=True)
    inadequate = manifest["inadequate"].fillna("").astype(str) if "inadequate" in manifest else pd.Series("", index=manifest.index)
    usable = [i for i, reason in enumerate(inadequate) if not reason.strip()]
    ages = []
    with torch.inference_mode():
        for start in range(0, len(usable), batch_size):
            rows = usable[start : start + batch_size]
            batch = torch.from_numpy(np.stack([np.asarray(cache.volume(i), dtype=np.float32) for i in rows]))[:, None]
            ages.append(ensemble.member_ages(batch).double().numpy())
    return manifest.iloc[usable].reset_index(drop=True), np.concatenate(ages), [checkpoint.fold for checkpoint in checkpoints]


def fold_columns(ages: np.ndarray, folds: list[int | None], order: tuple[int, ...]) -> np.ndarray:
    """``(scans, K)``: each fold's networks averaged, in ``order``."""
    return np.column_stack([ages[:, [j for j, fold in enumerate(folds) if fold == want]].mean(axis=1) for want in order])


def measure(run: Path, cache_root: Path, coverage: float) -> tuple[pd.DataFrame, pd.DataFrame, str | None, str]:
    """Per scan and per session: whether each served interval covers the age (``level, interval,
    subject_id, inside``) and the controls' corrected gap of the served mean (``level, subject_id,
    age, gap``), why the run's final correction gives no corrected brain age (None when it
    does), and the served scales fitted; subject ids are prefixed with the cache's seed folder (seeds reuse ids)."""
    values = read_run_config(run)
    settings = run_settings(run, values, progress=False)
    settings = dataclasses.replace(settings, interval=coverage)
    oof = read_predictions(run / "predictions.csv")
    validation = pd.concat(read_fold_predictions(run, values)[1], ignore_index=True)
    _, corrector = correct_bias(oof, pd.DataFrame(), settings, None)
    _, scan_interval = calibrate_intervals(oof, validation, settings)
    sessions_cal = session_residuals(oof, level="session")
    session_pairs = served_pair_differences(*(_session_means(frame) for frame in (oof, validation)))
    session_interval = ConformalInterval(coverage).fit(sessions_cal["residual"], folds=sessions_cal["fold"].astype(int), pair_differences=session_pairs)
    scans, ages, folds = member_ages(run, cache_root)
    if corrector is None or scan_interval is None:
        raise SystemExit(f"{run}: the run has no bias correction or interval to measure")
    order = scan_interval.folds
    frame = scans[["subject_id", "session_id", "age", "group"]].copy()
    frame[[f"fold_{k}" for k in order]] = fold_columns(ages, folds, order)
    frame["sd"] = ages.std(axis=1)
    covers, control_gaps = [], []
    prefix = f"{cache_root.parent.name}/"
    for level in ("scan", "session"):
        if level == "session":
            numeric = [*(f"fold_{k}" for k in order), "sd", "age"]
            frame = frame.groupby(["subject_id", "session_id"], sort=True).agg({**dict.fromkeys(numeric, "mean"), "group": "first"}).reset_index()
        interval = scan_interval if level == "scan" else session_interval
        fold_ages = frame[[f"fold_{k}" for k in order]].to_numpy(dtype=float)
        served = fold_ages.mean(axis=1)
        if level == "scan":  # served_interval is predict's call: the members' ages and their folds
            bounds = {INTERVALS[method]: served_interval(interval, ages, folds, method=method) for method in ("split", "cv+", "additive")}
        else:  # members of a fold averaged over the session's repeats: that fold's network per session
            spread = frame["sd"].to_numpy(dtype=float)
            bounds = {
                INTERVALS["split"]: interval.interval(served, scale=interval.served_scale_),
                INTERVALS["cv+"]: interval.cv_plus(fold_ages),
                INTERVALS["additive"]: interval.interval(served, spread),
            }
        bounds[INTERVALS["unscaled"]] = interval.interval(served)
        bounds[INTERVALS["single"]] = tuple(np.concatenate(pair) for pair in zip(*(interval.interval(fold_ages[:, j]) for j in range(len(order))), strict=True))
        gap = corrector.transform(served, frame["age"]) - frame["age"].to_numpy(dtype=float)
        controls = control_mask(frame, settings.control_group)[0]
        people = prefix + frame["subject_id"].astype(str)
        control_gaps.append(pd.DataFrame({"level": level, "subject_id": people[controls], "age": frame["age"][controls], "gap": gap[controls]}))
        for name, (lower, upper) in bounds.items():
            repeat = len(lower) // len(frame)  # the single networks: every scan once per fold network
            truth = np.tile(frame["age"].to_numpy(dtype=float), repeat)
            inside = covered(lower, upper, truth).astype(float)
            covers.append(
                pd.DataFrame({"level": level, "interval": name, "subject_id": np.tile(people.to_numpy(), repeat), "inside": inside, "width": upper - lower})
            )
    scales = (
        f"served scale {scan_interval.served_scale_:.3f} per scan ({scan_interval.served_pairs_} pairs of networks), "
        f"{session_interval.served_scale_:.3f} per session ({session_interval.served_pairs_})"
    )
    return pd.concat(covers, ignore_index=True), pd.concat(control_gaps, ignore_index=True), corrector.refused_, scales


def _session_means(frame: pd.DataFrame) -> pd.DataFrame:
    """Each fold's brain age per session (its repeats averaged), keyed as ``scan_id`` for :func:`served_pair_differences`."""
    means = frame.groupby(["subject_id", "session_id", "fold"], sort=True)["brain_age"].mean().reset_index()
    return means.assign(scan_id=means["subject_id"].astype(str) + "/" + means["session_id"].astype(str))


def records(covers: pd.DataFrame, control_gaps: pd.DataFrame, runs: str) -> list[dict[str, Any]]:
    """One record per level and interval: coverage, median width and the controls' corrected gap and its slope on age, with bootstrap CIs."""
    out = []
    control_gaps = control_gaps.dropna(subset=["gap"])  # a run whose correction was refused gives no corrected gap
    for level in covers["level"].unique():
        gaps = control_gaps[control_gaps["level"] == level]
        mean_gap = slope = Estimate(float("nan"), float("nan"), float("nan"))
        if len(gaps):
            mean_gap = cluster_bootstrap(gaps[["subject_id", "gap"]], lambda a: float(np.mean(a["gap"])))
            slope = cluster_bootstrap(
                gaps[["subject_id", "age", "gap"]], lambda a: float(np.polyfit(a["age"], a["gap"], 1)[0]) if np.ptp(a["age"]) > 0 else float("nan")
            )
        for name, rows in covers[covers["level"] == level].groupby("interval", sort=False):
            share = cluster_bootstrap(rows[["subject_id", "inside"]], lambda a: float(np.mean(a["inside"])))
            out.append(
                {
                    "runs": runs, "level": level, "interval": name, "n": len(rows), "coverage": share.value, "coverage_low": share.low,
                    "coverage_high": share.high, "median_width": float(np.median(rows["width"])), "control_gap": mean_gap.value,
                    "control_gap_low": mean_gap.low, "control_gap_high": mean_gap.high, "control_gap_slope": slope.value,
                    "control_gap_slope_low": slope.low, "control_gap_slope_high": slope.high,
                }
            )  # fmt: skip  # one record's fields grouped by meaning
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", nargs=2, action="append", metavar=("RUN", "CACHE"), required=True, help="a finished K-fold run and a cache of other people")
    parser.add_argument("--coverage", type=float, default=0.9, help="nominal coverage of the served interval")
    parser.add_argument("--out", type=Path, default=None, help="results file to write (bench/results.py)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    measured, refused, scales = [], set(), {}
    for run, cache in args.pair:
        covers, gaps, reason, scaled = measure(Path(run), Path(cache), args.coverage)
        measured.append((f"{Path(run).parent.name} on {Path(cache).parent.name}", covers, gaps))
        scales[f"{Path(run).parent.name}'s run"] = scaled
        if reason:
            refused.add(f"{Path(run).parent.name}'s run: {reason}")
    rows = [record for label, covers, gaps in measured for record in records(covers, gaps, label)]
    if len(measured) > 1:
        pooled = pd.concat([covers for _, covers, _ in measured]), pd.concat([gaps for _, _, gaps in measured])
        rows += records(*pooled, "pooled: " + ", ".join(label for label, _, _ in measured))
    wall = time.perf_counter() - start
    with pd.option_context("display.width", 250, "display.max_columns", 30, "display.max_colwidth", 45):
        print(pd.DataFrame(rows).round(3).to_string(index=False))
    if args.out:
        notes = [
            f"nominal coverage {args.coverage:.0%}; target: within ±2 points, and the controls' mean corrected gap within ±0.2 y",
            "each run predicts the cache of another evaluation seed (new people); 95 % CIs by subject-level bootstrap",
            "the single-network row counts every scan once per fold network (n: scans × networks)",
            *(f"{name}: {scaled}" for name, scaled in scales.items()),
            *(f"{line}: no corrected brain age, so no control gap in its rows; the pooled gap is over the other runs" for line in sorted(refused)),
        ]
        tables: list[Mapping[str, Any]] = [{"title": "served calibration (K-fold mean) on fresh people", "records": rows, "notes": notes}]
        write_results(args.out, tables, {"predict_and_measure": wall}, "fp32", argv=[sys.executable, *sys.argv] if argv is None else argv)


if __name__ == "__main__":
    main()
