"""Training end to end on the tiny cohort: artefacts, out-of-fold predictions, checkpoints, seeds.

The run itself is the session fixture ``tiny_run`` (tests/conftest.py): a narrow SFCN, 2 folds by
subject, 1 epoch each, on the ``seed``-pipeline cache of the tiny cohort.
"""

from __future__ import annotations

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
from brainage.models import build_model
from brainage.preprocess import PreparedCache, config_from_dict, load_cache
from brainage.training import (
    BrainAgeModule, RunFolderError, TrainConfig, load_checkpoint, load_config, predict_ages, recompute_batch_norm, train,
)

IDS = {"scan_id": str, "subject_id": str, "session_id": str}


@pytest.fixture(scope="module")
def cache(tiny_cache_seed: Path) -> PreparedCache:
    return load_cache(tiny_cache_seed)


@pytest.fixture(scope="module")
def config(tiny_run: Path) -> TrainConfig:
    return load_config(tiny_run / "config.yaml")


def _csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=IDS)


def test_a_short_fit_writes_every_artefact(tiny_run: Path, config: TrainConfig, cache: PreparedCache) -> None:
    for name in ("config.yaml", "metrics.csv", "predictions.csv", "summary.csv", "training.png", "predicted_vs_true.png"):
        assert (tiny_run / name).stat().st_size > 0, name
    for fold in range(config.folds):
        assert (tiny_run / f"fold_{fold}" / "model.ckpt").is_file()
        assert not (tiny_run / f"fold_{fold}" / "best.ckpt").exists()  # Lightning's intermediate is removed
        assert (tiny_run / "logs" / f"fold_{fold}" / "csv" / "metrics.csv").is_file()
        assert list((tiny_run / "logs" / f"fold_{fold}" / "tensorboard").glob("events.out.tfevents.*"))
    history = pd.read_csv(tiny_run / "metrics.csv")
    assert list(history["fold"]) == [fold for fold in range(config.folds) for _ in range(config.epochs)]
    assert history.notna().all().all()
    np.testing.assert_allclose(history.loc[history["epoch"] == 1, "lr"], config.lr / config.warmup_epochs)
    assert (history["max_grad_norm"] > 0).all()
    saved = yaml.safe_load((tiny_run / "config.yaml").read_text())
    assert config_from_dict(saved["preprocessing"]) == cache.config
    assert saved["resolved"]["precision"] in ("32-true", "bf16-mixed")


def test_warm_up_then_plateau_schedule_follows_the_tutorial() -> None:
    module = BrainAgeModule(build_model("sfcn", width=0.125), 75.0, 8.0, TrainConfig(lr=3e-3, warmup_epochs=3, plateau_patience=0))
    (optimizer,), (warmup, plateau) = module.configure_optimizers()
    lrs = []
    for _ in range(5):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()  # no gradients: changes nothing, keeps the scheduler's order check quiet
        warmup["scheduler"].step()
    assert lrs == pytest.approx([1e-3, 2e-3, 3e-3, 3e-3, 3e-3])
    assert plateau["monitor"] == "val_loss"
    plateau["scheduler"].step(1.0)
    plateau["scheduler"].step(2.0)  # no improvement, patience 0: halve
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1.5e-3)


def test_every_scan_gets_one_out_of_fold_prediction_beside_the_baselines(tiny_run: Path, config: TrainConfig, cache: PreparedCache) -> None:
    predictions = _csv(tiny_run / "predictions.csv")
    assert sorted(predictions["scan_id"]) == sorted(cache.manifest["scan_id"])
    assert set(predictions["fold"]) == set(range(config.folds))
    for column in ("brain_age", "brain_age_corrected", "mean_age", "ridge_tabular", "ridge_voxels"):
        assert predictions[column].notna().all(), column
    # The mean baseline predicts each fold's mean training age: one value per fold.
    assert predictions.groupby("fold")["mean_age"].nunique().eq(1).all()
    summary = pd.read_csv(tiny_run / "summary.csv")
    assert set(summary["level"]) == {"scan", "session"}
    assert set(summary["model"]) == {config.model, "mean age", "ridge nWBV+eTIV+sex", "ridge voxels (PCA)"}
    network = summary[(summary["model"] == config.model) & (summary["level"] == "scan")]
    assert list(network["correction"]) == ["none", "linear"]
    assert network["n"].tolist() == [len(cache.manifest)] * 2
    sessions = summary[(summary["model"] == config.model) & (summary["level"] == "session")]
    assert sessions["n"].iloc[0] == cache.manifest["session_id"].nunique()
    assert network["mae"].iloc[0] == pytest.approx(np.abs(predictions["brain_age"] - predictions["age"]).mean())


def test_checkpoint_round_trips_and_carries_what_predict_needs(tiny_run: Path, config: TrainConfig, cache: PreparedCache) -> None:
    fold = make_folds(cache.manifest, config.folds, config.val_fraction, config.early_stopping_fraction, config.seed)[0]
    checkpoint = load_checkpoint(tiny_run / "fold_0" / "model.ckpt")
    train_ages = cache.manifest["age"].to_numpy()[fold.train]
    assert checkpoint.model_name == config.model and checkpoint.model.hparams["width"] == config.model_hparams["width"]
    assert checkpoint.age_mean == pytest.approx(train_ages.mean())
    assert checkpoint.age_std == pytest.approx(train_ages.std())
    assert checkpoint.train_age_range == pytest.approx((train_ages.min(), train_ages.max()))
    assert checkpoint.preprocessing == cache.config.to_dict()
    assert checkpoint.brainage_version and checkpoint.corrector is not None

    data = BrainAgeDataModule(cache, fold, batch_size=config.batch_size, num_workers=0)
    reloaded = predict_ages(checkpoint.model, data.loader(fold.test), checkpoint.age_mean, checkpoint.age_std)
    saved = _csv(tiny_run / "fold_0" / "predictions.csv")
    assert list(saved["scan_id"]) == list(cache.manifest["scan_id"].iloc[fold.test])
    np.testing.assert_allclose(reloaded, saved["brain_age"], atol=1e-3)
    np.testing.assert_allclose(checkpoint.corrector.transform(reloaded), saved["brain_age_corrected"], atol=1e-2)
    images = torch.stack([data.dataset(fold.test)[i][0] for i in range(2)])
    np.testing.assert_allclose(checkpoint.predict(images), reloaded[:2], atol=1e-4)


def test_checkpoint_holds_the_training_scans_batch_norm_statistics_and_predicts_what_validation_measured(
    tiny_run: Path, config: TrainConfig, cache: PreparedCache
) -> None:
    fold = make_folds(cache.manifest, config.folds, config.val_fraction, config.early_stopping_fraction, config.seed)[0]
    checkpoint = load_checkpoint(tiny_run / "fold_0" / "model.ckpt")
    data = BrainAgeDataModule(cache, fold, batch_size=config.batch_size, num_workers=0)
    # The first batch norm's running mean is the average over training batches of its input's channel means.
    first_conv, first_norm = checkpoint.model.features[0][:2]
    with torch.no_grad():
        batch_means = [first_conv(images).mean(dim=(0, 2, 3, 4)) for images, *_ in data.loader(fold.train)]
    torch.testing.assert_close(first_norm.running_mean, torch.stack(batch_means).mean(dim=0), rtol=1e-4, atol=1e-5)
    saved = {name: buffer.clone() for name, buffer in checkpoint.model.named_buffers() if "running" in name}
    recompute_batch_norm(checkpoint.model, data.loader(fold.train))
    for name, buffer in checkpoint.model.named_buffers():
        if "running" in name:
            torch.testing.assert_close(buffer, saved[name], rtol=1e-4, atol=1e-5)
    assert not checkpoint.model.training and {m.momentum for m in checkpoint.model.modules() if isinstance(m, torch.nn.BatchNorm3d)} == {0.1}
    val_predicted = predict_ages(checkpoint.model, data.loader(fold.val), checkpoint.age_mean, checkpoint.age_std)
    val_mae = np.abs(val_predicted - cache.manifest["age"].to_numpy()[fold.val]).mean()
    assert val_mae == pytest.approx(checkpoint.extra["best_val_mae"], abs=1e-3)


def test_same_seed_gives_the_same_split_and_metrics(tiny_run: Path, config: TrainConfig, cache: PreparedCache, tmp_path: Path) -> None:
    again = tmp_path / "again"
    shutil.copytree(tiny_run, again)
    for name in ("model.ckpt", "predictions.csv", "metrics.csv", "training.png"):
        (again / "fold_1" / name).unlink()
    rerun = train(cache, again, config)  # fold 0 is resumed, fold 1 trained again from its seed
    assert rerun is not None
    pd.testing.assert_frame_equal(rerun.folds, pd.DataFrame(yaml.safe_load((tiny_run / "config.yaml").read_text())["folds"]))
    pd.testing.assert_frame_equal(rerun.history, pd.read_csv(tiny_run / "metrics.csv"), check_dtype=False)
    pd.testing.assert_frame_equal(_csv(again / "predictions.csv"), _csv(tiny_run / "predictions.csv"))
    pd.testing.assert_frame_equal(pd.read_csv(again / "summary.csv"), pd.read_csv(tiny_run / "summary.csv"))


def test_the_cli_resumes_a_finished_run_and_refuses_a_different_one(tiny_run: Path, config: TrainConfig, tiny_cache_seed: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    settings = tmp_path / "train.yaml"
    settings.write_text(yaml.safe_dump(config.to_dict()))
    result = CliRunner().invoke(app, ["train", str(tiny_cache_seed), "--out", str(run), "--config", str(settings)])
    assert result.exit_code == 0, result.output
    mean_mae = pd.read_csv(tiny_run / "summary.csv").query("model == 'mean age' and level == 'scan'")["mae"].iloc[0]
    assert "ridge" in result.output and f"{mean_mae:.2f}" in result.output
    pd.testing.assert_frame_equal(_csv(run / "predictions.csv"), _csv(tiny_run / "predictions.csv"))
    refused = CliRunner().invoke(app, ["train", str(tiny_cache_seed), "--out", str(run), "--config", str(settings), "--epochs", "9"])
    assert refused.exit_code == 2 and "another run" in refused.output
    with pytest.raises(RunFolderError, match="not empty"):
        train(tiny_cache_seed, tmp_path, config)


def test_training_age_statistics_come_from_training_scans_only(cache: PreparedCache) -> None:
    fold = make_folds(cache.manifest, folds=2, seed=0)[1]
    data = BrainAgeDataModule(cache, fold, batch_size=4, num_workers=0)
    ages = cache.manifest["age"].to_numpy()
    assert data.age_mean == pytest.approx(ages[fold.train].mean())
    assert data.age_mean != pytest.approx(ages.mean())
    image, age_z, index = data.dataset(fold.train)[0]
    assert image.shape == (1, *cache.shape) and image.dtype == torch.float32
    assert float(age_z) == pytest.approx((ages[index] - data.age_mean) / data.age_std, abs=1e-6)


def test_an_unreadable_checkpoint_is_a_one_line_error_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "model.ckpt"
    bad.write_text("not a checkpoint")
    with pytest.raises(InputError, match="model.ckpt") as error:
        load_checkpoint(bad)
    assert "\n" not in str(error.value)
