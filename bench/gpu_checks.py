"""Every GPU check in one command, for the few minutes a GPU is lent: training throughput of the
default network (``resnet``) and ``sfcn`` through brainage's trainer in fp32 and bf16-mixed, with
and without channels-last memory and with ``torch.compile``; the tutorial's recipe (its network on
its pipeline) on a ``tiny`` synthetic cohort; inference of ``BrainAgeModel.predict_volumes``; the
peak GPU memory of each.

    .venv/bin/python bench/gpu_checks.py --out bench-out/gpu [--budget-s 480]
    .venv/bin/python bench/gpu_checks.py --out /tmp/gpu-cpu --device cpu --quick   # tiny sizes, to try the script on a CPU

Checks run in order of use (the default settings first, ``torch.compile`` last); each is timed, and
one is skipped with a note when less of ``--budget-s`` is left than it needs (a floor, or the last
check of its kind's wall time); a check that fails or runs past the budget becomes a note, not an
abort. Training uses ``bench/train_speed.py``'s synthetic cache and clock (the first epoch is a
warm-up and not counted; CUDA is synchronised at each batch end). One table is printed and, after
every check, the results file ``--out/gpu-DEVICE.json`` (``bench/results.py``) is rewritten, so a
run cut short keeps what it measured; copy it to ``docs/results/`` and run
``docs/make_benchmarks_md.py`` (it renders under "Other results").
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import numpy as np
import torch
from results import write_results
from train_speed import EpochClock, synthetic_cache

from brainage.checkpoint import BrainAgeCheckpoint, save_checkpoint
from brainage.cohort import TINY, synthesize
from brainage.console import console, print_table
from brainage.data import Fold, make_folds
from brainage.models import build_model
from brainage.predict import BrainAgeModel
from brainage.preprocess import PreparedCache, load_cache, make_config, prepare
from brainage.training import TUTORIAL_RECIPE, TrainConfig, fold_module, fold_trainer, quiet_lightning, resolve_precision

Row = dict[str, Any]


@dataclass(frozen=True)
class Sizes:
    """How big each check is; ``need_s`` is the least budget each kind of check starts with."""

    side: int = 64
    scans: int = 136
    epochs: int = 3
    batch_size: int = 8
    tutorial_epochs: int = 3
    tutorial_train_scans: int | None = None
    predict_batch: int = 16
    predict_repeats: int = 8
    workers: int = 8
    need_s: tuple[tuple[str, float], ...] = (("train", 30.0), ("compile", 120.0), ("tutorial", 60.0), ("predict", 15.0))


FULL = Sizes()
QUICK = Sizes(
    side=32, scans=6, epochs=2, batch_size=2, tutorial_epochs=2, tutorial_train_scans=4, predict_batch=2, predict_repeats=2, workers=1,
    need_s=(("train", 5.0), ("compile", 30.0), ("tutorial", 20.0), ("predict", 2.0)),
)  # fmt: skip  # one line of sizes


class OutOfBudget(Exception):
    """Raised by the alarm when a check runs past the end of the budget."""


def _alarm(signum: int, frame: FrameType | None) -> None:
    raise OutOfBudget


class SyncedClock(EpochClock):
    """``EpochClock`` with CUDA synchronised at epoch start and batch end, so queued kernels count."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        _sync()
        super().on_train_epoch_start(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: object, batch: tuple, batch_idx: int) -> None:
        _sync()
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _peak_gib(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None


def _fit(
    cache: PreparedCache, fold: Fold, config: TrainConfig, device: str, folder: Path, compiled: bool = False
) -> tuple[list[tuple[int, float, float]], bool]:
    """Epoch timings of the trainer on ``fold`` (``compiled``: the network through ``Module.compile``)
    and whether it ran channels-last."""
    L.seed_everything(0, verbose=False)
    module, data = fold_module(cache, fold, config, device, config.precision)
    if compiled:
        module.model.compile()
    clock = SyncedClock()
    with quiet_lightning():
        trainer, _, _ = fold_trainer(config, device, config.precision, folder, folder / "logs", data, extra_callbacks=[clock])
        trainer.fit(module, datamodule=data)
    return clock.epochs, module.channels_last


def train_check(cache: PreparedCache, sizes: Sizes, device: str, folder: Path, model: str, precision: str, channels_last: bool, compiled: bool) -> Row:
    """Samples/s of ``model`` trained by brainage's trainer (defaults but the named settings) on the synthetic cache."""
    config = TrainConfig(
        model=model, epochs=sizes.epochs, batch_size=sizes.batch_size, early_stopping_patience=sizes.epochs, min_epochs=0,
        precision=precision, channels_last=channels_last, accelerator=device, num_workers=sizes.workers, progress=False,
    )  # fmt: skip  # settings grouped by meaning
    n = len(cache.manifest)
    fold = Fold(0, train=np.arange(n - sizes.batch_size), val=np.arange(n - sizes.batch_size, n), test=np.arange(0))
    epochs, _ = _fit(cache, fold, config, device, folder, compiled)
    counted = epochs[1:] or epochs
    return {"samples/s": sum(e[0] for e in counted) / sum(e[1] for e in counted), "first epoch s": epochs[0][1] if epochs else None}


def tutorial_check(sizes: Sizes, device: str, folder: Path) -> Row:
    """The tutorial's recipe on its pipeline: a ``tiny`` cohort synthesised and prepared, then one fold's epoch times."""
    start = time.perf_counter()
    synthesize(folder / "cohort", TINY, seed=0, workers=sizes.workers)
    synthesised = time.perf_counter()
    prepare(folder / "cohort", folder / "cache", make_config("tutorial", shape=(sizes.side,) * 3), workers=sizes.workers)
    prepared = time.perf_counter()
    cache = load_cache(folder / "cache")
    config = dataclasses.replace(
        TUTORIAL_RECIPE, epochs=sizes.tutorial_epochs, early_stopping_patience=sizes.tutorial_epochs, accelerator=device,
        num_workers=sizes.workers, progress=False,
    )  # fmt: skip  # settings grouped by meaning
    config = dataclasses.replace(config, precision=resolve_precision(config.precision, device))
    fold = make_folds(cache.manifest, None, config.test_fraction, config.early_stopping_fraction, config.seed)[0]
    fold = dataclasses.replace(fold, train=fold.train[: sizes.tutorial_train_scans])
    epochs, channels_last = _fit(cache, fold, config, device, folder / "run")
    counted = epochs[1:] or epochs
    return {
        "precision": config.precision, "memory": "channels-last" if channels_last else "contiguous",
        "epoch s": sum(e[1] for e in counted) / len(counted), "first epoch s": epochs[0][1], "samples/s": sum(e[0] for e in counted) / sum(e[1] for e in counted),
        "note": f"{len(fold.train)} training scans; synthesis {synthesised - start:.0f} s, preparation {prepared - synthesised:.0f} s",
    }  # fmt: skip  # one row


def predict_check(sizes: Sizes, device: str, folder: Path, model: str) -> Row:
    """Volumes/s of ``BrainAgeModel.predict_volumes`` (an untrained ``model``, flip-averaged) on random volumes."""
    torch.manual_seed(0)
    checkpoint = BrainAgeCheckpoint(
        model=build_model(model).eval(), model_name=model, age_mean=75.0, age_std=10.0, preprocessing=make_config("tutorial", shape=(sizes.side,) * 3).to_dict()
    )
    predictor = BrainAgeModel.load(save_checkpoint(checkpoint, folder / "model.ckpt"), device=device)
    volumes = np.random.default_rng(0).standard_normal((sizes.predict_batch, *(sizes.side,) * 3), dtype=np.float32)
    predictor.predict_volumes(volumes)  # warm-up (cuDNN plans, allocator)
    start = time.perf_counter()
    for _ in range(sizes.predict_repeats):
        predictor.predict_volumes(volumes)  # returns NumPy: synchronised
    return {"precision": "32-true", "samples/s": sizes.predict_batch * sizes.predict_repeats / (time.perf_counter() - start)}


def device_name(device: str) -> str:
    """The device's name for the results file: the GPU's, lower case, dashes for spaces; ``cpu`` on a CPU."""
    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def plan(sizes: Sizes, device: str, work: Path, cache: Callable[[], PreparedCache]) -> list[tuple[str, str, Row, Callable[[], Row]]]:
    """The checks in order: (kind, step name, the row's fixed columns, the function that measures)."""
    checks: list[tuple[str, str, Row, Callable[[], Row]]] = []
    layouts = (("bf16-mixed", True), ("32-true", False), ("32-true", True), ("bf16-mixed", False))
    for model in ("resnet", "sfcn"):
        for precision, channels_last in layouts:
            step = f"train {model} {precision}{' channels-last' if channels_last else ''}"
            fixed = {"check": "train", "model": model, "precision": precision, "memory": "channels-last" if channels_last else "contiguous", "compiled": False}
            checks.append(
                ("train", step, fixed, lambda m=model, p=precision, c=channels_last, s=step: train_check(cache(), sizes, device, work / s, m, p, c, False))
            )
    for model in ("resnet", "sfcn"):
        checks.append(("predict", f"predict {model}", {"check": "predict_volumes", "model": model, "memory": "contiguous", "compiled": False},
                       lambda m=model: predict_check(sizes, device, work / f"predict-{m}", m)))  # fmt: skip  # one check
    checks.append(
        (
            "tutorial",
            "tutorial recipe",
            {"check": "tutorial recipe, tiny", "model": "tutorial", "compiled": False},
            lambda: tutorial_check(sizes, device, work / "tutorial"),
        )
    )
    for model in ("resnet", "sfcn"):
        fixed = {"check": "train", "model": model, "precision": "bf16-mixed", "memory": "channels-last", "compiled": True}
        checks.append(
            (
                "compile",
                f"train {model} compiled",
                fixed,
                lambda m=model: train_check(cache(), sizes, device, work / f"compiled-{m}", m, "bf16-mixed", True, True),
            )
        )
    return checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder of the results file gpu-DEVICE.json")
    parser.add_argument("--budget-s", type=float, default=480.0, help="seconds for all checks; a check that does not fit is skipped with a note")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="where to run (cpu: to try the script)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (32³, 1–2 steps each): to try the script, not to measure")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"{Path(__file__).name}: CUDA is not available here; try the script with --device cpu --quick")
    sizes, device = (QUICK if args.quick else FULL), args.device
    end = time.monotonic() + args.budget_s
    results = args.out / f"gpu-{device_name(device)}{'-quick' if args.quick else ''}.json"
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    wall: dict[str, float] = {}
    need = dict(sizes.need_s)
    console.print(f"torch {torch.__version__}, {device} ({device_name(device)}), {sizes.side}³, budget {args.budget_s:.0f} s → {results}")
    signal.signal(signal.SIGALRM, _alarm)
    with tempfile.TemporaryDirectory(prefix="gpu-checks-") as tmp:
        work = Path(tmp)
        made: list[PreparedCache] = []

        def cache() -> PreparedCache:
            if not made:
                made.append(synthetic_cache(work / "cache", sizes.scans, sizes.side))
            return made[0]

        for kind, step, fixed, measure in plan(sizes, device, work, cache):
            left = end - time.monotonic()
            row: Row = {**fixed, "samples/s": None, "epoch s": None, "first epoch s": None, "peak GPU GiB": None, "wall s": None, "note": ""}
            if left < need[kind]:
                rows.append(row | {"note": f"skipped: {left:.0f} s of the budget left, {need[kind]:.0f} s needed"})
                continue
            if device == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            signal.alarm(max(1, int(left)))
            try:
                row |= measure()
            except OutOfBudget:
                row["note"] = "stopped: ran past the budget"
            except Exception as error:  # a failed check, an OOM or a compile error say so in the table; the others still run)
                row["note"] = f"failed: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:200]
            finally:
                signal.alarm(0)
            wall[step] = time.perf_counter() - start
            need[kind] = max(need[kind], 1.2 * wall[step])
            rows.append(row | {"peak GPU GiB": _peak_gib(device), "wall s": wall[step]})
            console.print(f"{step}: {row.get('samples/s') or 0:.2f} samples/s, {wall[step]:.0f} s {row['note']}")
            _write(results, rows, wall, sizes, device)
    _write(results, rows, wall, sizes, device)
    print_table(rows, title=f"GPU checks on {device_name(device)}, {sizes.side}³, batch {sizes.batch_size}")
    console.print(f"wrote {results}")


def _write(path: Path, rows: list[Row], wall: dict[str, float], sizes: Sizes, device: str) -> None:
    notes = [
        f"Training: brainage's trainer with TrainConfig's defaults (EMA, precise batch norm, default augmentation, loader processes: {sizes.workers}) "
        f"but the precision, memory layout and model named; {sizes.scans - sizes.batch_size} synthetic {sizes.side}³ scans, batch {sizes.batch_size}, "
        f"{sizes.epochs} epochs of which the first is a warm-up; samples/s of the training batches only.",
        "compiled: the network through torch.compile (Module.compile); its first epoch holds the compilation.",
        f"predict_volumes: an untrained network, fp32, flip-averaged, batches of {sizes.predict_batch} random volumes, after one warm-up batch.",
        "Tutorial recipe: the tiny preset synthesised, prepared by the tutorial pipeline, then one hold-out fold trained by TUTORIAL_RECIPE; epoch s excludes the first.",
        f"cuDNN TF32 {'on' if torch.backends.cudnn.allow_tf32 else 'off'}, matmul precision {torch.get_float32_matmul_precision()}; peak GPU memory by torch.cuda.max_memory_allocated.",
    ]
    precision = "per row" if device == "cuda" else "per row (CPU: a try of the script, not a measurement)"
    table = {"title": f"GPU checks, {sizes.side}³", "records": rows, "notes": notes}
    write_results(path, [table], wall, precision, sys.argv, extra={"device": device_name(device), "sizes": dataclasses.asdict(sizes)})


if __name__ == "__main__":
    main()
