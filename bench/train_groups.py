"""Training on controls only against training on every group, on the evaluation seeds of
``bench/accuracy.py`` (issue 26, point 7).

Both runs of a seed must be finished K-fold runs of ``bench/accuracy.py --eval-seeds`` in
``--out/seed-S``: one with ``train_groups`` unset (every group) and one with ``--set
'train_groups=[Nondemented]'``. Their folds hold the same test people (``make_folds`` keeps other
groups out of training only), so every comparison is paired on the same scans and people:

    .venv/bin/python bench/train_groups.py --out bench-out/eval-demo --preset demo --seeds 1 2 3

Per seed and level (scan, session), for each choice: gap fidelity, the controls' MAE against age
and the MAE against the true brain age, uncorrected and bias-corrected (on the controls of the
other folds), each with a subject-level bootstrap 95 % CI; per person, the Demented − Nondemented
gap of the bias-corrected brain age with its CI, Cohen's d and Welch's p. Then the paired
differences (controls only minus every group) with their CIs. Writes
``docs/results/train_groups-PRESET-eval-seeds-S-S-S.json`` (``bench/results.py``). Asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
import yaml
from results import ROOT, display, write_results

from brainage.bootstrap import (
    LEVELS,
    RESAMPLES,
    Estimate,
    bootstrap_fidelity_difference,
    bootstrap_gap_fidelity,
    bootstrap_group_difference,
    bootstrap_mae,
    bootstrap_mae_difference,
    controls_of,
    paired_runs,
)
from brainage.console import console, print_table

CHOICES = {"all": "every group", "controls": "controls only"}
COLUMNS = ("brain_age", "brain_age_corrected")
CONTROLS = ("Nondemented",)


def _runs(seed_dir: Path) -> dict[str, Path]:
    """The finished K-fold run of each choice in ``seed_dir``, told apart by ``train_groups`` in its config."""
    found: dict[str, list[Path]] = {"all": [], "controls": []}
    for config in sorted(seed_dir.glob("run-*/config.yaml")):
        values = (yaml.safe_load(config.read_text()) or {}).get("train") or {}
        groups = values.get("train_groups")
        if not (config.parent / "predictions.csv").is_file() or values.get("model") == "tutorial":
            continue
        if not groups:
            found["all"].append(config.parent)
        elif tuple(groups) == CONTROLS:
            found["controls"].append(config.parent)
    for choice, runs in found.items():
        if len(runs) != 1:
            raise SystemExit(f"{seed_dir}: {len(runs)} finished runs trained on {CHOICES[choice]} (need exactly one): {', '.join(map(str, runs)) or 'none'}")
    return {choice: runs[0] for choice, runs in found.items()}


def _read(run: Path) -> pd.DataFrame:
    return pd.read_csv(run / "predictions.csv", dtype={"scan_id": str, "subject_id": str, "session_id": str})


def _ci(prefix: str, estimate: Estimate) -> dict[str, float]:
    return {prefix: estimate.value, f"{prefix}_low": estimate.low, f"{prefix}_high": estimate.high}


def _choice_rows(pair: pd.DataFrame, level: str, resamples: int) -> list[dict[str, object]]:
    """One record per choice and column: fidelity, controls' MAE, MAE against the true brain age."""
    controls = controls_of(pair)
    rows = []
    for suffix, choice in (("_a", "all"), ("_b", "controls")):
        for column in COLUMNS:
            name = column + suffix
            rows.append({
                "trained on": CHOICES[choice], "prediction": column,
                **_ci("gap_fidelity", bootstrap_gap_fidelity(pair, name, level, resamples)),
                **_ci("mae_controls", bootstrap_mae(controls, name, level, resamples=resamples)),
                **_ci("mae_true", bootstrap_mae(pair, name, level, "true_brain_age", resamples)),
            })  # fmt: skip  # one row per measure
    return rows


def _paired_rows(pair: pd.DataFrame, level: str, resamples: int) -> list[dict[str, object]]:
    """Controls only minus every group, per column: gap fidelity, controls' MAE, MAE true; paired."""
    controls = controls_of(pair)
    rows = []
    for column in COLUMNS:
        first, second = column + "_a", column + "_b"
        rows.append({
            "prediction": column,
            **_ci("delta_fidelity", bootstrap_fidelity_difference(pair, second, first, level, resamples)),
            **_ci("delta_mae_controls", bootstrap_mae_difference(controls, second, first, level, resamples=resamples)),
            **_ci("delta_mae_true", bootstrap_mae_difference(pair, second, first, level, "true_brain_age", resamples)),
        })  # fmt: skip  # one row per measure
    return rows


def _group_rows(pair: pd.DataFrame, resamples: int) -> list[dict[str, object]]:
    """Per person: each choice's Demented − Nondemented gap (bias-corrected), and their paired difference."""
    rows: list[dict[str, object]] = []
    for suffix, choice in (("_a", "all"), ("_b", "controls")):
        rows.append({"trained on": CHOICES[choice], **bootstrap_group_difference(pair, "brain_age_corrected" + suffix, resamples=resamples)})
    # A column whose gap is each scan's controls-only minus every-group brain age: its Demented − Nondemented
    # gap per person is the difference of the two choices' gaps, on the same people in every draw.
    change = pair.assign(change=pair["age"] + pair["brain_age_corrected_b"] - pair["brain_age_corrected_a"])
    difference = bootstrap_group_difference(change, "change", resamples=resamples)
    rows.append({"trained on": "controls only minus every group", **{key: difference[key] for key in ("difference", "difference_low", "difference_high")}})
    return rows


def _favours(low: float, high: float, lower_is_better: bool) -> str:
    """Which choice a paired CI (controls only minus every group) favours, or ``neither`` where it holds zero."""
    if low > 0 or high < 0:
        return "controls only" if (high < 0) == lower_is_better else "every group"
    return "neither"


def _summary_rows(seed: int, paired: dict[str, list[dict[str, object]]], groups: list[dict[str, object]]) -> list[dict[str, object]]:
    """Per level: the paired differences that decide the default (gap fidelity and MAE against the true
    brain age of the brain age as predicted, the controls' MAE after bias correction, the Demented −
    Nondemented corrected gap per person) and which choice each CI favours."""
    change = groups[-1]
    rows = []
    for level, records in paired.items():
        raw, corrected = (next(r for r in records if r["prediction"] == column) for column in COLUMNS)
        rows.append({
            "seed": seed, "level": level,
            "delta_fidelity": raw["delta_fidelity"], "delta_fidelity_low": raw["delta_fidelity_low"], "delta_fidelity_high": raw["delta_fidelity_high"],
            "fidelity favours": _favours(float(raw["delta_fidelity_low"]), float(raw["delta_fidelity_high"]), lower_is_better=False),
            "delta_mae_true": raw["delta_mae_true"], "delta_mae_true_low": raw["delta_mae_true_low"], "delta_mae_true_high": raw["delta_mae_true_high"],
            "MAE true favours": _favours(float(raw["delta_mae_true_low"]), float(raw["delta_mae_true_high"]), lower_is_better=True),
            "delta_mae_controls": corrected["delta_mae_controls"], "delta_mae_controls_low": corrected["delta_mae_controls_low"],
            "delta_mae_controls_high": corrected["delta_mae_controls_high"],
            "controls' MAE favours": _favours(float(corrected["delta_mae_controls_low"]), float(corrected["delta_mae_controls_high"]), lower_is_better=True),
            "delta_group_gap": change["difference"], "delta_group_gap_low": change["difference_low"], "delta_group_gap_high": change["difference_high"],
            "D − ND gap favours": _favours(float(change["difference_low"]), float(change["difference_high"]), lower_is_better=False),
        })  # fmt: skip  # one row's fields grouped by measure
    return rows


def _missing_note(pair: pd.DataFrame) -> list[str]:
    """A note per choice whose bias-corrected brain age is missing for some scans (a fold's correction refused)."""
    notes = []
    for suffix, choice in (("_a", "all"), ("_b", "controls")):
        missing = int(pair["brain_age_corrected" + suffix].isna().sum())
        if missing:
            notes.append(
                f"{CHOICES[choice]}: no bias-corrected brain age for {missing} of {len(pair)} scans (their fold's correction was refused: "
                "the gap's slope on age could be zero), so its corrected rows and the paired corrected differences cover the other scans only"
            )
    return notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="bench/accuracy.py's working folder (holding seed-S/)")
    parser.add_argument("--preset", default="demo", help="the preset the runs were trained on (for titles and the file name)")
    parser.add_argument("--seeds", type=int, nargs="+", required=True, help="evaluation seeds")
    parser.add_argument("--resamples", type=int, default=RESAMPLES, help="bootstrap resamples of people per interval")
    parser.add_argument("--results", type=Path, default=None, help="results JSON (default: docs/results/train_groups-PRESET-eval-seeds-S-S-S.json)")
    args = parser.parse_args()
    runs = {seed: _runs(args.out / f"seed-{seed}") for seed in args.seeds}  # every seed checked before any work
    start, tables, summary, missing = time.perf_counter(), [], [], []
    for seed, pair_of_runs in runs.items():
        pair = paired_runs(_read(pair_of_runs["all"]), _read(pair_of_runs["controls"]), COLUMNS)
        notes = [f"every group: {pair_of_runs['all'].name}; controls only: {pair_of_runs['controls'].name}", f"{len(pair)} scans predicted by both"]
        incomplete = _missing_note(pair)
        notes += incomplete
        missing += [f"seed {seed}, {line}" for line in incomplete]
        paired = {}
        for level in LEVELS:
            paired[level] = _paired_rows(pair, level, args.resamples)
            for kind, records in (("each choice", _choice_rows(pair, level, args.resamples)), ("controls only minus every group", paired[level])):
                title = f"{args.preset} cohort, evaluation seed {seed}, per {level}: {kind}, years"
                print_table(display(records), title=title)
                tables.append({"title": title, "records": records, "notes": notes})
        title = f"{args.preset} cohort, evaluation seed {seed}: Demented − Nondemented bias-corrected gap per person, years"
        records = _group_rows(pair, args.resamples)
        print_table(display(records), title=title)
        tables.append({"title": title, "records": records, "notes": notes})
        summary += _summary_rows(seed, paired, records)
    title = f"{args.preset} cohort: training on controls only minus training on every group, paired on the same test people, years"
    summary_notes = [
        "Δ gap fidelity and Δ MAE against the true brain age: the brain age as predicted; Δ controls' MAE: bias-corrected "
        "(each fold on the other folds' controls); Δ D − ND gap: bias-corrected, per person (the same on both levels)",
        "a choice is favoured where the paired 95 % CI excludes zero in its direction",
        *missing,
    ]
    print_table(display(summary), title=title)
    tables.insert(0, {"title": title, "records": summary, "notes": summary_notes})
    label = "-".join(map(str, args.seeds))
    path = args.results or ROOT / "docs" / "results" / f"train_groups-{args.preset}-eval-seeds-{label}.json"
    written = write_results(path, tables, {"bootstrap": time.perf_counter() - start}, precision="", argv=sys.argv)
    console.print(f"wrote {written}")


if __name__ == "__main__":
    main()
