"""Write a ``v2`` population (:mod:`brainage.cohort.population`) in exactly ``v1``'s layout.

The folders, the spreadsheet, ``cohort.json``, the resumable ``.synth`` markers and the byte-for-byte
determinism are ``v1``'s (:mod:`brainage.cohort.write`), so ``brainage prepare`` and ``train`` read a
``v2`` cohort unchanged. ``ground_truth.csv`` has ``v1``'s columns plus, per scan, the generator,
the base ``head``, the ageing ``variant``, each component's weight and decades, the brain age before
the components (``latent_brain_age``) and the session's scanner (orientation, voxel size, contrast,
gamma): enough for a bench to hold out a head or a variant.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from brainage import __version__
from brainage.cohort.people import SubjectRecord
from brainage.cohort.population import COMPONENTS, PersonRecord, PopulationPreset, sample_population
from brainage.cohort.population_render import acquire, aged_tissues, person_space, scan_affine, session_decades, t1_signal
from brainage.cohort.render import bias_field, measure
from brainage.cohort.spreadsheet import demographics_table
from brainage.cohort.write import (
    SynthesisResult,
    _finish,
    _remove_sessions,
    _render_all,
    _resume,
    _summary,
    _Written,
    ground_truth_table,
    write_session,
)


@dataclass(frozen=True)
class _Task:
    subject: SubjectRecord
    person: PersonRecord
    preset: PopulationPreset
    root: str


def synthesize_population(out: str | Path, preset: PopulationPreset, seed: int = 0, workers: int = 1) -> SynthesisResult:
    """Generate the ``v2`` cohort ``preset`` from ``seed`` into the new or empty folder ``out`` (or finish
    an unfinished one), as :func:`brainage.cohort.synthesize` does for ``v1`` presets."""
    root = Path(out)
    request = {"brainage_version": __version__, "generator": preset.generator, "preset": preset.to_dict(), "seed": seed}
    pairs = sample_population(preset, seed)
    subjects = tuple(subject for subject, _ in pairs)
    written = _resume(root, request, subjects)
    tasks = [_Task(subject, person, preset, str(root)) for subject, person in pairs if subject.subject_id not in written]
    problems = _render_all(root, tasks, _render_person, workers, f"synth {preset.name}", written)
    done = tuple((subject, person) for subject, person in pairs if subject.subject_id in written)
    done_subjects = tuple(subject for subject, _ in done)
    volumes = {mri_id: v for subject in done_subjects for mri_id, v in written[subject.subject_id].volumes.items()}
    model = preset.ageing.ageing_model()
    demographics = demographics_table(done_subjects, model)
    truth = population_truth(done, ground_truth_table(done_subjects, volumes, seed), preset)
    summary = _summary(preset.cohort, seed, model, done_subjects, volumes, demographics)
    summary.update(
        generator=preset.generator,
        population=preset.to_dict(),
        acquisition_model=asdict(preset.scanner),
        heads={head: sum(person.head == head for _, person in done) for head in preset.anatomy.heads},
        variants={name: sum(person.variant == name for _, person in done) for name, _ in preset.ageing.variants},
    )
    return _finish(root, demographics, truth, summary, problems)


def population_truth(pairs: tuple[tuple[SubjectRecord, PersonRecord], ...], truth: pd.DataFrame, preset: PopulationPreset) -> pd.DataFrame:
    """``v1``'s ground-truth table with the ``v2`` columns added (one row per scan, same order)."""
    rows = []
    for subject, person in pairs:
        for index, session in enumerate(subject.sessions):
            setting = person.settings[index]
            decades = session_decades(preset.ageing, person, index)
            rows.append(
                {
                    "MRI ID": session.mri_id,
                    "generator": preset.generator,
                    "head": person.head,
                    "variant": person.variant,
                    "latent_brain_age": person.latent_ages[index],
                    **{f"weight_{name}": w for name, w in zip(COMPONENTS, person.weights, strict=True)},
                    **{f"decades_{name}": float(c) for name, c in zip(COMPONENTS, decades, strict=True)},
                    "velocity_mm": person.velocity_mm,
                    "regional_mm": person.regional_mm,
                    "orientation": setting.orientation,
                    **{f"zoom_{axis}_mm": z for axis, z in zip("ijk", setting.zooms, strict=True)},
                    "gm_signal": setting.gm_signal,
                    "csf_signal": setting.csf_signal,
                    "gamma": setting.gamma,
                }
            )
    return truth.merge(pd.DataFrame(rows), on="MRI ID", how="left", validate="many_to_one")


def _render_person(task: _Task) -> _Written:
    """Render and write every scan of one person, one session folder at a time (as ``v1``)."""
    preset, subject, person, root = task.preset, task.subject, task.person, Path(task.root)
    family = preset.ageing
    try:
        space = person_space(subject, person, preset)
        volumes, files = {}, {}
        for index, session in enumerate(subject.sessions):
            setting = person.settings[index]
            decades = session_decades(family, person, index)
            tissues = aged_tissues(space, family, decades)
            volumes[session.mri_id] = measure(space.space, tissues)
            signal = t1_signal(space, tissues, family, decades, setting)
            bias = bias_field(session, setting.shape)
            images = (acquire(signal, space, session, scan, setting, bias) for scan in session.scans)
            files.update(write_session(root, session, images, scan_affine(setting)))
    except BaseException:
        _remove_sessions(root, subject)
        raise
    return _Written(volumes, files)
