"""The HTML report (one self-contained file with every section, from a run folder) and saliency maps."""

from __future__ import annotations

import base64
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

from brainage.cli import app
from brainage.report import SECTIONS, build_report
from brainage.saliency import METHODS, saliency_map

runner = CliRunner()


def test_the_report_is_one_self_contained_file_with_every_section(tiny_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    result = runner.invoke(app, ["report", str(tiny_run), "-o", str(out), "--saliency-scans", "2"])
    assert result.exit_code == 0, result.output
    text = out.read_text(encoding="utf-8")
    for key, title in SECTIONS:
        assert f'<section id="{key}"><h2>{title}</h2>' in text
    images = re.findall(r'<img alt="[^"]*" src="([^"]+)"', text)
    assert len(images) == 8  # curves, predicted vs true, Bland–Altman, gap by group, visits, intervals, QC montage, saliency
    for source in images:
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert not re.search(r'(src|href)="(?!data:|#)', text)  # nothing is fetched from elsewhere
    assert "Welch t-test" in text or "one-way ANOVA" in text  # the group test, with three tiny-cohort groups
    for name in ("mean age", "ridge", "sfcn"):
        assert name in text  # the baselines table beside the network
    assert "True brain age (a perfect brain reader) on this synthetic cohort" in text
    assert "averaged over 2 test scans" in text
    assert "ICC(2,1) absolute agreement" in text and "within-session SD (years)" in text  # repeats in every tiny session
    assert "Over each person&#39;s visits" in text and "slope on age, median [IQR]" in text  # and two or more visits per person
    assert "Pose invariance: not measured for this run (no pose.csv in the run folder)" in text


def _section(text: str, key: str) -> str:
    """The HTML of one report section, its embedded images left out."""
    body = text.split(f'<section id="{key}">', 1)[1].split("</section>", 1)[0]
    return re.sub(r'src="data:image/png;base64,[^"]+"', 'src=""', body)


def _cells(html_text: str) -> list[str]:
    return [cell.strip() for cell in re.findall(r"<td>(.*?)</td>", html_text, flags=re.S)]


def test_the_four_biomarker_sections_show_their_numbers(tiny_run: Path, tmp_path: Path) -> None:
    """Test–retest, visits, per-scan intervals (with held-out people) and pose invariance, each
    with the numbers of the library functions that compute them, recomputed here."""
    from brainage.reliability import coverage, longitudinal, test_retest

    run = tmp_path / "run <b>&"  # the template escapes the folder name in the title (autoescaping on)
    shutil.copytree(tiny_run, run)
    predictions = pd.read_csv(run / "predictions.csv", dtype={"scan_id": str, "subject_id": str, "session_id": str})
    assert predictions["brain_age_lower"].notna().all()
    heldout = predictions.head(6).assign(age=lambda f: f["brain_age_upper"] + 1.0)  # every age outside its interval: 0 %
    poses = pd.DataFrame({
        "scan": ["a/OAS2_0001_MR1/RAW/mpr-1.nifti.hdr"] * 3 + ["a/OAS2_0001_MR1/RAW/mpr-1.nifti.hdr"] * 3,
        "mode": ["header"] * 3 + ["voxels"] * 3, "pose": [0, 1, 2] * 2, "label": ["identity", "p1", "p2"] * 2,
        "brain_age": [70.0, 70.2, 69.8, 70.0, 71.0, 69.0], "qc_score": [0.71, 0.70, 0.69, 0.71, 0.65, 0.66],
    })  # fmt: skip  # columns grouped in rows
    poses.to_csv(run / "pose.csv", index=False)
    text = build_report(run, tmp_path / "report.html", saliency_scans=1, heldout=heldout).read_text(encoding="utf-8")
    assert "nan" not in re.sub(r'src="data:[^"]+"', "", text).lower()
    assert "<title>brainage report: run &lt;b&gt;&amp;</title>" in text and "<b>" not in text

    retest = test_retest(predictions).values
    cells = _cells(_section(text, "reliability"))
    assert f"{retest['within_sd']:.2f}" in cells and f"{retest['icc2']:.3f}" in cells and f"{retest['icc3']:.3f}" in cells
    assert f"{retest['icc2_low']:.3f} to {retest['icc2_high']:.3f}" in cells and f"{retest['icc3_low']:.3f} to {retest['icc3_high']:.3f}" in cells
    visits = longitudinal(predictions).table
    row = visits.iloc[0]
    assert f"{row['slope_median']:.2f} [{row['slope_q1']:.2f}, {row['slope_q3']:.2f}]" in cells

    intervals = _section(text, "intervals")
    inside = coverage(predictions["brain_age_lower"], predictions["brain_age_upper"], predictions["age"])
    cells = _cells(intervals)
    assert "90% split-conformal intervals" in intervals
    assert cells[:4] == ["out of fold, all scans", str(len(predictions)), str(round(inside * len(predictions))), f"{inside:.1%}"]
    assert cells[cells.index("held-out people") : cells.index("held-out people") + 4] == ["held-out people", "6", "0", "0.0%"]
    assert intervals.count("<img") == 1

    pose = _section(text, "pose")
    cells = _cells(pose)
    assert cells[:7] == ["OAS2_0001_MR1/RAW/mpr-1.nifti.hdr", "header", "3", "0.20", "0.28", "0.40", "yes"]  # SD of 70, 70.2, 69.8
    assert cells[8:15] == ["OAS2_0001_MR1/RAW/mpr-1.nifti.hdr", "voxels", "3", "1.00", "1.41", "2.00", "no"]
    assert "0.65 / 0.71" in cells and pose.count("<img") == 1


def test_sections_say_what_a_cohort_without_repeats_or_second_visits_cannot_show(tiny_run: Path, tmp_path: Path) -> None:
    """One scan per person (no repeats, one visit) and no intervals: each section says so in words, no NaN."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    predictions = pd.read_csv(run / "predictions.csv", dtype={"scan_id": str, "subject_id": str, "session_id": str})
    first = predictions.drop_duplicates("subject_id").drop(columns=["brain_age_lower", "brain_age_upper"])
    first.to_csv(run / "predictions.csv", index=False)
    text = build_report(run, tmp_path / "report.html", saliency_scans=1).read_text(encoding="utf-8")
    assert "nan" not in re.sub(r'src="data:[^"]+"', "", text).lower()
    reliability = _section(text, "reliability")
    assert "Test–retest: not available: no session has two or more scans." in reliability
    assert "Longitudinal consistency: not available: no subject has two or more visits." in reliability
    assert "<table" not in reliability and "<img" not in reliability
    intervals = _section(text, "intervals")
    assert "Per-scan intervals: not available: the run has no calibrated intervals" in intervals and "<img" not in intervals


def test_a_run_whose_cache_is_gone_still_gets_a_report(tiny_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["cache"] = str(tmp_path / "moved-away")
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    text = build_report(run).read_text(encoding="utf-8")  # default: RUN/report.html
    assert (run / "report.html").is_file()
    assert text.count("The cache is not available") == 3  # cohort counts, QC montage and saliency say why
    assert '<section id="bland-altman">' in text and "data:image/png;base64," in text


def test_a_folder_that_is_not_a_run_is_one_clear_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2
    assert f"{tmp_path}: not a brainage run folder" in result.output


class _CornerMean(torch.nn.Module):
    """Brain age = mean intensity of the 8³ corner block (through a 1×1×1 convolution of weight 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 1, kernel_size=1, bias=False)
        torch.nn.init.ones_(self.conv.weight)

    def forward(self, volumes: torch.Tensor) -> torch.Tensor:
        return self.conv(volumes)[:, 0, :8, :8, :8].mean(dim=(1, 2, 3))


@pytest.mark.parametrize("method", METHODS)
def test_saliency_is_where_the_prediction_comes_from(method: str) -> None:
    rng = np.random.default_rng(0)
    volumes = [rng.normal(size=(24, 16, 16)).astype(np.float32) for _ in range(3)]
    saliency = saliency_map(_CornerMean(), volumes, method)
    assert saliency.shape == (24, 16, 16)
    assert (saliency[:8, :8, :8] > 0).all()
    assert np.abs(saliency).sum() == pytest.approx(np.abs(saliency[:8, :8, :8]).sum())  # nothing outside the block
    if method == "gradient":
        np.testing.assert_allclose(saliency[:8, :8, :8], 1 / 512, rtol=1e-5)
    else:  # the block set to each volume's minimum: the mean drops from its mean to that minimum
        expected = np.mean([volume[:8, :8, :8].mean() - volume.min() for volume in volumes])
        np.testing.assert_allclose(saliency[:8, :8, :8], expected, rtol=1e-4)
