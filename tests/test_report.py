"""The HTML report (one self-contained file with every section, from a run folder) and saliency maps."""

from __future__ import annotations

import base64
import re
import shutil
from pathlib import Path

import numpy as np
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
    assert len(images) == 7  # curves, predicted vs true, Bland–Altman, gap by group, visits, QC montage, saliency
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
    assert "Over each person&#x27;s visits" in text and "slope on age, median [IQR]" in text  # and two or more visits per person


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
