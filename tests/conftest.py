"""Shared fixtures: the synthetic cohort is generated once per test session."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from brainage.cohort import TINY, synthesize

if TYPE_CHECKING:
    from brainage.preprocess import PreparedCache
    from brainage.training import TrainConfig

TINY_SEED = 0


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of a ``tiny`` synthetic OASIS-2 cohort (12 subjects, 24 sessions, 48 scans), seed 0."""
    root = tmp_path_factory.mktemp("cohort") / "tiny"
    synthesize(root, TINY, seed=TINY_SEED, workers=1)
    return root


@pytest.fixture(scope="session")
def tiny_cache_seed(tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of a cache of the whole ``tiny`` cohort prepared with the ``seed`` pipeline (64³ float32);
    open it with :func:`brainage.preprocess.load_cache`."""
    from brainage.preprocess import prepare

    root = tmp_path_factory.mktemp("cache") / "tiny-seed"
    prepare(tiny_cohort, root, "seed")
    return root


@pytest.fixture(scope="session")
def tiny_run(tiny_cache_seed: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run folder of a short training on ``tiny_cache_seed``: a narrow SFCN, 2 folds by subject,
    1 epoch each, baselines included; ``fold_0/model.ckpt`` and ``fold_1/model.ckpt`` predict."""
    from brainage.training import TrainConfig, train

    config = TrainConfig(
        model="sfcn", model_hparams={"width": 0.125}, epochs=1, folds=2, batch_size=8, seed=0,
        progress=False, voxel_components=5, num_workers=0,
    )  # fmt: skip  # settings grouped in rows
    return train(tiny_cache_seed, tmp_path_factory.mktemp("run") / "tiny", config).run_dir


@pytest.fixture(scope="session")
def tiny_cache(tiny_cache_seed: Path) -> PreparedCache:
    """``tiny_cache_seed`` opened (manifest, configuration, volumes)."""
    from brainage.preprocess import load_cache

    return load_cache(tiny_cache_seed)


@pytest.fixture(scope="session")
def tiny_config(tiny_run: Path) -> TrainConfig:
    """The training configuration of ``tiny_run``, as its ``config.yaml`` reads back."""
    from brainage.training import load_config

    return load_config(tiny_run / "config.yaml")


@pytest.fixture(scope="session")
def untrained_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two untrained small ResNet checkpoints (initialised with seeds 0 and 1, every residual
    branch switched on) for the ``seed`` pipeline, saved like trained ones. Their age SD of 1000
    years spreads their predictions over years between scans; for tests where what a model learnt
    does not matter (input handling, ensembles, export)."""
    import torch

    from brainage.evaluation import AgeBiasCorrector
    from brainage.models import build_model
    from brainage.preprocess import make_config
    from brainage.training import BrainAgeCheckpoint, save_checkpoint

    folder = tmp_path_factory.mktemp("untrained")
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = build_model("resnet", widths=[4, 8], stem_width=4)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                torch.nn.init.ones_(module.weight)  # the last norm of a block starts at zero: an identity block
        checkpoint = BrainAgeCheckpoint(
            model=model.eval(),
            model_name="resnet",
            age_mean=75.0,
            age_std=1000.0,
            preprocessing=make_config("seed").to_dict(),
            corrector=AgeBiasCorrector.from_dict({"method": "residual", "slope": -0.3, "intercept": 22.5, "n_subjects": 40}),
            train_age_range=(60.0, 90.0),
        )
        paths.append(save_checkpoint(checkpoint, folder / f"seed{seed}" / "model.ckpt"))
    return paths
