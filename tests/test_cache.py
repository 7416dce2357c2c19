"""The on-disk cache: hits do no work, changes recompute only what they change, interrupted and
sharded runs add up to the whole."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from brainage.cli import app
from brainage.errors import InputError
from brainage.io import discover
from brainage.preprocess import load_cache, make_config, prepare


@pytest.fixture(scope="module")
def manifest(tiny_cohort) -> pd.DataFrame:
    """Six scans of the tiny cohort (three subjects)."""
    found = discover(tiny_cohort).manifest
    return found[found["subject_id"].isin(found["subject_id"].unique()[:3])].head(6).reset_index(drop=True)


def _mtimes(root: Path) -> dict[str, int]:
    return {str(path): path.stat().st_mtime_ns for path in (root / "volumes").iterdir()}


def test_load_cache_gives_read_only_memory_maps_of_every_scan(tiny_cohort, tiny_cache_seed) -> None:
    cache = load_cache(tiny_cache_seed)
    assert len(cache) == len(discover(tiny_cohort).manifest) == 48 and cache.shape == (64, 64, 64)
    assert {"scan_id", "subject_id", "age", "cache_file", "qc_score", "qc_flagged"} <= set(cache.manifest.columns)
    assert cache.manifest["qc_flagged"].dtype == bool and not cache.manifest["qc_flagged"].any()  # seed: no QC threshold
    np.testing.assert_array_equal(cache.affine, np.diag([4.0, 4.0, 4.0, 1.0]))
    volume = cache.volume(3)
    assert isinstance(volume, np.memmap) and not volume.flags.writeable
    assert volume.shape == cache.shape and volume.dtype == np.float32
    assert abs(float(volume.mean())) < 1e-3 and abs(float(volume.std()) - 1) < 1e-3
    assert (tiny_cache_seed / cache.manifest["qc_file"].iat[3]).read_bytes()[:4] == b"\x89PNG"


def test_a_second_run_with_the_same_settings_does_no_work(manifest, tmp_path) -> None:
    first = prepare(manifest, tmp_path, "seed")
    before = _mtimes(tmp_path)
    second = prepare(manifest, tmp_path, "seed")
    assert (first.done, first.cached) == (6, 0)
    assert (second.done, second.cached) == (0, 6)
    assert _mtimes(tmp_path) == before
    pd.testing.assert_frame_equal(first.manifest, second.manifest)


def test_a_changed_scan_or_threshold_recomputes_only_what_it_changes(manifest, tmp_path) -> None:
    prepare(manifest, tmp_path, "seed")
    changed = tmp_path / "changed"
    changed.mkdir()
    for suffix in (".hdr", ".img"):
        source = Path(manifest["path"].iat[2]).with_suffix(suffix)
        (changed / f"scan{suffix}").write_bytes(source.read_bytes())
    edited = manifest.copy()
    edited.loc[2, "path"] = str(changed / "scan.hdr")
    again = prepare(edited, tmp_path, "seed")
    assert (again.done, again.cached) == (0, 6)  # same content under another name: still cached
    with open(changed / "scan.img", "r+b") as handle:  # now change the voxels
        handle.seek(20000)
        handle.write(b"\x7f" * 4000)
    again = prepare(edited, tmp_path, "seed")
    assert (again.done, again.cached) == (1, 5)
    stricter = prepare(edited, tmp_path, make_config("seed", qc_threshold=2.0))
    assert (stricter.done, stricter.cached) == (0, 6)  # a QC threshold does not change a volume…
    assert stricter.manifest["qc_flagged"].all()  # …only which scans are flagged
    assert load_cache(tmp_path).manifest["qc_flagged"].all()


@pytest.mark.slow
def test_a_changed_normalisation_reuses_the_skull_stripping_and_registration(manifest, tmp_path) -> None:
    one = manifest.head(1)
    first = prepare(one, tmp_path, "standard")
    assert (first.done, first.reused_registration) == (1, 0)
    wider = prepare(one, tmp_path, make_config("standard", clip_percentiles=(2.0, 98.0)))
    assert (wider.done, wider.cached, wider.reused_registration) == (1, 0, 1)
    a = load_cache(tmp_path)
    assert a.config.clip_percentiles == (2.0, 98.0)
    assert a.volume(0).dtype == np.float16 and np.isfinite(a.volume(0)).all()
    assert np.corrcoef(a.volume(0).ravel(), np.load(tmp_path / first.manifest["cache_file"].iat[0]).ravel())[0, 1] > 0.95


def test_an_interrupted_run_resumes_without_a_corrupt_file(tiny_cohort, tmp_path) -> None:
    out = tmp_path / "cache"
    script = (
        "from brainage.io import discover; from brainage.preprocess import prepare; "
        f"prepare(discover({str(tiny_cohort)!r}).manifest.head(12), {str(out)!r}, 'seed')"
    )
    worker = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(list((out / "volumes").glob("[!.]*.json"))) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    records = list((out / "volumes").glob("[!.]*.json"))
    assert 3 <= len(records) < 12 and not (out / "manifest.csv").exists()
    for volume in (out / "volumes").glob("[!.]*.npy"):
        assert np.load(volume).shape == (64, 64, 64)  # a finished file is whole; partial ones have temporary names
    resumed = prepare(discover(tiny_cohort).manifest.head(12), out, "seed")
    assert resumed.cached >= len(records) and resumed.done + resumed.cached == 12 and not resumed.problems
    cache = load_cache(out)
    assert len(cache) == 12 and all(cache.volume(i).shape == (64, 64, 64) for i in range(len(cache)))


def test_sharded_runs_add_up_to_the_whole(manifest, tmp_path) -> None:
    parts = [prepare(manifest, tmp_path, "seed", shard=(i, 3)) for i in (1, 2, 3)]
    assert [part.done for part in parts] == [2, 2, 2]
    ids = [set(part.manifest["scan_id"]) for part in parts]
    assert set.union(*ids) == set(manifest["scan_id"]) and sum(map(len, ids)) == 6
    assert sorted(load_cache(tmp_path).manifest["scan_id"]) == sorted(manifest["scan_id"])
    whole = prepare(manifest, tmp_path, "seed")
    assert (whole.done, whole.cached) == (0, 6)
    assert not list(tmp_path.glob("manifest.shard-*.csv")) and len(load_cache(tmp_path)) == 6
    with pytest.raises(ValueError, match="between 1 and 3"):
        prepare(manifest, tmp_path, "seed", shard=(0, 3))


def test_a_bad_scan_is_skipped_and_listed_and_the_rest_is_prepared(manifest, tmp_path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    source = Path(manifest["path"].iat[0])
    (broken / "mpr-1.nifti.hdr").write_bytes(source.with_suffix(".hdr").read_bytes())
    (broken / "mpr-1.nifti.img").write_bytes(source.with_suffix(".img").read_bytes()[:5000])
    bad = manifest.iloc[[0]].assign(scan_id="broken", path=str(broken / "mpr-1.nifti.hdr"))
    report = prepare(pd.concat([manifest, bad], ignore_index=True), tmp_path / "cache", "seed", workers=2)
    assert report.done == 6 and len(report.manifest) == 6
    assert [problem.path for problem in report.problems] == [str(broken / "mpr-1.nifti.img")]
    assert "truncated" in report.problems[0].cause


def test_load_cache_of_a_folder_that_is_not_a_cache_names_it(tmp_path) -> None:
    with pytest.raises(InputError, match="not a brainage cache"):
        load_cache(tmp_path)


def test_cli_prepare_prints_a_summary_and_rejects_a_bad_shard(tiny_cohort, tmp_path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["prepare", str(tiny_cohort), "--out", str(tmp_path), "--pipeline", "seed", "--shape", "32", "32", "32", "--shard", "4/16"])
    assert result.exit_code == 0, result.output
    assert "prepared now" in result.output and "scans/s" in result.output
    cache = load_cache(tmp_path)
    assert len(cache) == 3 and cache.shape == (32, 32, 32)
    bad = runner.invoke(app, ["prepare", str(tiny_cohort), "--out", str(tmp_path), "--shard", "5/4"])
    assert bad.exit_code == 2 and "shard" in bad.output and len(bad.output.strip().splitlines()) == 1
