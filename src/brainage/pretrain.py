"""Pre-training on a synthetic population (``brainage pretrain``): synthesise, prepare, train; resumable at every stage.

An output folder holds::

    pretrain.json   the request (people, preset, seed, pipeline): a rerun with another is refused
    cohort/         the ``v2`` population (:func:`brainage.cohort.synthesize`), one session and scan per person
    cache/          the prepared volumes (:func:`brainage.preprocess.prepare`)
    run/            the run folder of :func:`brainage.training.train` with one subject-grouped hold-out
                    (``test_fraction``): ``run/fold_0/model.ckpt`` is what ``--init`` and
                    :func:`brainage.zoo.export_named_model` take

Each stage keeps what it finished: the synthesis writes one person at a time and a rerun renders
only the people without a complete marker (the chunks are people); ``prepare`` keys every volume
by the content of its scan and reuses those on disk; ``train`` resumes a run folder holding the
same run from its last epoch (``fold_0/last.ckpt``) and keeps a finished fold.

Why the scans are written as NIfTI and prepared rather than rendered straight onto the training
grid: the network must learn from what ``brainage predict`` will give it — a scan after bias
correction, skull stripping, registration to MNI space and normalisation, with their errors — and
the renderer's people live in their base head's space at the scanner's resolution, pose and field of
view (:func:`brainage.cohort.population_render.acquire`), not on the template grid; a direct render
would skip the very steps a real scan goes through, and train on volumes that no real scan yields.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

from brainage.cohort import SUMMARY, synthesize
from brainage.cohort.population import POPULATION_PRESETS, PopulationPreset
from brainage.cohort.write import unfinished
from brainage.errors import BrainAgeError, InputError
from brainage.preprocess import PipelineConfig, PrepareReport, make_config, prepare
from brainage.training import TrainConfig, TrainResult, train
from brainage.utils import atomic_write

REQUEST = "pretrain.json"
#: The default recipe: the project's default network and schedule, one hold-out of a fifth of the people.
PRETRAIN_CONFIG = TrainConfig(folds=None, test_fraction=0.2)


@dataclass(frozen=True)
class PretrainResult:
    """What :func:`pretrain` made: its folders, how many people it rendered now, the prepare report and the run."""

    out: Path
    cohort: Path
    cache: Path
    run_dir: Path
    rendered: int
    prepared: PrepareReport
    result: TrainResult | None


def population(preset: str | PopulationPreset, people: int) -> PopulationPreset:
    """The population preset ``preset`` resized to ``people`` people of one session and one scan each,
    with the preset's share of Demented people (none converts)."""
    if isinstance(preset, str):
        if preset not in POPULATION_PRESETS:
            raise BrainAgeError(f"unknown population preset {preset!r}; choose from {', '.join(POPULATION_PRESETS)}")
        preset = POPULATION_PRESETS[preset]
    if people < 4:
        raise BrainAgeError(f"pre-training needs at least 4 people (training, early-stopping and hold-out people), got {people}")
    cohort = preset.cohort
    demented = round(people * (cohort.demented + cohort.converted) / cohort.n_subjects)
    resized = replace(cohort, nondemented=people - demented, demented=demented, converted=0, visits=((1, people),), repeats=((1, people),))
    return replace(preset, cohort=resized)


def pretrain(
    people: int,
    out: str | Path,
    preset: str | PopulationPreset = "population_pretrain",
    seed: int = 7,
    config: TrainConfig = PRETRAIN_CONFIG,
    workers: int | None = None,
    device: str = "auto",
    pipeline: str | PipelineConfig = "standard",
) -> PretrainResult:
    """Synthesise ``people`` people of ``preset`` from ``seed``, prepare them with ``pipeline`` and train
    ``config`` on them with a subject-grouped hold-out, in ``out`` (see the module doc); a rerun
    resumes where the last one stopped.

    ``workers`` processes synthesise and prepare (default: every CPU core). ``device`` (``auto``:
    CUDA, then MPS, then CPU) runs skull stripping and training; a ``config`` naming its own
    accelerator keeps it. ``config.folds`` must be None (one hold-out, ``config.test_fraction``).
    """
    if config.folds is not None:
        raise BrainAgeError(f"pre-training holds out one test_fraction of the people; folds must be None, got {config.folds}")
    root = Path(out)
    sized = population(preset, people)
    settings = make_config(pipeline) if isinstance(pipeline, str) else pipeline
    workers = workers or os.cpu_count() or 1
    request = {"people": people, "preset": sized.name, "seed": seed, "pipeline": settings.to_dict()}
    _claim(root, request)
    cohort, cache, run_dir = root / "cohort", root / "cache", root / "run"
    rendered = 0
    if unfinished(cohort) or not (cohort / SUMMARY).is_file():
        before = len(list(cohort.glob(".synth/*.json"))) - (1 if (cohort / ".synth" / "request.json").is_file() else 0)
        result = synthesize(cohort, sized, seed=seed, workers=workers)
        rendered = people - max(before, 0)
        if result.problems:
            first = result.problems[0]
            raise BrainAgeError(f"{len(result.problems)} people could not be synthesised (run again to retry them); first: {first.path}: {first.cause}")
    report = prepare(cohort, cache, settings, workers=workers, device=device)
    if config.accelerator == "auto" and device != "auto":
        config = dataclasses.replace(config, accelerator=device.split(":")[0])
    trained = train(cache, run_dir, config)
    return PretrainResult(root, cohort, cache, run_dir, rendered, report, trained)


def _claim(root: Path, request: dict[str, object]) -> None:
    """Record ``request`` in ``root`` (new or empty), or check that ``root`` holds that very request."""
    path = root / REQUEST
    expected = json.loads(json.dumps(request))
    if path.is_file():
        try:
            made = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise InputError(path, f"not a readable pre-training request ({type(error).__name__})") from error
        if made != expected:
            differ = ", ".join(key for key in sorted(set(made) | set(expected)) if made.get(key) != expected.get(key))
            raise InputError(root, f"holds a pre-training of another request (it differs in {differ}); run that one again or choose another folder")
        return
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise InputError(root, "already exists and is not an empty folder nor a pre-training; choose a new one")
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(expected, indent=2, sort_keys=True) + "\n")
