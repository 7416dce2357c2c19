"""Training end to end on the tiny cohort: artefacts, out-of-fold predictions, checkpoints, seeds.

The run itself is the session fixture ``tiny_run`` (tests/conftest.py): a narrow SFCN, 2 folds by
subject, 1 epoch each, on the ``seed``-pipeline cache of the tiny cohort.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

from brainage.baselines import BASELINES
from brainage.checkpoint import TrainingOverlapError
from brainage.cli import app
from brainage.data import BrainAgeDataModule, make_folds
from brainage.errors import BrainAgeError, InputError
from brainage.evaluation import TRUE_BRAIN_AGE_LABEL
from brainage.inference import BrainAgeEnsemble, predict_batches
from brainage.models import build_model
from brainage.predict import BrainAgeModel
from brainage.preprocess import PreparedCache, config_from_dict
from brainage.report import build_report
from brainage.training import (
    BrainAgeModule,
    ConfigError,
    RunFolderError,
    TrainConfig,
    TrainingDiverged,
    calibrate_intervals,
    combine,
    correct_bias,
    load_checkpoint,
    recompute_batch_norm,
    save_checkpoint,
    train,
)
from brainage.training.run import calibration_split, calibration_warning

IDS = {"scan_id": str, "subject_id": str, "session_id": str}


def _csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=IDS)


@torch.inference_mode()
def _plain_predictions(model: torch.nn.Module, loader: object, age_mean: float, age_std: float) -> np.ndarray:
    """Brain age as validation measured it during training: one forward pass, no flip averaging."""
    model.eval()
    return torch.cat([model.predict_z(model(images)).float() for images, *_ in loader]).double().numpy() * age_std + age_mean


def test_a_short_fit_writes_every_artefact(tiny_run: Path, tiny_config: TrainConfig, tiny_cache: PreparedCache) -> None:
    for name in ("config.yaml", "metrics.csv", "predictions.csv", "summary.csv", "training.png", "predicted_vs_true.png"):
        assert (tiny_run / name).stat().st_size > 0, name
    for fold in range(tiny_config.folds):
        assert (tiny_run / f"fold_{fold}" / "model.ckpt").is_file()
        assert not (tiny_run / f"fold_{fold}" / "best.ckpt").exists()  # Lightning's intermediate is removed
        assert (tiny_run / "logs" / f"fold_{fold}" / "csv" / "metrics.csv").is_file()
        assert list((tiny_run / "logs" / f"fold_{fold}" / "tensorboard").glob("events.out.tfevents.*"))
    history = pd.read_csv(tiny_run / "metrics.csv")
    assert list(history["fold"]) == [fold for fold in range(tiny_config.folds) for _ in range(tiny_config.epochs)]
    assert history.notna().all().all()
    np.testing.assert_allclose(history.loc[history["epoch"] == 1, "lr"], tiny_config.lr / tiny_config.warmup_epochs)
    assert (history["max_grad_norm"] > 0).all()
    saved = yaml.safe_load((tiny_run / "config.yaml").read_text())
    assert config_from_dict(saved["preprocessing"]) == tiny_cache.config
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


def test_every_scan_gets_one_out_of_fold_prediction_beside_the_baselines(tiny_run: Path, tiny_config: TrainConfig, tiny_cache: PreparedCache) -> None:
    predictions = _csv(tiny_run / "predictions.csv")
    assert sorted(predictions["scan_id"]) == sorted(tiny_cache.manifest["scan_id"])
    assert set(predictions["fold"]) == set(range(tiny_config.folds))
    for column in ("brain_age", *BASELINES, "true_brain_age"):
        assert predictions[column].notna().all(), column
    # 12 subjects: too few controls for a bias correction, so none is applied and none is made up.
    assert "brain_age_corrected" in predictions and predictions["brain_age_corrected"].isna().all()
    # The mean baseline predicts each fold's mean training age: one value per fold.
    assert predictions.groupby("fold")["mean_age"].nunique().eq(1).all()
    summary = pd.read_csv(tiny_run / "summary.csv")
    assert list(summary["level"].drop_duplicates()) == ["session", "scan"]  # the headline level first
    assert set(summary["model"]) == {tiny_config.model, *BASELINES.values(), TRUE_BRAIN_AGE_LABEL}
    network = summary[(summary["model"] == tiny_config.model) & (summary["level"] == "scan")]
    assert list(network["correction"]) == ["none"]
    assert network["n"].tolist() == [len(tiny_cache.manifest)]
    sessions = summary[(summary["model"] == tiny_config.model) & (summary["level"] == "session")]
    assert sessions["n"].iloc[0] == tiny_cache.manifest["session_id"].nunique()
    assert network["mae"].iloc[0] == pytest.approx(np.abs(predictions["brain_age"] - predictions["age"]).mean())
    truth = summary[(summary["model"] == TRUE_BRAIN_AGE_LABEL) & (summary["level"] == "scan")]
    assert truth["mae"].iloc[0] == pytest.approx(np.abs(predictions["true_brain_age"] - predictions["age"]).mean())
    assert truth["gap_fidelity"].iloc[0] == pytest.approx(1.0) and truth["mae_true"].iloc[0] == 0


def test_no_fold_is_corrected_with_a_fit_on_its_own_people(tiny_run: Path, tiny_config: TrainConfig) -> None:
    predictions = _csv(tiny_run / "predictions.csv")
    record = yaml.safe_load((tiny_run / "bias_correction.yaml").read_text())
    assert record["method"] == "residual" and [fit["fold"] for fit in record["folds"]] == list(range(tiny_config.folds))
    for fit in record["folds"]:
        tested = set(predictions.loc[predictions["fold"] == fit["fold"], "subject_id"])
        assert fit["subjects"] and not set(fit["subjects"]) & tested
        assert fit["refused"] and "at least 20" in fit["refused"]
    stored = load_checkpoint(tiny_run / "fold_0" / "model.ckpt").corrector.to_dict()
    assert yaml.safe_dump(stored) == yaml.safe_dump({key: record["final"][key] for key in stored})  # NaN-safe comparison


def test_checkpoint_round_trips_and_carries_what_predict_needs(tiny_run: Path, tiny_config: TrainConfig, tiny_cache: PreparedCache) -> None:
    fold = make_folds(tiny_cache.manifest, tiny_config.folds, tiny_config.test_fraction, tiny_config.early_stopping_fraction, tiny_config.seed)[0]
    checkpoint = load_checkpoint(tiny_run / "fold_0" / "model.ckpt")
    train_ages = tiny_cache.manifest["age"].to_numpy()[fold.train]
    assert checkpoint.model_name == tiny_config.model and checkpoint.model.hparams["width"] == tiny_config.model_hparams["width"]
    assert checkpoint.age_mean == pytest.approx(train_ages.mean())
    assert checkpoint.age_std == pytest.approx(train_ages.std())
    assert checkpoint.train_age_range == pytest.approx((train_ages.min(), train_ages.max()))
    assert checkpoint.preprocessing == tiny_cache.config.to_dict()
    assert checkpoint.brainage_version and checkpoint.corrector is not None and checkpoint.tta_flip
    fitted = set(tiny_cache.manifest["content_hash"].iloc[np.concatenate([fold.train, fold.val])])
    assert set(checkpoint.train_content_hashes) == fitted


def test_predict_on_a_folds_test_scans_reproduces_the_out_of_fold_predictions(tiny_run: Path, tiny_config: TrainConfig, tiny_cache: PreparedCache) -> None:
    saved = _csv(tiny_run / "predictions.csv")
    for fold in range(tiny_config.folds):
        expected = saved[saved["fold"] == fold].reset_index(drop=True)
        rows = tiny_cache.manifest.set_index("scan_id").loc[expected["scan_id"]].reset_index()
        model = BrainAgeModel.load(tiny_run / f"fold_{fold}" / "model.ckpt", device="cpu")
        # A test person older or younger than everyone the fold's model was trained on gets no brain
        # age and the reason, unless forced; forced, every scan gets the out-of-fold prediction.
        low, high = model.train_age_range
        outside = ~rows["age"].between(low, high)
        refused = model.predict(rows[["path", "scan_id", "subject_id", "session_id", "age"]])
        assert refused["brain_age"].isna().tolist() == outside.tolist()
        assert refused["inadequate"][outside.to_numpy()].str.contains("outside the model's training range").all()
        table = model.predict(rows[["path", "scan_id", "subject_id", "session_id", "age"]], force=True)
        assert list(table["scan_id"]) == list(expected["scan_id"])
        np.testing.assert_allclose(table["brain_age"], expected["brain_age"], atol=1e-4)
        assert not table["warnings"].str.contains("training data").any()
    # The whole run's ensemble has seen every scan in training: it says so.
    ensemble = BrainAgeModel.load(tiny_run, device="cpu").predict(tiny_cache.manifest[["path", "scan_id", "age"]].head(3))
    assert ensemble["warnings"].str.contains(f"training data of 1 of {tiny_config.folds} model").all()


def test_checkpoint_holds_the_training_scans_batch_norm_statistics_and_predicts_what_validation_measured(
    tiny_run: Path, tiny_config: TrainConfig, tiny_cache: PreparedCache
) -> None:
    fold = make_folds(tiny_cache.manifest, tiny_config.folds, tiny_config.test_fraction, tiny_config.early_stopping_fraction, tiny_config.seed)[0]
    checkpoint = load_checkpoint(tiny_run / "fold_0" / "model.ckpt")
    data = BrainAgeDataModule(tiny_cache, fold, batch_size=tiny_config.batch_size, num_workers=0)
    # The first batch norm's running mean is the average over training batches of its input's channel means.
    first_conv, first_norm = checkpoint.model.features[0][:2]
    with torch.no_grad():
        batch_means = [first_conv(images).mean(dim=(0, 2, 3, 4)) for images, *_ in data.loader(fold.train)]
    # Within 1 %: the statistics belong to these weights (running averages that lag them differ by tens of per cent).
    torch.testing.assert_close(first_norm.running_mean, torch.stack(batch_means).mean(dim=0), rtol=1e-2, atol=1e-3)
    saved = {name: buffer.clone() for name, buffer in checkpoint.model.named_buffers() if "running" in name}
    # Training re-estimated them inside its precision context (bf16 autocast where the CPU has native bf16): so here.
    precision = yaml.safe_load((tiny_run / "config.yaml").read_text())["resolved"]["precision"]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
        recompute_batch_norm(checkpoint.model, data.loader(fold.train))
    for name, buffer in checkpoint.model.named_buffers():
        if "running" in name:
            torch.testing.assert_close(buffer, saved[name], rtol=1e-2, atol=1e-3)
    assert not checkpoint.model.training and {m.momentum for m in checkpoint.model.modules() if isinstance(m, torch.nn.BatchNorm3d)} == {0.1}
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):  # as validation ran
        val_predicted = _plain_predictions(checkpoint.model, data.loader(fold.val), checkpoint.age_mean, checkpoint.age_std)
    val_mae = np.abs(val_predicted - tiny_cache.manifest["age"].to_numpy()[fold.val]).mean()
    # Within 0.1 %: bf16 kernels (channels-last in training, not here) differ by about 0.01 %; other weights or statistics by far more.
    assert val_mae == pytest.approx(checkpoint.extra["best_val_mae"], rel=1e-3)


def test_same_seed_gives_the_same_split_and_metrics(tiny_run: Path, tiny_config: TrainConfig, tiny_cache: PreparedCache, tmp_path: Path) -> None:
    again = tmp_path / "again"
    shutil.copytree(tiny_run, again)
    for name in ("model.ckpt", "predictions.csv", "val_predictions.csv", "metrics.csv", "training.png"):
        (again / "fold_1" / name).unlink()
    rerun = train(tiny_cache, again, tiny_config)  # fold 0 is resumed, fold 1 trained again from its seed
    assert rerun is not None
    pd.testing.assert_frame_equal(rerun.folds, pd.DataFrame(yaml.safe_load((tiny_run / "config.yaml").read_text())["folds"]))
    pd.testing.assert_frame_equal(rerun.history, pd.read_csv(tiny_run / "metrics.csv"), check_dtype=False)
    pd.testing.assert_frame_equal(_csv(again / "predictions.csv"), _csv(tiny_run / "predictions.csv"))
    pd.testing.assert_frame_equal(pd.read_csv(again / "summary.csv"), pd.read_csv(tiny_run / "summary.csv"))


def test_the_cli_resumes_a_finished_run_and_refuses_a_different_one(tiny_run: Path, tiny_config: TrainConfig, tiny_cache_seed: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    settings = tmp_path / "train.yaml"
    settings.write_text(yaml.safe_dump(tiny_config.to_dict()))
    result = CliRunner().invoke(app, ["train", str(tiny_cache_seed), "--out", str(run), "--config", str(settings)])
    assert result.exit_code == 0, result.output
    mean_mae = pd.read_csv(tiny_run / "summary.csv").query("model == 'mean age' and level == 'session'")["mae"].iloc[0]
    assert "ridge" in result.output and f"{mean_mae:.2f}" in result.output
    pd.testing.assert_frame_equal(_csv(run / "predictions.csv"), _csv(tiny_run / "predictions.csv"))
    refused = CliRunner().invoke(app, ["train", str(tiny_cache_seed), "--out", str(run), "--config", str(settings), "--epochs", "9"])
    assert refused.exit_code == 2 and "another run" in refused.output
    with pytest.raises(RunFolderError, match="not empty"):
        train(tiny_cache_seed, tmp_path, tiny_config)


def test_training_age_statistics_come_from_training_scans_only(tiny_cache: PreparedCache) -> None:
    fold = make_folds(tiny_cache.manifest, folds=2, seed=0)[1]
    data = BrainAgeDataModule(tiny_cache, fold, batch_size=4, num_workers=0)
    ages = tiny_cache.manifest["age"].to_numpy()
    assert data.age_mean == pytest.approx(ages[fold.train].mean())
    assert data.age_mean != pytest.approx(ages.mean())
    image, age_z, index = data.dataset(fold.train)[0]
    assert image.shape == (1, *tiny_cache.shape) and image.dtype == torch.float32
    assert float(age_z) == pytest.approx((ages[index] - data.age_mean) / data.age_std, abs=1e-6)


def test_an_unreadable_checkpoint_is_a_one_line_error_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "model.ckpt"
    bad.write_text("not a checkpoint")
    with pytest.raises(InputError, match=r"model.ckpt") as error:
        load_checkpoint(bad)
    assert "\n" not in str(error.value)


def test_fine_tuning_starts_from_a_trained_run_and_says_so(tiny_run: Path, tiny_config: TrainConfig, tiny_cache: PreparedCache, tmp_path: Path) -> None:
    tuned = train(tiny_cache, tmp_path / "tuned", dataclasses.replace(tiny_config, init=str(tiny_run), lr=1e-9, ema_decay=None, baselines=False))
    assert tuned is not None
    for fold in range(tiny_config.folds):
        start = load_checkpoint(tiny_run / f"fold_{fold}" / "model.ckpt").model.state_dict()
        tuned_checkpoint = load_checkpoint(tmp_path / "tuned" / f"fold_{fold}" / "model.ckpt")
        assert tuned_checkpoint.extra["fine_tuned_from"] == str(tiny_run.resolve())
        weights = [name for name in start if "running" not in name and "num_batches" not in name]
        for name in weights:  # a learning rate of 1e-9: the weights are those it started from
            torch.testing.assert_close(tuned_checkpoint.model.state_dict()[name], start[name], rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="its model is sfcn"):
        train(tiny_cache, tmp_path / "other", dataclasses.replace(tiny_config, model="resnet", model_hparams={}, init=str(tiny_run)))


def test_an_ensemble_averages_members_trained_from_other_seeds_on_the_same_split(tiny_config: TrainConfig, tiny_cache: PreparedCache, tmp_path: Path) -> None:
    run = tmp_path / "ensemble"
    result = train(tiny_cache, run, dataclasses.replace(tiny_config, ensemble=2, folds=None, baselines=False))
    assert result is not None
    assert result.checkpoints == [run / "fold_0" / "model.ckpt", run / "fold_0-1" / "model.ckpt"]
    assert [load_checkpoint(path).extra["member"] for path in result.checkpoints] == [0, 1]
    members = [_csv(run / folder / "predictions.csv") for folder in ("fold_0", "fold_0-1")]
    assert members[0]["scan_id"].tolist() == members[1]["scan_id"].tolist()  # the same split
    assert not np.allclose(members[0]["brain_age"], members[1]["brain_age"])  # other seeds, other networks
    predictions = _csv(run / "predictions.csv").set_index("scan_id").loc[members[0]["scan_id"]]
    np.testing.assert_allclose(predictions["brain_age"], (members[0]["brain_age"].to_numpy() + members[1]["brain_age"].to_numpy()) / 2)
    history = pd.read_csv(run / "metrics.csv")
    assert history.groupby("member").size().to_dict() == {0: tiny_config.epochs, 1: tiny_config.epochs}
    assert len(BrainAgeModel.load(run).checkpoints) == 2  # `brainage predict RUN` averages both
    # Hold-out: the correction and the intervals are calibrated on people apart from those that chose the best epoch.
    stopping, calibrating = (set(_csv(run / "fold_0" / f"{side}_predictions.csv")["subject_id"]) for side in ("val", "calibration"))
    assert stopping and calibrating and not stopping & calibrating and not calibrating & set(predictions["subject_id"])
    record = yaml.safe_load((run / "bias_correction.yaml").read_text())
    assert set(record["folds"][0]["subjects"]) <= calibrating and record["folds"][0]["fitted_on"] == "calibration predictions of the training side"
    calibration = load_checkpoint(result.checkpoints[0]).extra["calibration"]
    assert "calibration people" in calibration["fitted_on"] and calibration["served"] == "the mean of 2 network(s)"
    assert result.interval is not None and result.interval.n_ == _csv(run / "fold_0" / "calibration_predictions.csv")["session_id"].nunique()
    _, calibration_rows = calibration_split(
        tiny_cache.manifest, make_folds(tiny_cache.manifest, None, seed=tiny_config.seed), dataclasses.replace(tiny_config, folds=None)
    )
    line = calibration_warning(tiny_cache.manifest, calibration_rows, tiny_config)
    assert line is not None and "fewer than 20" in line and "--folds" in line and "\n" not in line


def test_a_run_folder_written_before_a_setting_existed_still_resumes(
    tiny_run: Path, tiny_config: TrainConfig, tiny_cache: PreparedCache, tmp_path: Path
) -> None:
    run = tmp_path / "older"
    shutil.copytree(tiny_run, run)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    del saved["train"]["ensemble"]  # as brainage wrote it before `ensemble` was added
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    resumed = train(tiny_cache, run, tiny_config)
    assert resumed is not None
    pd.testing.assert_frame_equal(_csv(run / "predictions.csv"), _csv(tiny_run / "predictions.csv"))


def test_a_diverging_fold_stops_with_a_one_line_cause_before_its_weights_are_saved(tiny_config: TrainConfig, tiny_cache: PreparedCache, tmp_path: Path) -> None:
    # A learning rate of 1e30 overflows the weights within the first steps, in any precision.
    diverging = dataclasses.replace(tiny_config, lr=1e30, warmup_epochs=1, epochs=3, folds=None, precision="32-true", baselines=False)
    with pytest.raises(TrainingDiverged, match=r"fold_0: the validation MAE is not finite in epoch 1 \(32-true\).*--precision 32-true or a lower --lr"):
        train(tiny_cache, tmp_path / "diverged", diverging)
    assert not (tmp_path / "diverged" / "fold_0" / "last.ckpt").exists()
    assert not (tmp_path / "diverged" / "fold_0" / "best.ckpt").exists()


def test_the_history_travels_in_checkpoints_because_lightnings_csv_logger_drops_it_on_resume(tmp_path: Path) -> None:
    """Why TrainingCurves is kept beside Lightning's CSVLogger: a resumed process's logger deletes the earlier epochs."""
    from lightning.pytorch.loggers import CSVLogger

    from brainage.training import TrainingCurves

    first = CSVLogger(tmp_path, name="logs", version="csv")
    first.log_metrics({"epoch": 0, "val_mae": 3.0}, step=0)
    first.save()
    resumed = CSVLogger(tmp_path, name="logs", version="csv")  # the same folder, as a resumed fold opens it
    with pytest.warns(UserWarning, match="will be deleted"):
        resumed.log_metrics({"epoch": 1, "val_mae": 2.0}, step=1)
    resumed.save()
    assert pd.read_csv(tmp_path / "logs" / "csv" / "metrics.csv")["epoch"].tolist() == [1]  # epoch 0 is gone
    curves = TrainingCurves(tmp_path)
    curves.rows = [{"epoch": 1, "val_mae": 3.0}]
    again = TrainingCurves(tmp_path)
    again.load_state_dict(curves.state_dict())  # what a resumed fold's callback gets from last.ckpt
    assert again.history["epoch"].tolist() == [1] and again.history["val_mae"].tolist() == [3.0]


def test_cosine_schedule_warms_up_then_decays_to_the_floor_at_the_last_epoch() -> None:
    config = TrainConfig(lr=1e-3, min_lr=1e-5, warmup_epochs=3, epochs=10, schedule="cosine")
    (optimizer,), (cosine,) = BrainAgeModule(build_model("sfcn", width=0.125), 75.0, 8.0, config).configure_optimizers()
    lrs = []
    for _ in range(config.epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        cosine["scheduler"].step()
    assert lrs[:3] == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-3])
    assert all(later < earlier for earlier, later in itertools.pairwise(lrs[2:]))  # falls every epoch after the warm-up
    assert lrs[-1] == pytest.approx(1e-5)
    with pytest.raises(ConfigError, match="schedule"):
        TrainConfig(schedule="step")


def test_combining_runs_on_the_same_folds_averages_every_network_and_corrects_the_mean(
    tiny_run: Path, tiny_config: TrainConfig, tiny_cache: PreparedCache, tmp_path: Path
) -> None:
    other = train(tiny_cache, tmp_path / "other", dataclasses.replace(tiny_config, lr=5e-3))  # the same seed: the same folds, other networks
    assert other is not None
    result = combine([tiny_run, other.run_dir], tmp_path / "combined", progress=False)
    combined = _csv(tmp_path / "combined" / "predictions.csv").sort_values("scan_id", ignore_index=True)
    runs = [_csv(run / "predictions.csv").sort_values("scan_id", ignore_index=True) for run in (tiny_run, other.run_dir)]
    assert not np.allclose(runs[0]["brain_age"], runs[1]["brain_age"])
    np.testing.assert_allclose(combined["brain_age"], (runs[0]["brain_age"] + runs[1]["brain_age"]) / 2)
    # Corrected and calibrated as training does, fold k by a fit on the other folds, on the mean (the
    # tiny cohort's 6 controls are too few for a correction: it is refused, as for each run alone).
    mean = runs[0].drop(columns=["brain_age_corrected", "brain_age_lower", "brain_age_upper"]).assign(brain_age=combined["brain_age"])
    expected, final = correct_bias(mean, pd.DataFrame(), dataclasses.replace(tiny_config, progress=False), None)
    expected, _ = calibrate_intervals(expected, pd.DataFrame(), tiny_config)
    for column in ("brain_age_corrected", "brain_age_lower", "brain_age_upper"):
        np.testing.assert_allclose(combined[column], expected[column])
    assert np.isfinite(combined["brain_age_lower"]).all()
    assert not np.allclose(combined["brain_age_lower"], runs[0]["brain_age_lower"])
    pd.testing.assert_series_equal(combined["ridge_voxels"], runs[0]["ridge_voxels"])  # the same folds' baselines
    # Four members (2 folds × 2 runs), each carrying the combined run's correction and its source.
    assert [path.parent.name for path in result.checkpoints] == ["fold_0", "fold_0-1", "fold_1", "fold_1-1"]
    members = [load_checkpoint(path) for path in result.checkpoints]
    assert all(member.corrector.describe() == final.describe() and member.interval.to_dict() == result.interval.to_dict() for member in members)
    assert members[1].extra["combined_from"] == f"{other.run_dir.resolve()} fold 0 member 0"
    scans = tiny_cache.manifest[["path", "scan_id", "age"]].head(2)
    together = BrainAgeModel.load([tiny_run, other.run_dir], device="cpu").predict(scans)
    np.testing.assert_allclose(BrainAgeModel.load(tmp_path / "combined", device="cpu").predict(scans)["brain_age"], together["brain_age"], atol=1e-4)
    # Written again in place; never trained into, never mixed with runs on other folds.
    again = combine([tiny_run, other.run_dir], tmp_path / "combined", progress=False)
    pd.testing.assert_frame_equal(again.predictions, result.predictions)
    with pytest.raises(RunFolderError, match="holds another run"):
        train(tiny_cache, tmp_path / "combined", tiny_config)
    with pytest.raises(RunFolderError, match="holds another run"):
        combine([other.run_dir, tiny_run], tmp_path / "combined")
    elsewhere = train(tiny_cache, tmp_path / "elsewhere", dataclasses.replace(tiny_config, seed=5, baselines=False))
    assert elsewhere is not None
    with pytest.raises(TrainingOverlapError, match="test people of fold 0"):  # other folds: its networks trained on this run's test people
        combine([tiny_run, elsewhere.run_dir], tmp_path / "mixed")
    with pytest.raises(InputError, match=r"no config.yaml"):
        combine([tiny_run, tmp_path], tmp_path / "mixed")
    report = build_report(tmp_path / "combined", saliency_scans=2).read_text(encoding="utf-8")
    assert re.search(rf"<td>combined from</td>\s*<td>{re.escape(str(other.run_dir.resolve()))} \(1 network\(s\) a fold\)</td>", report)
    assert "averaged over 2 test scans" in report
    shown = CliRunner().invoke(app, ["combine", str(tiny_run), str(other.run_dir), "--out", str(tmp_path / "by-cli")])
    assert shown.exit_code == 0, shown.output
    assert "2 runs combined, 2 networks a fold" in " ".join(shown.output.split())


def _oriented(run: Path, cache: PreparedCache, folder: Path, rising: bool) -> Path:
    """A run folder of copies of ``run``'s fold checkpoints (fold k's was never fitted on fold k's test
    people) whose predictions rise (``rising``) or fall with age over the cohort: each age scale
    mirrored where needed (the one-epoch tiny run has no sign of its own)."""
    target = folder / ("rising" if rising else "falling")
    volumes = [torch.from_numpy(np.stack([cache.volume(i) for i in range(len(cache.manifest))]))[:, None].float()]
    for checkpoint_path in sorted(run.glob("fold_*/model.ckpt")):
        checkpoint = load_checkpoint(checkpoint_path)
        predicted = predict_batches(BrainAgeEnsemble([checkpoint]), volumes)[:, 0]
        if (np.corrcoef(predicted, cache.manifest["age"].to_numpy(dtype=float))[0, 1] > 0) != rising:
            checkpoint.age_std = -checkpoint.age_std
        save_checkpoint(checkpoint, target / checkpoint_path.parent.name / "model.ckpt")
    return target


def test_epochs_zero_keeps_the_weights_of_init_and_refits_only_its_output_line(
    tiny_run: Path, tiny_config: TrainConfig, tiny_cache: PreparedCache, tmp_path: Path
) -> None:
    init = _oriented(tiny_run, tiny_cache, tmp_path, rising=True)
    line = dataclasses.replace(tiny_config, init=str(init), epochs=0, baselines=False)
    result = train(tiny_cache, tmp_path / "line", line)
    assert result is not None and result.history.empty and not (tmp_path / "line" / "training.png").exists()
    assert "Not trained: the weights of" in build_report(tmp_path / "line", saliency_scans=0).read_text(encoding="utf-8")
    ages = tiny_cache.manifest["age"].to_numpy(dtype=float)
    for fold in make_folds(tiny_cache.manifest, line.folds, line.test_fraction, line.early_stopping_fraction, line.seed):
        source = load_checkpoint(init / f"fold_{fold.index}" / "model.ckpt")
        refitted = load_checkpoint(tmp_path / "line" / f"fold_{fold.index}" / "model.ckpt")
        assert refitted.extra["fine_tuned_from"] == str(init.resolve()) and "age = " in refitted.extra["recalibration"]
        for name, weight in source.model.state_dict().items():  # every weight and batch-norm statistic as it was
            torch.testing.assert_close(refitted.model.state_dict()[name], weight, rtol=0, atol=0)
        assert refitted.age_std != pytest.approx(source.age_std)
        # Least squares of age on the predictions over the training side: residuals of mean zero, uncorrelated with the prediction.
        fitted_on = np.concatenate([fold.train, fold.val])
        predicted = predict_batches(BrainAgeEnsemble([refitted]), BrainAgeDataModule(tiny_cache, fold, batch_size=4, num_workers=0).loader(fitted_on))[:, 0]
        residual = ages[fitted_on] - predicted
        assert abs(residual.mean()) < 1e-3 * ages.std()
        assert abs(np.dot(residual - residual.mean(), predicted - predicted.mean())) < 1e-3 * len(fitted_on) * ages.var()
    falling = dataclasses.replace(line, init=str(_oriented(tiny_run, tiny_cache, tmp_path, rising=False)))
    with pytest.raises(BrainAgeError, match="do not rise with age"):
        train(tiny_cache, tmp_path / "falling-run", falling)
    with pytest.raises(ConfigError, match="needs one"):
        dataclasses.replace(tiny_config, epochs=0, init=None)


def _norm_buffers(model: torch.nn.Module) -> list[torch.Tensor]:
    return [buffer for name, buffer in model.named_buffers() if "running" in name]


def test_precise_batch_norm_leaves_out_only_a_single_image_that_batch_norm_cannot_take() -> None:
    torch.manual_seed(0)
    batches = [(torch.randn(3, 1, 8, 8, 8),), (torch.randn(1, 1, 8, 8, 8),)]
    # The second norm sees a one-voxel map: a batch of one image gives it one value per channel.
    pooled = torch.nn.Sequential(
        torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.BatchNorm3d(4), torch.nn.AdaptiveAvgPool3d(1), torch.nn.BatchNorm3d(4), torch.nn.Flatten()
    )
    first_only = copy.deepcopy(pooled)
    recompute_batch_norm(pooled, batches)
    recompute_batch_norm(first_only, batches[:1])
    for got, expected in zip(_norm_buffers(pooled), _norm_buffers(first_only), strict=True):
        torch.testing.assert_close(got, expected)
    # Where every map of the single image has more than one voxel, it counts like any batch.
    plain = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.BatchNorm3d(4))
    plain_first_only = copy.deepcopy(plain)
    recompute_batch_norm(plain, batches)
    recompute_batch_norm(plain_first_only, batches[:1])
    assert not torch.allclose(plain[1].running_mean, plain_first_only[1].running_mean)
