"""Named models (brainage.zoo): export from a run, find by name, load without Lightning, predict as the run, --init NAME, size."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from brainage import zoo
from brainage.checkpoint import load_checkpoint, save_checkpoint
from brainage.data import make_folds
from brainage.errors import BrainAgeError, InputError
from brainage.inference import BrainAgeEnsemble, predict_batches
from brainage.predict import BrainAgeModel, resolve_checkpoints
from brainage.preprocess import PreparedCache, load_cache
from brainage.training import TrainConfig, load_config, train

NAME = "tiny-zoo"


@pytest.fixture(scope="module")
def cache(tiny_cache_seed: Path) -> PreparedCache:
    return load_cache(tiny_cache_seed)


@pytest.fixture(scope="module")
def rising(tiny_run: Path, cache: PreparedCache, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder of the tiny run's two fold networks, each with its age scale mirrored where needed
    so that its predictions rise with age (the one-epoch run has no sign of its own)."""
    rising = tmp_path_factory.mktemp("rising")
    volumes = [torch.from_numpy(np.stack([cache.volume(i) for i in range(len(cache))]))[:, None].float()]
    ages = cache.manifest["age"].to_numpy(dtype=float)
    for path in sorted(tiny_run.glob("fold_*/model.ckpt")):
        checkpoint = load_checkpoint(path)
        if np.corrcoef(predict_batches(BrainAgeEnsemble([checkpoint]), volumes)[:, 0], ages)[0, 1] < 0:
            checkpoint.age_std = -checkpoint.age_std
        save_checkpoint(checkpoint, rising / path.parent.name / "model.ckpt")
    return rising


@pytest.fixture(scope="module")
def models(rising: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A search folder holding ``tiny-zoo``, exported from :func:`rising`."""
    into = tmp_path_factory.mktemp("models")
    zoo.export_named_model(rising, NAME, {"held_out_anatomy": "not measured"}, into=into)
    return into


@pytest.fixture
def on_path(models: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(zoo.MODELS_ENV, str(models))
    return models


def check_named_model(folder: Path) -> None:
    """What every named model must be: a card with the synthetic-data sentence where it was trained on
    synthetic data, at most ``MAX_BYTES``, and checkpoints that load."""
    card = yaml.safe_load((folder / zoo.CARD).read_text())
    assert card["name"] == folder.name
    assert card["note"] and (card["generator"] is None or card["note"] == zoo.SYNTHETIC_NOTE)
    size = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
    assert 0 < size <= zoo.MAX_BYTES, f"{folder.name}: {size} bytes"
    for path in zoo._checkpoints(folder):
        assert np.isfinite(load_checkpoint(path).age_mean)


@pytest.mark.parametrize("folder", sorted(p for p in zoo.PACKAGE_MODELS.glob("*") if p.is_dir()), ids=lambda p: p.name)
def test_every_shipped_model_has_its_card_and_weighs_at_most_20_mb(folder: Path) -> None:
    check_named_model(folder)


def test_an_exported_model_is_listed_with_its_card_and_carries_what_predict_needs(on_path: Path, tiny_run: Path) -> None:
    check_named_model(on_path / NAME)
    (found,) = [model for model in zoo.list_models() if model.name == NAME]
    assert found.folder == on_path / NAME and [p.relative_to(found.folder).as_posix() for p in found.checkpoints] == ["fold_0/model.ckpt", "fold_1/model.ckpt"]
    card = found.card
    assert card["generator"] == "v1" and card["cohort"] == {"preset": "tiny", "seed": 0} and card["note"] == zoo.SYNTHETIC_NOTE
    assert card["model"] == "sfcn" and card["weights"] == "float32" and card["networks"] == 2 and card["held_out_anatomy"] == "not measured"
    assert card["recipe"]["epochs"] == 1 and card["people"] > 0
    assert card["preprocessing"] == "tutorial"
    shown = zoo.describe(found)
    assert shown.startswith(f"{NAME}  (") and f"note: {zoo.SYNTHETIC_NOTE}" in shown and "recipe: {batch_size: 8, ema_decay: 0.99, epochs: 1," in shown
    assert "augmentation" not in shown and "augmentation" in zoo.describe(found, full=True)
    for name in ("fold_0", "fold_1"):
        run, named = load_checkpoint(tiny_run / name / "model.ckpt"), load_checkpoint(on_path / NAME / name / "model.ckpt")
        assert named.preprocessing == run.preprocessing and named.train_age_range == run.train_age_range
        assert named.corrector is not None and run.corrector is not None and json.dumps(named.corrector.to_dict()) == json.dumps(run.corrector.to_dict())
        assert named.interval is not None and run.interval is not None and json.dumps(named.interval.to_dict()) == json.dumps(run.interval.to_dict())
        assert named.train_subject_ids == run.train_subject_ids and named.train_content_hashes == run.train_content_hashes
        assert named.extra["named_model"] == NAME
    with pytest.raises(InputError, match="already exists"):
        zoo.export_named_model(tiny_run, NAME, into=on_path)


def test_a_name_resolves_to_its_folder_and_a_path_stays_a_path(on_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_checkpoints(NAME) == [on_path / NAME / "fold_0" / "model.ckpt", on_path / NAME / "fold_1" / "model.ckpt"]
    monkeypatch.chdir(tmp_path)
    (tmp_path / NAME).mkdir()
    with pytest.raises(InputError, match=r"no model\.ckpt in this folder"):  # a folder of that name here wins over the model
        resolve_checkpoints(NAME)
    with pytest.raises(InputError, match="no such checkpoint or run folder"):
        resolve_checkpoints("no-such-model")
    with pytest.raises(BrainAgeError, match="model name"):
        zoo.export_named_model(tmp_path, "../escape", into=tmp_path)


_WITHOUT_LIGHTNING = """
import json, sys
import numpy as np
sys.modules["lightning"] = None  # any import of Lightning now fails
from brainage.predict import BrainAgeModel
from brainage.preprocess import load_cache
cache = load_cache(sys.argv[1])
model = BrainAgeModel.load(sys.argv[2], device="cpu")
volumes = np.stack([cache.volume(i) for i in range(len(cache))])
predicted = model.predict_volumes(volumes, cache.manifest["age"].to_numpy(dtype=float))
assert not any(name == "lightning" or name.startswith("lightning.") for name, module in sys.modules.items() if module is not None)
print(json.dumps(predicted.tolist()))
"""


def test_a_named_model_loads_without_lightning_and_predicts_as_its_run(on_path: Path, rising: Path, cache: PreparedCache) -> None:
    environment = {**os.environ, zoo.MODELS_ENV: str(on_path)}
    done = subprocess.run([sys.executable, "-c", _WITHOUT_LIGHTNING, str(cache.root), NAME], capture_output=True, text=True, env=environment, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    named = np.array(json.loads(done.stdout.strip().splitlines()[-1]))
    volumes = np.stack([cache.volume(i) for i in range(len(cache))])
    run = BrainAgeModel.load(rising, device="cpu").predict_volumes(volumes, cache.manifest["age"].to_numpy(dtype=float))
    assert named.shape == run.shape == (len(cache), 3) and np.isfinite(named[:, [0, 2]]).all()
    np.testing.assert_allclose(named, run, rtol=1e-6, atol=1e-5)  # brain age, corrected (NaN in both: the tiny run's correction is refused), networks' SD


def test_fp16_weights_where_fp32_would_not_fit_and_a_model_too_large_is_refused(tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fp32 = sum(v.numel() * 4 for v in load_checkpoint(tiny_run / "fold_0" / "model.ckpt").model.state_dict().values() if v.is_floating_point())
    monkeypatch.setattr(zoo, "MAX_BYTES", int(1.6 * fp32))  # two networks: fp32 is over, fp16 (plus the card and ids) under
    folder = zoo.export_named_model(tiny_run, "half", into=tmp_path)
    assert yaml.safe_load((folder / zoo.CARD).read_text())["weights"] == "float16"
    stored = torch.load(folder / "fold_0" / "model.ckpt", weights_only=True)
    assert {v.dtype for v in stored["state_dict"].values() if v.is_floating_point()} == {torch.float16}
    run, half = load_checkpoint(tiny_run / "fold_0" / "model.ckpt"), load_checkpoint(folder / "fold_0" / "model.ckpt")
    for name, weight in run.model.state_dict().items():
        assert half.model.state_dict()[name].dtype == weight.dtype  # rebuilt in fp32
        torch.testing.assert_close(half.model.state_dict()[name], weight, rtol=1e-3, atol=1e-3)
    monkeypatch.setattr(zoo, "MAX_BYTES", fp32 // 4)
    with pytest.raises(BrainAgeError, match="more than the"):
        zoo.export_named_model(tiny_run, "huge", into=tmp_path)
    assert not (tmp_path / "huge").exists()


def test_init_by_name_recalibrates_the_named_networks_per_fold(on_path: Path, tiny_run: Path, cache: PreparedCache, tmp_path: Path) -> None:
    config = dataclasses.replace(load_config(tiny_run / "config.yaml"), init=NAME, epochs=0, baselines=False)
    assert isinstance(config, TrainConfig)
    result = train(cache, tmp_path / "line", config)
    assert result is not None and result.history.empty
    for fold in make_folds(cache.manifest, config.folds, config.test_fraction, config.early_stopping_fraction, config.seed):
        source = load_checkpoint(on_path / NAME / f"fold_{fold.index}" / "model.ckpt")
        refitted = load_checkpoint(tmp_path / "line" / f"fold_{fold.index}" / "model.ckpt")
        assert refitted.extra["fine_tuned_from"] == str((on_path / NAME).resolve()) and "age = " in refitted.extra["recalibration"]
        for name, weight in source.model.state_dict().items():  # fold k starts from the named model's fold k: no overlap refused
            torch.testing.assert_close(refitted.model.state_dict()[name], weight, rtol=0, atol=0)


def test_age_trend_says_how_predictions_follow_age_and_warns_when_they_do_not_rise() -> None:
    age = np.array([55.0, 60, 65, 70, 75, 80, np.nan])
    rising = 0.5 * age + 30 + np.array([1, -1, 1, -1, 1, -1, 0])
    slope, r, message = zoo.age_trend(age, rising)
    assert slope == pytest.approx(np.polyfit(age[:6], rising[:6], 1)[0]) and r == pytest.approx(np.corrcoef(age[:6], rising[:6])[0, 1]) and message is None
    assert 0.4 < slope < 0.6 and 0.9 < r < 1
    slope, r, message = zoo.age_trend(age, 120 - age)
    assert slope == pytest.approx(-1.0) and r == pytest.approx(-1.0)
    assert message is not None and "do not rise with age" in message and "6 scans" in message and "r = -1.00" in message
    assert all(np.isnan(zoo.age_trend([70, 70, 70], [60, 65, 70])[:2])) and zoo.age_trend([60, 70], [1, 2])[2] is None
    with pytest.raises(ValueError, match="differ in length"):
        zoo.age_trend([60, 70, 80], [1, 2])
