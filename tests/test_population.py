"""The population generator (``v2``): determinism, the ``v1`` bytes kept, anatomy that varies more
between people than with a decade of ageing, and a brain age that follows its ageing components."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from brainage.cohort import TINY, Preset, get_preset, load_anatomy, sample_cohort, synthesize
from brainage.cohort.heads import available_heads
from brainage.cohort.population import (
    COMPONENTS,
    POPULATION_PRESETS,
    AnatomyVariation,
    PopulationPreset,
    brain_age,
    component_decades,
    sample_population,
)
from brainage.cohort.population_render import aged_tissues, person_space
from brainage.cohort.render import acquire as acquire_v1
from brainage.cohort.render import aged_tissues as aged_tissues_v1
from brainage.cohort.render import bias_field, subject_anatomy
from brainage.cohort.render import t1_signal as t1_signal_v1

#: SHA-256 of the first scan of ``TINY`` seed 0 (voxels) and of the ``tiny`` cohort's first
#: ``.img`` file, as the ``v1`` generator wrote them before ``v2`` existed (commit 6c40646).
V1_TINY_SCAN = "c5848bc4b90b9f335a7b16541cd5b6ae5fbe90a1a69ae19da018d2bce43c6620"
V1_TINY_IMG = "b2197b084bff9ff4027352c51784cbaaa729e67aab49a643a32dbb6e8ed35e3f"

#: Three people, one scan each, on the tiny grid, from the MNI152 head alone (its maps are the
#: quickest to compute on a fresh machine).
SMALL = PopulationPreset(
    name="population_test",
    cohort=Preset(
        name="population_test", nondemented=2, demented=1, converted=0, visits=((1, 3),), repeats=((1, 3),),
        shape=TINY.shape, zooms=TINY.zooms, resolution=TINY.resolution,
    ),
    anatomy=AnatomyVariation(heads=("mni152_2009",)),
    scanner=POPULATION_PRESETS["population_tiny"].scanner,
)  # fmt: skip  # settings grouped in rows


def _digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_v1_tiny_scan_keeps_its_bytes() -> None:
    subject = sample_cohort(TINY, 0)[0]
    session = subject.sessions[0]
    space = subject_anatomy(subject, load_anatomy(TINY.resolution))
    tissues = aged_tissues_v1(space, session.brain_age)
    image = acquire_v1(t1_signal_v1(space, tissues, session.brain_age), space, session, session.scans[0], TINY, bias_field(session, TINY.shape))
    assert hashlib.sha256(image.tobytes()).hexdigest() == V1_TINY_SCAN


def test_v1_tiny_cohort_keeps_its_bytes(tiny_cohort: Path) -> None:
    """brainage.cohort.synthesize picks the generator by preset; a v1 preset writes what it wrote before."""
    img = tiny_cohort / "OAS2_RAW_PART1" / "OAS2_0001_MR1" / "RAW" / "mpr-1.nifti.img"
    assert hashlib.sha256(img.read_bytes()).hexdigest() == V1_TINY_IMG


def test_population_presets_are_found_by_name() -> None:
    assert get_preset("population_tiny") is POPULATION_PRESETS["population_tiny"]
    assert get_preset("tiny") is TINY
    assert set(POPULATION_PRESETS["population_tiny"].anatomy.heads) <= set(available_heads())


@pytest.mark.filterwarnings("ignore::scipy.stats.ConstantInputWarning")  # the spreadsheet statistics of three people
def test_population_is_deterministic_per_seed(tmp_path: Path) -> None:
    first = synthesize(tmp_path / "a", SMALL, seed=3)
    synthesize(tmp_path / "b", SMALL, seed=3)
    synthesize(tmp_path / "c", SMALL, seed=4)
    a, b, c = (_digests(tmp_path / name) for name in "abc")
    assert a == b
    scans = [path for path in a if path.endswith(".img")]
    assert len(scans) == 3 and all(a[path] != c.get(path) for path in scans)
    truth = first.ground_truth
    assert {"head", "variant", "latent_brain_age", *(f"weight_{k}" for k in COMPONENTS)} <= set(truth.columns)
    assert set(truth["head"]) == {"mni152_2009"} and first.summary["generator"] == "v2"


def test_two_people_of_one_brain_age_differ_more_than_one_person_a_decade_apart() -> None:
    """Per-person anatomy: grey matter maps of two people at 65 differ more than one person's at 60 and 70."""
    (subject_a, person_a), (subject_b, person_b) = sample_population(SMALL, seed=5)[:2]
    family = SMALL.ageing
    space_a, space_b = person_space(subject_a, person_a, SMALL), person_space(subject_b, person_b, SMALL)

    def gm(space, person, age: float) -> np.ndarray:
        return aged_tissues(space, family, component_decades(family, person.weights, age)).gm

    between_people = np.abs(gm(space_a, person_a, 65.0) - gm(space_b, person_b, 65.0)).mean()
    within_person = np.abs(gm(space_a, person_a, 60.0) - gm(space_a, person_a, 70.0)).mean()
    assert between_people > 2.0 * within_person > 0.0


def test_brain_age_rises_with_the_ageing_components() -> None:
    family = SMALL.ageing
    people = sample_population(replace(SMALL, cohort=replace(TINY, name="population_test")), seed=2)
    for subject, person in people:
        for session, latent in zip(subject.sessions, person.latent_ages, strict=True):
            decades = component_decades(family, person.weights, latent)
            shares = np.asarray(family.shares) / sum(family.shares)
            assert session.brain_age == pytest.approx(family.reference_age + 10.0 * float(shares @ decades))
    weights = (1.0,) * len(COMPONENTS)
    for k in range(len(COMPONENTS)):
        faster = tuple(w * (1.5 if j == k else 1.0) for j, w in enumerate(weights))
        assert brain_age(family, faster, 70.0) > brain_age(family, weights, 70.0) == pytest.approx(70.0)
    assert brain_age(family, weights, 60.0) < brain_age(family, weights, 70.0)


def test_population_grey_matter_falls_with_brain_age() -> None:
    (subject, person), *_ = sample_population(SMALL, seed=1)
    family = SMALL.ageing
    space = person_space(subject, person, SMALL)
    volumes = [float(aged_tissues(space, family, component_decades(family, person.weights, age)).gm.sum()) for age in (50.0, 70.0, 90.0)]
    assert volumes[0] > volumes[1] > volumes[2]


@pytest.mark.slow
def test_every_installed_head_renders(tmp_path: Path) -> None:
    """Every base head (segmented on first use, then cached) makes a person whose scan has signal."""
    for head in available_heads():
        preset = replace(SMALL, anatomy=AnatomyVariation(heads=(head,)))
        result = synthesize(tmp_path / head, preset, seed=0)
        assert set(result.ground_truth["head"]) == {head}
        assert result.ground_truth["icv_cm3"].between(900, 2500).all()
