"""Training end to end on a tiny cache: artefacts, out-of-fold predictions, checkpoints, seeds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

from brainage.cli import app
from brainage.data import BrainAgeDataModule, make_folds
from brainage.errors import InputError
from brainage.preprocess import PreparedCache, load_cache, make_config
from brainage.training import TrainConfig, RunFolderError, load_checkpoint, predict_ages, train

#: A fit small enough for 2 CPU cores: a narrow SFCN, 2 folds, 2 epochs.
CONFIG = TrainConfig(
    model="sfcn", model_hparams={"width": 0.125}, epochs=2, folds=2, batch_size=4, seed=0,
    progress=False, voxel_components=5, num_workers=0,
)


def _write_cache(root: Path, n_subjects: int = 8, side: int = 32, seed: int = 0) -> PreparedCache:
    """A prepared cache on disk, in the real format: subjects × 2 sessions × 2 scans whose
    brain (a ball) shrinks with age."""
    rng = np.random.default_rng(seed)
    config = make_config("seed", shape=(side, side, side))
    (root / "volumes").mkdir(parents=True)
    radius = np.sqrt((np.stack(np.meshgrid(*[np.linspace(-1, 1, side)] * 3, indexing="ij")) ** 2).sum(0))
    rows = []
    for s in range(n_subjects):
        first_age = rng.uniform(60, 90)
        for v in range(2):
            for r in range(2):
                age = first_age + 1.5 * v
                volume = (radius < 0.9 - (age - 60) / 100).astype(np.float32) + 0.1 * rng.standard_normal((side,) * 3, dtype=np.float32)
                scan_id = f"OAS2_{s:04d}_MR{v + 1}_mpr-{r + 1}"
                np.save(root / "volumes" / f"{scan_id}.npy", (volume - volume.mean()) / volume.std())
                rows.append({
                    "scan_id": scan_id, "subject_id": f"OAS2_{s:04d}", "session_id": f"OAS2_{s:04d}_MR{v + 1}",
                    "path": f"{scan_id}.img", "age": age, "sex": "MF"[s % 2], "group": ("Nondemented", "Demented")[s % 2],
                    "cdr": 0.5 * (s % 2), "etiv": rng.normal(1500, 100), "nwbv": 0.8 - (age - 60) / 300,
                    "cache_file": f"volumes/{scan_id}.npy", "qc_score": 0.9, "qc_flagged": False,
                    "config_digest": config.volume_digest(),
                })
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    meta = {"format": 1, "config": config.to_dict(), "shape": [side] * 3, "affine": config.affine.tolist()}
    (root / "cache.json").write_text(json.dumps(meta))
    return load_cache(root)


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> PreparedCache:
    return _write_cache(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def run(tiny_cache: PreparedCache, tmp_path_factory: pytest.TempPathFactory):
    return train(tiny_cache, tmp_path_factory.mktemp("runs") / "run", CONFIG)


def test_a_short_fit_writes_every_artefact(run) -> None:
    folder = run.run_dir
    for name in ("config.yaml", "metrics.csv", "predictions.csv", "summary.csv", "training.png", "predicted_vs_true.png"):
        assert (folder / name).stat().st_size > 0, name
    for fold in (0, 1):
        assert (folder / f"fold_{fold}" / "model.ckpt").is_file()
        assert not (folder / f"fold_{fold}" / "best.ckpt").exists()  # Lightning's intermediate is removed
        assert (folder / "logs" / f"fold_{fold}" / "csv" / "metrics.csv").is_file()
        assert list((folder / "logs" / f"fold_{fold}" / "tensorboard").glob("events.out.tfevents.*"))
    history = pd.read_csv(folder / "metrics.csv")
    assert list(history["epoch"]) == [1, 2, 1, 2]
    assert history.drop(columns="fold").notna().all().all()
    np.testing.assert_allclose(history["lr"], [CONFIG.lr / 3, 2 * CONFIG.lr / 3] * 2)  # 3-epoch warm-up
    assert (history["max_grad_norm"] > 0).all()
    saved = yaml.safe_load((folder / "config.yaml").read_text())
    assert TrainConfig.from_dict(saved["train"]) == CONFIG
    assert saved["preprocessing"]["pipeline"] == "seed"


def test_every_scan_gets_one_out_of_fold_prediction_beside_the_baselines(run, tiny_cache) -> None:
    predictions = pd.read_csv(run.run_dir / "predictions.csv", dtype={"scan_id": str})
    assert sorted(predictions["scan_id"]) == sorted(tiny_cache.manifest["scan_id"])
    assert set(predictions["fold"]) == {0, 1}
    for column in ("brain_age", "brain_age_corrected", "mean_age", "ridge_tabular", "ridge_voxels"):
        assert predictions[column].notna().all(), column
    summary = run.summary
    assert set(summary["level"]) == {"scan", "session"}
    assert set(summary["model"]) == {"sfcn", "mean age", "ridge nWBV+eTIV+sex", "ridge voxels (PCA)"}
    network = summary[(summary["model"] == "sfcn") & (summary["level"] == "scan")]
    assert set(network["correction"]) == {"none", "linear"}
    assert int(network["n"].iloc[0]) == len(tiny_cache.manifest)
    sessions = summary[(summary["model"] == "sfcn") & (summary["level"] == "session")]
    assert int(sessions["n"].iloc[0]) == tiny_cache.manifest["session_id"].nunique()
    # The mean baseline predicts each fold's training mean: one value per fold.
    assert predictions.groupby("fold")["mean_age"].nunique().eq(1).all()
    # The voxel ridge sees the ball shrink with age: it must beat the mean baseline here.
    assert np.abs(predictions["ridge_voxels"] - predictions["age"]).mean() < np.abs(predictions["mean_age"] - predictions["age"]).mean()


def test_checkpoint_round_trips_and_carries_what_predict_needs(run, tiny_cache) -> None:
    fold = make_folds(tiny_cache.manifest, CONFIG.folds, CONFIG.val_fraction, CONFIG.early_stopping_fraction, CONFIG.seed)[0]
    checkpoint = load_checkpoint(run.run_dir / "fold_0" / "model.ckpt")
    train_ages = tiny_cache.manifest["age"].to_numpy()[fold.train]
    assert checkpoint.model_name == "sfcn" and checkpoint.model.hparams["width"] == 0.125
    assert checkpoint.age_mean == pytest.approx(train_ages.mean())
    assert checkpoint.age_std == pytest.approx(train_ages.std())
    assert checkpoint.train_age_range == pytest.approx((train_ages.min(), train_ages.max()))
    assert checkpoint.preprocessing == tiny_cache.config.to_dict()
    assert checkpoint.brainage_version and checkpoint.corrector is not None

    data = BrainAgeDataModule(tiny_cache, fold, batch_size=4, num_workers=0)
    reloaded = predict_ages(checkpoint.model, data.loader(fold.test), checkpoint.age_mean, checkpoint.age_std)
    saved = pd.read_csv(run.run_dir / "fold_0" / "predictions.csv")
    np.testing.assert_allclose(reloaded, saved["brain_age"], atol=1e-4)
    np.testing.assert_allclose(checkpoint.corrector.transform(reloaded), saved["brain_age_corrected"], atol=1e-3)
    images = torch.stack([data.dataset(fold.test)[i][0] for i in range(2)])
    np.testing.assert_allclose(checkpoint.predict(images), saved["brain_age"][:2], atol=1e-4)


def test_same_seed_gives_the_same_split_and_metrics(run, tiny_cache, tmp_path) -> None:
    again = tmp_path / "again"
    shutil.copytree(run.run_dir, again)
    for name in ("model.ckpt", "predictions.csv", "metrics.csv", "training.png"):
        (again / "fold_1" / name).unlink()
    rerun = train(tiny_cache, again, CONFIG)  # fold 0 is resumed, fold 1 trained again from its seed
    pd.testing.assert_frame_equal(rerun.folds, run.folds)
    pd.testing.assert_frame_equal(rerun.history, run.history)
    pd.testing.assert_frame_equal(rerun.predictions, run.predictions, check_dtype=False)
    pd.testing.assert_frame_equal(rerun.summary, run.summary)


def test_a_finished_run_is_resumed_not_retrained_and_another_run_is_refused(run, tiny_cache, tmp_path) -> None:
    resumed = train(tiny_cache, run.run_dir, CONFIG)
    pd.testing.assert_frame_equal(resumed.predictions, run.predictions, check_dtype=False)
    with pytest.raises(RunFolderError, match="another run"):
        train(tiny_cache, run.run_dir, TrainConfig(**{**CONFIG.__dict__, "epochs": 3}))


def test_cli_train_prints_the_summary_of_a_run(run, tiny_cache, tmp_path) -> None:
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(CONFIG.to_dict()))
    result = CliRunner().invoke(app, ["train", str(tiny_cache.root), "--out", str(run.run_dir), "--config", str(config)])
    assert result.exit_code == 0, result.output
    mean_mae = run.summary.query("model == 'mean age' and level == 'scan'")["mae"].iloc[0]
    assert "ridge" in result.output and f"{mean_mae:.2f}" in result.output
    refused = CliRunner().invoke(app, ["train", str(tiny_cache.root), "--out", str(run.run_dir), "--config", str(config), "--epochs", "9"])
    assert refused.exit_code == 2 and "another run" in refused.output


def test_training_age_statistics_come_from_training_scans_only(tiny_cache) -> None:
    fold = make_folds(tiny_cache.manifest, folds=2, seed=0)[1]
    data = BrainAgeDataModule(tiny_cache, fold, batch_size=4, num_workers=0)
    ages = tiny_cache.manifest["age"].to_numpy()
    assert data.age_mean == pytest.approx(ages[fold.train].mean())
    image, age_z, index = data.dataset(fold.train)[0]
    assert image.shape == (1, *tiny_cache.shape) and image.dtype == torch.float32
    assert float(age_z) == pytest.approx((ages[index] - data.age_mean) / data.age_std, abs=1e-6)


def test_an_unreadable_checkpoint_is_a_one_line_error_naming_the_file(tmp_path) -> None:
    bad = tmp_path / "model.ckpt"
    bad.write_text("not a checkpoint")
    with pytest.raises(InputError, match="model.ckpt"):
        load_checkpoint(bad)
