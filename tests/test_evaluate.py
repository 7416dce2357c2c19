"""Evaluation apart from training (``brainage evaluate``, :mod:`brainage.training.evaluate`): other
post-hoc settings without training, the run identity without them, the calibration of what
``predict`` serves. Runs on the session fixture ``tiny_run`` (tests/conftest.py) or on synthetic
predictions in a copy of it."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

from brainage.cli import app
from brainage.preprocess import PreparedCache
from brainage.training import (
    ConfigError,
    EvaluationSettings,
    TrainConfig,
    calibrate_intervals,
    correct_bias,
    evaluate,
    load_checkpoint,
    train,
)

IDS = {"scan_id": str, "subject_id": str, "session_id": str}


def _csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=IDS)


def _synthetic_run(tiny_run: Path, folder: Path, subjects: int = 100) -> Path:
    """A copy of ``tiny_run`` (its config and checkpoints) whose two folds' out-of-fold predictions are
    those of ``subjects`` synthetic people, half Nondemented (gap = −0.5 (age − 75)) and half
    Demented (gap = 3 − 0.2 (age − 75)), enough controls of either group for a correction."""
    shutil.copytree(tiny_run, folder)
    rng = np.random.default_rng(0)
    age = rng.uniform(60, 90, subjects)
    demented = np.arange(subjects) % 2 == 1
    gap = np.where(demented, 3 - 0.2 * (age - 75), -0.5 * (age - 75)) + rng.normal(0, 1, subjects)
    rows = [
        {"scan_id": f"P{i:03d}_MR1_mpr-{r}", "subject_id": f"P{i:03d}", "session_id": f"P{i:03d}_MR1", "age": age[i],
         "group": "Demented" if demented[i] else "Nondemented", "fold": int(i >= subjects // 2),
         "brain_age": age[i] + gap[i] + rng.normal(0, 0.5)}
        for i in range(subjects) for r in (1, 2)
    ]  # fmt: skip  # keys grouped in rows
    frame = pd.DataFrame(rows)
    for fold in (0, 1):
        frame[frame["fold"] == fold].to_csv(folder / f"fold_{fold}" / "predictions.csv", index=False)
    (folder / "references.csv").write_text("scan_id\n")
    return folder


def test_evaluate_changes_the_controls_without_training(tiny_run: Path, tmp_path: Path) -> None:
    run = _synthetic_run(tiny_run, tmp_path / "run")
    weights = {fold: load_checkpoint(run / f"fold_{fold}" / "model.ckpt").model.state_dict() for fold in (0, 1)}
    fold_files = {fold: (run / f"fold_{fold}" / "predictions.csv").read_bytes() for fold in (0, 1)}
    runner = CliRunner()
    first = runner.invoke(app, ["evaluate", str(run), "--control-group", "Nondemented"])
    assert first.exit_code == 0, first.output
    before = yaml.safe_load((run / "bias_correction.yaml").read_text())
    corrected_before = _csv(run / "predictions.csv").set_index("scan_id")["brain_age_corrected"]
    assert before["final"]["refused"] is None and before["final"]["slope"] == pytest.approx(-0.5, abs=0.1)
    second = runner.invoke(app, ["evaluate", str(run), "--control-group", "Demented"])
    assert second.exit_code == 0, second.output
    after = yaml.safe_load((run / "bias_correction.yaml").read_text())
    assert after["control_group"] == ["Demented"] and after["final"]["slope"] == pytest.approx(-0.2, abs=0.1)
    corrected_after = _csv(run / "predictions.csv").set_index("scan_id")["brain_age_corrected"]
    assert corrected_after.notna().all() and not np.allclose(corrected_after, corrected_before.loc[corrected_after.index])
    for fold in (0, 1):
        checkpoint = load_checkpoint(run / f"fold_{fold}" / "model.ckpt")
        assert checkpoint.corrector.slope_ == pytest.approx(after["final"]["slope"])  # what predict serves
        for name, weight in weights[fold].items():
            torch.testing.assert_close(checkpoint.model.state_dict()[name], weight, rtol=0, atol=0)
        assert (run / f"fold_{fold}" / "predictions.csv").read_bytes() == fold_files[fold]
    assert yaml.safe_load((run / "evaluation.yaml").read_text())["control_group"] == ["Demented"]
    summary = pd.read_csv(run / "summary.csv")
    assert {"icc2_gap", "icc2_gap_low", "icc2_gap_high"} <= set(summary.columns)
    kept = runner.invoke(app, ["evaluate", str(run)])  # settings left out: as last evaluated
    assert kept.exit_code == 0 and yaml.safe_load((run / "bias_correction.yaml").read_text())["control_group"] == ["Demented"]
    typo = runner.invoke(app, ["evaluate", str(run), "--control-group", "Dementd"])
    assert typo.exit_code == 2 and "Dementd" in typo.output and "groups present: Demented, Nondemented" in typo.output
    assert len(typo.output.strip().splitlines()) == 1


def test_a_typo_in_the_control_group_is_refused_before_training(tiny_config: TrainConfig, tiny_cache: PreparedCache, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no scans in control group\(s\) Nondementd; groups present: .*Nondemented") as error:
        train(tiny_cache, tmp_path / "typo", dataclasses.replace(tiny_config, control_group=("Nondementd",)))
    assert "\n" not in str(error.value) and not (tmp_path / "typo").exists()


def test_post_hoc_settings_are_not_the_run_identity(tiny_run: Path, tiny_config: TrainConfig, tiny_cache: PreparedCache, tmp_path: Path) -> None:
    run = tmp_path / "resumed"
    shutil.copytree(tiny_run, run)
    metrics = (run / "metrics.csv").read_bytes()
    other = dataclasses.replace(tiny_config, control_group=("Demented",), bias_correction="cole", interval=0.8, voxel_components=3)
    result = train(tiny_cache, run, other)  # the same run: nothing is trained again
    assert result is not None and (run / "metrics.csv").read_bytes() == metrics
    pd.testing.assert_frame_equal(_csv(run / "fold_0" / "predictions.csv"), _csv(tiny_run / "fold_0" / "predictions.csv"))
    record = yaml.safe_load((run / "bias_correction.yaml").read_text())
    assert record["method"] == "cole" and record["control_group"] == ["Demented"]
    assert set(record["folds"][0]["subjects"]) <= set(tiny_cache.manifest.loc[tiny_cache.manifest["group"] == "Demented", "subject_id"])
    assert load_checkpoint(run / "fold_0" / "model.ckpt").interval.coverage == 0.8


def test_the_served_mean_of_k_networks_is_covered_as_calibrated() -> None:
    """The final correction and interval are fitted on single-fold out-of-fold predictions; predict
    serves the mean of the K fold networks. On new people that mean's intervals cover at least the
    nominal share (its errors are smaller: conservative, by a few points where each network's own
    error is half the person's) and its corrected gap keeps no age bias (averaging removes noise, not
    the networks' shrinkage towards the mean age)."""
    rng = np.random.default_rng(0)
    k, offset_sd, network_sd = 5, 3.0, 1.5

    def people(n: int, start: int) -> tuple[pd.DataFrame, np.ndarray]:
        age = rng.uniform(60, 90, n)
        networks = (75 + 0.8 * (age - 75) + rng.normal(0, offset_sd, n))[:, None] + rng.normal(0, network_sd, (n, k))  # person's offset, each network's error
        ids = [f"S{start + i:05d}" for i in range(n)]
        frame = pd.DataFrame({"scan_id": ids, "subject_id": ids, "session_id": ids, "age": age, "group": "Nondemented"})
        return frame, networks

    known, networks = people(6000, 0)  # enough people that the fits' own sampling error stays small
    known["fold"] = np.arange(len(known)) % k
    known["brain_age"] = networks[np.arange(len(known)), known["fold"]]  # out of fold: the person's own fold's network
    settings = EvaluationSettings(interval=0.9, progress=False)
    _, corrector = correct_bias(known, pd.DataFrame(), settings, None)
    _, interval = calibrate_intervals(known, pd.DataFrame(), settings)
    new, networks = people(30000, 10**5)
    served = networks.mean(axis=1)
    lower, upper = interval.interval(served)
    inside = float(np.mean((lower <= new["age"]) & (new["age"] <= upper)))
    assert 0.9 - 0.005 <= inside <= 0.9 + 0.05
    gap = corrector.transform(served, new["age"]) - new["age"]
    by_age = gap.groupby(pd.cut(new["age"], [60, 70, 80, 90])).mean()
    assert (by_age.abs() < 0.2).all(), by_age


def test_a_run_folder_written_before_evaluate_existed_is_evaluated(tiny_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "older"
    shutil.copytree(tiny_run, run)
    for name in ("references.csv", "evaluation.yaml", "baselines.yaml"):
        (run / name).unlink()
    result = evaluate(run, control_group=["Demented"], progress=False)
    before = _csv(tiny_run / "predictions.csv").set_index("scan_id")
    after = result.predictions.set_index("scan_id").loc[before.index]
    for column in ("brain_age", "ridge_voxels", "true_brain_age"):  # baselines and truth taken from its predictions.csv
        np.testing.assert_allclose(after[column], before[column])
    assert yaml.safe_load((run / "bias_correction.yaml").read_text())["control_group"] == ["Demented"]
