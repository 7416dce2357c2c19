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

The tutorial's network is slow on a CPU, so its recipe runs ``--seed-epochs`` (default 8, of the
tutorial's 50) and the table says how many epochs each network ran; ``--folds 5`` trains five
times what ``--folds 0`` (one 20 % hold-out) trains. ``--seed-epochs 0`` leaves the recipe out.
``--side`` resamples both pipelines to another grid over the same field of view (a grid half as
wide holds an eighth of the voxels); ``--seed-side``
resamples the recipe's alone (the table names each grid). ``--repeats-per-session 1`` trains the
default model on one random repeat of each session per epoch (``TrainConfig.repeats_per_session``;
OASIS-2 has 3–4); ``--schedule cosine`` trains it with a cosine decay over all ``--epochs`` (no early
stop; the best validation epoch is kept); ``--init RUN`` fine-tunes it from a trained run (for
instance one trained on the ``pretrain`` preset); ``--set FIELD=VALUE`` sets any other field of
its :class:`~brainage.training.TrainConfig` (``--set lr=2e-4 ema_decay=0.995``). The default model
starts from ``brainage demo``'s settings for the presets the demo trains (``brainage.demo.TRAINING``:
model, epochs, folds, batch size), else from TrainConfig's defaults.

``--seed`` is the development seed: the only cohort on which settings may be chosen. ``--eval-seeds
1 2 3`` then runs the frozen recipe (the same options, the tutorial's recipe left out) once on each
of those fresh cohorts (new people, new folds) in ``--out/seed-S``, resumable as above, and prints per
seed, per scan and per session, every predictor of the run's ``predictions.csv`` (the network
uncorrected and bias-corrected, every baseline, the true brain age) with subject-level bootstrap 95 %
CIs (:mod:`brainage.bootstrap`), the controls' MAE, and the network's paired differences against
the best baseline on MAE (``ahead``: its CI lies below zero), on MAE against the true brain age
(``ahead_true``) and on gap fidelity (``ahead_fidelity``: above zero); then per person the
Demented − Nondemented gap of every predictor with its CI, Cohen's d and Welch's p:

    .venv/bin/python bench/accuracy.py --out bench-out/eval-demo --preset demo --eval-seeds 1 2 3

Every run writes a results file (``bench/results.py``): with ``--eval-seeds``
``docs/results/accuracy-PRESET-eval-seeds-1-2-3.json`` (``--label``, ``--results``), which
``docs/make_benchmarks_md.py`` renders into docs/benchmarks.md; without, ``--out/results.json``.
Prints tables; asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from results import ROOT, display, write_results
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import LeaveOneGroupOut, cross_val_predict

from brainage.bootstrap import LEVELS, RESAMPLES, compare_predictors, group_effects
from brainage.cohort import SUMMARY, Preset, get_preset, synthesize
from brainage.console import console, print_table
from brainage.demo import TRAINING, training_for
from brainage.evaluation import aggregate_sessions
from brainage.preprocess import PipelineConfig, make_config, prepare
from brainage.training import TUTORIAL_RECIPE, TrainConfig, TrainResult, train

try:  # the baselines' home after the evidence issue; before it, the training run's
    from brainage.baselines import BASELINES
except ImportError:
    from brainage.training.run import BASELINES

#: What the summary across evaluation seeds shows of the network's row.
SUMMARY_KEYS = (
    "mae", "mae_low", "mae_high", "best_baseline", "diff", "diff_low", "diff_high", "ahead",
    "diff_true", "diff_true_low", "diff_true_high", "ahead_true", "diff_fidelity", "diff_fidelity_low", "diff_fidelity_high", "ahead_fidelity",
)  # fmt: skip  # one row per measure


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
        })  # fmt: skip  # a table row: keys grouped in rows
    return rows


def _truth_row(result: TrainResult) -> dict[str, object]:
    """The true brain age used as a prediction, on the very sessions of the run."""
    sessions = result.summary[result.summary["level"] == "session"]
    row = sessions[sessions["model"].str.startswith("true brain age")].iloc[0]
    return {"predictor": row["model"], "pipeline": "–", "sessions": int(row["n"]), "MAE": row["mae"], "MAE true": 0.0,
            "gap fidelity": 1.0, "MAE corrected": None, "MAE true corrected": None, "D−ND gap": row["dementia_gap"], "p": _p(row["dementia_p"])}  # fmt: skip  # a table row: keys grouped in rows


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
            "gap fidelity": 1.0, "MAE corrected": None, "MAE true corrected": None, "D−ND gap": None, "p": None}  # fmt: skip  # a table row: keys grouped in rows


def _training(preset: str, model: str | None, epochs: int | None) -> dict[str, Any]:
    """The default model's TrainConfig fields before the command's own: ``brainage demo``'s settings
    for a preset it trains (``brainage.demo.TRAINING``), else TrainConfig's defaults; ``--model``
    and ``--epochs`` override either."""
    if preset in TRAINING:
        return training_for(preset, model, epochs)
    default = TrainConfig()
    return {"model": model or default.model, "epochs": default.epochs if epochs is None else epochs}


def _network_config(args: argparse.Namespace, seed: int) -> TrainConfig:
    """The default model's configuration on cohort ``seed``: the preset's settings, then the command's."""
    settings = _training(args.preset, args.model, args.epochs)
    folds = settings.pop("folds", 5) if args.folds is None else args.folds
    settings.pop("folds", None)
    own = {"repeats_per_session": args.repeats_per_session, "schedule": args.schedule,
           "init": str(args.init.resolve()) if args.init else None,
           **({"min_epochs": settings["epochs"]} if args.schedule == "cosine" else {}),
           **_settings(args.set)}  # fmt: skip  # settings grouped in rows
    return TrainConfig(**{**settings, **own, "folds": folds or None, "seed": seed, "progress": True})


def _pretrain(args: argparse.Namespace, root: Path, seed: int, seconds: dict[str, float]) -> Path:
    """The pre-trained run that ``--pretrain`` names, made or reused under ``root``."""
    clock = time.perf_counter()
    preset, where, tags = get_preset(args.pretrain), root / "pretrain", list(args.pretrain_set)
    if args.pretrain_people and args.pretrain_people != preset.n_subjects:
        preset, where = _resized(preset, args.pretrain_people), root / f"pretrain-{args.pretrain_people}"
        tags.insert(0, f"people={args.pretrain_people}")  # the fine-tuned run's folder names the pre-trained one
    name = "".join(["run", *(f"-{tag}" for tag in tags)])
    init = _pretrained(where, preset, seed + 7, args.side, args.workers, args.pretrain_set, name)
    seconds[f"pretrain on {args.pretrain}"] = time.perf_counter() - clock
    return init


def _train(args: argparse.Namespace, root: Path, pipeline: str, role: str, config: TrainConfig, seconds: dict[str, float]) -> tuple[TrainResult, str, int]:
    """Prepare ``root/cohort`` for ``pipeline`` and train ``config`` on it (both reused when done):
    the result, a description of the network for the table, and the grid side."""
    default = TrainConfig()
    side = args.seed_side if pipeline == "seed" and args.seed_side else args.side
    cache = root / f"cache-{pipeline}-{side}"
    start = time.perf_counter()
    report = prepare(root / "cohort", cache, _grid(pipeline, side), workers=args.workers)
    seconds[f"prepare {pipeline}"] = seconds.get(f"prepare {pipeline}", 0.0) + time.perf_counter() - start
    start = time.perf_counter()
    repeats = f"-r{config.repeats_per_session}" if config.repeats_per_session else ""
    schedule = f"-{config.schedule}{config.epochs}" if config.schedule != default.schedule else ""
    init = f"-init-{Path(config.init).name}" if config.init else ""
    settings = args.set if pipeline == "standard" else []
    named = "".join(f"-{item}" for item in settings) + (f"-{config.epochs}ep" if pipeline == "seed" else "")
    named += f"-{args.preset}-settings" if pipeline == "standard" and args.preset in TRAINING else ""  # brainage demo's, not TrainConfig's
    result = train(cache, root / f"run-{pipeline}-{side}-{config.model}{repeats}{schedule}{init}{named}", config)
    seconds[f"train {config.model} ({pipeline})"] = seconds.get(f"train {config.model} ({pipeline})", 0.0) + time.perf_counter() - start
    note = f"; {len(report.problems)} scan(s) failed to prepare" if report.problems else ""
    epochs = result.history.groupby(["fold", "member"]).size()
    ran = f"{epochs.min()}" if epochs.min() == epochs.max() else f"{epochs.min()}–{epochs.max()}"
    ran = f"{ran} epochs" if len(epochs) else "weights not trained: output line re-fitted"
    per_epoch = f", {config.repeats_per_session} repeat/session/epoch" if config.repeats_per_session else ""
    per_epoch += f", {config.schedule} schedule" if config.schedule != default.schedule else ""
    per_epoch += f", fine-tuned from {config.init}" if config.init else ""
    per_epoch += "".join(f", {item}" for item in settings)
    return result, f"{config.model} ({role}, {ran}{per_epoch}{note})", side


def _development(args: argparse.Namespace, seconds: dict[str, float]) -> tuple[list[dict[str, Any]], str]:
    """The development run on cohort ``--seed``: every predictor, the tutorial's recipe included,
    printed as one table per session; returns the table as results and the precision."""
    if args.pretrain:
        args.init = _pretrain(args, args.out, args.seed, seconds)
    runs = {"standard": ("default", _network_config(args, args.seed))}
    folds = {"folds": runs["standard"][1].folds, "seed": args.seed, "progress": True}
    if args.seed_epochs > 0:
        runs["seed"] = ("tutorial recipe", dataclasses.replace(TUTORIAL_RECIPE, epochs=args.seed_epochs, **folds))
    # The voxel baselines depend on the pipeline; the mean and tabular ones do not (same folds).
    baselines = {"seed": [column for column in BASELINES if column.endswith("_voxels")], "standard": list(BASELINES)}
    rows, truth, precision = [], None, ""  # the default model first: on a CPU the recipe takes longest
    for pipeline, (role, config) in runs.items():
        result, label, side = _train(args, args.out, pipeline, role, config, seconds)
        precision = precision or result.precision
        suffix = f" ({pipeline} {side}³)" if len(runs) > 1 and pipeline == "seed" else ""  # one name per row
        names = [BASELINES[column] for column in baselines[pipeline] if column in BASELINES]
        rows += _rows(result, label, f"{pipeline} {side}³", names, suffix)
        truth, ceiling = _truth_row(result), _ceiling_row(result)
    rows += [truth] + ([ceiling] if ceiling else [])
    table = pd.DataFrame(rows)
    folds_used = runs["standard"][1].folds
    split = f"{folds_used}-fold" if folds_used else "20 % hold-out"
    title = f"Out-of-fold accuracy per session on the {args.preset} cohort ({split} by subject, development seed {args.seed}), years"
    print_table(table, title=title)
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
    return [{"title": title, "records": table.to_dict("records")}], precision


def _evaluation(args: argparse.Namespace, seconds: dict[str, float]) -> tuple[list[dict[str, Any]], str]:
    """The frozen recipe once on each evaluation seed's fresh cohort (``--out/seed-S``): per seed and
    level, every predictor with subject-level bootstrap CIs and the network's paired difference
    against the best baseline; first a summary across seeds. Returns the tables and the precision."""
    tables, summary, precision = [], [], ""
    for seed in args.eval_seeds:
        root = args.out / f"seed-{seed}"
        start = time.perf_counter()
        _cohort(root / "cohort", get_preset(args.preset), seed, args.workers)
        seconds["cohort"] = seconds.get("cohort", 0.0) + time.perf_counter() - start
        init = _pretrain(args, root, seed, seconds) if args.pretrain else args.init
        config = _network_config(argparse.Namespace(**{**vars(args), "init": init}), seed)
        result, label, _ = _train(args, root, "standard", "default", config, seconds)
        precision = precision or result.precision
        start = time.perf_counter()
        predictions = pd.read_csv(result.run_dir / "predictions.csv", dtype={"scan_id": str, "subject_id": str, "session_id": str})
        networks = {"brain_age": f"{config.model} (network)", "brain_age_corrected": f"{config.model}, bias-corrected"}
        baselines = {column: f"baseline: {name}" for column, name in BASELINES.items() if column in predictions}
        split = f"{config.folds}-fold" if config.folds else "20 % hold-out"
        for level in LEVELS:
            records = compare_predictors(predictions, networks, baselines, level, resamples=args.resamples)
            title = f"{args.preset} cohort, evaluation seed {seed}, per {level} ({split} by subject), years"
            notes = [f"network: {label}", f"bias correction: {result.corrector.describe() if result.corrector else 'none'}"]
            print_table(display(records), title=title)
            tables.append({"title": title, "records": records, "notes": notes})
            network = records[0]
            summary.append({"seed": seed, "level": level, "predictor": network["predictor"], **{key: network.get(key) for key in SUMMARY_KEYS}})
        effects = group_effects(predictions, {**networks, **baselines}, resamples=args.resamples)
        title = f"{args.preset} cohort, evaluation seed {seed}: Demented − Nondemented gap per person (mean over each person's scans), years"
        notes = ["the bias-corrected row is corrected on the controls of the other folds; a positive difference means the Demented look older"]
        print_table(display(effects), title=title)
        tables.append({"title": title, "records": effects, "notes": notes})
        seconds["bootstrap"] = seconds.get("bootstrap", 0.0) + time.perf_counter() - start
    title = f"{args.preset} cohort: the network against the best baseline on each evaluation seed, years"
    notes = [
        f"ahead{measure} (the paired 95 % CI of the difference {side} zero) per {level}: "
        f"{sum(bool(row.get(key)) for row in summary if row['level'] == level)} of {len(args.eval_seeds)} seeds"
        for key, measure, side in (
            ("ahead", " on MAE", "below"),
            ("ahead_true", " on MAE against the true brain age", "below"),
            ("ahead_fidelity", " on gap fidelity", "above"),
        )
        for level in LEVELS
    ]
    print_table(display(summary), title=title)
    for note in notes:
        console.print(note, soft_wrap=True)
    return [{"title": title, "records": summary, "notes": notes}, *tables], precision


def main() -> None:
    default = TrainConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-out/accuracy"), help="working folder (reused)")
    parser.add_argument("--preset", default="demo", help="synthetic cohort preset")
    parser.add_argument("--seed", type=int, default=0, help="development seed: the cohort and splits where settings may be chosen (the only place they may be)")
    parser.add_argument(
        "--eval-seeds",
        type=int,
        nargs="+",
        metavar="S",
        help="evaluation seeds: fresh cohorts (new people, new folds) on which the recipe, frozen, runs once each into --out/seed-S; "
        "choose settings on the development --seed only, never on these; the tutorial's recipe is left out",
    )
    parser.add_argument(
        "--results", type=Path, help="results JSON (default: docs/results/accuracy-PRESET-LABEL.json with --eval-seeds, else --out/results.json)"
    )
    parser.add_argument("--label", help="LABEL of the default results file (default: eval-seeds-S-S-S)")
    parser.add_argument("--resamples", type=int, default=RESAMPLES, help="bootstrap resamples of people per interval")
    parser.add_argument("--folds", type=int, help="K-fold by subject (0: one 20 %% hold-out; default: the demo's for its presets, else 5)")
    parser.add_argument("--model", help=f"the default model to compare with the recipe (default: the demo's for its presets, else {default.model})")
    parser.add_argument("--epochs", type=int, help=f"maximum epochs of the default model (default: the demo's for its presets, else {default.epochs})")
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
    if args.eval_seeds and args.seed in args.eval_seeds:
        parser.error(f"--eval-seeds must be fresh cohorts: {args.seed} is the development --seed")
    seconds: dict[str, float] = {}
    if args.eval_seeds:
        tables, precision = _evaluation(args, seconds)
        label = args.label or "eval-seeds-" + "-".join(str(seed) for seed in args.eval_seeds)
        path = args.results or ROOT / "docs" / "results" / f"accuracy-{args.preset}-{label}.json"
    else:
        clock = time.perf_counter()
        _cohort(args.out / "cohort", get_preset(args.preset), args.seed, args.workers)
        seconds["cohort"] = time.perf_counter() - clock
        tables, precision = _development(args, seconds)
        path = args.results or args.out / "results.json"
    print_table([{"step": step, "seconds": value} for step, value in seconds.items()], title="Time (seconds; small when reused)", floatfmt="{:.0f}")
    console.print(f"results: {write_results(path, tables, seconds, precision, ['.venv/bin/python', 'bench/accuracy.py', *sys.argv[1:]])}")


if __name__ == "__main__":
    main()
