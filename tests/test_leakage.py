"""No leak through reuse: ``train --init`` and ``combine`` refuse a model fitted on a fold's test
people, and ``predict`` warns about a training person given by id though its bytes differ."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import nibabel as nib
import pandas as pd
import pytest

from brainage.checkpoint import TrainingOverlapError, fold_folder, load_checkpoint, save_checkpoint
from brainage.data import make_folds
from brainage.predict import BrainAgeModel
from brainage.preprocess import PreparedCache, load_cache
from brainage.training import TrainConfig, combine, train
from brainage.training.config import load_config
from brainage.training.run import fold_module

REFUSED = re.compile(r"was fitted on (\d+) of the (\d+) test people of fold (\d+) \(by subject id or content hash\)")


@pytest.fixture(scope="module")
def cache(tiny_cache_seed: Path) -> PreparedCache:
    return load_cache(tiny_cache_seed)


@pytest.fixture(scope="module")
def config(tiny_run: Path) -> TrainConfig:
    """``tiny_run``'s configuration (2 folds by subject, seed 0, 1 epoch), without baselines."""
    return dataclasses.replace(load_config(tiny_run / "config.yaml"), baselines=False)


def _expected(cache: PreparedCache, config: TrainConfig, fold: int, fitted_people: set[str]) -> tuple[int, int]:
    """How many of fold ``fold``'s test people (folds of ``config``) are in ``fitted_people``, and how many there are."""
    test = make_folds(cache.manifest, config.folds, config.test_fraction, config.early_stopping_fraction, config.seed, config.train_groups)[fold].test
    people = set(cache.manifest["subject_id"].iloc[test].astype(str))
    return len(people & fitted_people), len(people)


def test_checkpoints_record_the_people_and_sessions_they_were_fitted_on(tiny_run: Path, cache: PreparedCache, config: TrainConfig) -> None:
    manifest = cache.manifest
    for fold in make_folds(manifest, config.folds, config.test_fraction, config.early_stopping_fraction, config.seed):
        checkpoint = load_checkpoint(fold_folder(tiny_run, fold.index) / "model.ckpt")
        fitted = manifest.iloc[[*fold.train, *fold.val]]
        assert set(checkpoint.train_subject_ids) == set(fitted["subject_id"].astype(str))
        assert set(checkpoint.train_session_ids) == set(fitted["session_id"].astype(str))
        assert not set(checkpoint.train_subject_ids) & set(manifest["subject_id"].iloc[fold.test].astype(str))
        assert all(Path(path).is_relative_to(checkpoint.train_data_root) for path in manifest["path"])


def test_an_init_fitted_on_a_folds_test_people_is_refused_with_the_fold_and_the_count(
    tiny_run: Path, cache: PreparedCache, config: TrainConfig, tmp_path: Path
) -> None:
    # A K-fold run with another seed on the same people: fold 0 would start from tiny_run's fold 0,
    # which was fitted on some of the new fold 0's test people.
    reseeded = dataclasses.replace(config, seed=3, init=str(tiny_run))
    fitted = set(load_checkpoint(tiny_run / "fold_0" / "model.ckpt").train_subject_ids)
    overlapping, people = _expected(cache, reseeded, 0, fitted)
    assert overlapping > 0  # the premise: another seed's folds mix the people
    with pytest.raises(TrainingOverlapError, match=REFUSED) as refused:
        train(cache, tmp_path / "reseeded", reseeded)
    assert "\n" not in str(refused.value)
    assert REFUSED.search(str(refused.value)).groups() == (str(overlapping), str(people), "0")
    assert not (tmp_path / "reseeded").exists()  # every fold's --init is checked before the run folder is written

    # A hold-out run was fitted on most people; every fold of a K-fold run from it is refused (epochs 0 too).
    holdout = train(cache, tmp_path / "holdout", dataclasses.replace(config, folds=None, test_fraction=0.25))
    assert holdout is not None
    fitted = set(load_checkpoint(holdout.checkpoints[0]).train_subject_ids)
    for epochs in (1, 0):
        with pytest.raises(TrainingOverlapError, match=REFUSED) as refused:
            train(cache, tmp_path / f"from-holdout-{epochs}", dataclasses.replace(config, init=str(holdout.run_dir), epochs=epochs))
        assert REFUSED.search(str(refused.value)).groups()[:2] == tuple(str(n) for n in _expected(cache, config, 0, fitted))


def test_ids_catch_a_person_whose_bytes_differ_and_ids_of_another_dataset_name_other_people(
    tiny_run: Path, cache: PreparedCache, config: TrainConfig, tmp_path: Path
) -> None:
    checkpoint = load_checkpoint(tiny_run / "fold_0" / "model.ckpt")
    # Fold 1's test people are fold 0's training people: caught by subject id though no bytes match.
    checkpoint.train_content_hashes = ()
    renamed = save_checkpoint(checkpoint, tmp_path / "other-bytes" / "model.ckpt")
    fold_1 = make_folds(cache.manifest, config.folds, config.test_fraction, config.early_stopping_fraction, config.seed)[1]
    with pytest.raises(TrainingOverlapError, match=REFUSED):
        fold_module(cache, fold_1, dataclasses.replace(config, init=str(renamed)), "cpu", "32-true")
    # The same ids from a model fitted on another dataset (another folder; e.g. another synthetic
    # cohort, whose ids are also OAS2_…) name other people: accepted.
    checkpoint.train_data_root = str(tmp_path / "another-cohort")
    elsewhere = save_checkpoint(checkpoint, tmp_path / "elsewhere" / "model.ckpt")
    module, _ = fold_module(cache, fold_1, dataclasses.replace(config, init=str(elsewhere)), "cpu", "32-true")
    assert module.model.state_dict().keys() == checkpoint.model.state_dict().keys()
    # A checkpoint written before ids were kept falls back to content hashes and says so.
    old = load_checkpoint(tiny_run / "fold_0" / "model.ckpt")
    old.train_subject_ids = old.train_session_ids = ()
    old_path = save_checkpoint(old, tmp_path / "old" / "model.ckpt")
    with pytest.raises(TrainingOverlapError, match=r"by content hash: it records no subject ids"):
        fold_module(cache, fold_1, dataclasses.replace(config, init=str(old_path)), "cpu", "32-true")
    fold_0 = make_folds(cache.manifest, config.folds, config.test_fraction, config.early_stopping_fraction, config.seed)[0]
    with pytest.warns(UserWarning, match="checked by content hash only"):
        fold_module(cache, fold_0, dataclasses.replace(config, init=str(old_path)), "cpu", "32-true")


def test_combining_runs_with_different_seeds_on_the_same_people_is_refused(tiny_run: Path, cache: PreparedCache, config: TrainConfig, tmp_path: Path) -> None:
    reseeded = train(cache, tmp_path / "seed-5", dataclasses.replace(config, seed=5))
    assert reseeded is not None
    tested = pd.read_csv(tiny_run / "fold_0" / "predictions.csv", dtype={"subject_id": str})
    fitted = set(load_checkpoint(reseeded.run_dir / "fold_0" / "model.ckpt").train_subject_ids)
    overlapping = len(set(tested["subject_id"]) & fitted)
    assert overlapping > 0
    with pytest.raises(TrainingOverlapError, match=REFUSED) as refused:
        combine([tiny_run, reseeded.run_dir], tmp_path / "combined", progress=False)
    assert "\n" not in str(refused.value) and "seed-5" in str(refused.value)
    assert REFUSED.search(str(refused.value)).groups() == (str(overlapping), str(tested["subject_id"].nunique()), "0")
    assert not (tmp_path / "combined").exists()


def test_predict_warns_about_a_training_person_given_by_id_though_its_bytes_differ(tiny_run: Path, cache: PreparedCache, tmp_path: Path) -> None:
    checkpoint = load_checkpoint(tiny_run / "fold_0" / "model.ckpt")
    trained = cache.manifest[cache.manifest["subject_id"].astype(str).isin(checkpoint.train_subject_ids)].iloc[0]
    unseen = cache.manifest[~cache.manifest["subject_id"].astype(str).isin(checkpoint.train_subject_ids)].iloc[0]
    checkpoint.train_data_root = str(tmp_path / "dataset")  # the model's dataset lives here
    model = BrainAgeModel([checkpoint], device="cpu")
    rows = []
    for name, row in (("dataset/copy", trained), ("dataset/unseen", unseen), ("elsewhere/copy", trained)):
        image = nib.load(row["path"])
        path = tmp_path / name / "scan.nii.gz"  # re-saved: other bytes than the training scan's
        path.parent.mkdir(parents=True)
        nib.save(nib.Nifti1Image(image.get_fdata(dtype="float32"), image.affine), path)
        rows.append({"path": str(path), "subject_id": row["subject_id"], "session_id": row["session_id"], "age": row["age"]})
    rows.append({"path": trained["path"], "subject_id": trained["subject_id"], "session_id": trained["session_id"], "age": trained["age"]})
    table = pd.DataFrame(rows)
    table.to_csv(tmp_path / "scans.csv", index=False)
    warned = model.predict(tmp_path / "scans.csv", cache=None)["warnings"].tolist()
    assert "this session was in the training data of 1 of 1 model(s) by session id, though not these bytes" in warned[0]
    assert "training data" not in warned[1]  # a person the model was not fitted on
    assert "training data" not in warned[2]  # the same ids outside the model's dataset name another person
    assert "this scan was in the training data of 1 of 1 model(s)" in warned[3] and "by session id" not in warned[3]  # by bytes
