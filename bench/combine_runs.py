"""Averaging finished K-fold runs on the same folds: the out-of-fold brain age of each scan is the mean
of the runs' (each run weighing the same, whatever its ``ensemble``), then bias-corrected by
:func:`brainage.training.correct_bias` with the first run's settings, as training did (fold k with a
fit on the other folds' controls).
Prints one table per session (repeats averaged): each run and their average, uncorrected and
corrected, with MAE against age and against the true brain age, gap fidelity and the
Demented-minus-Nondemented gap per subject. Asserts nothing.

    .venv/bin/python bench/combine_runs.py RUN_DIR RUN_DIR [...]

The runs must have tested the same scans in the same folds (the same cache, seed and ``folds``),
which is checked.
"""

from __future__ import annotations

import argparse
import dataclasses
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from brainage.console import print_table
from brainage.evaluation import demented_vs_nondemented, summarize_predictions
from brainage.training import correct_bias, load_config
from brainage.training.run import IDS


def _row(name: str, predictions: pd.DataFrame, column: str) -> dict[str, object]:
    session = summarize_predictions(predictions, column).iloc[1]
    test = demented_vs_nondemented(predictions, column)
    return {"predictor": name, "MAE": session["mae"], "MAE true": session["mae_true"], "gap fidelity": session["gap_fidelity"],
            "D−ND gap": test["difference"], "p": f"{test['p_value']:.2g}"}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished run folders (their predictions.csv)")
    args = parser.parse_args()
    frames = [pd.read_csv(run / "predictions.csv", dtype=IDS).sort_values("scan_id", ignore_index=True) for run in args.runs]
    for run, frame in zip(args.runs[1:], frames[1:]):
        if not frame[["scan_id", "fold"]].equals(frames[0][["scan_id", "fold"]]):
            parser.error(f"{run} tested other scans or folds than {args.runs[0]}")
    config = dataclasses.replace(load_config(args.runs[0] / "config.yaml"), progress=False)
    average = frames[0].copy()
    average["brain_age"] = np.mean([frame["brain_age"].to_numpy(dtype=float) for frame in frames], axis=0)
    rows = []
    for name, frame in [*((run.name, frame) for run, frame in zip(args.runs, frames)), (f"average of the {len(frames)} runs", average)]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a refused fit leaves NaN, which the table shows
            frame, _ = correct_bias(frame, pd.DataFrame(), config, None)
        rows += [_row(name, frame, "brain_age"), _row(f"{name}, bias-corrected", frame, "brain_age_corrected")]
    print_table(pd.DataFrame(rows), title="Out-of-fold accuracy per session, years")


if __name__ == "__main__":
    main()
