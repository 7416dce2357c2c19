"""Score a ``brainage predict`` CSV on a synthetic cohort against a finished run's truth and folds, per
session (the Demented-minus-Nondemented gap per subject): as predicted, bias-corrected as training does (residual, fitted on the other folds'
controls), and mapped to age by a line fitted on the other folds (age on brain age, all groups; the
recalibration a model trained on that cohort could learn). For instance a model
pre-trained on another cohort, applied to this one without fine-tuning:

    .venv/bin/brainage predict bench-out/oasis2/pretrain/run bench-out/oasis2/cohort \
        --cache bench-out/oasis2/cache-standard-64 --out bench-out/zero-shot.csv
    .venv/bin/python bench/score_predictions.py bench-out/zero-shot.csv bench-out/oasis2/run-standard-64-resnet-r1

The run gives each scan's age, true brain age and fold (its own brain age is printed beside).
Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from brainage.console import print_table
from brainage.evaluation import aggregate_sessions, demented_vs_nondemented, fit_bias_correction, regression_metrics


def _corrected(sessions: pd.DataFrame) -> np.ndarray:
    """Each fold's brain age bias-corrected on the other folds' control sessions."""
    corrected = np.empty(len(sessions))
    for fold in sessions["fold"].unique():
        test = (sessions["fold"] == fold).to_numpy()
        corrector = fit_bias_correction(sessions[~test])
        corrected[test] = corrector.transform(sessions.loc[test, "brain_age"], sessions.loc[test, "age"])
    return corrected


def _recalibrated(sessions: pd.DataFrame) -> np.ndarray:
    """Each fold's brain age mapped to age by a line fitted on the other folds' sessions."""
    mapped = np.empty(len(sessions))
    for fold in sessions["fold"].unique():
        test = (sessions["fold"] == fold).to_numpy()
        slope, intercept = np.polyfit(sessions.loc[~test, "brain_age"], sessions.loc[~test, "age"], 1)
        mapped[test] = slope * sessions.loc[test, "brain_age"] + intercept
    return mapped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("predictions", type=Path, help="a brainage predict CSV (scan_id, brain_age)")
    parser.add_argument("run", type=Path, help="a finished run folder on the same cohort (its predictions.csv)")
    args = parser.parse_args()

    reference = pd.read_csv(args.run / "predictions.csv", dtype={"scan_id": str, "subject_id": str, "session_id": str})
    predicted = pd.read_csv(args.predictions, dtype={"scan_id": str})[["scan_id", "brain_age"]]
    truth = reference.drop(columns=[column for column in reference if column.startswith("brain_age")])
    rows = []
    for name, frame in ((str(args.predictions), truth.merge(predicted, on="scan_id")), (f"{args.run} (its own out-of-fold brain age)", reference)):
        sessions = aggregate_sessions(frame)
        ways = {"as predicted": sessions["brain_age"], "bias-corrected": _corrected(sessions), "mapped to age out of fold": _recalibrated(sessions)}
        for how, values in ways.items():
            metrics = regression_metrics(sessions["age"], values, sessions["true_brain_age"])
            by_session = pd.Series(np.asarray(values), index=sessions["session_id"])  # per subject over scans, as training does
            dementia = demented_vs_nondemented(frame.assign(brain_age=frame["session_id"].map(by_session)))
            rows.append({"predictions": name, "how": how, "sessions": metrics["n"], "MAE": metrics["mae"], "MAE true": metrics["mae_true"],
                         "gap fidelity": metrics["gap_fidelity"], "gap–age r": metrics["gap_age_r"],
                         "D−ND gap": dementia["difference"], "p": f"{dementia['p_value']:.2g}"})  # fmt: skip
    print_table(pd.DataFrame(rows), title="Per session, years")


if __name__ == "__main__":
    main()
