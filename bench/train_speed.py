"""Training speed of the tutorial's network (``seed``): brainage's Lightning trainer against a plain
loop written like the tutorial's, on the same machine and the same synthetic scans.

    .venv/bin/python bench/train_speed.py [--side 64] [--scans 48] [--epochs 3] [--batch-size 8]

Both train the same architecture with AdamW, MSE, gradient clipping and the tutorial's three
augmentations. The plain loop is the tutorial's: images held in one float32 tensor, augmentation in
``__getitem__``, fp32, per-batch ``.item()`` bookkeeping. The trainer reads the memory-mapped cache
and uses what ``precision="auto"`` and ``channels_last="auto"`` choose here. Only training batches
are timed (validation excluded); the first epoch is a warm-up and is not counted. Prints samples/s,
CPU seconds per sample and the ratio; then the default model's samples/s in the same trainer.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from brainage.console import console, print_table
from brainage.data import Fold
from brainage.models import build_model
from brainage.preprocess import PreparedCache, make_config
from brainage.training import TrainConfig, cpu_supports_bf16, fold_module, fold_trainer, quiet_lightning, resolve_accelerator, resolve_precision


def synthetic_cache(root: Path, n_scans: int, side: int) -> PreparedCache:
    """A seed-pipeline cache of smooth random volumes, one subject per scan."""
    rng = np.random.default_rng(0)
    config = make_config("seed", shape=(side,) * 3)
    (root / "volumes").mkdir(parents=True)
    rows = []
    for i in range(n_scans):
        volume = rng.standard_normal((side // 4,) * 3).astype(np.float32).repeat(4, 0).repeat(4, 1).repeat(4, 2)
        np.save(root / "volumes" / f"{i}.npy", volume)
        rows.append(
            {
                "scan_id": f"s{i}",
                "subject_id": f"p{i}",
                "session_id": f"p{i}_MR1",
                "age": 60 + 35 * rng.random(),
                "group": "Nondemented",
                "sex": "F",
                "cdr": 0.0,
                "cache_file": f"volumes/{i}.npy",
                "qc_score": 1.0,
                "qc_flagged": False,
                "config_digest": config.volume_digest(),
            }
        )
    return PreparedCache(root, pd.DataFrame(rows), config, (side,) * 3, config.affine)


class EpochClock(L.Callback):
    """Wall and CPU seconds of each epoch's training batches (validation excluded)."""

    def __init__(self) -> None:
        self.epochs: list[tuple[int, float, float]] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = (time.perf_counter(), time.process_time())
        self._samples = 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: object, batch: tuple, batch_idx: int) -> None:
        self._samples += len(batch[0])
        self._end = (time.perf_counter(), time.process_time())

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epochs.append((self._samples, self._end[0] - self._start[0], self._end[1] - self._start[1]))


def run_trainer(cache: PreparedCache, model: str, epochs: int, batch_size: int, folder: Path) -> tuple[list[tuple[int, float, float]], str, bool]:
    """Epoch timings of brainage's trainer training ``model`` on all scans (a few held out for validation)."""
    config = TrainConfig(model=model, epochs=epochs, batch_size=batch_size, progress=False, early_stopping_patience=epochs)
    accelerator = resolve_accelerator(config.accelerator)
    precision = resolve_precision(config.precision, accelerator)
    n = len(cache.manifest)
    fold = Fold(0, train=np.arange(n - batch_size), val=np.arange(n - batch_size, n), test=np.arange(0))
    L.seed_everything(0, verbose=False)
    module, data = fold_module(cache, fold, config, accelerator, precision)
    clock = EpochClock()
    with quiet_lightning():
        trainer, _, _ = fold_trainer(config, accelerator, precision, folder, folder / "logs", data, extra_callbacks=[clock])
        trainer.fit(module, datamodule=data)
    return clock.epochs, precision, module.channels_last


class TutorialDataset(Dataset):
    """The tutorial's BrainAgeDataset: in-memory tensors, augmentation in ``__getitem__``."""

    def __init__(self, images: np.ndarray, ages: np.ndarray) -> None:
        self.images = torch.FloatTensor(images)
        self.ages = torch.FloatTensor(ages)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[idx]
        if torch.rand(1).item() > 0.5:
            image = image + torch.randn_like(image) * 0.05
        if torch.rand(1).item() > 0.5:
            image = image * (1.0 + torch.rand(1).item() * 0.2 - 0.1)
        if torch.rand(1).item() > 0.5 and torch.rand(1).item() > 0.5:
            image = torch.flip(image, dims=[3])
        return torch.clamp(image, -3, 3), self.ages[idx]


def run_plain_loop(cache: PreparedCache, epochs: int, batch_size: int) -> list[tuple[int, float, float]]:
    """Epoch timings of a loop written like the tutorial's train_model (training part)."""
    device = torch.device(resolve_accelerator("auto"))
    n = len(cache.manifest) - batch_size
    images = np.stack([np.asarray(cache.volume(i)) for i in range(n)])[:, None]
    ages = cache.manifest["age"].to_numpy(dtype=np.float32)[:n]
    ages = (ages - ages.mean()) / ages.std()
    loader = DataLoader(TutorialDataset(images, ages), batch_size=batch_size, shuffle=True)
    torch.manual_seed(0)
    model = build_model("seed").to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    criterion = torch.nn.MSELoss()
    timings = []
    for _ in range(epochs):
        model.train()
        start = (time.perf_counter(), time.process_time())
        train_loss, predictions, targets, max_grad_norm, samples = 0.0, [], [], 0.0, 0
        for batch_images, batch_ages in loader:
            batch_images, batch_ages = batch_images.to(device), batch_ages.to(device)
            optimizer.zero_grad()
            outputs = model(batch_images)
            loss = criterion(outputs.squeeze(), batch_ages)
            loss.backward()
            max_grad_norm = max(max_grad_norm, torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0).item())
            optimizer.step()
            train_loss += loss.item()
            predictions.extend(outputs.squeeze().detach().cpu().numpy())
            targets.extend(batch_ages.cpu().numpy())
            samples += len(batch_ages)
        timings.append((samples, time.perf_counter() - start[0], time.process_time() - start[1]))
    return timings


def _row(name: str, precision: str, channels_last: bool, epochs: list[tuple[int, float, float]]) -> dict[str, object]:
    counted = epochs[1:] or epochs
    samples = sum(e[0] for e in counted)
    return {
        "loop": name,
        "precision": precision,
        "memory": "channels-last" if channels_last else "contiguous",
        "samples/s": samples / sum(e[1] for e in counted),
        "CPU s/sample": sum(e[2] for e in counted) / samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=64, help="volume side (voxels)")
    parser.add_argument("--scans", type=int, default=48, help="synthetic scans (a batch of them is held out for validation)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per loop; the first is not counted")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    console.print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}, native bf16: {cpu_supports_bf16()}, accelerator: {resolve_accelerator('auto')}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        cache = synthetic_cache(Path(tmp) / "cache", args.scans, args.side)
        plain = _row("plain (tutorial)", "32-true", False, run_plain_loop(cache, args.epochs, args.batch_size))
        epochs, precision, channels_last = run_trainer(cache, "seed", args.epochs, args.batch_size, Path(tmp) / "run")
        ours = _row("brainage trainer", precision, channels_last, epochs)
        default = TrainConfig().model
        epochs, precision, channels_last = run_trainer(cache, default, args.epochs, args.batch_size, Path(tmp) / "run-default")
        own = _row(f"brainage trainer, default model ({default})", precision, channels_last, epochs)
    ratio = {
        "loop": "ratio (brainage / plain)",
        "precision": "",
        "memory": "",
        "samples/s": ours["samples/s"] / plain["samples/s"],
        "CPU s/sample": ours["CPU s/sample"] / plain["CPU s/sample"],
    }
    print_table(
        [plain, ours, ratio, own], title=f"seed model unless named, {args.side}³, batch {args.batch_size}, {args.scans - args.batch_size} training scans"
    )


if __name__ == "__main__":
    main()
