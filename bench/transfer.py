"""Leave-one-anatomy-out evidence (issue 29): train on people of every base head but one, test on
people of the held-out head, each head in turn; the same for each ageing variant of the population
generator (``v2``, :mod:`brainage.cohort.population`).

    .venv/bin/python bench/transfer.py --out bench-out/transfer [--preset population] [--seed 0] [--side 32] [--folds 3] [--epochs 20]
    nice -n 10 .venv/bin/python bench/transfer.py --out /tmp/transfer --preset population_tiny --people 16 --factors head --side 32 --folds 2 --epochs 1 --resamples 200 --qc-threshold 0   # smoke

One cohort is synthesised (``--preset``, ``--seed``) and prepared once (standard pipeline on a
``--side``³ grid) in ``--out``; for every held-out value (``head:NAME``, ``variant:NAME``) two views
of that cache are made (``--out/views``: the manifest's rows of the other values, or of that value,
sharing the cache's volumes), the default model is trained with ``--folds`` subject-grouped folds on
the first (``brainage train``'s defaults but for ``--epochs``, ``--folds`` and ``--set FIELD=VALUE``),
and its fold networks, averaged, predict the second. Printed and written per held-out value, per
session (repeats averaged), each with a subject-level bootstrap 95 % CI (:mod:`brainage.bootstrap`):

- ``in-generator``: the out-of-fold predictions on the training heads (or variants);
- ``held-out``: the held-out people, as predicted (``raw``) and bias-corrected on their own
  controls (``corrected``, Nondemented sessions, :class:`brainage.evaluation.AgeBiasCorrector`);

MAE against age and against the true brain age, gap fidelity, r(prediction, age), and the
Demented − Nondemented gap (mean gap per subject, as :func:`brainage.evaluation.gap_by_group`).
Every step is resumable (the cohort, the cache and finished runs are reused). Writes
``--out/results.json`` (``bench/results.py``) or ``--results``. Prints tables; asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml
from results import display, write_results

from brainage.bootstrap import RESAMPLES, at_level, bootstrap_gap_fidelity, bootstrap_mae, cluster_bootstrap
from brainage.checkpoint import load_checkpoint
from brainage.cohort import GROUND_TRUTH, SUMMARY, PopulationPreset, get_preset, synthesize
from brainage.console import console, print_table
from brainage.evaluation import AgeBiasCorrector, aggregate_sessions
from brainage.inference import BrainAgeEnsemble, predict_batches
from brainage.preprocess import make_config, prepare
from brainage.preprocess.cache import PreparedCache, load_cache
from brainage.training import TrainConfig, train
from brainage.utils import write_csv

FACTORS = ("head", "variant")
CONTROLS = "Nondemented"


def _grid(side: int, qc_threshold: float | None):
    grid = make_config("standard")
    extra = {} if qc_threshold is None else {"qc_threshold": qc_threshold}
    return make_config("standard", shape=(side,) * 3, voxel_size=grid.voxel_size * grid.shape[0] / side, **extra)


def _resized(preset: PopulationPreset, people: int) -> PopulationPreset:
    """``preset`` with ``people`` people of one session and one scan each, half of them Demented."""
    demented = people // 2
    cohort = replace(preset.cohort, nondemented=people - demented, demented=demented, converted=0, visits=((1, people),), repeats=((1, people),))
    return replace(preset, name=f"{preset.name}-{people}", cohort=cohort)


def _labelled(cache: PreparedCache, cohort: Path) -> pd.DataFrame:
    """The cache's manifest with each scan's ``head`` and ``variant`` from the cohort's ground truth."""
    truth = pd.read_csv(cohort / GROUND_TRUTH, usecols=["path", "head", "variant"])
    relative = cache.manifest["path"].map(lambda p: Path(p).resolve().relative_to(cohort.resolve()).as_posix())
    labels = truth.set_index("path").reindex(relative.to_numpy())
    return cache.manifest.assign(head=labels["head"].to_numpy(), variant=labels["variant"].to_numpy())


def _view(cache: PreparedCache, rows: pd.DataFrame, folder: Path) -> Path:
    """A cache folder showing only ``rows`` of the manifest; the volumes are the cache's (a link)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("cache.json", "volumes"):
        link = folder / name
        if not link.exists():
            link.symlink_to((cache.root / name).resolve())
    write_csv(rows.drop(columns=["head", "variant"]), folder / "manifest.csv")
    return folder


def _predict(checkpoints: list[Path], cache: PreparedCache, batch: int = 8) -> np.ndarray:
    """Brain age of every scan of ``cache`` by the mean of the fold networks, uncorrected."""
    network = BrainAgeEnsemble([load_checkpoint(path) for path in checkpoints])
    volumes = (
        torch.from_numpy(np.stack([np.array(cache.volume(i), dtype=np.float32) for i in range(s, min(s + batch, len(cache)))]))[:, None]
        for s in range(0, len(cache), batch)
    )
    with torch.inference_mode():
        return predict_batches(network, volumes)[:, 0]


def _session_frame(predictions: pd.DataFrame, column: str) -> pd.DataFrame:
    frame = predictions[["subject_id", "session_id", "age", "group", "true_brain_age", column]].rename(columns={column: "brain_age"})
    return frame


def _corrected(frame: pd.DataFrame) -> tuple[pd.Series, str]:
    """Predictions bias-corrected on the frame's own controls (session level; NaN where the
    corrector refuses, e.g. with fewer than 20 control people) and its one-line description."""
    sessions = aggregate_sessions(frame[["subject_id", "session_id", "age", "brain_age", "group"]])
    controls = sessions[sessions["group"].astype(str) == CONTROLS]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        corrector = AgeBiasCorrector().fit(controls["age"], controls["brain_age"], controls["subject_id"])
    return pd.Series(corrector.transform(frame["brain_age"], frame["age"]), index=frame.index), corrector.describe()


def _dementia_gap(frame: pd.DataFrame, resamples: int) -> Any:
    """Demented − Nondemented mean gap per subject, with a bootstrap over subjects."""
    pair = frame[frame["group"].astype(str).isin(["Demented", CONTROLS])]
    per_subject = pair.assign(gap=pair["brain_age"] - pair["age"]).groupby("subject_id").agg(gap=("gap", "mean"), group=("group", "first")).reset_index()
    per_subject["demented"] = (per_subject["group"].astype(str) == "Demented").astype(float)

    def difference(arrays: dict[str, np.ndarray]) -> float:
        sick = arrays["demented"] == 1.0
        return float(arrays["gap"][sick].mean() - arrays["gap"][~sick].mean()) if sick.any() and (~sick).any() else float("nan")

    return cluster_bootstrap(per_subject[["subject_id", "gap", "demented"]], difference, resamples)


def _record(frame: pd.DataFrame, held: str, role: str, resamples: int) -> dict[str, Any]:
    """One table row: MAE (age, true brain age), fidelity, r and the dementia gap with 95 % CIs (per session)."""
    sessions = at_level(frame, ["brain_age"], "session")
    row: dict[str, Any] = {"held_out": held, "predictions": role, "n": len(sessions), "people": sessions["subject_id"].nunique()}
    estimates = {
        "mae": bootstrap_mae(frame, "brain_age", "session", resamples=resamples),
        "mae_true": bootstrap_mae(frame, "brain_age", "session", "true_brain_age", resamples=resamples),
        "gap_fidelity": bootstrap_gap_fidelity(frame, "brain_age", "session", resamples=resamples),
        "dementia_gap": _dementia_gap(frame, resamples),
    }
    for name, estimate in estimates.items():
        row.update({name: estimate.value, f"{name}_low": estimate.low, f"{name}_high": estimate.high})
    row["r_age"] = float(np.corrcoef(sessions["age"], sessions["brain_age"])[0, 1])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-out/transfer"), help="working folder (reused)")
    parser.add_argument("--preset", default="population", help="a population (v2) preset")
    parser.add_argument("--seed", type=int, default=0, help="cohort and split seed")
    parser.add_argument("--people", type=int, help="resize the preset to this many people, one scan each (half of them Demented)")
    parser.add_argument("--side", type=int, default=32, help="grid side of the standard pipeline")
    parser.add_argument("--qc-threshold", type=float, help="registration score below which scans are left out of training (default: the pipeline's)")
    parser.add_argument("--folds", type=int, default=3, help="subject-grouped folds on the training side")
    parser.add_argument("--epochs", type=int, default=20, help="maximum epochs")
    parser.add_argument("--factors", nargs="+", default=list(FACTORS), choices=FACTORS, help="what to hold out in turn")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="other TrainConfig fields (values read as YAML)")
    parser.add_argument("--resamples", type=int, default=RESAMPLES, help="bootstrap resamples of people per interval")
    parser.add_argument("--workers", type=int, default=1, help="processes for synthesis and preparation")
    parser.add_argument("--results", type=Path, help="results JSON (default: --out/results.json)")
    args = parser.parse_args()

    seconds: dict[str, float] = {}
    preset = get_preset(args.preset)
    if args.people:
        preset = _resized(preset, args.people)
    cohort = args.out / "cohort"
    start = time.perf_counter()
    if not (cohort / SUMMARY).is_file():
        synthesize(cohort, preset, seed=args.seed, workers=args.workers)
    seconds["synth"] = time.perf_counter() - start
    start = time.perf_counter()
    prepare(cohort, args.out / f"cache-{args.side}", _grid(args.side, args.qc_threshold), workers=args.workers)
    seconds["prepare"] = time.perf_counter() - start
    cache = load_cache(args.out / f"cache-{args.side}")
    manifest = _labelled(cache, cohort)
    settings = {field: yaml.safe_load(value) for field, value in (item.split("=", 1) for item in args.set)}
    records: list[dict[str, Any]] = []
    notes = ["per session; 95 % subject-level bootstrap CIs (_low, _high)"]
    for factor in args.factors:
        for value in sorted(manifest[factor].dropna().unique()):
            held = f"{factor}:{value}"
            train_view = _view(cache, manifest[manifest[factor] != value], args.out / "views" / f"{factor}-{value}-train")
            test_view = load_cache(_view(cache, manifest[manifest[factor] == value], args.out / "views" / f"{factor}-{value}-test"))
            start = time.perf_counter()
            config = TrainConfig(**{"folds": args.folds, "epochs": args.epochs, "seed": args.seed, "baselines": False, **settings})
            result = train(train_view, args.out / "runs" / f"{factor}-{value}", config)
            seconds[f"train {held}"] = time.perf_counter() - start
            if result is None:
                continue
            inside = _session_frame(result.predictions, "brain_age")
            outside = test_view.manifest[["subject_id", "session_id", "age", "group", "path"]].copy()
            outside["age"] = outside["age"].astype(float)
            outside["brain_age"] = _predict(result.checkpoints, test_view)
            truth = pd.read_csv(cohort / GROUND_TRUTH, usecols=["path", "brain_age"]).set_index("path")["brain_age"]
            outside["true_brain_age"] = [truth.get(Path(p).resolve().relative_to(cohort.resolve()).as_posix(), np.nan) for p in outside["path"]]
            write_csv(outside, args.out / "runs" / f"{factor}-{value}" / "held_out_predictions.csv")
            records += [
                _record(inside, held, "in-generator", args.resamples),
                _record(outside, held, "held-out raw", args.resamples),
            ]
            corrected, description = _corrected(outside)
            if corrected.notna().any():
                records.append(_record(outside.assign(brain_age=corrected), held, "held-out corrected", args.resamples))
            notes.append(f"{held}: held-out {description}")
    columns = ["held_out", "predictions", "n", "people", "mae", "mae_true", "gap_fidelity", "r_age", "dementia_gap"]
    shown = [{key: value for key, value in record.items() if key.removesuffix("_low").removesuffix("_high") in columns} for record in records]
    print_table(display(shown), title=f"Leave-one-out on {args.preset} (seed {args.seed}), per session, 95 % CIs")
    for note in notes[1:]:
        console.print(note)
    path = write_results(
        args.results or args.out / "results.json",
        [{"title": f"leave-one-out on {args.preset}", "records": records, "notes": notes}],
        seconds,
        precision=str(TrainConfig(**settings).precision) if "precision" in TrainConfig.__dataclass_fields__ else "default",
        argv=[sys.executable, *sys.argv],
        extra={"preset": args.preset, "seed": args.seed, "side": args.side, "folds": args.folds, "epochs": args.epochs},
    )
    console.print(f"results: {path}")


if __name__ == "__main__":
    main()
