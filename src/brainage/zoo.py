"""Named models: trained networks that ship inside the package (or lie on a search path), each with a card.

A named model is a folder ``NAME/`` holding ``card.yaml`` and the checkpoint(s) of one run in the
checkpoint format (:mod:`brainage.checkpoint`: a plain dict of a PyTorch state dict and everything
``predict`` needs — preprocessing, training age statistics and range, bias correction, intervals,
what it was fitted on), laid out as in the run folder (``model.ckpt`` or ``fold_K/model.ckpt``).
It loads without Lightning, so ``brainage predict NAME scan.nii.gz`` works on a fresh install.

Models are looked up, by folder name, in every folder of ``$BRAINAGE_MODELS`` (``os.pathsep``-separated)
and then in the package's ``pretrained/`` folder; the first one found wins. A path that exists is
always a path, never a name. :func:`export_named_model` writes one from a finished run; a shipped
model is at most :data:`MAX_BYTES` (weights stored in fp16 where fp32 would not fit).
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from brainage import __version__
from brainage.checkpoint import load_checkpoint
from brainage.errors import BrainAgeError, InputError
from brainage.evaluation import fit_line
from brainage.utils import atomic_write

MODELS_ENV = "BRAINAGE_MODELS"
PACKAGE_MODELS = Path(__file__).resolve().parent / "pretrained"
CARD = "card.yaml"
CHECKPOINT = "model.ckpt"
#: The most a named model may weigh on disk (20 MB), card included.
MAX_BYTES = 20_000_000
SYNTHETIC_NOTE = "trained on synthetic data only: correct it on your own controls"
#: The recipe's fields that :func:`describe` shows by default.
RECIPE_SHOWN = ("model", "epochs", "batch_size", "lr", "ema_decay", "test_fraction", "seed")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class NamedModel:
    """A named model found on the search path: its folder, card and checkpoint files."""

    name: str
    folder: Path
    card: Mapping[str, Any]
    checkpoints: tuple[Path, ...]

    @property
    def size_bytes(self) -> int:
        """Bytes on disk of every file of the folder."""
        return sum(path.stat().st_size for path in self.folder.rglob("*") if path.is_file())


def search_path() -> list[Path]:
    """Folders searched for named models, in order: ``$BRAINAGE_MODELS``, then the package's ``pretrained/``."""
    extra = [Path(entry).expanduser() for entry in os.environ.get(MODELS_ENV, "").split(os.pathsep) if entry]
    return [*extra, PACKAGE_MODELS]


def _checkpoints(folder: Path) -> tuple[Path, ...]:
    inside = sorted(folder.glob(f"fold_*/{CHECKPOINT}")) or ([folder / CHECKPOINT] if (folder / CHECKPOINT).is_file() else [])
    return tuple(inside)


def _read(folder: Path) -> NamedModel:
    try:
        card = yaml.safe_load((folder / CARD).read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise InputError(folder / CARD, f"not a readable model card ({type(error).__name__})") from error
    if not isinstance(card, dict):
        raise InputError(folder / CARD, "not a model card: a YAML mapping is expected")
    checkpoints = _checkpoints(folder)
    if not checkpoints:
        raise InputError(folder, f"a named model without {CHECKPOINT} (nor fold_*/{CHECKPOINT})")
    return NamedModel(folder.name, folder, card, checkpoints)


def list_models() -> list[NamedModel]:
    """Every named model on the search path (:func:`search_path`), by name; the first of a name wins."""
    found: dict[str, NamedModel] = {}
    for root in search_path():
        if not root.is_dir():
            continue
        for folder in sorted(root.iterdir()):
            if folder.name not in found and (folder / CARD).is_file():
                found[folder.name] = _read(folder)
    return [found[name] for name in sorted(found)]


def find_model(name: str) -> NamedModel | None:
    """The named model ``name`` on the search path, or None."""
    if not _NAME.match(name):
        return None
    for root in search_path():
        if (root / name / CARD).is_file():
            return _read(root / name)
    return None


def resolve_model(name_or_path: str | Path) -> Path:
    """The folder of the named model ``name_or_path``; an existing path, or a name no model has, as given
    (so that the caller reports a missing checkpoint as before)."""
    path = Path(name_or_path)
    if path.exists():
        return path
    model = find_model(str(name_or_path))
    return model.folder if model is not None else path


def describe(model: NamedModel, full: bool = False) -> str:
    """The card of ``model`` as lines of ``field: value`` (what ``brainage models`` shows); the recipe
    by :data:`RECIPE_SHOWN` unless ``full``."""
    lines = [f"{model.name}  ({model.folder}, {model.size_bytes / 1e6:.1f} MB, {len(model.checkpoints)} network(s))"]
    for key, value in model.card.items():
        if key == "name":
            continue
        if key == "recipe" and isinstance(value, dict) and not full:
            value = {field: value[field] for field in RECIPE_SHOWN if field in value}
        flat = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip() if isinstance(value, (dict, list)) else None
        lines.append(f"  {key}: {value if flat is None else flat}")
    return "\n".join(lines)


# --- writing one ---------------------------------------------------------------------------------


def _commit() -> str:
    """The git commit of the source tree this module runs from, or ``unknown`` (an installed package)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10, check=False)
        if done.returncode == 0:
            return done.stdout.strip()
    return "unknown"


def _cohort_summary(data_root: str) -> dict[str, Any]:
    """The synthetic cohort's ``cohort.json`` in ``data_root`` or a folder above it (empty if none)."""
    import json

    if not data_root:
        return {}
    for folder in (Path(data_root), *Path(data_root).parents):
        summary = folder / "cohort.json"
        if summary.is_file():
            with contextlib.suppress(OSError, ValueError):
                return dict(json.loads(summary.read_text()))
            return {}
    return {}


def _half(values: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint dict with its floating-point weights in fp16 (the network is rebuilt in fp32 on load)."""
    return {**values, "state_dict": {key: v.half() if v.is_floating_point() else v for key, v in values["state_dict"].items()}}


def export_named_model(run_dir: str | Path, name: str, card_fields: Mapping[str, Any] | None = None, into: str | Path | None = None) -> Path:
    """Write the named model ``name`` from the finished run ``run_dir`` (or one ``model.ckpt``) into the
    folder ``into`` (default: the package's ``pretrained/``); returns its folder.

    Every network of the run is kept with its preprocessing, age statistics, bias correction,
    interval and training ids. The card records the brainage version, commit, generator and people
    of a synthetic training cohort, the training recipe and :data:`SYNTHETIC_NOTE` where the cohort
    was synthetic; ``card_fields`` (held-out figures, say) are added and win. Weights go in fp16
    when fp32 would exceed :data:`MAX_BYTES`; a model still too large is refused.
    """
    from brainage.predict import resolve_checkpoints  # here: predict imports this module

    if not _NAME.match(name):
        raise BrainAgeError(f"model name {name!r}: use letters, digits, '.', '_' and '-', starting with a letter or digit")
    run_dir = Path(run_dir)
    sources = resolve_checkpoints(run_dir)
    folder = Path(into or PACKAGE_MODELS) / name
    if folder.exists() and any(folder.iterdir()):
        raise InputError(folder, "already exists and is not empty; remove it or choose another name")
    values = [torch.load(path, map_location="cpu", weights_only=True) for path in sources]
    weights = sum(tensor.numel() * tensor.element_size() for value in values for tensor in value["state_dict"].values())
    dtype = "float32"
    if weights > 0.95 * MAX_BYTES:
        values, dtype = [_half(value) for value in values], "float16"
    first = load_checkpoint(sources[0])
    summary = _cohort_summary(first.train_data_root)
    synthetic = bool(summary)
    card: dict[str, Any] = {
        "name": name,
        "brainage_version": __version__,
        "commit": _commit(),
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "model": first.model_name,
        "model_hparams": dict(first.model.hparams),
        "networks": len(sources),
        "weights": dtype,
        "generator": summary.get("generator", "v1") if synthetic else None,
        "cohort": {key: summary[key] for key in ("preset", "seed") if key in summary} if synthetic else None,
        "people": len(first.train_subject_ids),
        "train_age_range": [float(v) for v in first.train_age_range],
        "preprocessing": first.preprocessing.get("pipeline", "unknown"),
        "recipe": first.extra.get("train_config"),
        "bias_correction": first.corrector.method if first.corrector is not None else "none",
        "note": SYNTHETIC_NOTE if synthetic else "trained on the run's own cohort; correct it on your own controls",
        **dict(card_fields or {}),
    }
    if isinstance(card.get("cohort"), dict) and isinstance(card["cohort"].get("preset"), dict):
        card["cohort"]["preset"] = card["cohort"]["preset"].get("name", "unknown")
    try:
        for source, value in zip(sources, values, strict=True):
            relative = source.resolve().relative_to(run_dir.resolve()) if run_dir.is_dir() else Path(CHECKPOINT)
            value["extra"] = {**value.get("extra", {}), "named_model": name}
            with atomic_write(folder / relative) as tmp:
                torch.save(value, tmp)
        with atomic_write(folder / CARD) as tmp:
            tmp.write_text(yaml.safe_dump(_plain(card), sort_keys=False, allow_unicode=True))
        size = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
        if size > MAX_BYTES:
            raise BrainAgeError(f"model {name}: {size / 1e6:.1f} MB, more than the {MAX_BYTES / 1e6:.0f} MB a named model may weigh")
    except BaseException:
        for path in sorted(folder.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        folder.rmdir()
        raise
    return folder


def _plain(value: Any) -> Any:
    """``value`` with tuples as lists and numpy scalars as Python numbers, for YAML."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


# --- the age-trend check -------------------------------------------------------------------------


def age_trend(age: Sequence[float] | np.ndarray, predicted: Sequence[float] | np.ndarray) -> tuple[float, float, str | None]:
    """How predictions follow age in a batch: ``(slope, r, message)`` of the least-squares line
    ``predicted = a + slope × age`` and Pearson's r, over the pairs where both are finite.

    The line is the package's one (:func:`brainage.evaluation.fit_line`). ``message`` is a warning where the predictions do not rise with age (slope ≤ 0) — the check
    ``train --init MODEL --epochs 0`` makes before re-calibrating — and None otherwise; slope and r
    are NaN (no message) with fewer than 3 pairs or no spread of ages or predictions.
    """
    x, y = np.asarray(age, dtype=float), np.asarray(predicted, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"age and predicted differ in length ({x.size} and {y.size})")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan"), float("nan"), None
    fit = fit_line(x, y)
    slope, r = fit.slope, float(np.corrcoef(x, y)[0, 1])
    if slope > 0:
        return slope, r, None
    message = (
        f"the predictions of these {x.size} scans do not rise with age (brain age = {fit.intercept:.1f} + {slope:.3f} × age, r = {r:.2f}): "
        "the model reads ageing that these scans do not show; re-calibrate it on your own controls (train --init MODEL --epochs 0) or fine-tune it"
    )
    return slope, r, message
