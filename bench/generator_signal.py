"""How readable ageing is in a synthetic cohort, before any network: the generator's own ground truth.

A network can only learn brain age from a cohort whose images carry it. For each ``--cohort`` (a
``brainage synth`` folder; with ``--cache``, its prepared cache) and, in a ``v2`` cohort, each base
head, this script reports from ``ground_truth.csv``: the correlation of the true brain age with age,
of the normalised whole-brain volume (nWBV) and of the ventricles' share of the intracranial volume
with the true brain age, the nWBV's mean and SD and the ventricles' coefficient of variation; and,
with a cache, the project's tuned voxel ridge (:func:`brainage.baselines.tuned_voxel_baseline`, its
hyper-parameters by an inner subject-grouped CV) out of fold over 5 subject-grouped folds: r of its
prediction with age and with the true brain age. A generator whose volumes follow the true brain
age only loosely, or whose base heads differ by decades of ageing, gives a network little to learn.
Reads only; seconds per cohort::

    .venv/bin/python bench/generator_signal.py \\
        --cohort bench-out/eval-demo/seed-1/cohort --cache bench-out/eval-demo/seed-1/cache-standard-64 \\
        --cohort bench-out/transfer/cohort --cache bench-out/transfer/cache-32 \\
        --results docs/results/generator_signal-demo-vs-population.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from results import write_results
from sklearn.model_selection import GroupKFold

from brainage.baselines import cache_features, inner_cv, tuned_voxel_baseline
from brainage.cohort.truth import true_brain_ages
from brainage.preprocess import load_cache

OUTER_FOLDS = 5


def _r(x: pd.Series | np.ndarray, y: pd.Series | np.ndarray) -> float:
    return float(np.corrcoef(np.asarray(x, dtype=float), np.asarray(y, dtype=float))[0, 1])


def volumes(truth: pd.DataFrame) -> dict[str, Any]:
    """The ground truth's ageing measures of one group of scans."""
    share = truth["ventricles_cm3"] / truth["icv_cm3"]
    return {
        "scans": len(truth),
        "r(true brain age, age)": _r(truth["brain_age"], truth["age"]),
        "r(nWBV, true brain age)": _r(truth["nwbv"], truth["brain_age"]),
        "r(ventricle share, true brain age)": _r(share, truth["brain_age"]),
        "nWBV mean": float(truth["nwbv"].mean()),
        "nWBV SD": float(truth["nwbv"].std()),
        "ventricles CV": float(truth["ventricles_cm3"].std() / truth["ventricles_cm3"].mean()),
    }


def ridge(cache_root: Path) -> dict[str, float]:
    """The tuned voxel ridge out of fold on ``cache_root``: r with age and with the true brain age."""
    cache = load_cache(cache_root)
    manifest = cache.manifest
    ages = manifest["age"].to_numpy(dtype=float)
    truth = np.asarray(true_brain_ages(manifest["path"]), dtype=float)
    subjects = manifest["subject_id"].astype(str).to_numpy()
    features = cache_features(cache, max(1, round(min(cache.shape) / 16)))
    predicted = np.full(len(manifest), np.nan)
    for fit, test in GroupKFold(OUTER_FOLDS).split(features, ages, subjects):
        with tempfile.TemporaryDirectory(prefix="brainage-signal-") as memory:  # the inner CV's PCA fits, as in training
            model = tuned_voxel_baseline(inner_cv(subjects[fit]), memory=memory).fit(features[fit], ages[fit], groups=subjects[fit])
            predicted[test] = model.predict(features[test])
    return {"ridge r(prediction, age)": _r(predicted, ages), "ridge r(prediction, true brain age)": _r(predicted, truth)}


def measure(cohort: Path, cache: Path | None) -> list[dict[str, Any]]:
    """One row for the whole cohort (with the ridge where a cache is given), then one per base head of a ``v2`` cohort."""
    truth = pd.read_csv(cohort / "ground_truth.csv")
    summary = json.loads((cohort / "cohort.json").read_text())
    generator = str(summary.get("generator", "v1"))
    name = str((summary.get("preset") or {}).get("name", cohort.name))
    rows = [{"cohort": name, "generator": generator, "head": "all", **volumes(truth), **(ridge(cache) if cache else {})}]
    if "head" in truth:
        rows += [{"cohort": name, "generator": generator, "head": str(head), **volumes(group)} for head, group in truth.groupby("head", sort=True)]
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cohort", type=Path, action="append", required=True, help="a brainage synth folder (repeatable)")
    parser.add_argument("--cache", type=Path, action="append", default=[], help="its prepared cache, in --cohort order (optional)")
    parser.add_argument("--results", type=Path, default=None, help="results file to write (bench/results.py)")
    args = parser.parse_args(argv)
    if args.cache and len(args.cache) != len(args.cohort):
        parser.error("give one --cache per --cohort, or none")
    start = time.perf_counter()
    rows = [row for index, cohort in enumerate(args.cohort) for row in measure(cohort, args.cache[index] if args.cache else None)]
    wall = time.perf_counter() - start
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        print(pd.DataFrame(rows).round(3).to_string(index=False))
    if args.results:
        notes = [
            "from each cohort's ground_truth.csv (every scan); nWBV: brain / intracranial volume; ventricles CV: SD / mean of their volume",
            f"ridge: brainage.baselines.tuned_voxel_baseline out of fold over {OUTER_FOLDS} subject-grouped folds, on the whole cohort's cache",
        ]
        tables = [{"title": "ageing in the generator's ground truth, and a tuned voxel ridge on its prepared scans", "records": rows, "notes": notes}]
        write_results(args.results, tables, {"measure": wall}, "", argv=[sys.executable, *sys.argv] if argv is None else argv)


if __name__ == "__main__":
    main()
