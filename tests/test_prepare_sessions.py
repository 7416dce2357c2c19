"""Session reuse in ``prepare``: a session's first scan is stripped and registered, its repeats are
aligned to it rigidly and land on the same output grid, their cache keys follow the reference, and
a bad scan of a session loses none of the others."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy.spatial.transform import Rotation

from brainage.io import discover, load_scan
from brainage.preprocess import load_cache, make_config, prepare, stages
from brainage.preprocess.cache import _read_spatial


@pytest.fixture(scope="module")
def sessions(tiny_cohort) -> pd.DataFrame:
    """The four scans of the tiny cohort's first two sessions (two repeats each)."""
    manifest = discover(tiny_cohort).manifest
    first = manifest.drop_duplicates(["subject_id", "session_id"]).head(2)["session_id"]
    return manifest[manifest["session_id"].isin(first)].reset_index(drop=True)


def _motion(degrees: tuple[float, float, float], shift: tuple[float, float, float], centre: np.ndarray) -> np.ndarray:
    """A 4×4 rigid motion of world points: rotation about ``centre``, then ``shift`` (mm)."""
    motion = np.eye(4)
    motion[:3, :3] = Rotation.from_euler("xyz", degrees, degrees=True).as_matrix()
    motion[:3, 3] = centre - motion[:3, :3] @ centre + np.asarray(shift)
    return motion


@pytest.fixture(scope="module")
def moved_session(sessions, tmp_path_factory) -> tuple[pd.DataFrame, np.ndarray]:
    """A session of two NIfTI scans: a tiny-cohort scan and its copy moved by a known rigid motion
    (4° and 5 mm; the head moves, the scanner grid stays), and the motion (reference → repeat world)."""
    folder = tmp_path_factory.mktemp("moved")
    scan = load_scan(sessions["path"].iat[0])
    data, affine = stages.reorient_ras(scan.data, scan.affine)
    centre = affine @ np.append((np.asarray(data.shape) - 1) / 2, 1.0)
    motion = _motion((4.0, -2.0, 3.0), (3.0, -4.0, 2.0), centre[:3])
    moved = stages.resample(data, affine, affine, data.shape, np.linalg.inv(motion))  # repeat(x) = reference(motion⁻¹ x)
    rows = []
    for name, volume in (("mpr-1", data), ("mpr-2", moved)):
        path = folder / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(volume.astype(np.float32), affine), path)
        rows.append(sessions.iloc[0].copy().rename(None).to_dict() | {"scan_id": f"moved_{name}", "path": str(path)})
    return pd.DataFrame(rows), motion


def _corner_shift(config, first: np.ndarray, second: np.ndarray) -> float:
    """Mean distance (mm) between the output grid's 8 corners under two MNI → native maps."""
    n = np.asarray(config.shape) - 1
    corners = np.array([[i, j, k, 1.0] for i in (0, n[0]) for j in (0, n[1]) for k in (0, n[2])]) @ config.affine.T
    return float(np.linalg.norm((corners @ first.T - corners @ second.T)[:, :3], axis=1).mean())


def test_a_carried_mask_matches_a_full_trilinear_resampling() -> None:
    grid = np.indices((90, 100, 80)).transpose(1, 2, 3, 0) - np.array([45, 50, 40])
    mask = (grid**2 / np.array([30, 38, 28]) ** 2).sum(axis=-1) < 1  # an ellipsoid
    affine = np.diag([1.0, 1.0, 1.25, 1.0])
    target = np.diag([1.1, 0.9, 1.0, 1.0])
    target[:3, 3] = (-3.0, 2.0, 1.0)
    motion = _motion((3.0, -2.0, 4.0), (2.0, 1.0, -3.0), np.array([45.0, 50.0, 50.0]))
    carried = stages.carry_mask(mask, affine, target, (96, 104, 90), motion)
    full = stages.resample(mask.astype(np.float32), affine, target, (96, 104, 90), motion) > 0.5
    assert 2 * (carried & full).sum() / (carried.sum() + full.sum()) > 0.98
    away = _motion((0.0, 0.0, 0.0), (500.0, 0.0, 0.0), np.zeros(3))
    assert not stages.carry_mask(mask, affine, target, (96, 104, 90), away).any()  # out of view: empty


def test_the_repeats_of_a_session_reuse_its_first_scans_mask_and_registration(sessions, tmp_path) -> None:
    report = prepare(sessions, tmp_path / "cache", "standard")
    manifest = report.manifest.set_index("scan_id")
    first = sessions.drop_duplicates("session_id")["scan_id"].tolist()
    repeats = [scan for scan in sessions["scan_id"] if scan not in first]
    assert (report.done, report.aligned, len(report.problems)) == (4, 2, 0)
    assert manifest.loc[first, "reference_scan"].isna().all()
    assert manifest.loc[repeats, "reference_scan"].tolist() == first
    assert (manifest.loc[repeats, "cpu_s_rigid"] > 0).all() and (manifest.loc[repeats, ["cpu_s_strip", "cpu_s_register"]] == 0).all().all()
    assert (manifest.loc[first, "cpu_s_rigid"] == 0).all() and (manifest.loc[first, "cpu_s_strip"] > 0).all()
    assert load_cache(tmp_path / "cache").manifest.set_index("scan_id").loc[repeats, "reference_scan"].tolist() == first
    v1 = prepare(sessions, tmp_path / "v1", "standard-v1")
    assert v1.aligned == 0 and v1.manifest["reference_scan"].isna().all() and (v1.manifest["cpu_s_rigid"] == 0).all()
    halves = [prepare(sessions, tmp_path / "sharded", "standard", shard=(i, 2)) for i in (1, 2)]
    assert [sorted(half.manifest["session_id"].unique()) for half in halves] == [[session] for session in sessions["session_id"].unique()]
    whole = prepare(sessions, tmp_path / "sharded", "standard")
    assert (whole.done, whole.cached) == (0, 4)  # a session stays in one shard: the same reference as unsharded
    single = prepare(sessions.head(1), tmp_path / "single", "standard")
    assert single.manifest["cache_file"].tolist() == manifest.loc[first[:1], "cache_file"].tolist()  # alone: keyed as before


def test_a_moved_copy_of_the_reference_lands_on_the_same_output_grid(moved_session, tmp_path) -> None:
    frame, motion = moved_session
    report = prepare(frame, tmp_path, "standard")
    assert report.aligned == 1 and report.manifest["reference_scan"].iat[1] == "moved_mpr-1"
    reference, repeat = (_read_spatial(tmp_path / name) for name in report.manifest["spatial_file"])
    config = make_config("standard")
    assert _corner_shift(config, motion @ reference.world_to_source, repeat.world_to_source) < 1.0
    scan = load_scan(frame["path"].iat[0])
    _, affine = stages.reorient_ras(scan.data, scan.affine)
    truth = stages.resample(reference.mask.astype(np.float32), affine, affine, reference.mask.shape, np.linalg.inv(motion)) > 0.5
    assert 2 * (truth & repeat.mask).sum() / (truth.sum() + repeat.mask.sum()) > 0.95
    volumes = [np.load(tmp_path / name).astype(np.float64).ravel() for name in report.manifest["cache_file"]]
    assert np.corrcoef(*volumes)[0, 1] > 0.95


def test_a_repeats_cache_entry_follows_its_reference_and_the_session_settings(moved_session, tmp_path) -> None:
    frame, _ = moved_session
    first = prepare(frame, tmp_path / "cache", "standard")
    assert (prepare(frame, tmp_path / "cache", "standard").cached) == 2
    slower = prepare(frame, tmp_path / "cache", make_config("standard", rigid_iterations=(40, 20, 10)))
    assert (slower.done, slower.cached, slower.aligned) == (1, 1, 1)  # only the repeat depends on the rigid settings
    changed = tmp_path / "changed.nii.gz"
    image = nib.load(frame["path"].iat[0])
    data = image.get_fdata(dtype=np.float32)
    data[data.shape[0] // 2] *= 1.1  # the same head, other bytes
    nib.save(nib.Nifti1Image(data, image.affine), changed)
    edited = frame.assign(path=[str(changed), frame["path"].iat[1]])
    again = prepare(edited, tmp_path / "cache", "standard")
    assert (again.done, again.cached, again.aligned) == (2, 0, 1)  # a new reference: its repeat is aligned again
    assert again.manifest["cache_file"].iat[1] != first.manifest["cache_file"].iat[1]
    assert again.manifest["content_hash"].iat[1] == first.manifest["content_hash"].iat[1]


def test_a_bad_scan_of_a_session_is_listed_and_the_others_are_prepared(sessions, tmp_path) -> None:
    source = Path(sessions["path"].iat[0])
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "mpr-1.nifti.hdr").write_bytes(source.with_suffix(".hdr").read_bytes())
        (tmp_path / name / "mpr-1.nifti.img").write_bytes(source.with_suffix(".img").read_bytes()[:5000])
    one, two = (sessions[sessions["session_id"] == session] for session in sessions["session_id"].unique())
    bad_first = one.iloc[[0]].assign(scan_id="0-broken", path=str(tmp_path / "a/mpr-1.nifti.hdr"))  # sorts first: the reference fails
    bad_middle = two.iloc[[0]].assign(scan_id=f"{two['scan_id'].iat[0]}-broken", path=str(tmp_path / "b/mpr-1.nifti.hdr"))
    report = prepare(pd.concat([one, bad_first, two, bad_middle], ignore_index=True), tmp_path / "cache", "standard", workers=2)
    assert sorted(problem.path for problem in report.problems) == [str(tmp_path / f"{name}/mpr-1.nifti.img") for name in "ab"]
    assert all("truncated" in problem.cause and "\n" not in problem.cause for problem in report.problems)
    manifest = report.manifest.set_index("scan_id")
    assert len(manifest) == 4 and report.aligned == 2
    assert manifest.loc[one["scan_id"], "reference_scan"].tolist()[1:] == [one["scan_id"].iat[0]]  # the next scan became the reference
    assert manifest.loc[two["scan_id"], "reference_scan"].tolist()[1:] == [two["scan_id"].iat[0]]


def test_cli_no_session_reuse_prepares_every_repeat_on_its_own(sessions, tmp_path) -> None:
    from typer.testing import CliRunner

    from brainage.cli import app
    from brainage.io import write_manifest

    write_manifest(sessions.head(2), tmp_path / "scans.csv")
    result = CliRunner().invoke(app, ["prepare", str(tmp_path / "scans.csv"), "--out", str(tmp_path / "cache"), "--no-session-reuse"])
    assert result.exit_code == 0, result.output
    manifest = load_cache(tmp_path / "cache").manifest
    assert manifest["reference_scan"].isna().all() and (manifest["cpu_s_strip"] > 0).all()
    seed = CliRunner().invoke(app, ["prepare", str(tmp_path / "scans.csv"), "--out", str(tmp_path / "seed"), "--pipeline", "seed", "--no-session-reuse"])
    assert seed.exit_code == 2 and "no setting session_reuse" in seed.output and len(seed.output.strip().splitlines()) == 1
