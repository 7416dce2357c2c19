"""One self-contained HTML report of a training run (figures embedded as base64 PNG).

Sections: configuration, cohort, training curves, predicted against true age, Bland–Altman,
brain-age gap by clinical group with its test, test–retest and longitudinal consistency (with a
spaghetti plot of each person's visits), per-scan conformal intervals with their measured coverage,
pose invariance (where ``bench/pose.py RUN --csv RUN/pose.csv`` measured it), the network beside
the baselines, a QC montage of a few scans, and a saliency map averaged over test scans.
Everything comes from the run folder written by :func:`brainage.training.train` (and, optionally,
predictions of held-out people) and, for the scans themselves, the cache it was trained on
(sections that need the cache say so when it is gone). A section whose figure the data cannot give
(no repeat scans, one visit per person, no intervals, no pose measurement) says so in words.
The figures are drawn by :mod:`brainage.report_figures`; the page is rendered from
``templates/report.html.j2`` by Jinja2 with autoescaping on: only the tables built here by
``DataFrame.to_html`` go in unescaped.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import yaml
from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup
from matplotlib.figure import Figure

from brainage import __version__
from brainage.checkpoint import fold_folder, load_checkpoint
from brainage.errors import BrainAgeError, InputError
from brainage.evaluation import gap_by_group
from brainage.inference import BrainAgeEnsemble
from brainage.preprocess import PreparedCache, StandardConfig, load_cache
from brainage.preprocess.template import template_on_grid
from brainage.report_figures import (
    COVERAGE_TOLERANCE,
    POSE_TARGET_SD,
    bland_altman,
    coverage_table,
    gap_figure,
    interval_figure,
    number,
    pose_figure,
    qc_montage,
    retest_display,
    saliency_figure,
    short_scan,
    spaghetti_figure,
    visits_display,
)
from brainage.retest import gap_retest, longitudinal, test_retest
from brainage.saliency import METHODS, saliency_map
from brainage.utils import atomic_write

SECTIONS = (
    ("configuration", "Configuration"),
    ("cohort", "Cohort"),
    ("training", "Training curves"),
    ("predicted-vs-true", "Predicted against true age"),
    ("bland-altman", "Bland–Altman"),
    ("groups", "Brain-age gap by group"),
    ("reliability", "Test–retest and visits"),
    ("intervals", "Per-scan intervals"),
    ("pose", "Pose invariance"),
    ("baselines", "Network beside the baselines"),
    ("qc", "Quality control"),
    ("saliency", "Saliency"),
)
#: How many folders up from a scan to look for a synthetic cohort's ``cohort.json``.
COHORT_SEARCH_DEPTH = 4
#: The pose measurement the report shows when the run folder holds it (``bench/pose.py RUN --csv RUN/pose.csv``).
POSE_CSV = "pose.csv"

#: What docs/api.md shows: the page and the figures, which live in brainage.report_figures and stay importable from here.
__all__ = [
    "bland_altman", "build_report", "coverage_table", "find_cohort_summary", "gap_figure", "interval_figure", "pose_figure", "qc_montage",
    "saliency_figure", "spaghetti_figure",
]  # fmt: skip  # one list, not one name a line


@dataclass(frozen=True)
class Block:
    """One piece of a section, drawn by ``templates/report.html.j2``: a ``note`` or ``text`` paragraph,
    a ``yaml`` listing, an ``image`` (``text`` its alt, ``data`` the base64 PNG) or a ``table``, whose
    ``html`` comes from ``DataFrame.to_html`` here and is the only markup the template does not escape."""

    kind: Literal["note", "text", "yaml", "image", "table"]
    text: str = ""
    data: str = ""
    html: Markup | None = None


def build_report(
    run: str | Path,
    out: str | Path | None = None,
    saliency: str = "gradient",
    saliency_scans: int = 16,
    qc_scans: int = 6,
    heldout: str | Path | pd.DataFrame | None = None,
) -> Path:
    """Write the HTML report of the run folder ``run`` to ``out`` (default ``run/report.html``).

    ``saliency`` is ``"gradient"`` or ``"occlusion"``; it is averaged over at most
    ``saliency_scans`` test scans, each seen by the networks of the fold that did not train on it.
    ``qc_scans`` scans (the lowest and the highest registration scores) form the QC montage.
    ``heldout`` (a ``brainage predict`` CSV or its table, of people the run never saw, with their
    ages) adds their interval coverage beside the out-of-fold one.
    """
    if saliency not in METHODS:
        raise BrainAgeError(f"unknown saliency method {saliency!r}; choose from {', '.join(METHODS)}")
    run_dir = Path(run)
    config = _read_config(run_dir)
    evaluation = _read_evaluation(run_dir)
    if evaluation:  # settings of the last `brainage evaluate`, not those training started with
        config["train"] = {**(config.get("train") or {}), **{k: evaluation[k] for k in ("control_group", "bias_correction", "interval") if k in evaluation}}
    predictions = _read_csv(run_dir / "predictions.csv")
    cache, cache_note = _open_cache(config.get("cache"))
    cohort = find_cohort_summary(cache.manifest["path"] if cache is not None else [])
    body = {
        "configuration": _configuration(config),
        "cohort": _cohort(cache.manifest if cache is not None else predictions, cohort, cache_note),
        "training": (
            _note(
                f"Not trained: the weights of {train.get('init')} as they were, with only their output line to age re-fitted on each fold's training scans (epochs 0)."
            )
            if (train := config.get("train") or {}).get("epochs") == 0
            else _image_file(run_dir / "training.png", "loss, MAE, RMSE, learning rate and maximum gradient norm per epoch")
        )
        + _table(pd.DataFrame(config.get("folds") or []), "Scans and subjects per fold (split by subject)"),
        "predicted-vs-true": _image_file(run_dir / "predicted_vs_true.png", "out-of-fold predictions; the black line is the identity"),
        "bland-altman": _figure(bland_altman(predictions)),
        "groups": _groups(predictions),
        "reliability": _reliability(predictions, (config.get("train") or {}).get("control_group")),
        "intervals": _intervals(predictions, config, _heldout_table(heldout)),
        "pose": _pose(run_dir / POSE_CSV),
        "baselines": _baselines(run_dir, cohort),
        "qc": _qc(cache, qc_scans) if cache is not None else _note(cache_note),
        "saliency": _saliency(run_dir, predictions, cache, saliency, saliency_scans) if cache is not None else _note(cache_note),
    }
    environment = Environment(loader=PackageLoader("brainage", "templates"), autoescape=select_autoescape(["html", "html.j2"]))
    page = environment.get_template("report.html.j2").render(
        title=f"brainage report: {run_dir.resolve().name}",
        origin=f"Run folder {run_dir.resolve()}; brainage {__version__}.",
        sections=[(key, name, body[key]) for key, name in SECTIONS],
    )
    path = Path(out) if out is not None else run_dir / "report.html"
    with atomic_write(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path


def find_cohort_summary(paths: pd.Series | list[str]) -> dict[str, Any] | None:
    """The ``cohort.json`` of a synthetic cohort holding the first scan (searched a few folders up)."""
    if len(paths) == 0:
        return None
    for folder in list(Path(str(next(iter(paths)))).parents)[:COHORT_SEARCH_DEPTH]:
        candidate = folder / "cohort.json"
        if candidate.is_file():
            try:
                summary = json.loads(candidate.read_text())
            except (OSError, ValueError):
                return None
            keys = ("true_brain_age_mae", "best_possible_mae")  # the second in cohort.json files before the rename
            return summary if isinstance(summary, dict) and any(key in summary for key in keys) else None
    return None


# --- sections ------------------------------------------------------------------------------------


def _configuration(config: dict[str, Any]) -> list[Block]:
    train = config.get("train", {})
    preprocessing = config.get("preprocessing", {})
    resolved = config.get("resolved", {})
    held_out = train.get("test_fraction", train.get("val_fraction"))  # val_fraction: its name in older runs
    split = f"{train.get('folds')}-fold by subject" if train.get("folds") else f"hold-out of {held_out} of the subjects"
    rows = [
        ("model", f"{train.get('model')} {json.dumps(train.get('model_hparams') or {})}"),
        ("preprocessing", f"{preprocessing.get('pipeline')}, grid {preprocessing.get('shape')} at {preprocessing.get('voxel_size')} mm"),
        ("evaluation", split),
        ("epochs (max) / batch / learning rate", f"{train.get('epochs')} / {train.get('batch_size')} / {train.get('lr')}"),
        ("hardware", f"{resolved.get('accelerator')}, {resolved.get('precision')}"),
        ("cache", str(config.get("cache"))),
        ("scans in the cache", str(config.get("n_scans"))),
        ("seed", str(train.get("seed"))),
        ("brainage", str(config.get("brainage_version"))),
        *[("combined from", f"{source['run']} ({source['members']} network(s) a fold)") for source in config.get("combined_from") or []],
    ]
    table = _table(pd.DataFrame(rows, columns=["setting", "value"]))
    return [*table, Block("yaml", yaml.safe_dump(config, sort_keys=False))]


def _cohort(manifest: pd.DataFrame, cohort: dict[str, Any] | None, cache_note: str) -> list[Block]:
    sessions = manifest.drop_duplicates(["subject_id", "session_id"])
    first = manifest.drop_duplicates("subject_id")
    ages = manifest["age"].astype(float)
    rows = [
        ("subjects", manifest["subject_id"].nunique()),
        ("sessions", len(sessions)),
        ("scans", len(manifest)),
        ("age (years)", f"{ages.min():.0f}–{ages.max():.0f}, mean {ages.mean():.1f} ± {ages.std():.1f}"),
    ]
    if "sex" in manifest and manifest["sex"].notna().any():
        rows.append(("women", f"{int((first['sex'] == 'F').sum())} of {len(first)} subjects"))
    if "group" in manifest and manifest["group"].notna().any():
        counts = sessions["group"].value_counts().sort_index()
        rows.append(("sessions per group", ", ".join(f"{group} {count}" for group, count in counts.items())))
    if "qc_flagged" in manifest:
        rows.append(("scans flagged by QC (kept out of training)", int(manifest["qc_flagged"].fillna(False).astype(bool).sum())))
    if cohort is not None:
        best = _true_brain_age_mae(cohort)
        preset = cohort.get("preset", {})
        rows.append(("synthetic cohort", f"preset {preset.get('name', '?')}, seed {cohort.get('seed')}"))
        rows.append(
            (
                "MAE of the true brain age (a perfect brain reader)",
                f"{best.get('scan', math.nan):.2f} y per scan, {best.get('session', math.nan):.2f} y per session",
            )
        )
    text = [] if not cache_note else _note(f"{cache_note}; the counts are those of the predicted scans.")
    return _table(pd.DataFrame(rows, columns=["", "value"]).astype(str)) + text


def _groups(predictions: pd.DataFrame) -> list[Block]:
    if "group" not in predictions or predictions["group"].notna().sum() == 0:
        return _note("The scans have no clinical group.")
    corrected = "brain_age_corrected" in predictions and predictions["brain_age_corrected"].notna().any()
    column = "brain_age_corrected" if corrected else "brain_age"
    table, test = gap_by_group(predictions, by="group", column=column)
    if test["test"] == "none":
        line = "Too few subjects per group for a test."
    else:
        line = f"{test['test']} on per-subject mean gaps ({', '.join(map(str, test['groups']))}): statistic {test['statistic']:.2f}, p = {test['p_value']:.3g}."
    caption = f"Gap = {column.replace('_', ' ')} − age, averaged per subject first" + (
        "" if corrected else " (no bias correction was fitted: see bias_correction.yaml)"
    )
    return [*_table(table, caption), Block("text", line), *_figure(gap_figure(predictions, column))]


def _reliability(predictions: pd.DataFrame, control_group: list[str] | None = None) -> list[Block]:
    """Test–retest over the repeat scans of each session (of brain age, and of the gap: the figure
    that can fail) and consistency over each person's visits, controls (``control_group``, else
    from the data) first (uncorrected brain age: a linear bias correction divides every difference
    by its slope)."""
    try:
        retest, visits = test_retest(predictions), longitudinal(predictions, control_group=control_group)
        gaps = [
            gap_retest(predictions, column) for column in ("brain_age", "brain_age_corrected") if column in predictions and predictions[column].notna().any()
        ]
    except ValueError as error:  # predictions without session ids or ages
        return _note(f"Test–retest and visits: {error}.")
    if retest.available:
        values = retest.values
        caption = (
            f"Test–retest over the repeat scans of {values['n_sessions']} sessions ({values['n_scans']} scans), out-of-fold uncorrected brain age: "
            f"within-session SD pooled over every scan; ICC from the first {values['k']} scans of the {values['n_icc_sessions']} sessions "
            f"with at least {values['k']} (pingouin), 95 % intervals. The ICC of the gap (brain age − age, and the bias-corrected gap where "
            "a correction was fitted) leaves out the spread of ages between people, which makes the ICC of brain age high whatever the network reads."
        )
        rows = [retest.table]
        for column, gap in zip(("brain_age", "brain_age_corrected"), gaps, strict=False):
            if gap.available and "icc2" in gap.values:
                label = "gap" if column == "brain_age" else "corrected gap"
                iccs = gap.table[gap.table["measure"].str.startswith("ICC")]
                rows.append(iccs.assign(measure=iccs["measure"] + f", {label}"))
        text = _table(retest_display(pd.concat(rows, ignore_index=True)), caption) + (_note(retest.reason) if retest.reason else [])
    else:
        text = _note(f"Test–retest: {retest.reason}.")
    if visits.available:
        caption = (
            "Over each person's visits (repeat scans averaged), out-of-fold uncorrected brain age: per subject the slope of brain age "
            "on age (1: it moves with age), median and quartiles per group, and the SD of the gap over the person's visits"
            + ("; beside them the slope on the synthetic cohort's true brain age." if "slope_true_median" in visits.table else ".")
        )
        text += _table(visits_display(visits.table), caption) + (_note(visits.reason) if visits.reason else []) + _figure(spaghetti_figure(predictions))
    else:
        text += _note(f"Longitudinal consistency: {visits.reason}.")
    return text


def _intervals(predictions: pd.DataFrame, config: dict[str, Any], heldout: pd.DataFrame | None) -> list[Block]:
    """The out-of-fold per-scan intervals: measured coverage (all, per group, held-out people) and the figure."""
    nominal = (config.get("train") or {}).get("interval")
    if "brain_age_lower" not in predictions or predictions["brain_age_lower"].isna().all() or "age" not in predictions:
        return _note("Per-scan intervals: not available: the run has no calibrated intervals (trained without an interval, or with too few people).")
    table = coverage_table(predictions, heldout)
    nominal_text = f"{float(nominal):.0%} " if nominal is not None else ""
    caption = (
        f"{nominal_text}split-conformal intervals of the uncorrected brain age, out of fold: each fold's scans from a calibration on the "
        "other folds' people (one residual per session, its first scan's); coverage is the share of ages inside their scan's interval; "
        "width in years."
        + (
            " Held-out people: people the run never saw, predicted by the trained models with the calibration stored in their checkpoints."
            if heldout is not None
            else ""
        )
    )
    shown = pd.DataFrame({
        "set": table["set"], "scans": table["scans"], "ages inside": table["inside"],
        "coverage": [f"{value:.1%}" for value in table["coverage"]],
        "median width (years)": [f"{value:.1f}" for value in table["median_width"]],
    })  # fmt: skip  # keys grouped in rows
    if nominal is not None:
        shown[f"within ±{COVERAGE_TOLERANCE * 100:.0f} points of {float(nominal):.0%}"] = [
            "yes" if abs(value - float(nominal)) <= COVERAGE_TOLERANCE else "no" for value in table["coverage"]
        ]
    held = heldout is not None and "held-out people" in set(table["set"])
    text = _table(shown, caption) + ([] if held or heldout is None else _note("The held-out predictions have no intervals or no ages."))
    return text + _figure(interval_figure(predictions, float(nominal) if nominal is not None else None, heldout))


def _pose(path: Path) -> list[Block]:
    """The pose measurement of ``bench/pose.py`` when the run folder holds it; else how to make it."""
    if not path.is_file():
        return _note(
            f"Pose invariance: not measured for this run (no {path.name} in the run folder). "
            f"`python bench/pose.py RUN --csv RUN/{path.name}` re-poses scans (rotations up to ±15°, shifts up to ±15 mm, as new headers "
            "and as resampled voxels), predicts them from the raw files and writes what this section shows."
        )
    poses = pd.read_csv(path)
    missing = {"scan", "mode", "pose", "brain_age"} - set(poses.columns)
    if missing:
        return _note(f"Pose invariance: {path} lacks the columns {', '.join(sorted(missing))}.")
    rows = []
    for _k, ((scan, mode), frame) in enumerate(poses.groupby(["scan", "mode"], sort=False)):
        ages = frame["brain_age"].dropna()
        moved = frame.loc[frame["pose"] > 0, "brain_age"].dropna()
        rows.append({
            "scan": short_scan(str(scan)), "re-posed as": mode, "poses": len(ages),
            "SD (years)": f"{ages.std(ddof=1):.2f}" if len(ages) > 1 else "–",
            "SD without the identity (years)": f"{moved.std(ddof=1):.2f}" if len(moved) > 1 else "–",
            "range (years)": f"{np.ptp(ages):.2f}" if len(ages) else "–",
            f"SD ≤ {POSE_TARGET_SD:g} y": ("yes" if ages.std(ddof=1) <= POSE_TARGET_SD else "no") if len(ages) > 1 else "–",
            "QC lowest / identity": (f"{frame['qc_score'].min():.2f} / {frame.loc[frame['pose'] == 0, 'qc_score'].iloc[0]:.2f}"
                                     if "qc_score" in frame and (frame["pose"] == 0).any() else "–"),
        })  # fmt: skip  # keys grouped in rows
    caption = (
        f"From {path.name} (bench/pose.py): each scan written again in {poses['pose'].nunique()} poses (pose 0 the identity), as a new header "
        "(voxels untouched) and as voxels resampled in the same grid, predicted from the raw files; SD of the brain age across the poses "
        f"(target ≤ {POSE_TARGET_SD:g} y), and the QC score (correlation with the template) beside it."
    )
    return _table(pd.DataFrame(rows), caption) + _figure(pose_figure(poses))


def _heldout_table(heldout: str | Path | pd.DataFrame | None) -> pd.DataFrame | None:
    if heldout is None or isinstance(heldout, pd.DataFrame):
        return heldout
    return _read_csv(Path(heldout))


def _baselines(run_dir: Path, cohort: dict[str, Any] | None) -> list[Block]:
    path = run_dir / "summary.csv"
    if not path.is_file():
        return _note(f"{path} is missing.")
    summary = pd.read_csv(path)
    for column in [c for c in summary.columns if c.endswith("_p")]:  # p values to 2 significant digits, not 0.00
        summary[column] = [number(value, 2, "g") for value in summary[column]]
    text = _table(summary, "Out-of-fold accuracy in years: the network (uncorrected and bias-corrected) and the baselines fitted on the same folds")
    if cohort is not None:
        best = _true_brain_age_mae(cohort)
        text += _note(
            f"True brain age (a perfect brain reader) on this synthetic cohort: MAE {best['scan']:.2f} y per scan, "
            f"{best['session']:.2f} y per session; not a floor: a prediction pulled towards the mean age can score below it."
        )
    return text


def _true_brain_age_mae(cohort: dict[str, Any]) -> dict[str, float]:
    """The cohort's MAE of the true brain age against Age (``best_possible_mae`` in older cohort.json files)."""
    return cohort.get("true_brain_age_mae", cohort.get("best_possible_mae", {}))


def _qc(cache: PreparedCache, count: int) -> list[Block]:
    manifest = cache.manifest
    order = manifest["qc_score"].astype(float).sort_values(na_position="first").index.tolist()
    chosen = list(dict.fromkeys(order[: count - count // 2] + order[len(order) - count // 2 :]))
    flagged = int(manifest["qc_flagged"].fillna(False).astype(bool).sum()) if "qc_flagged" in manifest else 0
    threshold = cache.config.qc_threshold
    caption = (
        f"The {count - count // 2} lowest and {count // 2} highest registration scores (correlation with the MNI152 template) "
        f"of {len(manifest)} preprocessed scans; {flagged} flagged"
        + (f" below {threshold:g}." if threshold is not None else " (this pipeline sets no threshold).")
    )
    return _note(caption) + _figure(qc_montage(cache, chosen))


def _saliency(run_dir: Path, predictions: pd.DataFrame, cache: PreparedCache, method: str, limit: int) -> list[Block]:
    index = {scan: i for i, scan in enumerate(cache.manifest["scan_id"].astype(str))}
    rows = predictions[predictions["scan_id"].astype(str).isin(index)]
    folds = sorted(rows["fold"].unique()) if "fold" in rows else []
    per_fold = max(1, math.ceil(limit / max(1, len(folds))))
    total, count, used = None, 0, []
    for fold in folds:
        members = list(itertools.takewhile(Path.is_file, (fold_folder(run_dir, fold, m) / "model.ckpt" for m in itertools.count())))
        test = rows[rows["fold"] == fold]["scan_id"].astype(str).tolist()
        if not members or not test:
            continue
        picked = [test[int(k)] for k in np.linspace(0, len(test) - 1, min(per_fold, len(test)))]
        volumes = [np.asarray(cache.volume(index[scan]), dtype=np.float32) for scan in picked]
        network = BrainAgeEnsemble([load_checkpoint(path) for path in members])  # the fold's ensemble, as it predicted them
        fold_map = saliency_map(network, volumes, method).astype(np.float64)
        total = fold_map * len(volumes) if total is None else total + fold_map * len(volumes)
        count += len(volumes)
        used.extend(volumes)
    if total is None:
        return _note("No fold checkpoint and test scan to compute a saliency map from.")
    if isinstance(cache.config, StandardConfig):
        background, mask = template_on_grid(cache.affine, cache.shape)
        where = "the MNI152 template resampled to the cache grid, inside its brain mask"
    else:
        background = np.mean(used, axis=0)
        mask = background > background.min() + 0.05 * np.ptp(background)
        where = f"the mean of these scans, inside the head (the {cache.config.name} pipeline does not register to the template)"
    unit = "|∂ brain age / ∂ voxel|" if method == "gradient" else "|change of brain age| when an 8-voxel cube is occluded (years)"
    caption = (
        f"{method.capitalize()} saliency, {unit}, averaged over {count} test scans (each by the fold's networks, which did not train on it), over {where}."
    )
    figure = saliency_figure((total / count).astype(np.float32), np.asarray(background, dtype=np.float32), np.asarray(mask, dtype=bool), f"{method} saliency")
    return _note(caption) + _figure(figure)


# --- helpers -------------------------------------------------------------------------------------


def _read_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise InputError(run_dir, "not a brainage run folder (no config.yaml); run `brainage train` first")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise InputError(path, f"unreadable run configuration ({' '.join(str(error).split())})") from None


def _read_evaluation(run_dir: Path) -> dict[str, Any]:
    """``evaluation.yaml`` (written by every evaluation of the run), or nothing for runs written before it."""
    path = run_dir / "evaluation.yaml"
    try:
        return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}
    except yaml.YAMLError as error:
        raise InputError(path, f"unreadable evaluation settings ({' '.join(str(error).split())})") from None


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise InputError(path, "missing: the run did not finish; run `brainage train` again to resume it")
    return pd.read_csv(path, dtype={"scan_id": str, "subject_id": str, "session_id": str})


def _open_cache(root: str | None) -> tuple[PreparedCache | None, str]:
    if not root:
        return None, "The run does not name its cache"
    try:
        return load_cache(root), ""
    except InputError as error:
        return None, f"The cache is not available ({error})"


def _png(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(figure: Figure) -> list[Block]:
    return [Block("image", "figure", data=_png(figure))]


def _image_file(path: Path, caption: str) -> list[Block]:
    if not path.is_file():
        return _note(f"{path} is missing.")
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return [*_note(caption), Block("image", path.name, data=data)]


def _table(frame: pd.DataFrame, caption: str = "") -> list[Block]:
    if frame.empty:
        return []
    text = frame.to_html(index=False, border=0, na_rep="–", float_format=lambda value: f"{value:.2f}")
    return (_note(caption) if caption else []) + [Block("table", html=Markup(text))]  # built here from the frame: not escaped again


def _note(text: str) -> list[Block]:
    return [Block("note", text)]
