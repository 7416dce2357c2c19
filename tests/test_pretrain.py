"""brainage.pretrain: synthesise, prepare and train on a population, resumable at every stage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from brainage import zoo
from brainage.checkpoint import load_checkpoint
from brainage.errors import BrainAgeError, InputError
from brainage.pretrain import PretrainResult, population, pretrain
from brainage.training import TrainConfig

PEOPLE = 8
CONFIG = TrainConfig(
    folds=None, model="sfcn", model_hparams={"width": 0.125}, epochs=1, batch_size=2, baselines=False, num_workers=0, progress=False, seed=0,
)  # fmt: skip  # one line of settings
ARGUMENTS: dict[str, Any] = {"preset": "population_tiny", "seed": 0, "config": CONFIG, "workers": 1, "device": "cpu", "pipeline": "tutorial"}


def _files(root: Path) -> dict[str, int]:
    """Every file under ``root`` (hidden ones too) → its modification time in ns."""
    return {path.relative_to(root).as_posix(): path.stat().st_mtime_ns for path in root.rglob("*") if path.is_file()}


@pytest.fixture(scope="module")
def done(tmp_path_factory: pytest.TempPathFactory) -> PretrainResult:
    return pretrain(PEOPLE, tmp_path_factory.mktemp("pretrain") / "out", **ARGUMENTS)


@pytest.mark.slow  # synthesises, prepares and trains a population
def test_a_pretraining_finishes_with_a_hold_out_and_a_model_to_init_from(done: PretrainResult) -> None:
    assert done.rendered == PEOPLE and done.prepared.done == PEOPLE and not done.prepared.problems
    assert done.result is not None and len(done.result.checkpoints) == 1 and done.result.checkpoints[0] == done.run_dir / "fold_0" / "model.ckpt"
    checkpoint = load_checkpoint(done.run_dir / "fold_0" / "model.ckpt")
    assert checkpoint.model_name == "sfcn" and checkpoint.preprocessing["pipeline"] == "tutorial"
    assert 0 < len(checkpoint.train_subject_ids) < PEOPLE  # the hold-out people are not fitted on
    truth = json.loads((done.cohort / "cohort.json").read_text())
    assert truth["generator"] == "v2" and truth["seed"] == 0
    assert json.loads((done.out / "pretrain.json").read_text())["people"] == PEOPLE


@pytest.mark.slow  # synthesises, prepares and trains a population
def test_a_rerun_resumes_without_synthesising_preparing_or_training_again(done: PretrainResult) -> None:
    before = {folder: _files(folder) for folder in (done.cohort, done.cache / "volumes", done.run_dir / "fold_0")}
    weights = load_checkpoint(done.run_dir / "fold_0" / "model.ckpt").model.state_dict()
    again = pretrain(PEOPLE, done.out, **ARGUMENTS)
    assert again.rendered == 0 and again.prepared.done == 0 and again.prepared.cached == PEOPLE
    for folder, files in before.items():  # no scan, volume or fold output rewritten; the evaluation re-writes model.ckpt's correction only
        assert {k: v for k, v in _files(folder).items() if k != "model.ckpt"} == {k: v for k, v in files.items() if k != "model.ckpt"}, folder
    for name, weight in load_checkpoint(done.run_dir / "fold_0" / "model.ckpt").model.state_dict().items():
        assert torch.equal(weight, weights[name]), name
    with pytest.raises(InputError, match=r"another request .*differs in people"):
        pretrain(PEOPLE + 1, done.out, **ARGUMENTS)


@pytest.mark.slow  # synthesises, prepares and trains a population
def test_its_run_exports_a_named_model_whose_card_names_the_generator(done: PretrainResult, tmp_path: Path) -> None:
    folder = zoo.export_named_model(done.run_dir, "tiny-pretrained", {"held_out_anatomy": "not measured"}, into=tmp_path)
    card = yaml.safe_load((folder / zoo.CARD).read_text())
    assert card["generator"] == "v2" and card["cohort"] == {"preset": "population_tiny", "seed": 0} and card["note"] == zoo.SYNTHETIC_NOTE
    assert card["people"] == len(load_checkpoint(done.run_dir / "fold_0" / "model.ckpt").train_subject_ids)


_KILLED = """
import sys
from brainage.pretrain import pretrain
from brainage.training import TrainConfig
config = TrainConfig(folds=None, model="sfcn", model_hparams={"width": 0.125}, epochs=1, batch_size=2, baselines=False, num_workers=0, progress=False)
pretrain(int(sys.argv[2]), sys.argv[1], preset="population_tiny", seed=0, config=config, workers=1, device="cpu", pipeline="tutorial")
"""


@pytest.mark.slow  # synthesises, prepares and trains a population
def test_a_synthesis_killed_midway_keeps_the_people_it_finished(tmp_path: Path) -> None:
    out = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-c", _KILLED, str(out), str(PEOPLE)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    markers = out / "cohort" / ".synth"
    deadline = time.monotonic() + 300
    while len([p for p in markers.glob("*.json") if p.name != "request.json"]) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    kept = {p.stem: json.loads(p.read_text())["files"] for p in markers.glob("*.json") if p.name != "request.json"}
    assert 2 <= len(kept) < PEOPLE, "the synthesis was not caught midway"
    scans = {path: (out / "cohort" / path).stat().st_mtime_ns for files in kept.values() for path in files}
    resumed = pretrain(PEOPLE, out, **ARGUMENTS)
    assert resumed.rendered == PEOPLE - len(kept)
    assert {path: (out / "cohort" / path).stat().st_mtime_ns for path in scans} == scans  # the finished people were not rendered again
    assert resumed.result is not None and not (out / "cohort" / ".synth").exists()


def test_population_resizes_a_preset_and_refuses_what_cannot_pretrain() -> None:
    sized = population("population_pretrain", 50)
    assert sized.n_subjects == 50 and sized.cohort.n_scans == 50 and sized.cohort.demented == round(50 * 460 / 1000)
    with pytest.raises(BrainAgeError, match="unknown population preset"):
        population("tiny", 50)
    with pytest.raises(BrainAgeError, match="at least 4 people"):
        population("population_tiny", 3)
    with pytest.raises(BrainAgeError, match="folds must be None"):
        pretrain(8, Path("unused"), config=TrainConfig(folds=2))
