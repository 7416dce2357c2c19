"""Accuracy on the synthetic ``demo`` cohort, in one run: the baselines, the tutorial's recipe
(``seed`` model on the ``seed`` pipeline) and the default model on the ``standard`` pipeline, all on
the very same subject-grouped folds, beside the MAE of the cohort's true brain age.

    .venv/bin/python bench/accuracy.py --out bench-out/accuracy [--folds 5] [--epochs 50] [--seed-epochs 8] [--side 64]

Every step is resumable: the cohort, both caches and both runs are reused when they are already in
``--out`` with the same settings, so a second run only prints the table. The true brain age's MAE is
the mean |brain age − age| of the cohort's hidden ground truth (a perfect brain reader; not a floor).

The tutorial's network is slow on a CPU (about 5 s per 64³ scan forward and backward on 2 cores:
some 9 minutes per epoch of one fold of the demo cohort), so its recipe runs ``--seed-epochs``
(default 8, of the tutorial's 50) and the table says how many epochs each network ran; with
``--folds 5`` that is five times as long as with ``--folds 0`` (one 20 % hold-out).
``--seed-epochs 0`` leaves the recipe out. ``--side`` resamples both pipelines to another grid
over the same field of view (32 is 8× cheaper to train than the default 64). Prints a table;
asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import pandas as pd

from brainage.cohort import SUMMARY, get_preset, synthesize
from brainage.console import console, print_table
from brainage.preprocess import make_config, prepare
from brainage.training import BASELINES, TUTORIAL_RECIPE, TrainConfig, TrainResult, train


def _cohort(root: Path, preset: str, seed: int, workers: int) -> dict:
    if not (root / SUMMARY).is_file():
        synthesize(root, get_preset(preset), seed=seed, workers=workers)
    return json.loads((root / SUMMARY).read_text())


def _rows(result: TrainResult, label: str, pipeline: str, baselines: list[str]) -> list[dict[str, object]]:
    """Scan- and session-level MAE of the network (uncorrected) and of the named baselines."""
    summary = result.summary[result.summary["correction"] == "none"]
    names = {result.summary["model"].iloc[0]: label, **{name: f"baseline: {name}" for name in baselines}}
    rows = []
    for model, name in names.items():
        table = summary[summary["model"] == model].set_index("level")
        if not table.empty:
            rows.append({
                "predictor": name, "pipeline": pipeline, "n": int(table.loc["scan", "n"]),
                "MAE scan": table.loc["scan", "mae"], "MAE session": table.loc["session", "mae"],
                "r": table.loc["scan", "r"], "gap–age r": table.loc["scan", "gap_age_r"],
            })
    return rows


def main() -> None:
    default = TrainConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-out/accuracy"), help="working folder (reused)")
    parser.add_argument("--preset", default="demo", help="synthetic cohort preset")
    parser.add_argument("--seed", type=int, default=0, help="seed of the cohort and of the splits")
    parser.add_argument("--folds", type=int, default=5, help="K-fold by subject (0: one 20 %% hold-out)")
    parser.add_argument("--model", default=default.model, help="the default model to compare with the recipe")
    parser.add_argument("--epochs", type=int, default=default.epochs, help="maximum epochs of the default model")
    parser.add_argument("--seed-epochs", type=int, default=8, help="maximum epochs of the tutorial's recipe (it had 50)")
    parser.add_argument("--side", type=int, default=64, help="grid side of both pipelines (same field of view)")
    parser.add_argument("--workers", type=int, default=2, help="processes for synthesis and preparation")
    args = parser.parse_args()

    clock = time.perf_counter()
    summary = _cohort(args.out / "cohort", args.preset, args.seed, args.workers)
    console.print(f"cohort {args.preset}: {time.perf_counter() - clock:.0f} s")
    folds = {"folds": args.folds or None, "seed": args.seed, "progress": True}
    runs = {
        "seed": ("tutorial recipe", dataclasses.replace(TUTORIAL_RECIPE, epochs=args.seed_epochs, **folds)),
        "standard": ("default", dataclasses.replace(default, model=args.model, epochs=args.epochs, **folds)
                     if args.model == default.model else TrainConfig(model=args.model, epochs=args.epochs, **folds)),
    }
    if args.seed_epochs == 0:
        del runs["seed"]
    # The voxel ridge depends on the pipeline; the mean and tabular baselines do not (same folds).
    baselines = {"seed": [BASELINES["ridge_voxels"]], "standard": list(BASELINES.values())}
    rows, seconds = [], {}
    for pipeline, (role, config) in runs.items():
        grid = make_config(pipeline)
        grid = make_config(pipeline, shape=(args.side,) * 3, voxel_size=grid.voxel_size * grid.shape[0] / args.side)
        cache = args.out / f"cache-{pipeline}-{args.side}"
        start = time.perf_counter()
        report = prepare(args.out / "cohort", cache, grid, workers=args.workers)
        seconds[f"prepare {pipeline}"] = time.perf_counter() - start
        start = time.perf_counter()
        result = train(cache, args.out / f"run-{pipeline}-{args.side}-{config.model}", config)
        seconds[f"train {config.model} ({pipeline})"] = time.perf_counter() - start
        note = f"; {len(report.problems)} scan(s) failed to prepare" if report.problems else ""
        epochs = result.history.groupby("fold").size()
        ran = f"{epochs.min()}" if epochs.min() == epochs.max() else f"{epochs.min()}–{epochs.max()}"
        rows += _rows(result, f"{config.model} ({role}, {ran} epochs{note})", pipeline, baselines[pipeline])
    best = summary["true_brain_age_mae"]
    rows.append({"predictor": "true brain age (a perfect brain reader)", "pipeline": "–", "n": None,
                 "MAE scan": best["scan"], "MAE session": best["session"], "r": None, "gap–age r": None})
    table = pd.DataFrame(rows)
    split = f"{args.folds}-fold" if args.folds else "20 % hold-out"
    print_table(table, title=f"Out-of-fold accuracy on the {args.preset} cohort ({split} by subject, seed {args.seed}, {args.side}³), years")
    mae = table.set_index("predictor")["MAE scan"]
    default_mae = mae[next(name for name in mae.index if "(default" in name)]
    mean_mae = mae[f"baseline: {BASELINES['mean_age']}"]
    console.print(f"default model: {default_mae:.2f} y, {default_mae / mean_mae:.2f} × the mean baseline's MAE ({mean_mae:.2f} y)")
    recipe = [name for name in mae.index if "(tutorial recipe" in name]
    if recipe:
        console.print(f"default model − tutorial recipe: {default_mae - mae[recipe[0]]:+.2f} y")
    print_table([{"step": step, "seconds": value} for step, value in seconds.items()], title="Time (seconds; small when reused)", floatfmt="{:.0f}")


if __name__ == "__main__":
    main()
