"""Score a ``brainage predict`` CSV on a synthetic cohort against a finished run's truth and folds, per
session (the Demented-minus-Nondemented gap per subject): as predicted, bias-corrected as the run's training did (its method, on the other folds'
controls), and mapped to age by a line fitted on the other folds (age on brain age, all groups; the
recalibration a model trained on that cohort could learn). For instance a model
pre-trained on another cohort, applied to this one without fine-tuning:

    .venv/bin/brainage predict bench-out/oasis2/pretrain/run bench-out/oasis2/cohort \
        --cache bench-out/oasis2/cache-standard-64 --out bench-out/zero-shot.csv
    .venv/bin/python bench/score_predictions.py bench-out/zero-shot.csv bench-out/oasis2/run-standard-64-resnet-r1

The run gives each scan's age, true brain age and fold (its own brain age is printed beside). The
MAE has a subject-level bootstrap 95 % CI (:mod:`brainage.bootstrap`). Prints a table and writes it
as a results file (``bench/results.py``; ``--results``, default beside the predictions CSV);
asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import pandas as pd
import yaml
from results import display, write_results
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import LeaveOneGroupOut, cross_val_predict

from brainage.bootstrap import bootstrap_mae
from brainage.console import print_table
from brainage.evaluation import aggregate_sessions, demented_vs_nondemented, regression_metrics
from brainage.training import TrainConfig, correct_bias


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("predictions", type=Path, help="a brainage predict CSV (scan_id, brain_age)")
    parser.add_argument("run", type=Path, help="a finished run folder on the same cohort (its predictions.csv)")
    parser.add_argument("--results", type=Path, help="results JSON to write (default: PREDICTIONS.results.json beside the CSV)")
    args = parser.parse_args()
    start = time.perf_counter()

    reference = pd.read_csv(args.run / "predictions.csv", dtype={"scan_id": str, "subject_id": str, "session_id": str})
    predicted = pd.read_csv(args.predictions, dtype={"scan_id": str})[["scan_id", "brain_age"]]
    truth = reference.drop(columns=[column for column in reference if column.startswith("brain_age")])
    train = yaml.safe_load((args.run / "config.yaml").read_text())["train"]
    config = dataclasses.replace(TrainConfig.from_dict(train), progress=False)  # the run's own correction and controls
    rows = []
    for name, frame in (
        (str(args.predictions), truth.merge(predicted, on="scan_id")),
        (f"{args.run} (its own out-of-fold brain age)", truth.merge(reference[["scan_id", "brain_age"]], on="scan_id")),
    ):
        frame, _ = correct_bias(frame, pd.DataFrame(), config, None)
        sessions = aggregate_sessions(frame)
        # The ceiling row's line of bench/accuracy.py, fitted on the brain age instead of the truth.
        mapped = cross_val_predict(LinearRegression(), sessions[["brain_age"]], sessions["age"], groups=sessions["fold"], cv=LeaveOneGroupOut())
        frame["brain_age_mapped"] = frame["session_id"].map(pd.Series(mapped, index=sessions["session_id"]))
        sessions["brain_age_mapped"] = mapped
        for how, column in (("as predicted", "brain_age"), ("bias-corrected", "brain_age_corrected"), ("mapped to age out of fold", "brain_age_mapped")):
            metrics = regression_metrics(sessions["age"], sessions[column], sessions["true_brain_age"])
            dementia = demented_vs_nondemented(frame, column)  # per subject over scans, as training does
            mae = bootstrap_mae(sessions, column, "scan")  # one row per session already: resampled by subject
            rows.append({"predictions": name, "how": how, "sessions": metrics["n"], "mae": mae.value, "mae_low": mae.low, "mae_high": mae.high,
                         "mae_true": metrics["mae_true"], "gap_fidelity": metrics["gap_fidelity"], "gap–age r": metrics["gap_age_r"],
                         "D−ND gap": dementia["difference"], "p": f"{dementia['p_value']:.2g}"})  # fmt: skip  # a table row: keys grouped in rows
    title = "Per session, years (MAE with a subject-level bootstrap 95 % CI)"
    print_table(display(rows), title=title)
    path = args.results or args.predictions.with_name(f"{args.predictions.stem}.results.json")
    command = [".venv/bin/python", "bench/score_predictions.py", *sys.argv[1:]]
    print(f"results: {write_results(path, [{'title': title, 'records': rows}], {'score': time.perf_counter() - start}, 'as the predictions', command)}")


if __name__ == "__main__":
    main()
