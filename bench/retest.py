"""Test–retest of the served predictor with preprocessing inside it (issue 26, point 5).

A trained run predicts a cohort of other people (a fresh seed of the same generator) twice: from a
cache prepared with session reuse (every repeat of a session aligned to its first scan, as
``prepare`` does by default) and from one prepared with ``--no-session-reuse`` (every repeat
skull-stripped and registered on its own), so the repeats' spread holds the preprocessing's own
variability. Per cache: the within-session SD and ICC(2,1)/ICC(3,1) with 95 % intervals
(:mod:`brainage.retest`) of brain age, of the gap (brain age − age) and of the bias-corrected gap.

    .venv/bin/python bench/retest.py --run bench-out/eval-demo/seed-1/run-standard-64-resnet-demo-settings \\
        --cohort bench-out/eval-demo/seed-2/cohort --reuse-cache bench-out/eval-demo/seed-2/cache-standard-64 \\
        --out bench-out/retest-demo --label demo-run-seed-1-cohort-seed-2

The run must not have trained on the cohort's people (a fresh seed: new people); the no-reuse cache
is prepared in ``--out`` (resumable). Writes ``docs/results/retest-LABEL.json`` (``bench/results.py``).
Asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import pandas as pd
from results import ROOT, display, write_results

from brainage.console import console, print_table
from brainage.predict import BrainAgeModel
from brainage.preprocess import load_cache, prepare
from brainage.retest import ReliabilityResult, gap_retest, test_retest


def _figures(predictions: pd.DataFrame, preparation: str) -> list[dict[str, object]]:
    """One record per quantity: the test–retest values of brain age, its gap and the corrected gap."""
    results: list[tuple[str, ReliabilityResult]] = [
        ("brain age", test_retest(predictions, "brain_age")),
        ("gap (brain age − age)", gap_retest(predictions, "brain_age")),
    ]
    if "brain_age_corrected" in predictions and predictions["brain_age_corrected"].notna().any():
        results.append(("bias-corrected gap", gap_retest(predictions, "brain_age_corrected")))
    records = []
    for quantity, result in results:
        record: dict[str, object] = {"preparation": preparation, "quantity": quantity}
        record.update(result.values if result.available else {"note": result.reason})
        if result.available and result.reason:
            record["note"] = result.reason
        records.append(record)
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a trained run folder (K-fold: the K-model mean is served)")
    parser.add_argument("--cohort", type=Path, required=True, help="a cohort of people the run never saw, with repeat scans per session")
    parser.add_argument("--reuse-cache", type=Path, default=None, help="that cohort already prepared with session reuse (else prepared in --out)")
    parser.add_argument("--out", type=Path, required=True, help="working folder for the caches (reused)")
    parser.add_argument("--label", required=True, help="LABEL of docs/results/retest-LABEL.json")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="processes for preparation")
    args = parser.parse_args()
    for path in (args.run, args.cohort, *([args.reuse_cache] if args.reuse_cache else [])):
        if not path.exists():
            raise SystemExit(f"{path}: does not exist")
    model = BrainAgeModel.load(args.run)
    seconds: dict[str, float] = {}
    caches = {}
    for preparation, reuse in (("session reuse", True), ("no session reuse", False)):
        given = args.reuse_cache if reuse else None
        path = given or args.out / ("cache-reuse" if reuse else "cache-no-reuse")
        if given is None:
            start = time.perf_counter()
            prepare(args.cohort, path, dataclasses.replace(model.config, session_reuse=reuse), workers=args.workers)
            seconds[f"prepare ({preparation})"] = time.perf_counter() - start
        caches[preparation] = load_cache(path)
        if caches[preparation].config.session_reuse != reuse:
            raise SystemExit(f"{path}: prepared with session_reuse={caches[preparation].config.session_reuse}, expected {reuse}")
    records = []
    for preparation, cache in caches.items():
        start = time.perf_counter()
        predictions = model.predict(cache.manifest, cache=cache.root, workers=args.workers)
        seconds[f"predict ({preparation})"] = time.perf_counter() - start
        records += _figures(predictions, preparation)
    title = "Test–retest of the served predictor on people it never saw: repeats of a session, years"
    notes = [f"run: {args.run}", f"cohort: {args.cohort}", "ICCs with their 95 % intervals (pingouin); within-session SD pooled over sessions"]
    print_table(display(records), title=title)
    path = write_results(ROOT / "docs" / "results" / f"retest-{args.label}.json", [{"title": title, "records": records, "notes": notes}], seconds, "", sys.argv)
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
