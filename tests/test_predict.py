"""Prediction on new scans: every input kind, broken files, cache use, ensembles, flip averaging, CLI = API."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from brainage.cli import app
from brainage.io import discover, scan_stem
from brainage.predict import BrainAgeModel, find_inputs, resolve_checkpoints, training_caches
from brainage.preprocess import load_cache, prepare
from brainage.training import load_checkpoint
from brainage.utils import parallel_map

runner = CliRunner()
NUMBERS = ["age", "brain_age", "brain_age_corrected", "brain_age_gap", "brain_age_gap_corrected", "qc_score"]


def _scans(cohort: Path) -> list[Path]:
    return sorted(cohort.glob("OAS2_RAW_PART*/*/RAW/mpr-*.nifti.hdr"))


def _copies(scan: Path, folder: Path) -> list[Path]:
    """The scan rewritten as .nii, .nii.gz, an Analyze/NIfTI pair and .mgz (same voxels and geometry)."""
    image = nib.load(scan)
    data = np.asarray(image.dataobj)[..., 0]
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / "copy.nii", folder / "copy.nii.gz", folder / "pair.hdr", folder / "copy.mgz"]
    nib.save(nib.Nifti1Image(data, image.affine), paths[0])
    nib.save(nib.Nifti1Image(data, image.affine), paths[1])
    nib.save(nib.Nifti1Pair(data, image.affine), paths[2])
    nib.save(nib.MGHImage(data.astype(np.int16), image.affine), paths[3])
    return paths


def test_every_accepted_format_gives_the_same_brain_age(untrained_checkpoints: list[Path], tiny_cohort: Path, tmp_path: Path) -> None:
    original, other = _scans(tiny_cohort)[0], _scans(tiny_cohort)[-1]
    copies = _copies(original, tmp_path / "formats")
    assert (tmp_path / "formats" / "pair.img").is_file()
    model = BrainAgeModel.load(untrained_checkpoints[0])
    table = model.predict([*copies, original, other], cache=None)
    assert model.problems_ == []
    assert table["path"].tolist() == [str(path) for path in (*copies, original, other)]
    same = table["brain_age"].to_numpy()[:5]
    assert np.ptp(same) < 1e-3
    assert abs(table["brain_age"].iat[5] - same.mean()) > 0.1  # another scan is told apart
    assert table["age"].isna().all() and table["brain_age_gap"].isna().all()  # plain files carry no age


def test_a_folder_with_broken_files_predicts_the_good_ones_and_lists_the_rest(untrained_checkpoints: list[Path], tiny_cohort: Path, tmp_path: Path) -> None:
    model = str(untrained_checkpoints[0])
    folder = tmp_path / "mixed"
    good = _copies(_scans(tiny_cohort)[0], folder / "sub")
    (folder / "text.nii").write_bytes(b"not an image at all")
    whole = good[1].read_bytes()
    (folder / "cut.nii.gz").write_bytes(whole[: len(whole) // 2])
    shutil.copy(good[2], folder / "lonely.hdr")  # its .img is missing
    nib.save(nib.Nifti1Image(np.full((64, 64, 64), np.nan, np.float32), np.diag([2.0, 2, 2, 1])), folder / "nan.nii")  # a head-sized field of view
    out = tmp_path / "predictions.csv"

    result = runner.invoke(app, ["predict", model, str(folder), "-o", str(out)])
    assert result.exit_code == 0, result.output
    written = pd.read_csv(out)
    assert sorted(Path(path).name for path in written["path"]) == sorted(path.name for path in good)
    assert written["brain_age"].notna().all()
    causes = {"text.nii": "unreadable image header", "cut.nii.gz": "truncated", "lonely.hdr": "missing image file", "nan.nii": "finite"}
    for name, cause in causes.items():
        line = next(line for line in result.output.splitlines() if name in line)
        assert cause in line
    assert "4 skipped" in result.output

    broken_only = tmp_path / "broken"
    broken_only.mkdir()
    shutil.copy(folder / "text.nii", broken_only / "text.nii")
    failed = runner.invoke(app, ["predict", model, str(broken_only), "-o", str(tmp_path / "none.csv")])
    assert failed.exit_code == 2
    assert not (tmp_path / "none.csv").exists()


def test_the_cli_writes_exactly_what_the_api_returns(untrained_checkpoints: list[Path], tiny_cohort: Path, tmp_path: Path) -> None:
    scans = _scans(tiny_cohort)[:4]  # two sessions of two repeats
    table = tmp_path / "scans.csv"
    pd.DataFrame(
        {
            "path": [str(path.relative_to(tiny_cohort)) for path in scans],
            "subject_id": ["s1"] * 4, "session_id": ["v1", "v1", "v2", "v2"], "age": [70.0, 70.0, 71.5, 71.5],
        }
    ).to_csv(table, index=False)  # fmt: skip  # columns grouped in rows
    shutil.copytree(tiny_cohort / "OAS2_RAW_PART1", tmp_path / "OAS2_RAW_PART1")  # paths are relative to the table
    model = BrainAgeModel.load(untrained_checkpoints)
    first, *others = untrained_checkpoints
    models = [str(first), str(table), *(option for path in others for option in ("--with-model", str(path)))]
    for extra in ([], ["--sessions"]):
        out = tmp_path / f"cli{len(extra)}.csv"
        result = runner.invoke(app, ["predict", *models, "-o", str(out), *extra])
        assert result.exit_code == 0, result.output
        assert "mean training age" in result.output and "2 model(s)" in result.output  # the baseline beside the network
        api = model.predict(table, sessions=bool(extra))
        cli = pd.read_csv(out)
        assert list(cli.columns) == list(api.columns)
        assert len(cli) == (2 if extra else 4)
        pd.testing.assert_frame_equal(cli[NUMBERS], api[NUMBERS], check_exact=True, check_dtype=False)


def test_an_ensemble_predicts_the_mean_of_its_members(untrained_checkpoints: list[Path], tiny_cohort: Path) -> None:
    paths = _scans(tiny_cohort)[:3]
    ensemble = BrainAgeModel.load(untrained_checkpoints).predict(paths)
    singles = [BrainAgeModel.load(path).predict(paths) for path in untrained_checkpoints]
    for column in ("brain_age", "brain_age_corrected"):
        np.testing.assert_allclose(ensemble[column], (singles[0][column] + singles[1][column]) / 2, atol=1e-3)
    assert np.abs(singles[0]["brain_age"] - singles[1]["brain_age"]).min() > 0.1  # the mean is not just one member


def test_a_run_folder_stands_for_its_fold_models_and_finds_its_cache(tiny_run: Path, tiny_cache_seed: Path) -> None:
    members = resolve_checkpoints(tiny_run)
    assert [path.relative_to(tiny_run).as_posix() for path in members] == ["fold_0/model.ckpt", "fold_1/model.ckpt"]
    assert training_caches(members) == [tiny_cache_seed.resolve()]
    model = BrainAgeModel.load(tiny_run)
    ages = pd.read_csv(tiny_run / "predictions.csv")["age"]
    low, high = model.train_age_range
    assert ages.min() <= low < high <= ages.max()
    scans = pd.read_csv(tiny_cache_seed / "manifest.csv").iloc[:6]  # a manifest is a table of scans with ages
    table = model.predict(scans)
    assert len(table) == 6 and model.problems_ == [] and table["age"].notna().all()


def test_flip_averaging_gives_a_scan_and_its_mirror_image_the_same_brain_age(untrained_checkpoints: list[Path], tiny_cache_seed: Path) -> None:
    volume = np.asarray(load_cache(tiny_cache_seed).volume(0), dtype=np.float32)
    mirrored = np.flip(volume, axis=0).copy()  # axis 0 of a RAS volume is left–right
    model = BrainAgeModel.load(untrained_checkpoints[0], device="cpu")
    np.testing.assert_allclose(model.predict_volumes(volume[None]), model.predict_volumes(mirrored[None]), atol=1e-3)
    network = model.checkpoints[0].model
    with torch.inference_mode():
        single = network.predict_z(network(torch.from_numpy(np.stack([volume, mirrored])[:, None])))
    assert abs(float(single[0] - single[1])) * model.checkpoints[0].age_std > 0.01  # one view alone is not symmetric


def test_scans_in_a_cache_are_taken_from_it(untrained_checkpoints: list[Path], tiny_cohort: Path, tmp_path: Path) -> None:
    manifest = discover(tiny_cohort).manifest.iloc[[0, -1]].reset_index(drop=True)
    prepare(manifest, tmp_path / "cache", "seed")
    model = BrainAgeModel.load(untrained_checkpoints[0])
    fresh = model.predict(manifest, cache=None, force=True)["brain_age"].to_numpy()  # force: an age may lie outside the model's 60–90
    cached = model.predict(manifest, cache=tmp_path / "cache", force=True)["brain_age"].to_numpy()
    np.testing.assert_allclose(cached, fresh, atol=1e-3)
    assert abs(fresh[0] - fresh[1]) > 0.1
    files = [tmp_path / "cache" / name for name in load_cache(tmp_path / "cache").manifest["cache_file"]]
    first, second = files[0].read_bytes(), files[1].read_bytes()
    files[0].write_bytes(second)
    files[1].write_bytes(first)
    swapped = model.predict(manifest, cache=tmp_path / "cache", force=True)["brain_age"].to_numpy()
    np.testing.assert_allclose(swapped, fresh[::-1], atol=1e-3)  # the cached volumes were used, not the files


def test_ages_outside_training_are_refused_and_poor_registration_warned(untrained_checkpoints: list[Path], tiny_cohort: Path) -> None:
    checkpoint = load_checkpoint(untrained_checkpoints[0])
    strict = dataclasses.replace(checkpoint, preprocessing={**checkpoint.preprocessing, "qc_threshold": 0.99})
    model = BrainAgeModel([strict])
    low, high = model.train_age_range
    scans = _scans(tiny_cohort)[:2]
    given = pd.DataFrame({"path": [str(path) for path in scans], "age": [20.0, (low + high) / 2]})
    refused = model.predict(given)
    young, typical = refused.to_dict("records")
    assert young["inadequate"] == f"age 20 is outside the model's training range {low:g}–{high:g}"
    assert np.isnan(young["brain_age"]) and np.isnan(young["brain_age_gap"]) and np.isfinite(typical["brain_age"])  # no brain age, and the batch went on
    assert typical["inadequate"] == "" and "outside" not in young["warnings"]  # a reason, not also a warning
    table = model.predict(given, force=True)
    assert table["inadequate"].tolist() == refused["inadequate"].tolist() and table["brain_age"].notna().all()
    assert table["qc_flagged"].all()  # the seed pipeline's scores are far below 0.99
    assert all(f"poor registration (QC score {score:.2f} < 0.99)" in text for score, text in zip(table["qc_score"], table["warnings"], strict=False))
    np.testing.assert_allclose(table["brain_age_gap"], table["brain_age"] - table["age"])
    np.testing.assert_allclose(table["brain_age_corrected"], strict.corrector.transform(table["brain_age"], table["age"]), atol=1e-3)
    np.testing.assert_allclose(table["brain_age_gap_corrected"], table["brain_age_corrected"] - table["age"])
    assert table["bias_correction"].str.startswith("residual, fitted on 40 control subjects").all()


def test_the_correction_applies_only_where_an_age_is_given(untrained_checkpoints: list[Path], tiny_cohort: Path) -> None:
    scans = [str(path) for path in _scans(tiny_cohort)[:2]]
    table = BrainAgeModel.load(untrained_checkpoints[0]).predict(pd.DataFrame({"path": scans, "age": [np.nan, 75.0]}))
    unknown, known = table.to_dict("records")
    assert np.isnan(unknown["brain_age_corrected"]) and np.isfinite(unknown["brain_age"])
    assert unknown["bias_correction"] == "none: no age given"
    assert np.isfinite(known["brain_age_corrected"]) and np.isfinite(known["brain_age"])  # never the corrected value alone


def test_inputs_are_found_in_cohorts_tables_files_and_folders(tiny_cohort: Path, tmp_path: Path) -> None:
    rows, problems = find_inputs(tiny_cohort)
    assert len(rows) == 48 and problems == []
    assert rows["age"].notna().all() and rows["scan_id"].iat[0] == "OAS2_0001_MR1_mpr-1"

    scan = _scans(tiny_cohort)[0]
    folder = tmp_path / "scans"
    copies = _copies(scan, folder / "deeper")
    table = tmp_path / "list.csv"
    table.write_text("path,age\nscans/deeper/copy.nii,71\nscans/deeper/copy.mgz,\nscans/deeper/copy.nii.gz,old\n")
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    rows, problems = find_inputs([table, folder, scan.with_suffix(".img"), tmp_path / "missing.nii", notes])
    assert rows["path"].tolist() == [str(copies[0]), str(copies[3]), str(copies[1]), str(copies[2]), str(scan)]
    assert rows["age"].iat[0] == 71 and np.isnan(rows["age"].iat[1])
    assert rows["subject_id"].tolist()[:4] == rows["session_id"].tolist()[:4] == rows["scan_id"].tolist()[:4]  # each scan alone
    assert rows.iloc[4][["scan_id", "session_id", "subject_id"]].tolist() == [
        f"{scan.parent.parent.name}_{scan_stem(scan)}",
        scan.parent.parent.name,
        "OAS2_0001",
    ]
    causes = {Path(problem.path).name: problem.cause for problem in problems}
    assert causes["list.csv"].startswith("row 4 (scans/deeper/copy.nii.gz): non-numeric age")
    assert causes["missing.nii"] == "no such file or folder"
    assert "not a scan" in causes["notes.txt"]


@pytest.mark.parametrize("bad", ["nothing", "folder"])
def test_a_model_that_cannot_be_found_is_one_clear_error(bad: str, tmp_path: Path) -> None:
    target = tmp_path / "empty"
    if bad == "folder":
        target.mkdir()
    result = runner.invoke(app, ["predict", str(target), str(tmp_path), "-o", str(tmp_path / "out.csv")])
    assert result.exit_code == 2
    assert str(target) in result.output and ("no such checkpoint" in result.output or "no model.ckpt" in result.output)


def test_prediction_loads_a_checkpoint_without_lightning_torchmetrics_or_matplotlib(untrained_checkpoints: list[Path], tiny_cache_seed: Path) -> None:
    script = (
        "import sys\nimport numpy as np\nfrom brainage.predict import BrainAgeModel\nfrom brainage.preprocess import load_cache\n"
        f"model = BrainAgeModel.load({str(untrained_checkpoints[0])!r}, device='cpu')\n"
        f"ages = model.predict_volumes(np.stack([load_cache({str(tiny_cache_seed)!r}).volume(0)]), [70.0])\n"
        "assert np.isfinite(ages[:, :2]).all(), ages\n"
        "print(sorted(name for name in ('lightning', 'torchmetrics', 'matplotlib') if name in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def _started(path: str) -> str:
    """Worker: leave a file saying this item started."""
    Path(path).touch()
    return path


def test_the_worker_pool_keeps_few_items_in_flight(tmp_path: Path) -> None:
    """predict's pool (utils.parallel_map) submits at most 2 × workers items ahead, so memory stays bounded."""
    paths = [str(tmp_path / f"{k}.started") for k in range(16)]
    results = parallel_map(_started, paths, workers=2)
    first = next(results)
    time.sleep(1.0)  # a slow consumer: the workers may run all they were given meanwhile
    assert len(list(tmp_path.glob("*.started"))) <= 2 * 2 + 1  # four in flight, one submitted as the first finished
    rest = list(results)
    assert sorted(item for item, _ in [first, *rest]) == sorted(paths) and all(item == result for item, result in [first, *rest])


def test_a_file_alone_keeps_the_ids_of_its_oasis_layout_and_xlsx_tables_are_read(tiny_cohort: Path, tmp_path: Path) -> None:
    scan = _scans(tiny_cohort)[0]  # <root>/OAS2_RAW_PART1/OAS2_xxxx_MRy/RAW/mpr-n.nifti.hdr
    session = scan.parent.parent.name
    expected = [f"{session}_{scan_stem(scan)}", session, session.rsplit("_MR", 1)[0]]
    rows, problems = find_inputs([scan])
    assert problems == [] and rows.loc[0, ["scan_id", "session_id", "subject_id"]].tolist() == expected
    pd.DataFrame({"path": [str(scan)], "age": [71.5]}).to_excel(tmp_path / "scans.xlsx", index=False)  # a table prepare reads
    rows, problems = find_inputs(tmp_path / "scans.xlsx")
    assert problems == [] and rows.loc[0, ["scan_id", "session_id", "subject_id", "age"]].tolist() == [*expected, 71.5]
