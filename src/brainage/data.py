"""Training data: scans of a prepared cache as a torch Dataset, augmentation, subject-grouped splits.

The cache's volumes are memory-mapped, so a scan is read from the page cache, never reloaded from
its source image. Splits are made by ``subject_id``, never by session or scan, and every fold is
checked for subjects on two sides before anything trains.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
import torchio as tio
from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold
from torch.utils.data import DataLoader, Dataset, Sampler
from torchio.transforms import IntensityTransform
from torchio.transforms.augmentation import RandomTransform

from brainage.errors import BrainAgeError
from brainage.inference import LEFT_RIGHT_AXIS
from brainage.preprocess import PreparedCache
from brainage.utils import usable_cores

#: Manifest row positions: a list or an integer array (a :class:`Fold`'s sides are arrays).
Rows = Sequence[int] | np.ndarray


class SubjectLeakError(BrainAgeError):
    """A subject whose scans fall on two sides of a split."""


class SplitError(BrainAgeError):
    """A split that cannot be made from the scans at hand."""


# --- augmentation --------------------------------------------------------------------------------


class RandomIntensityScale(RandomTransform, IntensityTransform):
    r"""Multiply every intensity by one factor :math:`s \sim \mathcal{U}(1 - r, 1 + r)`."""

    def __init__(self, scale_range: float = 0.1, **kwargs: object) -> None:
        super().__init__(**kwargs)
        if not 0 <= scale_range < 1:
            raise ValueError(f"scale_range must be in [0, 1), got {scale_range}")
        self.scale_range = scale_range

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        factor = self.sample_uniform(1 - self.scale_range, 1 + self.scale_range)
        for image in self.get_images(subject):
            image.set_data(image.data * factor)
        return subject


@dataclass(frozen=True)
class AugmentConfig:
    """Training-only augmentation; each transform is switched on by its flag.

    The first three are the tutorial's (each applied with ``probability``, then a clamp to
    ``±clamp``); the flip runs along the true left–right axis. ``affine``, ``bias_field``,
    ``gamma`` and ``blur`` are TorchIO's random affine, smooth multiplicative bias field, gamma
    contrast and Gaussian blur (SD uniform in [0, ``blur_std``] voxels of the prepared grid: the
    blur that resampling a scan before it reaches brainage adds).
    """

    noise: bool = True
    noise_std: float = 0.05
    intensity: bool = True
    intensity_range: float = 0.1
    flip: bool = True
    affine: bool = False
    affine_degrees: float = 5.0
    affine_scales: float = 0.05
    affine_translation: float = 2.0
    bias_field: bool = False
    bias_field_coefficients: float = 0.3
    gamma: bool = False
    gamma_log_range: float = 0.2
    blur: bool = True
    blur_std: float = 0.5
    probability: float = 0.5
    clamp: float | None = 3.0

    def transform(self) -> tio.Compose | None:
        """The TorchIO pipeline for ``(1, X, Y, Z)`` tensors, or ``None`` when nothing is on."""
        p = self.probability
        own: dict[str, Any] = {"copy": False}  # the dataset hands over a fresh tensor: no defensive copies
        steps: list[tio.Transform] = []
        if self.affine:
            steps.append(
                tio.RandomAffine(
                    scales=self.affine_scales,
                    degrees=self.affine_degrees,
                    translation=self.affine_translation,
                    default_pad_value="minimum",
                    p=p,
                    **own,
                )
            )
        if self.bias_field:
            steps.append(tio.RandomBiasField(coefficients=self.bias_field_coefficients, p=p, **own))
        if self.gamma:
            steps.append(tio.RandomGamma(log_gamma=self.gamma_log_range, p=p, **own))
        if self.blur:
            steps.append(tio.RandomBlur(std=(0.0, self.blur_std), p=p, **own))
        if self.noise:
            steps.append(tio.RandomNoise(std=(self.noise_std, self.noise_std), p=p, **own))
        if self.intensity:
            steps.append(RandomIntensityScale(self.intensity_range, p=p, **own))
        if self.flip:
            steps.append(tio.RandomFlip(axes=(LEFT_RIGHT_AXIS,), flip_probability=p, **own))
        if not steps:
            return None
        if self.clamp is not None:
            steps.append(tio.Clamp(out_min=-self.clamp, out_max=self.clamp, **own))
        return tio.Compose(steps, **own)


# --- dataset -------------------------------------------------------------------------------------


class ScanDataset(Dataset):
    """Scans ``indices`` (manifest row positions) of a cache: ``(image (1, X, Y, Z), age_z, index)``.

    Ages are z-scored with the given training statistics; ``transform`` (a TorchIO transform)
    is applied to the float32 image tensor.
    """

    def __init__(
        self,
        cache: PreparedCache,
        indices: Rows,
        age_mean: float,
        age_std: float,
        transform: tio.Transform | None = None,
    ) -> None:
        self.cache = cache
        self.indices = np.asarray(indices, dtype=np.int64)
        ages = cache.manifest["age"].to_numpy(dtype=np.float64)[self.indices]
        self.age_z = torch.from_numpy((ages - age_mean) / age_std).float()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        index = int(self.indices[item])
        image = torch.from_numpy(np.array(self.cache.volume(index), dtype=np.float32))[None]
        if self.transform is not None:
            image = self.transform(image)
        return image, self.age_z[item], index


def age_statistics(ages: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of training ages, for z-scoring (never of validation/test)."""
    ages = np.asarray(ages, dtype=float)
    std = float(ages.std())
    if ages.size < 2 or std == 0:
        raise SplitError(f"the training scans need at least two different ages, got {ages.size} scan(s) with sd {std:.2f}")
    return float(ages.mean()), std


def default_num_workers() -> int:
    """Loader processes: none on a machine of two cores or fewer, else half the cores (at most 8)."""
    cores = usable_cores()
    return 0 if cores <= 2 else min(8, cores // 2)


# --- splits --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fold:
    """Manifest row positions of one fold: ``train`` (fit), ``val`` (early stopping, bias
    correction) and ``test`` (reported, never seen while training). ``excluded_qc`` and
    ``excluded_group`` count the training-side scans left out as QC-flagged or outside
    ``train_groups``."""

    index: int
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    excluded_qc: int = 0
    excluded_group: int = 0

    def describe(self, manifest: pd.DataFrame) -> dict[str, object]:
        """``scans / subjects`` per side and the excluded scan counts, for a table."""
        row: dict[str, object] = {"fold": self.index}
        for side in ("train", "val", "test"):
            indices = getattr(self, side)
            row[side] = f"{len(indices)} / {manifest['subject_id'].iloc[indices].nunique()}"
        row["QC-excluded"] = self.excluded_qc
        row["group-excluded"] = self.excluded_group
        return row


def check_subject_leak(manifest: pd.DataFrame, splits: Mapping[str, Rows]) -> None:
    """Raise :class:`SubjectLeakError` if any subject has scans in two of ``splits``."""
    subjects = manifest["subject_id"].astype(str).to_numpy()
    names = list(splits)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            shared = sorted(set(subjects[np.asarray(splits[first], dtype=int)]) & set(subjects[np.asarray(splits[second], dtype=int)]))
            if shared:
                shown = ", ".join(shared[:5]) + (f" and {len(shared) - 5} more" if len(shared) > 5 else "")
                raise SubjectLeakError(f"subject(s) {shown} have scans in both {first} and {second}; splits must be by subject")


def subject_holdout(manifest: pd.DataFrame, size: float | int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row positions ``(kept, held_out)``, holding out ``size`` of the subjects (GroupShuffleSplit):
    a fraction if a float, a number of subjects if an int."""
    subjects = manifest["subject_id"].astype(str).to_numpy()
    n_subjects = len(np.unique(subjects))
    if n_subjects < 2:
        raise SplitError(f"a subject-grouped split needs at least two subjects, got {n_subjects}")
    if not (0 < size < 1 if isinstance(size, float) else 0 < size < n_subjects):
        raise SplitError(f"cannot hold out {size} of {n_subjects} subjects")
    splitter = GroupShuffleSplit(n_splits=1, test_size=size, random_state=seed)
    kept, held_out = next(splitter.split(subjects, groups=subjects))
    return np.sort(kept), np.sort(held_out)


def subject_kfold(manifest: pd.DataFrame, k: int, seed: int, n_age_bins: int = 5) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` pairs ``(train, test)`` of row positions: StratifiedGroupKFold by subject on age bins.

    Bins are quantiles of the subjects' mean ages, so every fold spans the age range.
    """
    subjects = manifest["subject_id"].astype(str).to_numpy()
    n_subjects = len(np.unique(subjects))
    if k < 2 or k > n_subjects:
        raise SplitError(f"--folds must be between 2 and the number of subjects ({n_subjects}), got {k}")
    subject_age = manifest.groupby(manifest["subject_id"].astype(str))["age"].mean()
    n_bins = max(1, min(n_age_bins, n_subjects // k))
    edges = np.quantile(subject_age.to_numpy(), np.linspace(0, 1, n_bins + 1)[1:-1])
    bins = np.digitize(subject_age.reindex(subjects).to_numpy(), edges)
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return [(np.sort(train), np.sort(test)) for train, test in splitter.split(subjects, bins, groups=subjects)]


def make_folds(
    manifest: pd.DataFrame,
    folds: int | None = None,
    test_fraction: float = 0.2,
    early_stopping_fraction: float = 0.15,
    seed: int = 42,
    train_groups: Sequence[str] | None = None,
) -> list[Fold]:
    """Subject-grouped folds: ``folds`` (K-fold, every scan tested once) or one hold-out of
    ``test_fraction`` of the subjects. Inside each training side, ``early_stopping_fraction`` of its
    subjects (at least two when there are four or more) become the validation set. QC-flagged scans and, with ``train_groups``, scans of other
    groups are kept out of train/val but stay in the test side. Refuses a split with a subject leak.
    """
    if train_groups:
        unknown = sorted(set(train_groups) - set(manifest["group"].dropna().astype(str)))
        if unknown:
            present = ", ".join(sorted(manifest["group"].dropna().astype(str).unique()))
            raise SplitError(f"--train-groups: no scans in group(s) {', '.join(unknown)}; groups present: {present}")
    flagged = manifest["qc_flagged"].fillna(False).astype(bool).to_numpy() if "qc_flagged" in manifest else np.zeros(len(manifest), bool)
    in_group = manifest["group"].astype(str).isin(train_groups).to_numpy() if train_groups else np.ones(len(manifest), bool)
    outer = subject_kfold(manifest, folds, seed) if folds else [subject_holdout(manifest, test_fraction, seed)]
    result = []
    for index, (training_side, test) in enumerate(outer):
        eligible = training_side[in_group[training_side] & ~flagged[training_side]]
        n_subjects = manifest["subject_id"].iloc[eligible].nunique()
        if n_subjects < 2:
            raise SplitError(f"fold {index}: fewer than two training subjects remain after QC and group filters")
        n_val = min(n_subjects - 1, max(min(2, n_subjects // 2), math.ceil(early_stopping_fraction * n_subjects)))
        inner_train, inner_val = subject_holdout(manifest.iloc[eligible], n_val, seed + index)
        fold = Fold(
            index=index,
            train=eligible[inner_train],
            val=eligible[inner_val],
            test=test,
            excluded_qc=int(flagged[training_side].sum()),
            excluded_group=int((~in_group[training_side] & ~flagged[training_side]).sum()),
        )
        check_subject_leak(manifest, {"train": fold.train, "val": fold.val, "test": fold.test})
        result.append(fold)
    return result


# --- Lightning data module -----------------------------------------------------------------------


class EpochShuffle(Sampler[int]):
    """A random order of ``size`` items that depends on ``seed`` and the epoch only (Lightning calls
    :meth:`set_epoch` before every epoch), so a run resumed from a checkpoint sees the batches and
    augmentations an uninterrupted one would. :meth:`set_epoch` seeds the loader's ``generator``,
    from which a loader iterator created afterwards draws its worker processes' seeds (the training
    loader starts its workers afresh every epoch for this); each iteration seeds torch's global
    generator, which TorchIO's augmentations draw from in the main process (no workers) and dropout
    draws from in every case.

    With ``groups`` (one label per item, such as each scan's session) and ``per_group``, every
    epoch draws afresh at most ``per_group`` items of each group: one repeat per session per epoch
    visits every session as often as plain shuffling at a fraction of the cost."""

    def __init__(self, size: int, seed: int, generator: torch.Generator, groups: Sequence[object] | None = None, per_group: int | None = None) -> None:
        self.size = size
        self.seed = seed
        self.generator = generator
        self.set_epoch(0)
        self.members: list[torch.Tensor] | None = None
        self.per_group = per_group
        if groups is not None and per_group is not None:
            if len(groups) != size:
                raise ValueError(f"groups has {len(groups)} labels for {size} items")
            labels = pd.Series(list(groups)).astype(str)
            self.members = [torch.as_tensor(rows, dtype=torch.long) for rows in labels.groupby(labels, sort=True).indices.values()]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.generator.manual_seed(self.epoch_seed)

    @property
    def epoch_seed(self) -> int:
        """The seed of this epoch's order and random draws."""
        return self.seed * 100_003 + self.epoch

    def __iter__(self) -> Iterator[int]:
        epoch_seed = self.epoch_seed
        torch.manual_seed(epoch_seed)
        draw = torch.Generator().manual_seed(epoch_seed)
        if self.members is None:
            return iter(torch.randperm(self.size, generator=draw).tolist())
        chosen = torch.cat([rows[torch.randperm(len(rows), generator=draw)[: self.per_group]] for rows in self.members])
        return iter(chosen[torch.randperm(len(chosen), generator=draw)].tolist())

    def __len__(self) -> int:
        if self.members is None:
            return self.size
        assert self.per_group is not None  # members are grouped only when per_group is given
        return sum(min(len(rows), self.per_group) for rows in self.members)


class BrainAgeDataModule(L.LightningDataModule):
    """Loaders of one fold: augmented shuffled training batches, plain validation batches
    (``pin_memory`` for faster copies to a CUDA device).

    Age statistics (``age_mean``, ``age_std``) come from the fold's training scans only.
    ``repeats_per_session`` draws at most that many of each session's scans per training epoch
    (:class:`EpochShuffle`); None: every scan every epoch.
    """

    def __init__(
        self,
        cache: PreparedCache,
        fold: Fold,
        batch_size: int = 8,
        augmentation: AugmentConfig | None = None,
        num_workers: int | None = None,
        pin_memory: bool = False,
        seed: int = 0,
        repeats_per_session: int | None = None,
    ) -> None:
        super().__init__()
        self.cache = cache
        self.repeats_per_session = repeats_per_session
        self.seed = seed
        self.pin_memory = pin_memory
        self.fold = fold
        self.batch_size = batch_size
        self.augmentation = augmentation or AugmentConfig()
        self.num_workers = default_num_workers() if num_workers is None else num_workers
        self.age_mean, self.age_std = age_statistics(cache.manifest["age"].to_numpy()[fold.train])

    def dataset(self, indices: Rows, augment: bool = False) -> ScanDataset:
        """Scans ``indices`` with this fold's age statistics (and training augmentation if asked)."""
        transform = self.augmentation.transform() if augment else None
        return ScanDataset(self.cache, indices, self.age_mean, self.age_std, transform)

    def loader(self, indices: Rows, train: bool = False) -> DataLoader:
        """Shuffled, augmented batches (dropping a last batch of one for batch norm) if ``train``:
        shuffling and augmentation follow from ``seed`` and the epoch alone (:class:`EpochShuffle`).

        The training loader's worker processes are started again every epoch, seeded from that
        epoch (persistent workers would carry their generators over from the epoch they started
        in, which a resumed run never had); the other loaders draw nothing random and keep theirs.
        """
        generator = torch.Generator()
        sampler = None
        if train:
            sessions = self.cache.manifest.iloc[np.asarray(indices, dtype=int)]
            groups = (sessions["subject_id"].astype(str) + "\0" + sessions["session_id"].astype(str)).tolist() if self.repeats_per_session else None
            sampler = EpochShuffle(len(indices), self.seed, generator, groups, self.repeats_per_session)
        return DataLoader(
            self.dataset(indices, augment=train),
            batch_size=self.batch_size,
            sampler=sampler,
            generator=generator,
            drop_last=sampler is not None and len(sampler) % self.batch_size == 1,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0 and not train,
            pin_memory=self.pin_memory,
        )

    def train_dataloader(self) -> DataLoader:
        """The training loader, its sampler already at the epoch the trainer is about to run: Lightning
        creates (and its worker processes start filling) the first iterator of a fit before it calls
        ``set_epoch``, so a fit resumed at epoch ``e`` would otherwise train on epoch 0's order and
        seeds (Lightning issue 21938)."""
        loader = self.loader(self.fold.train, train=True)
        if self.trainer is not None and isinstance(loader.sampler, EpochShuffle):
            loader.sampler.set_epoch(self.trainer.fit_loop.epoch_progress.current.processed)  # type: ignore[attr-defined]  # typed _ReadyCompletedTracker, is _ProcessedTracker
        return loader

    def val_dataloader(self) -> DataLoader:
        return self.loader(self.fold.val)
