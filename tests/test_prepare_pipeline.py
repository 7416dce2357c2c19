"""The faster standard pipeline and the hardened cache: the earlier default stays reachable, stages
are timed per scan, stale shard rows and killed writers' temporary files cannot spoil a cache, and
ITK's failures stay one line."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from brainage.errors import BrainAgeError, InputError
from brainage.io import discover, load_scan
from brainage.preprocess import config_from_dict, load_cache, make_config, prepare, preprocess_scan, stages
from brainage.preprocess.cache import TIME_COLUMNS
from brainage.preprocess.template import template_grid, template_on_grid

#: What the default before ``standard-v1`` existed wrote into cache.json and checkpoints, and the
#: digests it keyed its volumes and spatial files by (computed by that code, commit ac74bfc).
V1_DICT = {
    "pipeline": "standard", "shape": [64, 64, 64], "voxel_size": 3.0, "dtype": "float16", "qc_threshold": 0.5,
    "bias_correction": False, "n4_shrink_factor": 4, "strip_shape": 192, "strip_threshold": 0.5,
    "registration": "Affine", "registration_voxel_size": 4.0, "registration_sampling": 0.25,
    "clip_percentiles": [0.5, 99.5],
}  # fmt: skip  # keys grouped in rows
V1_VOLUME_DIGEST = "0c357ddf9a230ca8"
V1_SPATIAL_DIGEST = "7b40a0b5ca7a7733"


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_standard_v1_keeps_the_earlier_defaults_dict_and_digests() -> None:
    v1 = make_config("standard-v1")
    renamed = {("bias_field" if key == "bias_correction" else key): value for key, value in V1_DICT.items()}  # N4's setting, renamed since
    assert json.loads(json.dumps(v1.to_dict())) == renamed
    assert v1.volume_digest() == V1_VOLUME_DIGEST
    assert v1.digest(*v1.SPATIAL_FIELDS) == V1_SPATIAL_DIGEST
    assert config_from_dict(V1_DICT) == v1  # an old cache.json or checkpoint reads back as v1, not as the new default
    new = make_config("standard")
    assert new.volume_digest() != V1_VOLUME_DIGEST and new.digest(*new.SPATIAL_FIELDS) != V1_SPATIAL_DIGEST
    assert config_from_dict(json.loads(json.dumps(new.to_dict()))) == new
    assert new.antialias == 1.5 and v1.antialias == 0.0
    unsmoothed = {key: value for key, value in new.to_dict().items() if key != "antialias"}  # a cache of the default before antialias
    assert not config_from_dict(unsmoothed).antialias and config_from_dict(unsmoothed).volume_digest() != new.volume_digest()
    with pytest.raises(ValueError, match="skull_strip"):
        make_config("standard", skull_strip="bet")


def test_the_cropped_template_grid_holds_the_whole_mni_brain_with_its_margin() -> None:
    affine, shape = template_grid(4.0, 10.0)
    _, brain = template_on_grid(affine, shape)
    inside = np.argwhere(brain)
    assert inside.min() >= 2 and (np.asarray(shape) - 1 - inside.max(axis=0)).min() >= 2  # ≥ 8 mm of margin left
    full_affine, full_shape = template_grid(4.0)
    assert np.prod(shape) < 0.75 * np.prod(full_shape)
    assert template_on_grid(full_affine, full_shape)[1].sum() == pytest.approx(brain.sum(), rel=0.03)


@pytest.fixture(scope="module")
def tiny_heads(tiny_cohort) -> list[tuple[Path, np.ndarray, np.ndarray]]:
    """Two tiny-cohort scans of different subjects, RAS-oriented: (path, data, affine)."""
    manifest = discover(tiny_cohort).manifest.drop_duplicates("subject_id").head(2)
    heads = []
    for path in manifest["path"]:
        scan = load_scan(path)
        heads.append((Path(path), *stages.reorient_ras(scan.data, scan.affine)))
    return heads


def test_the_coarse_mask_agrees_with_deepbets_full_mask_and_leaves_the_skull_out(tiny_heads) -> None:
    from scipy import ndimage

    for path, data, _ in tiny_heads:
        coarse = stages.skull_strip_coarse(data)
        full = stages.skull_strip(data, 192)
        assert coarse.shape == data.shape and coarse.dtype == bool
        assert _dice(coarse, full) > 0.9, path
        head = ndimage.binary_fill_holes(data > 0.2 * np.percentile(data, 99))
        shell = head & ~ndimage.binary_erosion(head, iterations=2)  # scalp and skull
        assert (coarse & shell).sum() < 0.01 * shell.sum(), path


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present, so nothing falls back")
def test_a_missing_gpu_falls_back_to_the_cpu_with_a_warning(tiny_heads) -> None:
    _, data, _ = tiny_heads[0]
    with pytest.warns(RuntimeWarning, match="not available"):
        assert stages.torch_device("cuda") == "cpu"
    assert stages.torch_device("auto") in ("cpu", "mps")
    with pytest.warns(RuntimeWarning):
        on_cuda = stages.skull_strip_coarse(data, device="cuda")
    np.testing.assert_array_equal(on_cuda, stages.skull_strip_coarse(data, device="cpu"))
    with pytest.raises(ValueError, match="unknown device"):
        stages.torch_device("tpu")


def test_prepare_refuses_an_unknown_device_in_one_line(tiny_cohort, tmp_path) -> None:
    from typer.testing import CliRunner

    from brainage.cli import app

    with pytest.raises(BrainAgeError, match="unknown device 'tpu'"):
        prepare(discover(tiny_cohort).manifest.head(1), tmp_path, "seed", device="tpu")
    result = CliRunner().invoke(app, ["prepare", str(tiny_cohort), "--out", str(tmp_path), "--device", "tpu"])
    assert result.exit_code == 2 and "unknown device" in result.output and len(result.output.strip().splitlines()) == 1


def test_standard_pipeline_records_the_cpu_seconds_of_every_stage(tiny_heads, tmp_path) -> None:
    path = tiny_heads[0][0]
    prepared = preprocess_scan(path, make_config("standard"))
    assert set(prepared.seconds) == {"load", "strip", "register", "resample", "normalise", "qc"}
    assert prepared.seconds["strip"] > 0 and prepared.seconds["register"] > 0
    again = preprocess_scan(path, make_config("standard", clip_percentiles=(1.0, 99.0)), prepared.spatial)
    assert "strip" not in again.seconds and "register" not in again.seconds  # reused, not recomputed


def test_the_manifest_and_the_loaded_cache_hold_per_stage_seconds(tiny_cohort, tmp_path) -> None:
    manifest = discover(tiny_cohort).manifest.head(2)
    report = prepare(manifest, tmp_path, "seed")
    for frame in (report.manifest, load_cache(tmp_path).manifest):
        assert set(TIME_COLUMNS) <= set(frame.columns)
        assert (frame[list(TIME_COLUMNS)].to_numpy(dtype=float) >= 0).all()
        assert (frame["cpu_s_resample"] > 0).all() and (frame["cpu_s_strip"] == 0).all()  # seed: no skull stripping
    cached = prepare(manifest, tmp_path, "seed")
    assert cached.cached == 2
    np.testing.assert_array_equal(cached.manifest["cpu_s_resample"], report.manifest["cpu_s_resample"])


def test_a_stale_shard_row_never_hides_a_current_entry(tiny_cohort, tmp_path) -> None:
    manifest = discover(tiny_cohort).manifest.head(6)
    old, new = make_config("seed", shape=(24, 24, 24)), make_config("seed", shape=(32, 32, 32))
    prepare(manifest, tmp_path, old, shard=(1, 3))  # manifest.shard-1-of-3.csv: old rows of scans 1 and 4
    current = prepare(manifest, tmp_path, new, shard=(1, 2))  # manifest.shard-1-of-2.csv, read first: scans 1, 3, 5
    assert set(current.manifest["scan_id"]) >= {manifest["scan_id"].iat[0]}
    cache = load_cache(tmp_path)
    assert sorted(cache.manifest["scan_id"]) == sorted(current.manifest["scan_id"])
    assert all(cache.volume(i).shape == (32, 32, 32) for i in range(len(cache)))


def _leftovers(root: Path) -> list[Path]:
    """Temporary files as ``atomic_write`` names them, left as a killed writer would."""
    files = [
        root / ".cache.k3j2.tmp.json",
        root / "volumes" / ".abc.x1y2.tmp.npy",
        root / "volumes" / ".abc.x1y3.tmp.json",
        root / "qc" / ".abc.q9.tmp.png",
        root / "hashes" / ".def.h7.tmp.json",
        root / "spatial" / ".abc.s4.tmp.npz",
    ]
    for file in files:
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(b"partial")
    return files


def test_the_next_run_removes_the_temporary_files_of_killed_writers(tiny_cohort, tmp_path) -> None:
    manifest = discover(tiny_cohort).manifest.head(2)
    prepare(manifest, tmp_path, "seed")
    leftovers = _leftovers(tmp_path)
    report = prepare(manifest, tmp_path, "seed")
    assert report.cached == 2 and not any(file.exists() for file in leftovers)
    assert len(list((tmp_path / "volumes").glob("*.npy"))) == 2  # finished files are kept


def test_temporary_files_survive_while_another_prepare_of_the_cache_runs(tiny_cohort, tmp_path) -> None:
    manifest = discover(tiny_cohort).manifest.head(2)
    prepare(manifest, tmp_path, "seed")
    leftovers = _leftovers(tmp_path)
    holder = subprocess.Popen(  # holds the lock as a running prepare does
        [
            sys.executable,
            "-c",
            f"import fcntl, sys, time; f = open({str(tmp_path / '.lock')!r}, 'a'); fcntl.flock(f, fcntl.LOCK_SH); print('locked', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        prepare(manifest, tmp_path, "seed")
        assert all(file.exists() for file in leftovers)  # they may be live writes of the other run
    finally:
        holder.kill()
        holder.wait()
    prepare(manifest, tmp_path, "seed")
    assert not any(file.exists() for file in leftovers)
    with open(tmp_path / ".lock", "a") as lock:  # no run holds the lock any more
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_a_volume_too_small_for_registration_is_one_line_without_itk_text(tmp_path, capfd) -> None:
    rng = np.random.default_rng(0)
    data = np.zeros((40, 40, 40), np.float32)
    data[8:32, 8:32, 8:32] = 50 + 100 * rng.random((24, 24, 24), dtype=np.float32)
    path = tmp_path / "tiny-voxels.nii.gz"
    nib.Nifti1Image(data, np.diag([0.01, 0.01, 0.01, 1.0])).to_filename(path)
    for config in (make_config("standard"), make_config("standard-v1")):
        with pytest.raises(InputError) as caught:
            preprocess_scan(path, config)
        message = str(caught.value)
        assert "tiny-voxels.nii.gz" in message and "registration" in message and "\n" not in message
    captured = capfd.readouterr()
    assert "ImageMomentsCalculator" not in captured.err + captured.out


def test_an_itk_failure_inside_ants_becomes_one_line_with_itks_cause(capfd) -> None:
    fixed = np.random.default_rng(0).random((20, 20, 20), dtype=np.float32)
    with pytest.raises(RuntimeError) as caught:
        stages.register_affine(np.zeros((6, 6, 6), np.float32), np.eye(4), fixed, np.eye(4))
    message = str(caught.value)
    assert "\n" not in message and "Total Mass of the image was zero" in message
    os.write(2, b"stderr is back\n")
    captured = capfd.readouterr()
    assert "itk::ExceptionObject" not in captured.err + captured.out
    assert captured.err.endswith("stderr is back\n")  # file descriptor 2 restored after the failure
