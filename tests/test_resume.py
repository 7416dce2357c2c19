"""Exact resume with DataLoader worker processes: a fold interrupted after an epoch and resumed
from its ``last.ckpt`` sees the batches, augmentations and random draws an uninterrupted one does,
and ends with the same weights and predictions, with 2 loader workers as with none.

Two levels: the data module under a real Lightning trainer (what each training step receives,
a few seconds), and ``brainage train`` killed with SIGKILL after its first epoch, run again, and
compared with an uninterrupted run (slow).
"""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from brainage.checkpoint import load_checkpoint
from brainage.data import BrainAgeDataModule, make_folds
from brainage.preprocess import load_cache
from brainage.training import TrainConfig

BRAINAGE = Path(sys.executable).with_name("brainage")
WORKERS = 2


class Recorder(L.LightningModule):
    """Records, per training step, the epoch, the scans of the batch, a digest of its augmented
    voxels and a draw of the main process's global generator (what dropout would draw from)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[tuple[int, tuple[int, ...], str, float]] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images, age_z, rows = batch
        digest = hashlib.sha256(images.numpy().tobytes()).hexdigest()
        self.seen.append((self.current_epoch, tuple(rows.tolist()), digest, float(torch.rand(()))))
        return ((self.weight * images.mean() - age_z.mean()) ** 2).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Interrupted(Exception):
    """The interruption :class:`StopAtEpoch` raises."""


class StopAtEpoch(Callback):
    """Interrupts training as epoch ``epoch`` (0-based) starts, after the previous one was checkpointed."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            raise Interrupted(f"stopped as epoch {self.epoch} starts")


def _fit(data: BrainAgeDataModule, folder: Path, stop: int | None = None, resume: Path | None = None, module: Recorder | None = None) -> Recorder:
    module = module or Recorder()
    trainer = L.Trainer(
        max_epochs=3, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        limit_val_batches=0, callbacks=[ModelCheckpoint(dirpath=folder, save_last=True), *([StopAtEpoch(stop)] if stop is not None else [])],
    )  # fmt: skip  # arguments grouped by meaning
    trainer.fit(module, datamodule=data, ckpt_path=resume)
    return module


def test_a_resumed_fit_gets_the_batches_of_an_uninterrupted_one_from_two_workers(tiny_cache_seed: Path, tmp_path: Path) -> None:
    cache = load_cache(tiny_cache_seed)
    fold = make_folds(cache.manifest, folds=2, seed=0)[0]

    def data() -> BrainAgeDataModule:
        return BrainAgeDataModule(cache, fold, batch_size=8, num_workers=WORKERS, seed=3)

    L.seed_everything(3, workers=True, verbose=False)  # as training does: Lightning seeds the workers too
    whole = _fit(data(), tmp_path / "whole")
    assert [epoch for epoch, *_ in whole.seen] == sorted(epoch for epoch, *_ in whole.seen) and {epoch for epoch, *_ in whole.seen} == {0, 1, 2}
    interrupted = Recorder()
    with pytest.raises(Interrupted):
        _fit(data(), tmp_path / "killed", stop=1, module=interrupted)
    assert interrupted.seen == [step for step in whole.seen if step[0] == 0]
    L.seed_everything(3, workers=True, verbose=False)
    torch.manual_seed(12345)  # a resumed process starts from other generator states
    resumed = _fit(data(), tmp_path / "killed", resume=tmp_path / "killed" / "last.ckpt")
    expected = [step for step in whole.seen if step[0] > 0]
    assert [step[:2] for step in resumed.seen] == [step[:2] for step in expected]  # the same scans in the same batches
    assert resumed.seen == expected  # and the same augmented voxels and main-process draws
    epochs = [{digest for epoch, _, digest, _ in whole.seen if epoch == e} for e in range(3)]
    assert not epochs[0] & epochs[1] and not epochs[1] & epochs[2]  # every epoch draws afresh (not a replay of the last)


def _train_args(cache: Path, run: Path, settings: Path) -> list[str]:
    return ["train", str(cache), "--out", str(run), "--config", str(settings)]


def _kill_after_first_epoch(args: list[str], run: Path, log: Path, timeout: float = 300.0) -> None:
    """Run ``brainage *args`` and SIGKILL it once its fold has checkpointed its first epoch."""
    metrics = run / "fold_0" / "metrics.csv"
    with log.open("w") as output:
        process = subprocess.Popen([str(BRAINAGE), *args], stdout=output, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                if (run / "fold_0" / "last.ckpt").is_file() and len(metrics.read_text().splitlines()) > 1:
                    break
            except OSError:
                pass
            assert process.poll() is None, f"ended (exit {process.returncode}) before the kill:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"no epoch checkpointed after {timeout} s"
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="kills a training process mid-fold")
def test_a_training_with_two_loader_workers_killed_after_its_first_epoch_resumes_to_the_same_bits(tiny_cache_seed: Path, tmp_path: Path) -> None:
    config = TrainConfig(
        model="sfcn", model_hparams={"width": 0.125}, epochs=3, min_epochs=3, folds=None, batch_size=8, seed=0,
        progress=False, baselines=False, num_workers=WORKERS, precision="32-true",
    )  # fmt: skip  # settings grouped in rows
    settings = tmp_path / "train.yaml"
    settings.write_text(yaml.safe_dump(config.to_dict()))
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run([str(BRAINAGE), *_train_args(tiny_cache_seed, whole, settings)], check=True, capture_output=True)
    _kill_after_first_epoch(_train_args(tiny_cache_seed, killed, settings), killed, tmp_path / "killed.log")
    assert pd.read_csv(killed / "fold_0" / "metrics.csv")["epoch"].tolist() == [1]  # killed in the second of three epochs
    rerun = subprocess.run([str(BRAINAGE), *_train_args(tiny_cache_seed, killed, settings)], capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    # Same process layout, same CPU kernels, same inputs in the same order: the same bits, not merely close.
    # One exception: Lightning's epoch mean of the logged validation loss of a resumed process may
    # differ from an uninterrupted one's in its last float32 bit (relative 1.2e-7) while the weights,
    # predictions and every other metric agree to the bit; 1e-6 allows that bit and nothing more.
    history, expected = pd.read_csv(killed / "metrics.csv"), pd.read_csv(whole / "metrics.csv")
    pd.testing.assert_frame_equal(history.drop(columns="val_loss"), expected.drop(columns="val_loss"), check_exact=True)
    pd.testing.assert_series_equal(history["val_loss"], expected["val_loss"], check_exact=False, rtol=1e-6, atol=0)
    pd.testing.assert_frame_equal(pd.read_csv(killed / "predictions.csv"), pd.read_csv(whole / "predictions.csv"), check_exact=True)
    expected, resumed = (load_checkpoint(run / "fold_0" / "model.ckpt").model.state_dict() for run in (whole, killed))
    assert expected.keys() == resumed.keys() and all(torch.equal(expected[name], resumed[name]) for name in expected)
