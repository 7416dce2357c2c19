# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Brain age from T1-weighted MRI: a walkthrough of the `brainage` Python API
#
# **Brain age** is the age a brain *looks*: a model trained on structural MRI of many people learns
# the pattern of ageing (a thinning cortex, widening sulci, growing ventricles, darkening white
# matter) and predicts an age from a new scan. The difference between the brain age and the
# person's real age is the **brain-age gap** (also called BrainAGE or brain-PAD). A positive gap
# means a brain that looks older than its years; studies report positive gaps in dementia and
# other conditions.
#
# This notebook walks through the whole method with the Python API, on a **synthetic cohort**
# shaped like OASIS-2 (same folders, same file format, same spreadsheet) so that it runs anywhere
# without a data-use agreement, and so that we know the true brain age of every scan:
#
# 1. generate a cohort and look at its spreadsheet;
# 2. discover the scans and inspect the manifest (one row per scan);
# 3. preprocess: look at slices before and after, with their quality-control (QC) scores;
# 4. train a small 3D CNN with subject-grouped folds (short, so it runs on a laptop);
# 5. compare it with the baselines fitted on the same folds;
# 6. predict the brain age of new people from their raw scans;
# 7. compare the brain-age gap between clinical groups;
# 8. see where the network looks (a saliency map).
#
# Every number below is printed by the code as it runs; none is typed into the text. The
# environment variable `BRAINAGE_TUTORIAL_PRESET` picks the cohort size: `demo` (the default,
# the same cohort as `make demo`) or `tiny` (what CI runs: a handful of people, a couple of
# epochs; the results are then only a smoke test, not a model worth reading).

# %%
import json
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import Image, display

from brainage.cohort import GROUND_TRUTH, SPREADSHEET, SUMMARY, get_preset, synthesize
from brainage.data import subject_holdout
from brainage.demo import training_for
from brainage.evaluation import gap_by_group
from brainage.io import discover, load_scan, summarize
from brainage.predict import BrainAgeEnsemble, BrainAgeModel, accuracy_table
from brainage.preprocess import load_cache, make_config, prepare, preprocess_scan
from brainage.preprocess.template import template_on_grid
from brainage.report import gap_figure, saliency_figure
from brainage.saliency import saliency_map
from brainage.training import TrainConfig, load_checkpoint, train

PRESET = os.environ.get("BRAINAGE_TUTORIAL_PRESET", "demo")
SEED = 0
WORKERS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
# The `standard` pipeline (skull stripping + registration to MNI space) costs seconds per scan;
# on `tiny` the whole cohort goes through the tutorial's fast `seed` pipeline instead.
PIPELINE = "seed" if PRESET == "tiny" else "standard"
FOLDS = 2 if PRESET == "tiny" else 3  # a study would take 5 or 10; each fold is one more training run
OUT = Path("brainage-tutorial") / PRESET
pd.set_option("display.precision", 2)
print(f"preset {PRESET}, pipeline {PIPELINE}, {FOLDS}-fold by subject, {WORKERS} worker(s), output in {OUT.resolve()}")

# %% [markdown]
# ## 1. A synthetic OASIS-2-shaped cohort
#
# OASIS-2 is a longitudinal study of older adults, some without dementia, some with it, and some
# who converted during the study. Each person came to two or more visits (*sessions*), and each
# session holds several repeat T1-weighted MPRAGE acquisitions (*scans*) of the same brain.
#
# `synthesize` builds such a cohort from the MNI152 template: it draws each person's age, sex, group
# and a hidden per-person *brain-age offset*, ages the template's anatomy to that brain age, and
# writes the scans exactly as OASIS-2 stores them (`OAS2_RAW_PART1/<MRI ID>/RAW/mpr-1.nifti.hdr`
# and `.img`) beside the demographics spreadsheet. The hidden truth goes to `ground_truth.csv`.
# A second run of this cell reuses the cohort already written.

# %%
cohort = OUT / "cohort"
if not (cohort / SUMMARY).is_file():
    synthesize(cohort, get_preset(PRESET), seed=SEED, workers=WORKERS)
made = json.loads((cohort / SUMMARY).read_text())
spreadsheet = pd.read_excel(cohort / SPREADSHEET)
spreadsheet.head()

# %% [markdown]
# The spreadsheet has OASIS-2's columns: `Age` at the visit, `Group`, `CDR` (Clinical Dementia
# Rating), `MMSE`, and the whole-brain measures `eTIV` (estimated total intracranial volume) and
# `nWBV` (normalised whole-brain volume, which falls with age and atrophy).
#
# Because we planted the brain ages ourselves, we know the error of a *perfect* model: the hidden
# offsets make brain age differ from real age, and no image can reveal how much of the difference
# is offset and how much is age. The MAE of the true brain age (a perfect brain reader) is the
# reference to read any result against; it is not a floor: a prediction pulled towards the mean age
# can score below it.

# %%
best = made["true_brain_age_mae"]
print(f"true brain age MAE on this cohort: {best['scan']:.2f} years per scan, {best['session']:.2f} per session")

# %% [markdown]
# ## 2. Discover the scans: the manifest
#
# `discover` recognises an OASIS-2 folder (or a BIDS folder, or a CSV of scans), pairs every scan
# with its spreadsheet row (no conversion of the `.xlsx` needed) and returns a **manifest**: one row
# per scan with `scan_id`, `subject_id`, `session_id`, `path`, `age` and the clinical columns.
# Anything it cannot use is listed in `problems` rather than stopping the run.

# %%
found = discover(cohort)
manifest = found.manifest
display(summarize(found))
manifest[["scan_id", "subject_id", "session_id", "age", "sex", "group", "cdr", "nwbv"]].head()

# %% [markdown]
# Scans of one person are far more alike than scans of two people of the same age. If the same
# person lands in both the training and the test data, a network can recognise the *person*
# instead of learning *ageing*, and its test error is too optimistic. Every split below is
# therefore **by subject**, never by session or scan.
#
# To play the part of new people at the end, we first set a few subjects aside; they will never
# reach preprocessing or training.

# %%
kept, held_out = subject_holdout(manifest, 0.1, SEED)
study, newcomers = manifest.iloc[kept], manifest.iloc[held_out]
print(f"{study.subject_id.nunique()} subjects ({len(study)} scans) for the study, "
      f"{newcomers.subject_id.nunique()} subjects ({len(newcomers)} scans) held out as new people")
print("subjects on both sides:", len(set(study.subject_id) & set(newcomers.subject_id)))

fig, ax = plt.subplots(figsize=(6, 3))
for group, rows in study.drop_duplicates("session_id").groupby("group"):
    ax.hist(rows["age"], bins=range(55, 101, 3), alpha=0.6, label=group)
ax.set(xlabel="Age at the session (years)", ylabel="Sessions", title="Ages by clinical group")
ax.legend()
plt.show()

# %% [markdown]
# ## 3. Preprocessing, and what it does to a scan
#
# A raw scan is in the scanner's space: the head sits wherever it was positioned, surrounded by
# skull, scalp and neck, with the scanner's own intensity scale. A network learns faster and more
# honestly when every brain sits in the same place, at the same scale, with comparable intensities.
# `brainage` has two pipelines:
#
# - **`standard`** (the default): reorient to RAS → skull stripping (deepbet) → affine
#   registration of the brain to the MNI152 template (ANTs) → resampling into a fixed grid in
#   MNI space → robust z-score of the intensities inside the brain mask. Its QC score is the
#   correlation of the result with the template inside the brain; scans scoring under the
#   threshold are flagged and kept out of training.
# - **`seed`**: the original tutorial's recipe, kept for comparison: the whole raw volume
#   resampled onto a grid anchored at the world origin, and z-scored. No skull stripping, no
#   registration.
#
# Here is one scan before preprocessing and after each pipeline, through the centre of each volume.

# %%
example = study.iloc[0]
raw = load_scan(example.path)
after = {name: preprocess_scan(example.path, make_config(name)) for name in ("seed", "standard")}


def three_slices(volume: np.ndarray) -> list[np.ndarray]:
    """Sagittal, coronal and axial slices through the middle of a volume."""
    x, y, z = (n // 2 for n in volume.shape)
    return [volume[x].T, volume[:, y].T, volume[:, :, z].T]


rows = {f"raw {raw.data.shape}, voxels {tuple(round(float(v), 2) for v in raw.zooms)} mm": raw.data}
rows.update({f"{name}: QC score {prepared.qc_score:.2f}": prepared.volume.astype(np.float32) for name, prepared in after.items()})
fig, axes = plt.subplots(len(rows), 3, figsize=(8, 2.8 * len(rows)), layout="constrained")
for row_axes, (title, volume) in zip(axes, rows.items()):
    for ax, image, plane in zip(row_axes, three_slices(volume), ("sagittal", "coronal", "axial")):
        ax.imshow(image, origin="lower", cmap="gray", vmin=np.percentile(volume, 1), vmax=np.percentile(volume, 99))
        ax.set_title(f"{title}\n{plane}" if plane == "sagittal" else plane, fontsize=8, loc="left" if plane == "sagittal" else "center")
        ax.axis("off")
fig.suptitle(f"{example.scan_id}: before and after preprocessing")
plt.show()

# %% [markdown]
# The raw voxel grid follows the acquisition (sagittal slices, the head rotated and shifted); the
# `seed` grid takes a fixed box of world space, whatever falls into it; the `standard` result is
# the brain alone, in the template's position, which is what makes one voxel mean the same place in
# every scan.
#
# `prepare` runs a pipeline over the whole study once and stores the results in a **cache**: one
# volume per scan keyed by a hash of the file's content and of the configuration, a QC picture per
# scan, and the manifest. Training reads the cache memory-mapped, so no scan is ever loaded and
# resampled again; a second `prepare` finds everything done.
#
# Which pipeline fills the cache depends on the preset: `standard` on `demo`, as a study would, and
# `seed` on `tiny`, because skull stripping and registration cost seconds per scan and `tiny` exists
# to run the whole notebook in CI within minutes. A network on `seed` volumes sees heads in
# arbitrary positions, so do not read the `tiny` results as what the method can do.

# %%
prepared = prepare(study, OUT / "cache", PIPELINE, workers=WORKERS)
print(", ".join(f"{row['outcome']}: {row['scans']}" for row in prepared.summary()))
cache = load_cache(OUT / "cache")
print(f"{len(cache)} scans in the cache, grid {cache.shape} of {cache.config.voxel_size} mm, pipeline {cache.config.name}")
lowest = cache.manifest.sort_values("qc_score").iloc[0]
print(f"lowest QC score: {lowest.scan_id} ({lowest.qc_score:.2f}); its QC picture:")
display(Image(filename=str(cache.root / lowest.qc_file)))

# %% [markdown]
# ## 4. Training with subject-grouped folds
#
# `train` fits the network with K-fold cross-validation **by subject**: each fold trains on some
# people and predicts others it has never seen, so every scan of the study gets one *out-of-fold*
# prediction. Inside each fold's training side, a share of the subjects is set apart for early
# stopping and for picking the best epoch; the test side is used for nothing but the reported
# numbers. The age-bias correction (below) of each fold is fitted on the *other* folds'
# out-of-fold predictions, never on the people it corrects.
#
# The optimisation follows the original tutorial: AdamW, mean squared error on z-scored ages, a
# learning-rate warm-up, reduce-on-plateau, gradient clipping, early stopping, the best checkpoint,
# and train-only augmentation (noise, intensity scaling, left–right flips). The settings below are
# the demo's (`brainage.demo.training_for`): short, so the notebook runs on a laptop CPU. A real
# study trains longer (see `TrainConfig`'s defaults).

# %%
config = TrainConfig(**{**training_for(PRESET), "folds": FOLDS, "seed": SEED, "progress": False})
print({key: value for key, value in config.to_dict().items() if key in ("model", "model_hparams", "epochs", "batch_size", "lr", "folds")})
result = train(cache, OUT / "run", config)
print(f"trained on {result.accelerator} with {result.precision} precision")
result.folds

# %% [markdown]
# The per-epoch curves (loss, MAE and RMSE in years, learning rate, largest gradient norm) are
# saved in the run folder beside the out-of-fold predictions and one checkpoint per fold:

# %%
display(Image(filename=str(result.run_dir / "training.png"), width=700))
result.history.groupby("fold").tail(1)

# %% [markdown]
# ## 5. The network beside the baselines
#
# An error in years means little on its own. With ages spread over a few decades, **always
# predicting the mean training age** already gives a respectable-looking MAE; the original
# tutorial's network ended at that level. `train` therefore fits baselines on the very same folds:
#
# - **mean age**: the mean training age for every scan, the floor any model must clear;
# - **ridge nWBV+eTIV+sex**: a linear model on the spreadsheet's whole-brain measures;
# - **ridge voxels (PCA)**: a linear model on down-sampled preprocessed volumes.
#
# Predicted brain age is biased towards the mean age (regression dilution: the young look older,
# the old younger). The *bias-corrected* rows subtract the gap's own age trend (`gap = α·age + β`,
# Beheshti et al. 2019), fitted on the controls of the other folds at session level; with fewer
# than 20 control subjects, or a trend that could be zero, it is refused and says why. Rows are per
# session (repeats averaged). On a synthetic cohort the true brain age is known, so `mae_true` and
# `gap_fidelity` (the partial correlation of predicted with true brain age given age) say how well
# the network reads brain age, not only age.

# %%
sessions_summary = result.summary[result.summary["level"] == "session"]
display(sessions_summary[["model", "correction", "n", "mae", "mae_true", "gap_fidelity", "gap_age_r"]])
network = sessions_summary[(sessions_summary["model"] == config.model) & (sessions_summary["correction"] == "none")].iloc[0]
mean_age = sessions_summary[sessions_summary["model"] == "mean age"].iloc[0]
print(f"network MAE {network.mae:.2f} y against {mean_age.mae:.2f} y for the mean age "
      f"and {best['session']:.2f} y for the true brain age (a perfect brain reader; not a floor)")
print(result.corrector.describe())

# %%
display(Image(filename=str(result.run_dir / "predicted_vs_true.png"), width=700))

# %% [markdown]
# `gap_age_r` is the correlation of the gap with age: the age bias, negative when predictions are
# pulled towards the mean. The correction removes that trend without dividing by anything, so a
# noisy fit cannot blow the values up; on `tiny` (a dozen people) it is refused, and the corrected
# columns stay empty rather than made up. Report both, as the field does.
#
# ## 6. Brain age of new people
#
# `BrainAgeModel.load` takes a run folder (or checkpoints) and averages its fold models. Each
# checkpoint carries its preprocessing configuration, so `predict` takes **raw** scans, preprocesses
# them exactly as in training, and predicts each with its left–right mirror image. A single file of
# unknown age gives a brain age and no gap:

# %%
model = BrainAgeModel.load(result.run_dir)
one_scan = model.predict(newcomers.path.iloc[0])
one_scan[["scan_id", "brain_age", "brain_age_corrected", "qc_score", "warnings"]]

# %% [markdown]
# Given a table with ages (here the held-out people's manifest rows; a CSV with `path` and `age`
# columns works the same), it also gives the gap, with and without the bias correction, and
# `sessions=True` averages the repeat scans of each visit:

# %%
new_people = model.predict(newcomers, workers=WORKERS)
display(new_people[["scan_id", "subject_id", "group", "age", "brain_age", "brain_age_corrected", "brain_age_gap_corrected"]])
display(accuracy_table(new_people, model.mean_training_age))
model.predict(newcomers, sessions=True, workers=WORKERS)[["session_id", "n_scans", "age", "brain_age_corrected", "brain_age_gap_corrected"]]

# %% [markdown]
# ## 7. The brain-age gap by clinical group
#
# The question most studies ask: do people with dementia have older-looking brains? Repeat scans
# and visits of one person are not independent, so `gap_by_group` first averages each subject's
# gaps, then compares the groups (Welch's t-test for two groups, a one-way ANOVA for more). We use
# the bias-corrected out-of-fold predictions where a correction was fitted (else the uncorrected
# ones, as on `tiny`), so that groups of different mean age are comparable.
#
# In this synthetic cohort we know the answer: the planted gap (true brain age minus spreadsheet
# age) is printed beside the estimate.

# %%
column = "brain_age_corrected" if result.predictions["brain_age_corrected"].notna().any() else "brain_age"
gaps, test = gap_by_group(result.predictions, by="group", column=column)
truth = pd.read_csv(cohort / GROUND_TRUTH).drop_duplicates("MRI ID")  # brain age is per session
truth = truth.assign(session_id=truth["MRI ID"], true_gap=truth["brain_age"] - truth["Age"])
sessions = study.drop_duplicates("session_id").merge(truth[["session_id", "true_gap"]], on="session_id")
planted = sessions.groupby(["group", "subject_id"])["true_gap"].mean().groupby("group").mean()
display(gaps.assign(planted_gap=gaps["group"].map(planted)))
print(f"{test['test']}: statistic {test['statistic']:.2f}, p = {test['p_value']:.3g}" if test["test"] != "none" else "too few subjects per group for a test")
display(gap_figure(result.predictions, column))

# %% [markdown]
# On `tiny` there are too few people for the gaps to mean anything; on `demo` (or OASIS-2 itself)
# compare the estimated gaps with the planted ones and with the true brain age's MAE above.
#
# ## 8. Where does the network look?
#
# A saliency map shows which voxels change the prediction most: here the absolute gradient of the
# predicted brain age with respect to each voxel, averaged over test scans, each seen by the fold
# model that never trained on it. With the `standard` pipeline every scan is in MNI space, so the
# map is drawn over the template (with `seed`, over the mean scan). In this cohort, as in people,
# ageing shows in the ventricles, the sulci and the cortex.

# %%
position = {scan: i for i, scan in enumerate(cache.manifest["scan_id"])}
total, volumes = 0.0, []
for fold, rows in result.predictions.groupby("fold"):
    test_volumes = [np.asarray(cache.volume(position[scan]), dtype=np.float32) for scan in rows["scan_id"][:8]]
    network = BrainAgeEnsemble([load_checkpoint(result.run_dir / f"fold_{fold}" / "model.ckpt")])
    total = total + saliency_map(network, test_volumes, "gradient") * len(test_volumes)
    volumes += test_volumes
if cache.config.name == "standard":
    background, mask = template_on_grid(cache.affine, cache.shape)
    where = "over the MNI152 template"
else:
    background = np.mean(volumes, axis=0)
    mask = background > background.min() + 0.05 * np.ptp(background)
    where = "over the mean scan (the seed pipeline does not register)"
title = f"gradient saliency, mean of {len(volumes)} test scans, {where}"
display(saliency_figure(total / len(volumes), np.asarray(background, dtype=np.float32), np.asarray(mask, dtype=bool), title))

# %% [markdown]
# ## Where next
#
# The same steps from the command line, on your own data (OASIS-2, BIDS or a CSV of scans), are in
# the README and in `docs/`:
#
# ```bash
# brainage inspect oasis2/
# brainage prepare oasis2/ --out cache/
# brainage train cache/ --out run/ --folds 5
# brainage predict run/ new_scan.nii.gz -o predictions.csv
# brainage report run/ -o report.html
# ```
#
# `brainage report` gathers the figures of this notebook (and a Bland–Altman plot and a QC
# montage) into one HTML file.
