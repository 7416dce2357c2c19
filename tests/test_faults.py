"""Fault injection: a command is started for real (the ``brainage`` console script) in a subprocess,
killed with SIGKILL at a random point after some output appeared, run again, and what it leaves is
compared with an uninterrupted run's.

The helpers (:func:`kill_when`, :func:`wait_gone`, :func:`file_hashes`) serve every command's
test; each test draws its kill point from a fresh seed that it prints (shown when it fails).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from brainage.cohort import TINY
from brainage.demo import DemoConfig, _cohort
from brainage.utils import stale_temporaries

BRAINAGE = Path(sys.executable).with_name("brainage")
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads process state from /proc")


def random_point() -> random.Random:
    """A generator for the kill point, from a fresh seed that the test prints."""
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"fault-injection seed {seed}")
    return random.Random(seed)


def kill_when(args: Sequence[str], ready: Callable[[], bool], log: Path, timeout: float = 300.0) -> list[int]:
    """Run ``brainage *args``, poll ``ready()`` until it holds, then SIGKILL the command; return
    the pids of its child processes at that moment. Fails if the command ends first."""
    with log.open("w") as output:
        process = subprocess.Popen([str(BRAINAGE), *args], stdout=output, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert process.poll() is None, f"{args} ended (exit {process.returncode}) before the kill:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"{args} not ready after {timeout} s"
            time.sleep(0.02)
        children = _children(process.pid)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL, f"{args} was not killed: exit {process.returncode}"
    return children


def wait_gone(pids: Sequence[int], timeout: float = 10.0) -> list[int]:
    """Wait until none of ``pids`` runs any more (dead or a zombie); return those still running."""
    deadline = time.monotonic() + timeout
    while (running := [pid for pid in pids if _running(pid)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return running


def file_hashes(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root``, by relative POSIX path."""
    return {path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(root.rglob("*")) if path.is_file()}


def _children(pid: int) -> list[int]:
    tasks = Path(f"/proc/{pid}/task").glob("*/children")
    return sorted({int(child) for task in tasks for child in task.read_text().split()})


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def test_killed_synth_leaves_no_worker_and_resumes_to_the_same_bytes(tiny_cohort: Path, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    args = ["synth", "--out", str(out), "--preset", "tiny", "--seed", str(json.loads((tiny_cohort / "cohort.json").read_text())["seed"])]
    rng = random_point()
    subjects_done = rng.randint(0, TINY.n_subjects // 2)  # 0: as soon as a session folder appears

    def ready() -> bool:
        if subjects_done == 0:
            return any(out.glob("OAS2_RAW_PART*/*"))
        return len(list(out.glob(".synth/OAS2_*.json"))) >= subjects_done

    workers = kill_when([*args, "--workers", "2"], ready, tmp_path / "killed.log")
    assert len(workers) >= 2, workers  # the pool's workers (and possibly multiprocessing's resource tracker)
    assert wait_gone(workers) == [], "worker processes outlived the killed command"
    assert not (out / "cohort.json").exists()
    for raw in out.glob("OAS2_RAW_PART*/*/RAW"):  # what a reader sees: whole pairs, nothing else
        headers = {path.name.removesuffix(".hdr") for path in raw.glob("*.hdr")}
        assert headers and headers == {path.name.removesuffix(".img") for path in raw.glob("*.img")}
        assert len(list(raw.iterdir())) == 2 * len(headers), sorted(raw.iterdir())

    # a subject kept from the killed run is checked, not trusted: damage one of its files
    markers = sorted(out.glob(".synth/OAS2_*.json"))
    if markers:
        damaged = out / next(iter(json.loads(markers[0].read_text())["files"]))
        damaged.write_bytes(b"\0" + damaged.read_bytes()[1:])

    other = subprocess.run([str(BRAINAGE), *args[:-1], "12345"], capture_output=True, text=True)
    assert other.returncode == 2 and "unfinished synthesis of another cohort" in other.stderr, other.stderr

    again = subprocess.run([str(BRAINAGE), *args, "--workers", "2"], capture_output=True, text=True)
    assert again.returncode == 0, again.stdout + again.stderr
    assert file_hashes(out) == file_hashes(tiny_cohort)  # also: 2 workers give the bytes of 1


def test_a_demo_killed_while_it_synthesizes_finishes_its_cohort(tiny_cohort: Path, tmp_path: Path) -> None:
    out, seed = tmp_path / "demo", json.loads((tiny_cohort / "cohort.json").read_text())["seed"]
    cohort = out / "cohort"
    subjects_done = random_point().randint(1, TINY.n_subjects // 2)
    args = ["demo", "--out", str(out), "--preset", "tiny", "--pipeline", "seed", "--seed", str(seed), "--workers", "2"]
    workers = kill_when(args, lambda: len(list(cohort.glob(".synth/OAS2_*.json"))) >= subjects_done, tmp_path / "demo.log")
    assert wait_gone(workers) == [], "worker processes outlived the killed demo"
    assert _cohort(cohort, DemoConfig(preset="tiny", seed=seed, workers=2)) == cohort  # the demo's synthesis step
    assert file_hashes(cohort) == file_hashes(tiny_cohort)


def test_a_write_killed_midway_leaves_only_a_temporary_that_is_found(tmp_path: Path) -> None:
    target = tmp_path / "table.csv"
    script = (
        "import os, sys\nfrom brainage.utils import atomic_write\n"
        "with atomic_write(sys.argv[1]) as tmp:\n    tmp.write_text('half')\n    os.kill(os.getpid(), 9)\n"
    )
    killed = subprocess.run([sys.executable, "-c", script, str(target)])
    assert killed.returncode == -signal.SIGKILL and not target.exists()
    (tmp_path / "other.csv").write_text("kept")
    stale = stale_temporaries(target)
    assert [path.read_text() for path in stale] == ["half"] and stale[0].name.startswith(".table.")


def _train_args(cache: Path, run: Path, settings: Path) -> list[str]:
    return ["train", str(cache), "--out", str(run), "--config", str(settings)]


def test_a_training_killed_mid_fold_resumes_from_its_last_epoch(tiny_cache_seed: Path, tmp_path: Path) -> None:
    import pandas as pd
    import yaml

    from brainage.training import TrainConfig

    config = TrainConfig(
        model="sfcn", model_hparams={"width": 0.125}, epochs=4, min_epochs=4, folds=2, batch_size=8, seed=0,
        progress=False, baselines=False, num_workers=0, precision="32-true",
    )  # fmt: skip  # settings grouped in rows
    settings = tmp_path / "train.yaml"
    settings.write_text(yaml.safe_dump(config.to_dict()))
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run([str(BRAINAGE), *_train_args(tiny_cache_seed, whole, settings)], check=True, capture_output=True)
    rng = random_point()
    epochs = rng.randint(1, 3)  # kill after this many epochs of fold 0 were saved
    metrics = killed / "fold_0" / "metrics.csv"

    def trained() -> bool:
        try:
            return (killed / "fold_0" / "last.ckpt").is_file() and len(metrics.read_text().splitlines()) > epochs
        except OSError:
            return False

    kill_when(_train_args(tiny_cache_seed, killed, settings), trained, tmp_path / "killed.log")
    assert (killed / "fold_0" / "last.ckpt").is_file() and not (killed / "fold_0" / "model.ckpt").exists()
    rerun = subprocess.run([str(BRAINAGE), *_train_args(tiny_cache_seed, killed, settings)], capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    history = pd.read_csv(killed / "metrics.csv")
    assert history.groupby("fold")["epoch"].apply(list).tolist() == [[1, 2, 3, 4]] * 2  # no epoch lost, none repeated
    assert not list(killed.glob("fold_*/last.ckpt")) and not list(killed.glob("fold_*/best.ckpt"))
    expected, resumed = pd.read_csv(whole / "predictions.csv"), pd.read_csv(killed / "predictions.csv")
    assert list(resumed["scan_id"]) == list(expected["scan_id"])
    pd.testing.assert_frame_equal(history, pd.read_csv(whole / "metrics.csv"), check_exact=False, rtol=1e-4)
    pd.testing.assert_series_equal(resumed["brain_age"], expected["brain_age"], check_exact=False, rtol=1e-5)


def test_a_killed_prepare_resumes_to_the_bytes_of_an_uninterrupted_one(tiny_cohort: Path, tmp_path: Path) -> None:
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    args = ["--pipeline", "seed", "--workers", "2"]
    subprocess.run([str(BRAINAGE), "prepare", str(tiny_cohort), "--out", str(whole), *args], check=True, capture_output=True)
    done = random_point().randint(1, 30)  # kill once this many of the 48 volumes are written

    def ready() -> bool:
        return len(list(killed.rglob("*.npy"))) >= done

    workers = kill_when(["prepare", str(tiny_cohort), "--out", str(killed), *args], ready, tmp_path / "killed.log")
    assert wait_gone(workers) == [], "worker processes outlived the killed prepare"
    again = subprocess.run([str(BRAINAGE), "prepare", str(tiny_cohort), "--out", str(killed), *args], capture_output=True, text=True)
    assert again.returncode == 0, again.stdout + again.stderr
    volumes = {name: digest for name, digest in file_hashes(killed).items() if name.endswith(".npy")}
    assert volumes == {name: digest for name, digest in file_hashes(whole).items() if name.endswith(".npy")}
    assert len(volumes) == 48 and not list(killed.rglob(".*.tmp*"))  # no temporary of a killed writer is left
