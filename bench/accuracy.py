"""Accuracy on a synthetic cohort (``--preset demo``, or ``oasis2`` at full size), in one run: the
baselines, the tutorial's recipe (``seed`` model on the ``seed`` pipeline) and the default model on
the ``standard`` pipeline, all on the very same subject-grouped folds, beside the cohort's true
brain age. One table, per session (repeats averaged): MAE against age and against the true brain
age, gap fidelity, the bias-corrected MAE against both and the Demented-minus-Nondemented gap per subject.

    .venv/bin/python bench/accuracy.py --out bench-out/accuracy [--preset demo|oasis2] [--folds 5] [--epochs 50] [--seed-epochs 8] [--side 64]
    .venv/bin/python bench/accuracy.py --out bench-out/oasis2 --preset oasis2 --repeats-per-session 1 --seed-side 32   # full size on a CPU

Every step is resumable: the cohort, both caches and both runs are reused when they are already in
``--out`` with the same settings (a killed synthesis, preparation or fold continues where it
stopped), so a second run only prints the table. ``--pretrain pretrain`` first trains the default
model on another synthetic cohort of that preset (1000 other people, cohort seed ``--seed`` + 7, the
same preparation and grid; ``brainage train``'s defaults but for ``--pretrain-set FIELD=VALUE``,
one 20 % hold-out) in ``--out/pretrain`` (``--out/pretrain-N`` with ``--pretrain-people N``)
and fine-tunes every fold from it (``--init``), all in the same resumable command. The true brain age row uses the cohort's hidden
ground truth as a prediction on the same sessions (a perfect brain reader; not a floor). The ceiling
row maps that truth to age with a line fitted on the other folds: the anatomy of the synthetic
cohort changes with brain age alone, so this is about the lowest MAE against age that any model of
the images can reach, and its MAE against the true brain age shows how far a good age predictor
must sit from the truth before bias correction.

The tutorial's network is slow on a CPU (about 5 s per 64³ scan forward and backward on 2 cores:
some 9 minutes per epoch of one fold of the demo cohort), so its recipe runs ``--seed-epochs``
(default 8, of the tutorial's 50) and the table says how many epochs each network ran; with
``--folds 5`` that is five times as long as with ``--folds 0`` (one 20 % hold-out).
``--seed-epochs 0`` leaves the recipe out. ``--side`` resamples both pipelines to another grid
over the same field of view (32 is 8× cheaper to train than the default 64); ``--seed-side``
resamples the recipe's alone (the table names each grid). ``--repeats-per-session 1`` trains the
default model on one random repeat of each session per epoch (``TrainConfig.repeats_per_session``;
OASIS-2 has 3–4); ``--schedule cosine`` trains it with a cosine decay over all ``--epochs`` (no early
stop; the best validation epoch is kept); ``--init RUN`` fine-tunes it from a trained run (for
instance one trained on the ``pretrain`` preset); ``--set FIELD=VALUE`` sets any other field of
its :class:`~brainage.training.TrainConfig` (``--set lr=2e-4 ema_decay=0.995``). Prints a table;
asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import LeaveOneGroupOut, cross_val_predict

from brainage.cohort import SUMMARY, Preset, get_preset, synthesize
from brainage.console import console, print_table
from brainage.evaluation import aggregate_sessions
from brainage.preprocess import PipelineConfig, make_config, prepare
from brainage.training import TUTORIAL_RECIPE, TrainConfig, TrainResult, train
from brainage.training.run import BASELINES


def _cohort(root: Path, preset: Preset, seed: int, workers: int) -> dict:
    if not (root / SUMMARY).is_file():
        synthesize(root, preset, seed=seed, workers=workers)
    return json.loads((root / SUMMARY).read_text())


def _resized(preset: Preset, people: int) -> Preset:
    """``preset`` (one session of one scan each) with ``people`` people, in the same share of dementia."""
    if preset.converted or preset.n_sessions != preset.n_subjects or preset.n_scans != preset.n_subjects:
        raise SystemExit(f"--pretrain-people resizes a preset of one scan per person; {preset.name} is not one")
    demented = round(people * preset.demented / preset.n_subjects)
    return dataclasses.replace(preset, nondemented=people - demented, demented=demented, visits=((1, people),), repeats=((1, people),))


def _grid(pipeline: str, side: int) -> PipelineConfig:
    """``pipeline`` resampled to a ``side``³ grid over its own field of view."""
    grid = make_config(pipeline)
    return make_config(pipeline, shape=(side,) * 3, voxel_size=grid.voxel_size * grid.shape[0] / side)


def _settings(items: list[str]) -> dict[str, object]:
    """``FIELD=VALUE`` items as TrainConfig fields (values read as YAML)."""
    return {field: yaml.safe_load(value) for field, value in (item.split("=", 1) for item in items)}


def _pretrained(root: Path, preset: Preset, seed: int, side: int, workers: int, settings: list[str], name: str) -> Path:
    """The run folder ``root/name`` of the default model trained on a synthetic ``preset`` cohort
    under ``root`` (cohort, ``standard`` cache on the ``side``³ grid, one 20 % hold-out;
    TrainConfig's defaults but for ``settings``), made or reused."""
    _cohort(root / "cohort", preset, seed, workers)
    prepare(root / "cohort", root / f"cache-standard-{side}", _grid("standard", side), workers=workers)
    train(root / f"cache-standard-{side}", root / name, TrainConfig(**_settings(settings)))
    return root / name


def _p(value: float | None) -> str | None:
    return None if value is None or value != value else f"{value:.2g}"


def _rows(result: TrainResult, label: str, pipeline: str, baselines: list[str], suffix: str = "") -> list[dict[str, object]]:
    """Session-level (repeats averaged) rows of the network and of the named baselines (``suffix``
    appended to their names): MAE against age and against the true brain age, gap fidelity, the
    network's bias-corrected MAE against both, and the Demented-minus-Nondemented gap per subject
    with its p value (bias-corrected where a correction was fitted)."""
    sessions = result.summary[result.summary["level"] == "session"]
    network = sessions["model"].iloc[0]
    corrected = sessions[(sessions["model"] == network) & (sessions["correction"] != "none")]
    rows = []
    for model, name in {network: label, **{name: f"baseline: {name}{suffix}" for name in baselines}}.items():
        row = sessions[(sessions["model"] == model) & (sessions["correction"] == "none")]
        if row.empty:
            continue
        row = row.iloc[0]
        fitted = model == network and len(corrected)
        gap = corrected.iloc[0] if fitted else row
        rows.append({
            "predictor": name, "pipeline": pipeline, "sessions": int(row["n"]), "MAE": row["mae"], "MAE true": row["mae_true"],
            "gap fidelity": row["gap_fidelity"], "MAE corrected": gap["mae"] if fitted else None,
            "MAE true corrected": gap["mae_true"] if fitted else None, "D−ND gap": gap["dementia_gap"], "p": _p(gap["dementia_p"]),
        })  # fmt: skip
    return rows


def _truth_row(result: TrainResult) -> dict[str, object]:
    """The true brain age used as a prediction, on the very sessions of the run."""
    sessions = result.summary[result.summary["level"] == "session"]
    row = sessions[sessions["model"].str.startswith("true brain age")].iloc[0]
    return {"predictor": row["model"], "pipeline": "–", "sessions": int(row["n"]), "MAE": row["mae"], "MAE true": 0.0,
            "gap fidelity": 1.0, "MAE corrected": None, "MAE true corrected": None, "D−ND gap": row["dementia_gap"], "p": _p(row["dementia_p"])}  # fmt: skip


def _ceiling_row(result: TrainResult) -> dict[str, object] | None:
    """Age predicted from the true brain age by a straight line fitted on the other folds' sessions:
    the synthetic anatomy carries brain age alone, so no reader of the images can do much better
    against age (a nonlinear map gains little); None without folds or truth."""
    predictions = result.predictions.dropna(subset=["true_brain_age"])
    if "fold" not in predictions or predictions["fold"].nunique() < 2:
        return None
    sessions = aggregate_sessions(predictions)
    predicted = cross_val_predict(LinearRegression(), sessions[["true_brain_age"]], sessions["age"], groups=sessions["fold"], cv=LeaveOneGroupOut())
    return {"predictor": "ceiling: age from the true brain age (line fitted out of fold)", "pipeline": "–", "sessions": len(sessions),
            "MAE": float(np.abs(predicted - sessions["age"]).mean()), "MAE true": float(np.abs(predicted - sessions["true_brain_age"]).mean()),
            "gap fidelity": 1.0, "MAE corrected": None, "MAE true corrected": None, "D−ND gap": None, "p": None}  # fmt: skip


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
    parser.add_argument("--seed-side", type=int, help="grid side of the tutorial's recipe alone (default: --side)")
    parser.add_argument(
        "--schedule",
        default=default.schedule,
        choices=TrainConfig.SCHEDULES,
        help="learning-rate schedule of the default model (cosine: runs every epoch, no early stop)",
    )
    parser.add_argument("--repeats-per-session", type=int, help="repeats of a session in each epoch of the default model (default: all)")
    parser.add_argument("--init", type=Path, help="fine-tune the default model from this run or checkpoint (TrainConfig.init)")
    parser.add_argument("--pretrain", metavar="PRESET", help="pre-train on a synthetic cohort of this preset first, then fine-tune from it")
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="FIELD=VALUE",
        help="other TrainConfig fields of the default model, e.g. lr=2e-4 ema_decay=0.99 (named in its run folder)",
    )
    parser.add_argument("--pretrain-people", type=int, help="people in the pre-training cohort (default: the preset's)")
    parser.add_argument(
        "--pretrain-set",
        nargs="*",
        default=[],
        metavar="FIELD=VALUE",
        help="TrainConfig fields of the pre-training, e.g. schedule=cosine epochs=40 (named in its run folder)",
    )
    parser.add_argument("--workers", type=int, default=2, help="processes for synthesis and preparation")
    args = parser.parse_args()

    if args.init and args.pretrain:
        parser.error("--init and --pretrain both choose the weights to start from; give one")
    if (args.pretrain_set or args.pretrain_people) and not args.pretrain:
        parser.error("--pretrain-set and --pretrain-people set the pre-training of --pretrain; give --pretrain too")
    clock = time.perf_counter()
    _cohort(args.out / "cohort", get_preset(args.preset), args.seed, args.workers)
    console.print(f"cohort {args.preset}: {time.perf_counter() - clock:.0f} s")
    seconds = {}
    if args.pretrain:
        clock = time.perf_counter()
        preset, root, tags = get_preset(args.pretrain), args.out / "pretrain", list(args.pretrain_set)
        if args.pretrain_people and args.pretrain_people != preset.n_subjects:
            preset, root = _resized(preset, args.pretrain_people), args.out / f"pretrain-{args.pretrain_people}"
            tags.insert(0, f"people={args.pretrain_people}")  # the fine-tuned run's folder names the pre-trained one
        name = "".join(["run", *(f"-{tag}" for tag in tags)])
        args.init = _pretrained(root, preset, args.seed + 7, args.side, args.workers, args.pretrain_set, name)
        seconds[f"pretrain on {args.pretrain}"] = time.perf_counter() - clock
    folds = {"folds": args.folds or None, "seed": args.seed, "progress": True}
    own = {"epochs": args.epochs, "repeats_per_session": args.repeats_per_session, "schedule": args.schedule,
           "init": str(args.init.resolve()) if args.init else None,
           **({"min_epochs": args.epochs} if args.schedule == "cosine" else {}),
           **_settings(args.set)}  # fmt: skip
    runs = {
        "standard": (
            "default",
            dataclasses.replace(default, model=args.model, **own, **folds) if args.model == default.model else TrainConfig(model=args.model, **own, **folds),
        ),
    }
    if args.seed_epochs > 0:
        runs["seed"] = ("tutorial recipe", dataclasses.replace(TUTORIAL_RECIPE, epochs=args.seed_epochs, **folds))
    # The voxel ridge depends on the pipeline; the mean and tabular baselines do not (same folds).
    baselines = {"seed": [BASELINES["ridge_voxels"]], "standard": list(BASELINES.values())}
    rows, truth = [], None  # the default model first: on a CPU the recipe takes longest
    for pipeline, (role, config) in runs.items():
        side = args.seed_side if pipeline == "seed" and args.seed_side else args.side
        grid = _grid(pipeline, side)
        cache = args.out / f"cache-{pipeline}-{side}"
        start = time.perf_counter()
        report = prepare(args.out / "cohort", cache, grid, workers=args.workers)
        seconds[f"prepare {pipeline}"] = time.perf_counter() - start
        start = time.perf_counter()
        repeats = f"-r{config.repeats_per_session}" if config.repeats_per_session else ""
        schedule = f"-{config.schedule}{config.epochs}" if config.schedule != default.schedule else ""
        init = f"-init-{Path(config.init).name}" if config.init else ""
        settings = args.set if pipeline == "standard" else []
        named = "".join(f"-{item}" for item in settings) + (f"-{config.epochs}ep" if pipeline == "seed" else "")
        result = train(cache, args.out / f"run-{pipeline}-{side}-{config.model}{repeats}{schedule}{init}{named}", config)
        seconds[f"train {config.model} ({pipeline})"] = time.perf_counter() - start
        note = f"; {len(report.problems)} scan(s) failed to prepare" if report.problems else ""
        epochs = result.history.groupby(["fold", "member"]).size()
        ran = f"{epochs.min()}" if epochs.min() == epochs.max() else f"{epochs.min()}–{epochs.max()}"
        ran = f"{ran} epochs" if len(epochs) else "weights not trained: output line re-fitted"
        per_epoch = f", {config.repeats_per_session} repeat/session/epoch" if config.repeats_per_session else ""
        per_epoch += f", {config.schedule} schedule" if config.schedule != default.schedule else ""
        per_epoch += f", fine-tuned from {config.init}" if config.init else ""
        per_epoch += "".join(f", {item}" for item in settings)
        suffix = f" ({pipeline} {side}³)" if len(runs) > 1 and pipeline == "seed" else ""  # one name per row
        rows += _rows(result, f"{config.model} ({role}, {ran}{per_epoch}{note})", f"{pipeline} {side}³", baselines[pipeline], suffix)
        truth, ceiling = _truth_row(result), _ceiling_row(result)
    rows += [truth] + ([ceiling] if ceiling else [])
    table = pd.DataFrame(rows)
    split = f"{args.folds}-fold" if args.folds else "20 % hold-out"
    print_table(table, title=f"Out-of-fold accuracy per session on the {args.preset} cohort ({split} by subject, seed {args.seed}), years")
    console.print(
        "MAE corrected is against age after the age-bias correction, which pulls every brain age towards age by construction (a network "
        "that predicts the mean age scores near 0 on it); how well brain age is read is MAE true corrected and the gap fidelity.",
        soft_wrap=True,
    )
    mae = table.set_index("predictor")["MAE"]
    default_mae = mae[next(name for name in mae.index if "(default" in name)]
    mean_mae = mae[f"baseline: {BASELINES['mean_age']}"]
    console.print(f"default model: {default_mae:.2f} y, {default_mae / mean_mae:.2f} × the mean baseline's MAE ({mean_mae:.2f} y)")
    best = mae[[name for name in mae.index if name.startswith("baseline:")]].idxmin()
    ahead = 1 - default_mae / mae[best]
    ceiling = [name for name in mae.index if name.startswith("ceiling")]
    room = f"; the ceiling ({mae[ceiling[0]]:.2f} y) is {1 - mae[ceiling[0]] / mae[best]:.0%} ahead of it" if ceiling else ""
    console.print(f"default model: {ahead:.1%} ahead of the best baseline ({best.removeprefix('baseline: ')}, {mae[best]:.2f} y){room}")
    recipe = [name for name in mae.index if "(tutorial recipe" in name]
    if recipe:
        console.print(f"default model − tutorial recipe: {default_mae - mae[recipe[0]]:+.2f} y")
    print_table([{"step": step, "seconds": value} for step, value in seconds.items()], title="Time (seconds; small when reused)", floatfmt="{:.0f}")


if __name__ == "__main__":
    main()
