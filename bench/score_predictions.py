"""Score a ``brainage predict`` CSV on a synthetic cohort against a finished run's truth and folds, per
session (the Demented-minus-Nondemented gap per subject): as predicted, bias-corrected as the run's training did (its method, on the other folds'
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
import dataclasses
from pathlib import Path

import pandas as pd
import yaml
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import LeaveOneGroupOut, cross_val_predict

from brainage.console import print_table
from brainage.evaluation import aggregate_sessions, demented_vs_nondemented, regression_metrics
from brainage.training import TrainConfig, correct_bias


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("predictions", type=Path, help="a brainage predict CSV (scan_id, brain_age)")
    parser.add_argument("run", type=Path, help="a finished run folder on the same cohort (its predictions.csv)")
    args = parser.parse_args()

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
            rows.append({"predictions": name, "how": how, "sessions": metrics["n"], "MAE": metrics["mae"], "MAE true": metrics["mae_true"],
                         "gap fidelity": metrics["gap_fidelity"], "gap–age r": metrics["gap_age_r"],
                         "D−ND gap": dementia["difference"], "p": f"{dementia['p_value']:.2g}"})  # fmt: skip
    print_table(pd.DataFrame(rows), title="Per session, years")


if __name__ == "__main__":
    main()
