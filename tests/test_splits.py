"""Subject-grouped splits, the leak check, augmentation and the training configuration."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from sklearn.model_selection import GroupShuffleSplit

from brainage.data import AugmentConfig, EpochShuffle, SplitError, SubjectLeakError, check_subject_leak, make_folds, subject_holdout
from brainage.errors import InputError
from brainage.training import ConfigError, TrainConfig, load_config


def _manifest(n_subjects: int = 20, sessions: int = 2, repeats: int = 2, seed: int = 0) -> pd.DataFrame:
    """An OASIS-2-shaped manifest: subjects with several sessions, several scans per session."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_subjects):
        age = rng.uniform(60, 95)
        group = ("Nondemented", "Demented", "Converted")[s % 3]
        for v in range(sessions):
            for r in range(repeats):
                rows.append(
                    {
                        "scan_id": f"OAS2_{s:04d}_MR{v + 1}_mpr-{r + 1}",
                        "subject_id": f"OAS2_{s:04d}",
                        "session_id": f"OAS2_{s:04d}_MR{v + 1}",
                        "age": age + 1.5 * v,
                        "group": group,
                        "qc_flagged": False,
                    }
                )
    return pd.DataFrame(rows)


def _subjects(manifest: pd.DataFrame, indices: np.ndarray) -> set[str]:
    return set(manifest["subject_id"].iloc[indices])


def test_holdout_keeps_every_subject_on_one_side_and_holds_out_the_fraction() -> None:
    manifest = _manifest(n_subjects=30)
    kept, held_out = subject_holdout(manifest, 0.2, seed=1)
    assert not _subjects(manifest, kept) & _subjects(manifest, held_out)
    assert len(kept) + len(held_out) == len(manifest)
    assert len(_subjects(manifest, held_out)) == 6  # 20 % of 30 subjects


def test_kfold_tests_every_scan_once_and_never_trains_on_a_test_subject() -> None:
    manifest = _manifest(n_subjects=25)
    folds = make_folds(manifest, folds=5, seed=3)
    tested = np.concatenate([fold.test for fold in folds])
    assert sorted(tested) == list(range(len(manifest)))
    for fold in folds:
        sides = [_subjects(manifest, fold.train), _subjects(manifest, fold.val), _subjects(manifest, fold.test)]
        assert all(sides)
        assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
        assert len(fold.train) + len(fold.val) + len(fold.test) == len(manifest)


def test_kfold_stratifies_age_so_every_test_fold_spans_the_age_range() -> None:
    manifest = _manifest(n_subjects=40)
    folds = make_folds(manifest, folds=4, seed=0)
    spread = manifest["age"].max() - manifest["age"].min()
    for fold in folds:
        ages = manifest["age"].iloc[fold.test]
        assert ages.max() - ages.min() > 0.6 * spread


def test_same_seed_gives_the_same_folds_and_another_seed_other_folds() -> None:
    manifest = _manifest()
    first, again, other = (make_folds(manifest, folds=4, seed=seed) for seed in (7, 7, 8))
    for a, b in zip(first, again, strict=False):
        np.testing.assert_array_equal(a.train, b.train)
        np.testing.assert_array_equal(a.val, b.val)
        np.testing.assert_array_equal(a.test, b.test)
    assert any(not np.array_equal(a.test, c.test) for a, c in zip(first, other, strict=False))


def test_leak_check_refuses_the_tutorials_session_grouped_split() -> None:
    manifest = _manifest(n_subjects=20)
    splitter = GroupShuffleSplit(n_splits=1, test_size=0.2, random_state=42)
    train, test = next(splitter.split(manifest, groups=manifest["session_id"]))
    shared = _subjects(manifest, train) & _subjects(manifest, test)
    assert shared  # grouping by session puts people on both sides
    with pytest.raises(SubjectLeakError, match=sorted(shared)[0]):
        check_subject_leak(manifest, {"train": train, "test": test})
    check_subject_leak(manifest, dict(zip(("train", "test"), subject_holdout(manifest, 0.2, 42), strict=False)))


def test_train_groups_restrict_training_but_every_group_is_tested() -> None:
    manifest = _manifest(n_subjects=24)
    folds = make_folds(manifest, folds=3, seed=0, train_groups=("Nondemented",))
    for fold in folds:
        assert set(manifest["group"].iloc[np.concatenate([fold.train, fold.val])]) == {"Nondemented"}
        assert fold.excluded_group == (manifest["group"].iloc[np.setdiff1d(np.arange(len(manifest)), fold.test)] != "Nondemented").sum()
    tested = manifest.iloc[np.concatenate([fold.test for fold in folds])]
    assert set(tested["group"]) == {"Nondemented", "Demented", "Converted"}


def test_qc_flagged_scans_are_not_trained_on_but_are_tested() -> None:
    manifest = _manifest(n_subjects=20)
    manifest.loc[manifest.index % 5 == 0, "qc_flagged"] = True
    flagged = set(np.flatnonzero(manifest["qc_flagged"]))
    folds = make_folds(manifest, folds=4, seed=0)
    for fold in folds:
        assert not flagged & set(fold.train) and not flagged & set(fold.val)
        assert fold.excluded_qc == len(flagged - set(fold.test))
    assert flagged <= set(np.concatenate([fold.test for fold in folds]))


def test_unknown_train_group_and_impossible_folds_are_clear_errors() -> None:
    manifest = _manifest(n_subjects=6)
    with pytest.raises(SplitError, match="Healthy"):
        make_folds(manifest, folds=2, train_groups=("Healthy",))
    with pytest.raises(SplitError, match="between 2 and the number of subjects"):
        make_folds(manifest, folds=7)


def test_flip_runs_along_the_left_right_axis_and_augmentation_can_be_switched_off() -> None:
    image = torch.arange(4 * 5 * 6, dtype=torch.float32).reshape(1, 4, 5, 6) / 100
    flip_only = AugmentConfig(noise=False, intensity=False, blur=False, flip=True, probability=1.0, clamp=None).transform()
    torch.testing.assert_close(flip_only(image), image.flip(1))  # dim 1 of (C, X, Y, Z): X, left–right
    assert AugmentConfig(noise=False, intensity=False, flip=False, blur=False).transform() is None


def test_intensity_scaling_stays_in_its_range_and_clamp_applies() -> None:
    image = torch.full((1, 4, 4, 4), 2.0)
    scale = AugmentConfig(noise=False, intensity=True, intensity_range=0.1, flip=False, blur=False, probability=1.0, clamp=None).transform()
    factors = {round(float(scale(image)[0, 0, 0, 0]) / 2.0, 6) for _ in range(20)}
    assert len(factors) > 1 and all(0.9 <= f <= 1.1 for f in factors)
    clamp = AugmentConfig(noise=True, noise_std=5.0, intensity=False, flip=False, probability=1.0, clamp=3.0).transform()
    assert float(clamp(image).abs().max()) <= 3.0


def test_blur_smooths_by_at_most_its_sd_and_keeps_the_mean() -> None:
    image = torch.zeros(1, 16, 16, 16)
    image[:, ::2] = 1.0  # one-voxel stripes along X
    blur = AugmentConfig(noise=False, intensity=False, flip=False, blur=True, blur_std=1.0, probability=1.0, clamp=None).transform()
    inner = (0, slice(4, 12), slice(4, 12), slice(4, 12))
    spreads = [float(blur(image.clone())[inner].std()) for _ in range(20)]
    assert max(spreads) <= float(image[inner].std()) + 1e-4  # it only smooths
    assert min(spreads) < 0.5 * float(image[inner].std()) and len({round(s, 3) for s in spreads}) > 5  # by an SD drawn anew each time
    torch.testing.assert_close(blur(image.clone())[0, 4:12, 4:12, 4:12].mean(), torch.tensor(0.5), atol=0.02, rtol=0)


def test_train_config_round_trips_through_yaml(tmp_path) -> None:
    config = TrainConfig(
        model="resnet",
        model_hparams={"widths": (8, 16)},
        folds=5,
        train_groups=("Nondemented",),
        augmentation=AugmentConfig(affine=True, gamma=True, blur=True),
        devices=2,
    )
    assert TrainConfig.from_dict(config.to_dict()) == config
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"train": config.to_dict()}))
    assert load_config(path) == config
    path.write_text("epochs: 3\nlearning_rate: 0.1\n")
    with pytest.raises(InputError, match="learning_rate"):
        load_config(path)
    with pytest.raises(ConfigError, match="batch_size"):
        TrainConfig(batch_size=1)


def test_one_repeat_per_session_per_epoch_visits_every_session_once_and_varies_the_repeat() -> None:
    manifest = _manifest(n_subjects=6, sessions=2, repeats=3)
    sessions = manifest["session_id"].tolist()
    sampler = EpochShuffle(len(manifest), seed=0, generator=torch.Generator(), groups=sessions, per_group=1)
    assert len(sampler) == 12
    drawn = []
    for epoch in range(6):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert len(order) == len(sampler) and sorted(manifest["session_id"].iloc[order]) == sorted(set(sessions))
        drawn.append(tuple(sorted(order)))
    assert len(set(drawn)) > 1  # another repeat is drawn in another epoch
    sampler.set_epoch(3)
    assert tuple(sorted(sampler)) == drawn[3]  # the epoch alone decides (exact resume)
    everything = EpochShuffle(len(manifest), seed=0, generator=torch.Generator())
    assert sorted(everything) == list(range(len(manifest)))


def test_numbers_written_as_yaml_text_are_read_as_numbers(tmp_path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("lr: 2e-4\nepochs: 3\naugmentation:\n  noise_std: 5e-2\n")
    assert yaml.safe_load(path.read_text())["lr"] == "2e-4"  # YAML 1.1: an exponent without a dot is text
    config = load_config(path)
    assert config.lr == 2e-4 and config.epochs == 3 and config.augmentation.noise_std == 0.05
    assert TrainConfig(lr="1e-3").lr == 1e-3 and TrainConfig(folds="5").folds == 5
    path.write_text("lr: fast\n")
    with pytest.raises(InputError, match="lr must be a number, got 'fast'"):
        load_config(path)
    with pytest.raises(ConfigError, match="ema_decay must be a number"):
        TrainConfig(ema_decay="slow")


def test_repeats_per_session_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="repeats_per_session"):
        TrainConfig(repeats_per_session=0)
